"""The OpenAI Agents SDK runs a tool loop against a real `inferline serve`, through its chat-completions
model and through its default model, which speaks the Responses API: the first turn must call the tool
(tool_choice required, so the 135M default model completes it), the tool's result goes back (a tool
message; a function_call_output item), and the next turn answers. And the SDK streaming a Responses
turn from the in-process app, whose remote deployment (a stub upstream) always answers with a call."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)

from inferline.config import ServerConfig
from inferline.router.deployments import DeploymentPool
from inferline.server.app import create_app
from inferline.testing.stub_upstream import StubProcess, start_stub

from .conftest import API_KEY, ServerProcess

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


@pytest.fixture(scope="module")
def calling_stub() -> Iterator[StubProcess]:
    process = start_stub("--reply", CALL)
    yield process
    process.stop()


@pytest.mark.parametrize("model_class", [OpenAIChatCompletionsModel, OpenAIResponsesModel])
def test_an_agent_calls_a_function_tool_and_answers(
    server: ServerProcess, model_class: type[OpenAIChatCompletionsModel | OpenAIResponsesModel]
) -> None:
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
        model=model_class(model="smollm2-135m-instruct", openai_client=client),
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


def test_an_agent_streams_a_responses_turn_that_calls_a_tool(
    tmp_path: Path, calling_stub: StubProcess
) -> None:
    set_tracing_disabled(True)
    calls: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "London", "Tokyo"]) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"18 degrees and sunny in {city}"

    config = ServerConfig.model_validate(
        {
            "deployments": [{"name": "stubbed", "kind": "remote", "base_url": f"{calling_stub.url}/v1"}],
            "telemetry": {"metering": False, "database_url": f"sqlite:///{tmp_path / 'inferline.db'}"},
        }
    )

    async def run() -> object:
        pool = DeploymentPool(config.deployments)
        await pool.load_all()
        transport = httpx.ASGITransport(create_app(config, pool))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://inferline") as http:
                client = openai.AsyncOpenAI(base_url="http://inferline/v1", api_key="-", http_client=http)
                agent = Agent(
                    name="weather",
                    model=OpenAIResponsesModel(model="stubbed", openai_client=client),
                    tools=[get_weather],
                    tool_use_behavior="stop_on_first_tool",  # the stub would call it forever
                )
                result = Runner.run_streamed(agent, "What is the weather in Paris?", max_turns=2)
                async for _ in result.stream_events():
                    pass
                return result.final_output
        finally:
            await pool.unload_all()

    assert asyncio.run(run()) == "18 degrees and sunny in Paris"
    assert calls == ["Paris"]
