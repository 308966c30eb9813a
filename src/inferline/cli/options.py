"""What every command group shares: options filled from a config model, and the small value parsers.

A config model (pydantic, or a dataclass) owns each setting's default; an option that fills one has the
default None, so a value the user did not give never reaches the model and the model's default holds.
`--help` reads that default from the model rather than retyping it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from inferline.errors import InferlineError, InvalidRequestError

Owner = type[Any]
"""A pydantic model or a dataclass whose fields the options fill."""


def field_default(owner: Owner, name: str) -> Any:
    """The default `owner` gives field `name`; dataclasses.MISSING where it has none."""
    if issubclass(owner, BaseModel):
        info = owner.model_fields[name]
        return dataclasses.MISSING if info.is_required() else info.get_default(call_default_factory=True)
    found = {f.name: f for f in dataclasses.fields(owner)}[name]
    if found.default_factory is not dataclasses.MISSING:
        return found.default_factory()
    return found.default


def add_field(
    parser: argparse.ArgumentParser,
    owner: Owner,
    name: str,
    *flags: str,
    help: str | None = None,
    **kwargs: Any,
) -> None:
    """An option that sets `owner.name` only when given: `--name-with-dashes` unless `flags` are given,
    help from the field's description (or `help`) with the model's default, choices from a Literal."""
    annotation = owner.model_fields[name].annotation if issubclass(owner, BaseModel) else None
    if get_origin(annotation) is Literal and "action" not in kwargs:
        kwargs.setdefault("choices", get_args(annotation))
    text = help if help is not None else _description(owner, name)
    default = field_default(owner, name)
    if not (default is None or default is dataclasses.MISSING or isinstance(default, bool) or default == []):
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text = f"{text} (default {shown})"
    if flags and kwargs.get("action") in (None, "append"):
        kwargs.setdefault("metavar", flags[0].lstrip("-").replace("-", "_").upper())
    parser.add_argument(
        *(flags or ("--" + name.replace("_", "-"),)), dest=name, default=None, help=text, **kwargs
    )


def _description(owner: Owner, name: str) -> str:
    description = owner.model_fields[name].description if issubclass(owner, BaseModel) else None
    if description is None:
        raise TypeError(f"{owner.__name__}.{name} has no description: pass help= to add_field")
    return description.rstrip(".")


def given(args: argparse.Namespace, owner: Owner) -> dict[str, Any]:
    """The fields of `owner` the command line set (their options' dests are the field names)."""
    names = (
        owner.model_fields if issubclass(owner, BaseModel) else {f.name for f in dataclasses.fields(owner)}
    )
    return {name: value for name in names if (value := getattr(args, name, None)) is not None}


def build_model(
    cls: type[BaseModel], values: Mapping[str, Any], option_names: Mapping[str, str] | None = None
) -> Any:
    """Validate the given values; a bad one is an error naming its option, never a traceback."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as error:
        first = error.errors()[0]
        field_name = str(first["loc"][0]) if first["loc"] else "options"
        option = (option_names or {}).get(field_name, "--" + field_name.replace("_", "-"))
        raise InvalidRequestError(f"{option}: {first['msg']}", field_name) from None


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """`1,4,16` → [1, 4, 16], for options that take several values at once."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers like 1,4,16: {error}"
            ) from None

    return parse


def key_values(pairs: list[str], option: str, example: str) -> dict[str, str]:
    """`["ring=canary", "site=lab"]` as a dict; an InferlineError names the malformed pair and the option."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise InferlineError(f"{option}: {pair!r} is not KEY=VALUE; write e.g. {option} {example}")
        parsed[key] = value
    return parsed


LOCAL_RAY = "local"
"""`--ray` without an address: start a Ray instance on this machine."""


def add_ray_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--ray [ADDRESS] and --ray-num-cpus, the same for every command that can run on Ray."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        default=None,
        metavar="ADDRESS",
        help=f"{what}: 'auto' joins this machine's cluster, an address (host:6379, ray://host:10001) a "
        "remote one; without a value a Ray instance starts here",
    )
    parser.add_argument(
        "--ray-num-cpus",
        type=int,
        default=None,
        help="cores of the Ray instance started here (--ray without an address); all by default",
    )
