"""The OpenAI Agents SDK runs a tool loop against a real `inferline serve` through its chat-completions
model: the first turn must call the tool (tool_choice required, so the 135M default model completes
it), the tool's result goes back as a tool message, and the next turn answers."""

from __future__ import annotations

import asyncio
from typing import Literal

import openai
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from .conftest import API_KEY, ServerProcess


def test_an_agent_calls_a_function_tool_and_answers(server: ServerProcess) -> None:
    set_tracing_disabled(True)  # traces would go to OpenAI's servers
    calls: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "London", "Tokyo"]) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"18 degrees and sunny in {city}"

    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    agent = Agent(
        name="weather",
        instructions="Answer questions about the weather with the get_weather tool.",
        model=OpenAIChatCompletionsModel(model="smollm2-135m-instruct", openai_client=client),
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=48),
        tools=[get_weather],
    )

    async def run() -> object:
        try:
            # After a tool call the SDK resets tool_choice to auto, so the second turn may answer.
            return (await Runner.run(agent, "What is the weather in Paris?", max_turns=4)).final_output
        finally:
            await client.close()

    final_output = asyncio.run(run())
    assert calls
    assert calls[0] in ("Paris", "London", "Tokyo")
    assert isinstance(final_output, str)
    assert final_output.strip()
