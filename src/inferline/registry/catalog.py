"""The registry's catalog: which versions of which models exist, where their bundles are, and the aliases
(`prod`, `canary`, ...) that point at them.

Design note: bundles are copied under `$INFERLINE_HOME/registry/<name>/<version>/` and described by rows in
the same database as usage (SQLite by default, PostgreSQL by URL), in tables of our own. A push verifies the
signature before and after the copy, and the copy lands under a temporary name and is renamed into place, so
a half-copied or altered bundle is never visible under its version. Every promotion is appended to the
alias's history; a rollback drops the newest entry and points the alias at the one before, so repeated
rollbacks walk back through the versions the alias served.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Double,
    Engine,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from inferline.db import create_schema, database_url, describe_error, display_url, open_engine
from inferline.errors import InferlineError
from inferline.models.store import inferline_home
from inferline.registry.bundle import VERSION_PATTERN, read_bundle
from inferline.registry.signing import signature_sha256, verify_bundle

REGISTRY_DIR = "registry"

metadata = MetaData()

registry_versions = Table(
    "registry_versions",
    metadata,
    Column("name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("parent_version", String(64), nullable=True),
    Column("created_at", Double, nullable=False),
    Column("pushed_at", Double, nullable=False),
    Column("path", Text, nullable=False),
    Column("signature_sha256", String(64), nullable=False),
    Column("scores", Text, nullable=False),
    PrimaryKeyConstraint("name", "version"),
)

registry_aliases = Table(
    "registry_aliases",
    metadata,
    Column("name", String(128), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("updated_at", Double, nullable=False),
    PrimaryKeyConstraint("name", "alias"),
)

registry_alias_history = Table(
    "registry_alias_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("moved_at", Double, nullable=False),
)


class RegistryError(InferlineError):
    """A catalog operation cannot be done: unknown version or alias, duplicate version, bad database."""


@dataclass(frozen=True)
class VersionRecord:
    """One pushed version (a row of `inferline registry list`)."""

    name: str
    version: str
    parent_version: str | None
    created_at: float
    """When the bundle was built, Unix seconds."""
    pushed_at: float
    path: Path
    """The bundle's folder in the registry."""
    signature_sha256: str
    scores: dict[str, float]


@dataclass(frozen=True)
class AliasRecord:
    """Where one alias points, and the versions it pointed at before (oldest first)."""

    name: str
    alias: str
    version: str
    updated_at: float
    previous_versions: tuple[str, ...]


def open_catalog(configured_url: str | None = None) -> Catalog:
    """The catalog in the usage database (`configured_url`, else inferline.db) with bundles under
    `$INFERLINE_HOME/registry`."""
    home = inferline_home()
    return Catalog(database_url(configured_url, home), home / REGISTRY_DIR)


class Catalog:
    """Versions and aliases in the database `url`, bundles under `root` (`$INFERLINE_HOME/registry`)."""

    def __init__(self, url: str, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._engine: Engine = open_engine(url, "--database-url")
        self.url = display_url(self._engine.url)
        """The database's URL with any password hidden."""
        try:
            create_schema(self._engine, metadata)
        except (SQLAlchemyError, OSError) as error:
            raise RegistryError(
                f"cannot open the registry database {self.url} ({describe_error(error, self._engine.url)}): "
                "check --database-url"
            ) from None

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def push(self, bundle_path: Path, public_key: Path) -> VersionRecord:
        """Verify the signed bundle against `public_key` and store it as a new version."""
        verify_bundle(bundle_path, public_key)
        meta = read_bundle(bundle_path).metadata
        name, version = meta.name, meta.version
        if self.find(name, version) is not None:
            raise RegistryError(f"{name}:{version} is already in the registry: push under a new --version")
        if meta.parent_version is not None and self.find(name, meta.parent_version) is None:
            raise RegistryError(
                f"the parent version {name}:{meta.parent_version} of {name}:{version} is not in the "
                "registry: push the parent first, or drop --parent"
            )
        final = self.root / name / version
        if final.exists():
            raise RegistryError(f"{final} exists but is not in the catalog: remove the folder and push again")
        incoming = self.root / name / f".incoming-{version}-{uuid.uuid4().hex}"
        shutil.copytree(bundle_path, incoming)
        try:
            verify_bundle(incoming, public_key)  # the source could have changed while it was copied
            incoming.rename(final)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        record = VersionRecord(
            name=name,
            version=version,
            parent_version=meta.parent_version,
            created_at=meta.created_at.timestamp(),
            pushed_at=time.time(),
            path=final,
            signature_sha256=signature_sha256(final),
            scores=dict(meta.scores),
        )
        try:
            with self._engine.begin() as connection:
                connection.execute(insert(registry_versions).values(**_version_row(record)))
        except IntegrityError:
            shutil.rmtree(final, ignore_errors=True)
            raise RegistryError(
                f"{name}:{version} was pushed by someone else meanwhile: push under a new --version"
            ) from None
        return record

    def find(self, name: str, version: str) -> VersionRecord | None:
        query = select(registry_versions).where(
            registry_versions.c.name == name, registry_versions.c.version == version
        )
        with self._engine.connect() as connection:
            row = connection.execute(query).mappings().first()
        return None if row is None else _version_record(row)

    def versions(self, name: str | None = None) -> list[VersionRecord]:
        """Every version (of `name`, if given), by name then push time."""
        query = select(registry_versions).order_by(registry_versions.c.name, registry_versions.c.pushed_at)
        if name is not None:
            query = query.where(registry_versions.c.name == name)
        with self._engine.connect() as connection:
            return [_version_record(row) for row in connection.execute(query).mappings()]

    def set_scores(self, name: str, ref: str, scores: dict[str, float]) -> VersionRecord:
        """Merge evaluation `scores` into those of version (or alias) `ref` of `name`: the catalog's
        scores are what rollouts compare (the bundle's own file keeps the scores it was pushed with,
        since the signature covers it)."""
        record = self.resolve(name, ref)
        merged = {**record.scores, **scores}
        with self._engine.begin() as connection:
            connection.execute(
                update(registry_versions)
                .where(registry_versions.c.name == name, registry_versions.c.version == record.version)
                .values(scores=json.dumps(merged, sort_keys=True))
            )
        return self.resolve(name, record.version)

    def resolve(self, name: str, ref: str) -> VersionRecord:
        """The version `ref` of `name`, where `ref` is a version or an alias (a version wins a tie)."""
        record = self.find(name, ref)
        if record is None:
            alias = self.alias(name, ref)
            record = None if alias is None else self.find(name, alias.version)
        if record is None:
            known = ", ".join(v.version for v in self.versions(name)) or "none"
            raise RegistryError(f"{name} has no version or alias {ref!r} (versions: {known}): check the name")
        return record

    def alias(self, name: str, alias: str) -> AliasRecord | None:
        with self._engine.connect() as connection:
            row = connection.execute(
                select(registry_aliases).where(
                    registry_aliases.c.name == name, registry_aliases.c.alias == alias
                )
            ).first()
            if row is None:
                return None
            history = connection.execute(
                select(registry_alias_history.c.version)
                .where(registry_alias_history.c.name == name, registry_alias_history.c.alias == alias)
                .order_by(registry_alias_history.c.id)
            ).scalars()
            earlier = tuple(history)[:-1]
        return AliasRecord(name, alias, row.version, row.updated_at, earlier)

    def aliases(self, name: str) -> list[AliasRecord]:
        query = select(registry_aliases.c.alias).where(registry_aliases.c.name == name)
        with self._engine.connect() as connection:
            names = sorted(connection.execute(query).scalars())
        return [record for alias in names if (record := self.alias(name, alias)) is not None]

    def promote(self, name: str, version: str, alias: str) -> AliasRecord:
        """Point `alias` of `name` at `version`, remembering where it pointed before."""
        if re.fullmatch(VERSION_PATTERN, alias) is None:
            raise RegistryError(f"alias {alias!r} must be letters, digits, '.', '_', '+' or '-', like 'prod'")
        if self.find(name, version) is None:
            raise RegistryError(f"{name}:{version} is not in the registry: push it before promoting it")
        current = self.alias(name, alias)
        if current is not None and current.version == version:
            raise RegistryError(f"{name}:{alias} already points at {version}: nothing to promote")
        now = time.time()
        with self._engine.begin() as connection:
            if current is None:
                connection.execute(
                    insert(registry_aliases).values(name=name, alias=alias, version=version, updated_at=now)
                )
            else:
                connection.execute(
                    update(registry_aliases)
                    .where(registry_aliases.c.name == name, registry_aliases.c.alias == alias)
                    .values(version=version, updated_at=now)
                )
            connection.execute(
                insert(registry_alias_history).values(name=name, alias=alias, version=version, moved_at=now)
            )
        return self._alias_or_fail(name, alias)

    def rollback(self, name: str, alias: str) -> AliasRecord:
        """Point `alias` back at the version it served before its latest promotion."""
        current = self.alias(name, alias)
        if current is None:
            raise RegistryError(f"{name} has no alias {alias!r}: promote a version to it first")
        if not current.previous_versions:
            raise RegistryError(
                f"{name}:{alias} has pointed only at {current.version}: "
                "there is no earlier version to roll back to"
            )
        history = registry_alias_history.c
        with self._engine.begin() as connection:
            newest = connection.execute(
                select(history.id)
                .where(history.name == name, history.alias == alias)
                .order_by(history.id.desc())
                .limit(1)
            ).scalar_one()
            connection.execute(delete(registry_alias_history).where(history.id == newest))
            connection.execute(
                update(registry_aliases)
                .where(registry_aliases.c.name == name, registry_aliases.c.alias == alias)
                .values(version=current.previous_versions[-1], updated_at=time.time())
            )
        return self._alias_or_fail(name, alias)

    def _alias_or_fail(self, name: str, alias: str) -> AliasRecord:
        record = self.alias(name, alias)
        if record is None:
            raise RegistryError(f"{name}:{alias} vanished while it was updated: retry the command")
        return record


def _version_row(record: VersionRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "version": record.version,
        "parent_version": record.parent_version,
        "created_at": record.created_at,
        "pushed_at": record.pushed_at,
        "path": str(record.path),
        "signature_sha256": record.signature_sha256,
        "scores": json.dumps(record.scores, sort_keys=True),
    }


def _version_record(row: Any) -> VersionRecord:
    return VersionRecord(
        name=row["name"],
        version=row["version"],
        parent_version=row["parent_version"],
        created_at=row["created_at"],
        pushed_at=row["pushed_at"],
        path=Path(row["path"]),
        signature_sha256=row["signature_sha256"],
        scores=json.loads(row["scores"]),
    )
