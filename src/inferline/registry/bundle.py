"""Model bundles: a versioned folder of weights, tokenizer and config, described by `inferline-bundle.json`.

Design note: a bundle is a plain folder so that every tool (cp, rsync, TUF targets) can move it, and the
signature covers every file in it (registry/signing.py). The metadata sits beside the weights rather than
in a database so that a bundle copied to an edge node still says what it is. The signature file sits inside
the folder too and is the one file the signed manifest leaves out.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferline.errors import InferlineError

METADATA_FILE = "inferline-bundle.json"
SIGNATURE_FILE = "inferline-bundle.sig"

# Names and versions become folder names and the `N:V` syntax of the CLI: no separators, no dot-files.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"

BundleName = Annotated[str, Field(pattern=NAME_PATTERN, description="model name, e.g. 'support-bot'")]
BundleVersion = Annotated[str, Field(pattern=VERSION_PATTERN, description="version, e.g. '1.2.0'")]


class BundleError(InferlineError):
    """A bundle's folder or metadata is missing or malformed."""


class BundleMetadata(BaseModel):
    """The contents of `inferline-bundle.json`."""

    model_config = ConfigDict(extra="forbid")

    name: BundleName
    version: BundleVersion
    parent_version: BundleVersion | None = Field(
        default=None, description="the version this one was derived from (fine-tuned, re-quantised)"
    )
    scores: dict[str, float] = Field(
        default_factory=dict, description="evaluation scores by metric name, e.g. {'mmlu': 0.41}"
    )
    created_at: datetime = Field(
        default_factory=lambda: datetime.now(UTC), description="when the bundle was built (UTC)"
    )


@dataclass(frozen=True)
class Bundle:
    """A bundle folder and its parsed metadata."""

    path: Path
    metadata: BundleMetadata


def read_bundle(path: Path) -> Bundle:
    """The bundle at `path`, with its metadata checked; BundleError names the file, field and fix."""
    metadata_path = path / METADATA_FILE
    if not path.is_dir():
        raise BundleError(
            f"{path} is not a bundle folder: build one with `inferline registry push MODEL ...`"
        )
    if not metadata_path.is_file():
        raise BundleError(
            f"{path} has no {METADATA_FILE}: it is a model folder, not a bundle; "
            "`inferline registry push` builds the bundle from it"
        )
    try:
        raw = json.loads(metadata_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{metadata_path} is not readable JSON ({error}): rewrite or rebuild it") from None
    return Bundle(path, validate_metadata(raw, f"{metadata_path} is not valid bundle metadata"))


def validate_metadata(raw: object, context: str) -> BundleMetadata:
    """`raw` as BundleMetadata; a BundleError starting with `context` names every wrong field."""
    try:
        return BundleMetadata.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: {item['msg']}"
            for item in error.errors()
        )
        raise BundleError(f"{context}: {problems}") from None


def write_metadata(path: Path, metadata: BundleMetadata) -> None:
    (path / METADATA_FILE).write_text(metadata.model_dump_json(indent=2) + "\n")


def build_bundle(source: Path, out: Path, metadata: BundleMetadata) -> Bundle:
    """Copy a model folder or a single GGUF file into the new folder `out` and describe it with `metadata`.

    A previous signature in `source` is left behind: the new bundle is signed afresh by its pusher.
    """
    if out.exists():
        raise BundleError(f"{out} already exists: pick another output folder or remove it")
    if source.is_dir():
        shutil.copytree(source, out, ignore=shutil.ignore_patterns(SIGNATURE_FILE, METADATA_FILE))
    elif source.is_file() and source.suffix == ".gguf":
        out.mkdir(parents=True)
        shutil.copy2(source, out / source.name)
    elif source.exists():
        raise BundleError(f"{source} is neither a model folder nor a .gguf file: point at one of those")
    else:
        raise BundleError(f"{source} does not exist: check the path of the model to bundle")
    write_metadata(out, metadata)
    return Bundle(out, metadata)
