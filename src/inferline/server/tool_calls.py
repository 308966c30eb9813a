"""Tool calling, API-neutral: the functions a request offers, what its tool choice asks of decoding,
and the model's answer read back as calls (tool_parser.py) and judged.

The chat API builds a `ToolCalling` from its body; the Responses API can build one from its own flatter
tool shape. `tool_choice`:
- `none`: the tools are not offered to the model (not rendered) and its answer is not parsed for calls;
  earlier calls and results in the history are still rendered.
- `auto`: the tools are offered and whatever calls the model writes are parsed.
- `required` / a named function: decoding is constrained by a JSON schema (SamplingParams.structured)
  to a call object whose `name` is an offered function's (or the named one) and whose `arguments`
  match that function's parameters; with parallel calls allowed, `required` admits an array of them
  (at most one per offered function). The answer is that JSON, parsed directly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema

from inferline.engine.guided.grammar import grammar_of
from inferline.errors import InvalidRequestError
from inferline.server.tool_parser import ToolCall, ToolCallParser, parse_tool_calls
from inferline.types import StructuredOutput

ToolChoiceMode = Literal["none", "auto", "required", "function"]
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
"""A function defined without parameters takes none."""
COMPACT_JSON = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""llguidance's options for constrained calls: JSON spaced as json.dumps spaces it. With free
whitespace a small model spends its tokens on newlines and indentation."""


@dataclass(frozen=True)
class FunctionTool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON schema of type object; None: the function takes no arguments."""
    strict: bool | None = None

    def openai(self) -> dict[str, Any]:
        """The tool as chat templates take it (OpenAI's chat form)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters if self.parameters is not None else NO_PARAMETERS
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ParsedAnswer:
    content: str | None
    """The text without the calls; None when the answer was calls only."""
    calls: list[ToolCall] = field(default_factory=list)


@dataclass(frozen=True)
class ToolCalling:
    """A request's tools and tool choice. Build it with `checked()` so a bad definition is a 400."""

    tools: list[FunctionTool]
    mode: ToolChoiceMode = "auto"
    function: str | None = None
    """The function a named choice forces."""
    parallel: bool = True

    @classmethod
    def checked(
        cls,
        tools: list[FunctionTool],
        mode: ToolChoiceMode = "auto",
        function: str | None = None,
        parallel: bool = True,
        tool_param: str = "tools[{index}].function",
    ) -> ToolCalling:
        """Validate names, parameter schemas and the choice; InvalidRequestError names the field.
        `tool_param` formats a tool's field path (the Responses API's tools are flatter)."""
        seen: set[str] = set()
        for index, tool in enumerate(tools):
            where = tool_param.format(index=index)
            if not NAME_PATTERN.match(tool.name):
                raise InvalidRequestError(
                    f"function name {tool.name!r} is invalid: use 1 to 64 letters, digits, '_' or '-'",
                    f"{where}.name",
                )
            if tool.name in seen:
                raise InvalidRequestError(
                    f"function {tool.name!r} is defined twice: give each tool a unique name", f"{where}.name"
                )
            seen.add(tool.name)
            _check_parameters(tool.parameters, f"{where}.parameters")
        if mode in ("required", "function") and not tools:
            raise InvalidRequestError(
                f"tool_choice {mode if mode == 'required' else 'naming a function'} needs tools: "
                "define the functions in 'tools'",
                "tool_choice",
            )
        if mode == "function" and function not in seen:
            raise InvalidRequestError(
                f"tool_choice names function {function!r}, which is not among the tools "
                f"({', '.join(sorted(seen))}): name one of them",
                "tool_choice",
            )
        if mode in ("required", "function"):  # the constraint must compile: say which tool's does not
            for index, tool in enumerate(tools):
                if mode == "required" or tool.name == function:
                    definitions: dict[str, Any] = {}
                    call = _constraint(_call_schema(tool, definitions), definitions)
                    grammar_of(call, f"{tool_param.format(index=index)}.parameters")
        return cls(tools, mode, function, parallel)

    @property
    def offered(self) -> bool:
        return bool(self.tools) and self.mode != "none"

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools the chat template offers the model; None when it offers none."""
        return [tool.openai() for tool in self.tools] if self.offered else None

    def structured(self) -> StructuredOutput | None:
        """The decoding constraint of `required` and named choices; None leaves decoding free."""
        definitions: dict[str, Any] = {}
        if self.mode == "function":
            schema = _call_schema(next(t for t in self.tools if t.name == self.function), definitions)
        elif self.mode == "required":
            calls = [_call_schema(tool, definitions) for tool in self.tools]
            one = calls[0] if len(calls) == 1 else {"anyOf": calls}
            # At most one call per offered function: left open, a small model repeats its call until
            # max_tokens cuts it (SmolLM2-135M does).
            many = {"type": "array", "items": one, "minItems": 1, "maxItems": len(self.tools)}
            schema = many if self.parallel else one
        else:
            return None
        return _constraint(schema, definitions)

    def parser(self) -> ToolCallParser | None:
        """An incremental parser for a streamed answer; None when calls are not parsed."""
        return ToolCallParser(self.parallel) if self.offered else None

    def parse(self, text: str) -> ParsedAnswer:
        if not self.offered:
            return ParsedAnswer(text)
        content, calls, _ = parse_tool_calls(text, self.parallel)
        return ParsedAnswer(None if calls and not content.strip() else content, calls)

    def problem(self, text: str) -> str | None:
        """Why the answer is not a valid use of the tools (for a cascade to escalate), or None."""
        if not self.offered:
            return None
        _, calls, problems = parse_tool_calls(text, self.parallel)
        if problems:
            return problems[0]
        if not calls and self.mode in ("required", "function"):
            return "no tool call, though tool_choice requires one"
        by_name = {tool.name: tool for tool in self.tools}
        for call in calls:
            tool = by_name.get(call.name)
            if tool is None or self.mode == "function" and call.name != self.function:
                return f"a tool call names function {call.name!r}, which is not offered"
            reason = _arguments_problem(tool, call.arguments)
            if reason is not None:
                return reason
        return None


def _check_parameters(parameters: dict[str, Any] | None, param: str) -> None:
    if parameters is None:
        return
    if parameters.get("type", "object") != "object":
        raise InvalidRequestError(
            f"parameters must be a JSON schema of type 'object' (the arguments are one JSON object); "
            f"got type {parameters.get('type')!r}",
            param,
        )
    try:
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as error:
        where = "/".join(str(part) for part in error.path) or "the top level"
        raise InvalidRequestError(
            f"parameters is not a valid JSON schema at {where}: {error.message}", param
        ) from None


def _arguments_problem(tool: FunctionTool, arguments: str) -> str | None:
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return f"the arguments of the call to {tool.name!r} are not valid JSON"
    schema = tool.parameters if tool.parameters is not None else NO_PARAMETERS
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(value)
    )
    if error is not None:
        return f"the arguments of the call to {tool.name!r} do not match its parameters: {error.message}"
    return None


def _constraint(schema: dict[str, Any], definitions: dict[str, Any]) -> StructuredOutput:
    extra = {"$defs": definitions} if definitions else {}
    return StructuredOutput("json_schema", json.dumps({**schema, **extra, "x-guidance": COMPACT_JSON}))


def _call_schema(tool: FunctionTool, definitions: dict[str, Any]) -> dict[str, Any]:
    """One call of `tool` as JSON: its name, then arguments matching its parameters (whose
    definitions move into `definitions`, the root's `$defs`)."""
    parameters = tool.parameters if tool.parameters is not None else NO_PARAMETERS
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": [tool.name]},
            "arguments": _relocated(parameters, tool.name, definitions),
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _relocated(node: Any, tool: str, definitions: dict[str, Any]) -> Any:
    """`node` with its `$defs` / `definitions` moved to the root as `<tool>.<name>` and its `#/$defs/...`
    references pointed there: nested inside a call, the parameters are no longer the root their
    references resolve against, and two tools' definitions must not clash."""
    if isinstance(node, list):
        return [_relocated(item, tool, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$defs", "definitions") and isinstance(value, dict):
            for name, definition in value.items():
                definitions[f"{tool}.{name}"] = _relocated(definition, tool, definitions)
        elif key == "$ref" and isinstance(value, str):
            out[key] = re.sub(r"^#/(\$defs|definitions)/", f"#/$defs/{tool}.", value)
        else:
            out[key] = _relocated(value, tool, definitions)
    return out
