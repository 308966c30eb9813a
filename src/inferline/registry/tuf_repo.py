"""The publisher side of over-the-air updates: a TUF repository of model bundle archives.

Design note: edge devices trust only a root.json shipped to them; everything else is proven by The Update
Framework's four roles. Root (threshold-signed by several offline keys) names the keys of the other roles;
targets lists every bundle archive with its length, SHA-256 and our custom metadata (name, version,
labels); snapshot pins the targets version so a mirror cannot mix files of different releases; timestamp
pins the snapshot and expires soon, so a mirror that freezes the repository is noticed within a day.
Consistent snapshots (`N.targets.json`, `<sha256>.<file>`) let clients read while a publish is under way.

Layout: `repo_dir/metadata/` and `repo_dir/targets/` are what gets served; `keys_dir/` holds the private
keys (PKCS#8 PEM, mode 0600) and must stay with the publisher.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from cryptography.hazmat.primitives import serialization
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from inferline.errors import InferlineError

TOP_LEVEL_ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
# Names and versions become URL path segments on every mirror: keep them to a portable alphabet.
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SignedT = TypeVar("_SignedT", Root, Targets, Snapshot, Timestamp)


class TufRepositoryError(InferlineError):
    """The update repository or its keys are missing, inconsistent, or asked to do something unsafe."""


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata stays valid after it is signed."""

    root_s: int = 365 * 86400  # root is signed rarely, by offline keys
    targets_s: int = 90 * 86400  # re-signed on every publish
    snapshot_s: int = 7 * 86400
    timestamp_s: int = 86400  # a frozen mirror is detected within this window; refresh it more often

    def __post_init__(self) -> None:
        for field, value in vars(self).items():
            if value < 1:
                raise TufRepositoryError(f"ExpiryPolicy.{field} is {value}; it must be at least 1 second")

    def expires(self, role: str) -> datetime:
        seconds: int = getattr(self, f"{role}_s")
        return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)


def make_bundle_archive(bundle_dir: Path, archive_path: Path) -> Path:
    """Tar a bundle folder reproducibly (sorted names, zeroed owners and times): the same bundle always
    gives the same bytes, hence the same hash and target file name."""

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    if not bundle_dir.is_dir():
        raise TufRepositoryError(f"bundle folder {bundle_dir} does not exist; pass the folder to archive")
    with tarfile.open(archive_path, "w") as tar:
        for path in sorted(bundle_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(bundle_dir).as_posix(), recursive=False, filter=normalize)
    return archive_path


def target_path_for(name: str, version: str) -> str:
    """The TUF target path of a model version: `<name>/<version>.tar`."""
    for field, value in (("name", name), ("version", version)):
        if not _SEGMENT.fullmatch(value):
            raise TufRepositoryError(
                f"model {field} {value!r} cannot be a target path segment; use letters, digits, '.', '_',"
                " '+' and '-', starting with a letter or digit"
            )
    return f"{name}/{version}.tar"


def _write_atomic(path: Path, data: bytes) -> None:
    # Mirrors may serve the folder while we publish: readers see the old file or the new one, never half.
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def _write_private_key(path: Path, signer: CryptoSigner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(signer.private_bytes)


def _read_private_key(path: Path) -> CryptoSigner:
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise TufRepositoryError(
            f"key file {path} is not an unencrypted PKCS#8 PEM private key: {exc}"
        ) from exc
    return CryptoSigner(private_key)


class TufRepository:
    """A TUF repository on disk plus the publisher's signing keys. Not safe for two publishers at once."""

    def __init__(self, repo_dir: Path, keys_dir: Path, expiry: ExpiryPolicy | None = None) -> None:
        self.repo_dir = repo_dir
        self.keys_dir = keys_dir
        self.expiry = expiry or ExpiryPolicy()
        self.root = self._read_role("root.json", Root)
        # Follow the chain a client follows, so the publisher continues from what devices last saw.
        self.timestamp = self._read_role("timestamp.json", Timestamp)
        self.snapshot = self._read_role(
            f"{self.timestamp.signed.snapshot_meta.version}.snapshot.json", Snapshot
        )
        targets_version = self.snapshot.signed.meta["targets.json"].version
        self.targets = self._read_role(f"{targets_version}.targets.json", Targets)
        self._signers = {role: self._load_signers(role) for role in TOP_LEVEL_ROLES}

    @property
    def metadata_dir(self) -> Path:
        return self.repo_dir / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.repo_dir / "targets"

    @property
    def trusted_root_path(self) -> Path:
        """The root.json to ship to devices: their only trust anchor."""
        return self.metadata_dir / "1.root.json"

    @classmethod
    def create(
        cls,
        repo_dir: Path,
        keys_dir: Path,
        num_root_keys: int = 3,
        root_threshold: int = 2,
        expiry: ExpiryPolicy | None = None,
    ) -> TufRepository:
        """Generate fresh Ed25519 keys into `keys_dir` and publish version 1 of every role."""
        if not 1 <= root_threshold <= num_root_keys:
            raise TufRepositoryError(
                f"root_threshold {root_threshold} must be between 1 and num_root_keys ({num_root_keys})"
            )
        if (repo_dir / "metadata" / "root.json").exists():
            raise TufRepositoryError(
                f"{repo_dir} already holds a TUF repository; open it instead of creating"
            )
        expiry = expiry or ExpiryPolicy()
        root = Root(expires=expiry.expires(Root.type), consistent_snapshot=True)
        signers: dict[str, list[CryptoSigner]] = {}
        for role in TOP_LEVEL_ROLES:
            num_keys = num_root_keys if role == Root.type else 1
            signers[role] = [CryptoSigner.generate_ed25519() for _ in range(num_keys)]
            for index, signer in enumerate(signers[role], start=1):
                root.add_key(signer.public_key, role)
                name = f"{role}-{index}.pem" if role == Root.type else f"{role}.pem"
                _write_private_key(keys_dir / name, signer)
        root.roles[Root.type].threshold = root_threshold

        metadata_dir = repo_dir / "metadata"
        targets = Targets(expires=expiry.expires(Targets.type))
        snapshot = Snapshot(expires=expiry.expires(Snapshot.type))
        timestamp = Timestamp(expires=expiry.expires(Timestamp.type))
        for role, signed, file_name in (
            (Root.type, root, "1.root.json"),
            (Targets.type, targets, "1.targets.json"),
            (Snapshot.type, snapshot, "1.snapshot.json"),
            (Timestamp.type, timestamp, "timestamp.json"),
        ):
            _write_atomic(
                metadata_dir / file_name, _sign(Metadata(signed), signers[role]).to_bytes(_SERIALIZER)
            )
        shutil.copyfile(metadata_dir / "1.root.json", metadata_dir / "root.json")
        (repo_dir / "targets").mkdir(parents=True, exist_ok=True)
        return cls(repo_dir, keys_dir, expiry)

    def add_target(
        self, name: str, version: str, archive_path: Path, labels: Mapping[str, str] | None = None
    ) -> str:
        """Stage a bundle archive as target `<name>/<version>.tar`; `publish()` makes it visible.

        `labels` are the rollout selectors a device must carry (e.g. {"ring": "canary"}); none = every device.
        """
        path = target_path_for(name, version)
        if path in self.targets.signed.targets:
            raise TufRepositoryError(
                f"{path} is already published; versions are immutable, publish a new version instead"
            )
        custom: dict[str, Any] = {"name": name, "version": version, "labels": dict(labels or {})}
        target = TargetFile.from_file(path, str(archive_path), ["sha256"])
        target.unrecognized_fields["custom"] = custom
        stored = self.targets_dir / name / f"{target.hashes['sha256']}.{version}.tar"
        stored.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archive_path, stored)
        self.targets.signed.targets[path] = target
        return path

    def relabel(self, name: str, version: str, labels: Mapping[str, str] | None = None) -> str:
        """Change which devices a published version is for (the next ring: e.g. {"ring": "canary"} first,
        then {} for every device); its file and hashes stay as signed. `publish()` makes it visible."""
        path = target_path_for(name, version)
        target = self.targets.signed.targets.get(path)
        if target is None:
            raise TufRepositoryError(
                f"{path} is not published: publish the version before widening its rings"
            )
        target.unrecognized_fields["custom"] = {
            "name": name,
            "version": version,
            "labels": dict(labels or {}),
        }
        return path

    def publish(self) -> None:
        """Sign and write new targets, snapshot and timestamp versions (in that order, so a client that reads
        mid-publish still finds every file the timestamp it sees points to)."""
        self.targets.signed.version += 1
        self._write_role(self.targets, f"{self.targets.signed.version}.targets.json")
        self.snapshot.signed.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        self.snapshot.signed.version += 1
        self._write_role(self.snapshot, f"{self.snapshot.signed.version}.snapshot.json")
        self.refresh_timestamp()

    def refresh_timestamp(self) -> None:
        """Re-sign the timestamp with a new expiry: run this well within `ExpiryPolicy.timestamp_s`, or every
        device refuses to update (it cannot tell an idle publisher from a frozen mirror)."""
        self.timestamp.signed.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        self.timestamp.signed.version += 1
        self._write_role(self.timestamp, "timestamp.json")

    def renew_root(self) -> None:
        """Sign a new root version (new expiry) with the root keys in `keys_dir`; needs the threshold."""
        threshold = self.root.signed.roles[Root.type].threshold
        if len(self._signers[Root.type]) < threshold:
            raise TufRepositoryError(
                f"root needs {threshold} signatures but {self.keys_dir} holds {len(self._signers[Root.type])}"
                " root key(s); bring the offline root-N.pem files to the publisher"
            )
        self.root.signed.version += 1
        self._write_role(self.root, f"{self.root.signed.version}.root.json")
        shutil.copyfile(
            self.metadata_dir / f"{self.root.signed.version}.root.json", self.metadata_dir / "root.json"
        )

    def _write_role(self, metadata: Metadata[Any], file_name: str) -> None:
        role = metadata.signed.type
        signers = self._signers[role]
        if not signers:
            raise TufRepositoryError(f"no {role} key in {self.keys_dir}; cannot sign {file_name}")
        metadata.signed.expires = self.expiry.expires(role)
        _write_atomic(self.metadata_dir / file_name, _sign(metadata, signers).to_bytes(_SERIALIZER))

    def _read_role(self, file_name: str, role_type: type[_SignedT]) -> Metadata[_SignedT]:
        path = self.repo_dir / "metadata" / file_name
        if not path.is_file():
            raise TufRepositoryError(f"{path} is missing; is {self.repo_dir} a repository made by create()?")
        metadata = Metadata.from_file(str(path))
        if not isinstance(metadata.signed, role_type):
            raise TufRepositoryError(f"{path} holds {metadata.signed.type} metadata, not {role_type.type}")
        return cast(Metadata[_SignedT], metadata)

    def _load_signers(self, role: str) -> list[CryptoSigner]:
        trusted: Role = self.root.signed.roles[role]
        signers = []
        for path in sorted(self.keys_dir.glob(f"{role}*.pem")):
            signer = _read_private_key(path)
            if signer.public_key.keyid not in trusted.keyids:
                raise TufRepositoryError(
                    f"key file {path} is not a {role} key of {self.metadata_dir / 'root.json'}; remove it or"
                    " rotate root to trust it"
                )
            signers.append(signer)
        return signers


_SERIALIZER = JSONSerializer(compact=False)


def _sign(metadata: Metadata[Any], signers: list[CryptoSigner]) -> Metadata[Any]:
    metadata.signatures.clear()
    for signer in signers:
        metadata.sign(signer, append=True)
    return metadata
