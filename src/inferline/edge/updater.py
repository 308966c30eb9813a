"""Find and download model updates from the registry's TUF repository, verified before they touch disk.

Design note: the device's only trust anchor is the root.json shipped with it. Each `check()` runs TUF's
client workflow (root rotation, timestamp, snapshot, targets) against that anchor and the metadata cached
from earlier runs, which is what lets it reject rollback (a version older than one already seen), freeze
(expired metadata), mix-and-match (files of different releases) and anything signed by an untrusted key.
TUF's exceptions are mapped to `UpdateRejectedError` with a `reason` the agent can log and report.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from packaging.version import InvalidVersion, Version
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater

from inferline.errors import InferlineError

RejectReason = Literal["rollback", "freeze", "tampered", "untrusted", "invalid"]


class UpdateRejectedError(InferlineError):
    """The registry served something that failed verification; nothing was installed. `reason` is one of
    rollback, freeze, tampered, untrusted, invalid."""

    def __init__(self, message: str, reason: RejectReason) -> None:
        super().__init__(message)
        self.reason = reason


class RegistryUnreachableError(InferlineError):
    """The registry could not be reached; the device keeps its current model and retries later."""


@dataclass(frozen=True)
class ModelUpdate:
    """A verified entry of the registry's targets metadata."""

    name: str  # model name, e.g. "classifier"
    version: str  # e.g. "1.2.0"
    labels: dict[str, str]  # rollout selectors a device must carry; empty = every device
    target: TargetFile = field(repr=False)  # TUF's length and hashes the download is checked against


def _reject(exc: Exception) -> InferlineError:
    # Order matters: DownloadLengthMismatchError is a DownloadError but means tampering, not an outage.
    cases: list[tuple[type[Exception], RejectReason, str]] = [
        (tuf_errors.DownloadLengthMismatchError, "tampered", "a file is longer than its signed length"),
        (tuf_errors.LengthOrHashMismatchError, "tampered", "a file does not match its signed hash"),
        (tuf_errors.ExpiredMetadataError, "freeze", "signed metadata has expired (frozen or stale mirror)"),
        (
            tuf_errors.BadVersionNumberError,
            "rollback",
            "metadata version is older than or not what was pinned",
        ),
        (tuf_errors.UnsignedMetadataError, "untrusted", "metadata lacks the threshold of trusted signatures"),
    ]
    for error_type, reason, summary in cases:
        if isinstance(exc, error_type):
            return UpdateRejectedError(f"update rejected ({reason}): {summary}: {exc}", reason)
    if isinstance(exc, tuf_errors.RepositoryError):
        return UpdateRejectedError(f"update rejected (invalid): {exc}", "invalid")
    return RegistryUnreachableError(f"registry unreachable, keeping the current model: {exc}")


def _labels_match(required: Mapping[str, str], device_labels: Mapping[str, str]) -> bool:
    return all(device_labels.get(key) == value for key, value in required.items())


def _version_key(version: str) -> tuple[int, Version | str]:
    # PEP 440 versions sort numerically (1.10 > 1.9); anything else sorts after them by text.
    try:
        return (0, Version(version))
    except InvalidVersion:
        return (1, version)


class EdgeUpdater:
    """One device's view of the registry. Not safe for two processes sharing one `cache_dir`."""

    def __init__(
        self,
        registry_url: str,
        trusted_root: Path,
        cache_dir: Path,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        if not trusted_root.is_file():
            raise InferlineError(
                f"trusted root {trusted_root} does not exist; ship the registry's metadata/1.root.json"
                " to the device and pass its path"
            )
        self.registry_url = registry_url.rstrip("/")
        self.trusted_root = trusted_root
        self.metadata_dir = cache_dir / "metadata"
        self.download_dir = cache_dir / "downloads"
        self.labels = dict(labels or {})
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        self.download_dir.mkdir(parents=True, exist_ok=True)

    def check(self, name: str) -> ModelUpdate | None:
        """The newest version of `name` meant for this device's labels, or None if there is none."""
        with self._verified() as updater:
            updater.refresh()
        # refresh() persisted targets.json only after verifying it, so the cached copy is trusted.
        signed = json.loads((self.metadata_dir / "targets.json").read_bytes())["signed"]
        candidates: list[tuple[str, str, dict[str, str]]] = []  # (target path, version, labels)
        for path, entry in signed["targets"].items():
            custom = entry.get("custom", {})
            labels = custom.get("labels", {})
            # Targets published by other tools may lack our custom fields; they are not model versions.
            if custom.get("name") != name or not isinstance(custom.get("version"), str):
                continue
            if _labels_match(labels, self.labels):
                candidates.append((path, custom["version"], labels))
        if not candidates:
            return None
        path, version, labels = max(candidates, key=lambda candidate: _version_key(candidate[1]))
        target = TargetFile.from_dict(dict(signed["targets"][path]), path)
        return ModelUpdate(name=name, version=version, labels=dict(labels), target=target)

    def download(self, update: ModelUpdate) -> Path:
        """Download the update's archive; the returned file has been checked against its signed hash."""
        destination = self.download_dir / update.name / f"{update.version}.tar"
        with self._verified() as updater:
            updater.refresh()
            return Path(updater.download_target(update.target, str(destination)))

    @contextmanager
    def _verified(self) -> Iterator[Updater]:
        try:
            yield Updater(
                metadata_dir=str(self.metadata_dir),
                metadata_base_url=f"{self.registry_url}/metadata/",
                target_base_url=f"{self.registry_url}/targets/",
                bootstrap=self.trusted_root.read_bytes(),
            )
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            raise _reject(exc) from exc
