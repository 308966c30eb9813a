"""Conversations with function tools, shaped for a chat template.

Templates written for tools (Llama 3.x, Qwen 2.5, Hermes 2/3) take `tools` in OpenAI's form and read
an assistant turn's calls from `message.tool_calls[i].function` with `arguments` as a mapping, the
convention of Hugging Face's `apply_chat_template`; OpenAI clients send the arguments as JSON text, so
they are decoded here. Templates that never mention `tools` (SmolLM2's among them) would drop the
tools and fail on a `tool` turn, so for them the conversation is rewritten into plain turns in the
Hermes convention: a system prompt that lists the tools and asks for
`<tool_call>{"name": ..., "arguments": ...}</tool_call>`, the assistant's earlier calls written back in
that form, and tool results as user turns wrapped in `<tool_response>` tags (adjacent results share one
turn, so templates that insist on alternating roles accept them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"


def tool_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The instructions a model without tool support in its template gets: the tools, then the form."""
    listed = "\n".join(json.dumps(tool.get("function", tool), ensure_ascii=False) for tool in tools)
    return (
        "You can call functions to answer the user. The functions, one JSON signature per line, are "
        f"between <tools> and </tools>:\n<tools>\n{listed}\n</tools>\n\n"
        "To call a function, write one JSON object with its name and its arguments between "
        f"{TOOL_CALL_OPEN} and {TOOL_CALL_CLOSE}, one call per block:\n"
        f'{TOOL_CALL_OPEN}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n'
        f"{TOOL_CALL_CLOSE}\n"
        f"Function results come back to you between {TOOL_RESPONSE_OPEN} and {TOOL_RESPONSE_CLOSE}."
    )


def decoded_arguments(arguments: Any) -> Any:
    """A call's arguments as templates expect them: the mapping, when the JSON text decodes to one."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def for_tool_template(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a template that supports tools: call arguments decoded, a missing content empty."""
    shaped = []
    for message in messages:
        turn = dict(message)
        if turn.get("content") is None:
            turn["content"] = ""
        if turn.get("tool_calls"):
            turn["tool_calls"] = [
                {
                    **call,
                    "function": {
                        **call["function"],
                        "arguments": decoded_arguments(call["function"].get("arguments")),
                    },
                }
                for call in turn["tool_calls"]
            ]
        shaped.append(turn)
    return shaped


def in_hermes_form(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """The conversation as plain system/user/assistant turns for a template without tool support."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content")
        if role == "tool":
            result = f"{TOOL_RESPONSE_OPEN}\n{_text(content)}\n{TOOL_RESPONSE_CLOSE}"
            if turns and turns[-1].get("role") == "user" and turns[-1].get("tool_results"):
                turns[-1]["content"] += "\n" + result
            else:
                turns.append({"role": "user", "content": result, "tool_results": True})
            continue
        turn = {key: value for key, value in message.items() if key not in ("tool_calls", "tool_call_id")}
        calls = [_call_block(call) for call in message.get("tool_calls") or []]
        turn["content"] = "\n".join([part for part in [_text(content)] if part] + calls)
        turns.append(turn)
    for turn in turns:
        turn.pop("tool_results", None)
    if tools:
        prompt = tool_system_prompt(tools)
        if turns and turns[0].get("role") == "system":
            turns[0]["content"] = f"{turns[0]['content']}\n\n{prompt}" if turns[0]["content"] else prompt
        else:
            turns.insert(0, {"role": "system", "content": prompt})
    return turns


def has_tool_turns(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def _call_block(call: Mapping[str, Any]) -> str:
    function = call.get("function", {})
    payload = {"name": function.get("name"), "arguments": decoded_arguments(function.get("arguments"))}
    return f"{TOOL_CALL_OPEN}\n{json.dumps(payload, ensure_ascii=False)}\n{TOOL_CALL_CLOSE}"


def _text(content: Any) -> str:
    return "" if content is None else str(content)
