"""Conversations with tools through small chat templates in the conventions of SmolLM2 (no tool
support: the Hermes fallback), Llama 3.x and Qwen 2.5 / Hermes (their own tool rendering)."""

from __future__ import annotations

import json
from typing import Any

from inferline.models.chat_template import ChatTemplate

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{- bos_token }}{%- if tools %}<|start_header_id|>system<|end_header_id|>\n\n"
    'Call a function by answering with JSON {"name": ..., "parameters": ...}.\n'
    "{%- for t in tools %}{{ t | tojson }}\n{%- endfor %}<|eot_id|>{%- endif %}"
    "{%- for m in messages %}<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}"
    "<|end_header_id|>\n\n{% if m.tool_calls %}{%- for c in m.tool_calls %}<|python_tag|>"
    '{"name": "{{ c.function.name }}", "parameters": {{ c.function.arguments | tojson }}}'
    "{%- endfor %}{%- else %}{{ m.content }}{%- endif %}<|eot_id|>{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
)
QWEN25 = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>{%- for tool in tools %}\n{{ tool | tojson }}"
    "{%- endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{%- for m in messages %}{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}"
    "\n</tool_response><|im_end|>\n{% elif m.tool_calls %}<|im_start|>assistant\n"
    "{% for c in m.tool_calls %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
]


def test_a_template_without_tool_support_gets_the_hermes_form() -> None:
    template = ChatTemplate(SMOLLM2)
    assert not template.supports_tools
    prompt = template.render(HISTORY, tools=[WEATHER])
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\n")
    assert "You are SmolLM" not in prompt
    assert json.dumps(WEATHER["function"]) in system
    assert "<tool_call>" in system
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        in prompt
    )
    assert "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>" in prompt
    assert "<|im_start|>tool" not in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_the_fallback_joins_a_system_message_and_adjacent_tool_results() -> None:
    results = [{"role": "tool", "tool_call_id": f"call_{i}", "content": f"result {i}"} for i in range(2)]
    messages = [{"role": "system", "content": "Be brief."}, *HISTORY[:2], *results]
    prompt = ChatTemplate(SMOLLM2).render(messages, tools=[WEATHER])
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\nYou can call functions")
    assert prompt.count("<|im_start|>user\n") == 2  # the question, then both results in one turn
    assert "result 0\n</tool_response>\n<tool_response>\nresult 1" in prompt


def test_a_history_with_calls_renders_without_tools_offered() -> None:
    prompt = ChatTemplate(SMOLLM2).render(HISTORY)
    assert "<tools>" not in prompt
    assert "<tool_call>" in prompt
    assert "<tool_response>" in prompt


def test_llama3_template_gets_openai_tools_and_decoded_arguments() -> None:
    template = ChatTemplate(LLAMA3, bos_token="<|begin_of_text|>")
    assert template.supports_tools
    prompt = template.render(HISTORY, tools=[WEATHER])
    assert json.dumps(WEATHER) in prompt
    assert '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in prompt
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n18 C, sunny<|eot_id|>" in prompt
    assert "You can call functions" not in prompt  # the template's own tool prompt, not the fallback


def test_qwen25_template_renders_its_own_tool_call_blocks() -> None:
    prompt = ChatTemplate(QWEN25).render(HISTORY, tools=[WEATHER])
    assert prompt.startswith("<|im_start|>system\n# Tools\n<tools>")
    assert json.dumps(WEATHER) in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\n18 C, sunny\n</tool_response>" in prompt


def test_no_tools_leave_a_tool_template_as_before() -> None:
    messages = [{"role": "user", "content": "hi"}]
    assert ChatTemplate(QWEN25).render(messages) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
