"""Installed model versions on an edge device, and the pointer that says which one serves.

Design note: every step that a power cut could interrupt leaves the device on a version that worked.
An archive is unpacked into a hidden staging folder (`models/.staging-*`), checked against the publisher's
signature, and only then renamed to `models/<version>/`; a rename within one file system is atomic, so a
version folder is either complete and verified or absent. Which version serves is one small JSON file,
`current.json`, replaced with `os.replace`: it names the current version and the last one that passed a
health check, so a restart always finds a version to fall back on. Leftover staging folders are removed
at start-up (`recover()`).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inferline.errors import InferlineError
from inferline.registry.bundle import read_bundle
from inferline.registry.signing import verify_bundle

POINTER_FILE = "current.json"
_STAGING_PREFIX = ".staging-"


class InstallError(InferlineError):
    """An update could not be unpacked or installed; the device keeps its current version."""


@dataclass
class InstallPointer:
    """The contents of `current.json`."""

    current: str | None = None  # the version that serves, or None before the first install
    last_good: str | None = None  # the newest version that passed a health check; kept on disk
    rejected: dict[str, str] = field(default_factory=dict)  # version -> why; never retried


def write_json_atomic(path: Path, data: object) -> None:
    """Write JSON so that readers (and a restart after a crash) see the old file or the new one."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp, indent=2)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


class Installer:
    """The `models/` folder and `current.json` under one agent home."""

    def __init__(self, home: Path, public_key: Path) -> None:
        self.home = home
        self.models_dir = home / "models"
        self.public_key = public_key
        self.models_dir.mkdir(parents=True, exist_ok=True)

    @property
    def pointer_path(self) -> Path:
        return self.home / POINTER_FILE

    def read_pointer(self) -> InstallPointer:
        if not self.pointer_path.is_file():
            return InstallPointer()
        try:
            raw = json.loads(self.pointer_path.read_text())
            return InstallPointer(
                current=raw.get("current"),
                last_good=raw.get("last_good"),
                rejected=dict(raw.get("rejected", {})),
            )
        except (OSError, ValueError, AttributeError, TypeError) as error:
            raise InstallError(
                f"{self.pointer_path} is unreadable ({error}); it is only ever replaced atomically, so this"
                " means outside damage: delete it and the agent installs the registry's newest version again"
            ) from None

    def write_pointer(self, pointer: InstallPointer) -> None:
        write_json_atomic(self.pointer_path, asdict(pointer))

    def recover(self) -> list[str]:
        """Remove staging folders a crash left behind; returns their names."""
        leftovers = sorted(p for p in self.models_dir.iterdir() if p.name.startswith(_STAGING_PREFIX))
        for path in leftovers:
            shutil.rmtree(path)
        return [path.name for path in leftovers]

    def version_dir(self, version: str) -> Path:
        return self.models_dir / version

    def is_installed(self, version: str) -> bool:
        return self.version_dir(version).is_dir()

    def unpack(self, archive: Path, version: str) -> Path:
        """Unpack a TUF-verified archive, check its bundle signature, and move it to `models/<version>/`.

        Raises InstallError or the signature's BundleVerificationError; on any error nothing is installed.
        """
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{version}-", dir=self.models_dir))
        try:
            with tarfile.open(archive) as tar:
                # The "data" filter refuses absolute paths, links out of the folder and device files.
                tar.extractall(staging, filter="data")
            bundle = read_bundle(staging)
            if bundle.metadata.version != version:
                raise InstallError(
                    f"archive {archive.name} holds version {bundle.metadata.version}, not {version}: the"
                    " registry published it under the wrong version; re-publish it"
                )
            verify_bundle(staging, self.public_key)
            target = self.version_dir(version)
            if target.exists():  # an earlier copy that failed its health check: replace it
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def model_file(self, version: str) -> Path:
        """What the engine loads of an installed version: its one GGUF file, or the folder itself when it
        is a Hugging Face model folder (config.json and safetensors, as `inferline finetune` writes)."""
        folder = self.version_dir(version)
        found = sorted(folder.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if not found and (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return folder
        raise InstallError(
            f"{folder} holds {len(found)} .gguf files and is no model folder; an edge bundle holds exactly "
            "one GGUF file, or config.json with safetensors: re-push the model as one of those"
        )

    def remove(self, version: str) -> None:
        shutil.rmtree(self.version_dir(version), ignore_errors=True)
