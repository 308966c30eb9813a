"""The catalog on SQLite: push verifies and stores, list/show read back, aliases promote and roll back."""

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferline.registry.bundle import SIGNATURE_FILE, BundleMetadata, build_bundle
from inferline.registry.catalog import Catalog, RegistryError
from inferline.registry.signing import (
    BundleVerificationError,
    KeyPair,
    generate_key_pair,
    sign_bundle,
    verify_bundle,
)


@pytest.fixture
def keys(tmp_path: Path) -> KeyPair:
    return generate_key_pair(tmp_path / "keys")


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'home' / 'inferline.db'}", tmp_path / "home" / "registry")
    yield catalog
    catalog.close()


def signed_bundle(tmp_path: Path, keys: KeyPair, version: str, parent: str | None = None) -> Path:
    source = tmp_path / f"model-{version}"
    source.mkdir()
    (source / "model.safetensors").write_bytes(version.encode() * 512)
    (source / "config.json").write_text("{}")
    metadata = BundleMetadata(name="bot", version=version, parent_version=parent, scores={"acc": 0.5})
    bundle = build_bundle(source, tmp_path / f"bundle-{version}", metadata).path
    sign_bundle(bundle, keys.private_key)
    return bundle


def test_push_stores_a_verified_copy_and_lists_it(catalog: Catalog, keys: KeyPair, tmp_path: Path) -> None:
    record = catalog.push(signed_bundle(tmp_path, keys, "1"), keys.public_key)

    assert record.path == tmp_path / "home" / "registry" / "bot" / "1"
    verify_bundle(record.path, keys.public_key)
    assert (record.path / "model.safetensors").read_bytes() == b"1" * 512
    assert len(record.signature_sha256) == 64
    assert [(v.name, v.version, v.scores) for v in catalog.versions()] == [("bot", "1", {"acc": 0.5})]
    assert catalog.find("bot", "1") == record


def test_versions_and_aliases_survive_reopening_the_database(
    catalog: Catalog, keys: KeyPair, tmp_path: Path
) -> None:
    catalog.push(signed_bundle(tmp_path, keys, "1"), keys.public_key)
    catalog.promote("bot", "1", "prod")
    reopened = Catalog(catalog.url, catalog.root)
    try:
        assert [v.version for v in reopened.versions("bot")] == ["1"]
        assert reopened.resolve("bot", "prod").version == "1"
    finally:
        reopened.close()


def test_push_refuses_a_version_that_exists(catalog: Catalog, keys: KeyPair, tmp_path: Path) -> None:
    bundle = signed_bundle(tmp_path, keys, "1")
    catalog.push(bundle, keys.public_key)
    with pytest.raises(RegistryError, match="bot:1 is already in the registry: push under a new --version"):
        catalog.push(bundle, keys.public_key)


def test_push_refuses_an_unknown_parent(catalog: Catalog, keys: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="parent version bot:0 of bot:1 is not in the registry"):
        catalog.push(signed_bundle(tmp_path, keys, "1", parent="0"), keys.public_key)
    assert catalog.versions() == []


@pytest.mark.parametrize("tamper", ["unsigned", "wrong_key", "changed"])
def test_push_refuses_bundles_that_do_not_verify_and_stores_nothing(
    catalog: Catalog, keys: KeyPair, tmp_path: Path, tamper: str
) -> None:
    bundle = signed_bundle(tmp_path, keys, "1")
    public_key = keys.public_key
    if tamper == "unsigned":
        (bundle / SIGNATURE_FILE).unlink()
    elif tamper == "wrong_key":
        public_key = generate_key_pair(tmp_path / "other").public_key
    else:
        (bundle / "config.json").write_text('{"evil": true}')

    with pytest.raises(BundleVerificationError) as caught:
        catalog.push(bundle, public_key)

    assert caught.value.reason == tamper
    assert catalog.versions() == []
    assert not (catalog.root / "bot").exists() or not any((catalog.root / "bot").iterdir())


def test_a_leftover_folder_is_not_overwritten(catalog: Catalog, keys: KeyPair, tmp_path: Path) -> None:
    shutil.copytree(signed_bundle(tmp_path, keys, "1"), catalog.root / "bot" / "1")
    with pytest.raises(RegistryError, match="exists but is not in the catalog: remove the folder"):
        catalog.push(tmp_path / "bundle-1", keys.public_key)
    assert catalog.versions() == []


def test_promote_and_rollback_walk_the_alias_history(catalog: Catalog, keys: KeyPair, tmp_path: Path) -> None:
    catalog.push(signed_bundle(tmp_path, keys, "1"), keys.public_key)
    catalog.push(signed_bundle(tmp_path, keys, "2", parent="1"), keys.public_key)
    catalog.push(signed_bundle(tmp_path, keys, "3", parent="2"), keys.public_key)

    catalog.promote("bot", "1", "prod")
    catalog.promote("bot", "2", "prod")
    catalog.promote("bot", "3", "canary")
    third = catalog.promote("bot", "3", "prod")
    assert (third.version, third.previous_versions) == ("3", ("1", "2"))
    assert catalog.resolve("bot", "prod").version == "3"
    assert [(a.alias, a.version) for a in catalog.aliases("bot")] == [("canary", "3"), ("prod", "3")]

    assert catalog.rollback("bot", "prod").version == "2"
    assert catalog.rollback("bot", "prod").version == "1"
    assert catalog.resolve("bot", "prod").version == "1"
    with pytest.raises(RegistryError, match="no earlier version to roll back to"):
        catalog.rollback("bot", "prod")
    assert catalog.resolve("bot", "canary").version == "3"  # other aliases are untouched


def test_alias_errors_say_what_to_do(catalog: Catalog, keys: KeyPair, tmp_path: Path) -> None:
    catalog.push(signed_bundle(tmp_path, keys, "1"), keys.public_key)
    with pytest.raises(RegistryError, match="bot:9 is not in the registry: push it before promoting"):
        catalog.promote("bot", "9", "prod")
    with pytest.raises(RegistryError, match="no alias 'prod': promote a version to it first"):
        catalog.rollback("bot", "prod")
    with pytest.raises(RegistryError, match="alias 'a/b' must be"):
        catalog.promote("bot", "1", "a/b")
    catalog.promote("bot", "1", "prod")
    with pytest.raises(RegistryError, match="already points at 1"):
        catalog.promote("bot", "1", "prod")
    with pytest.raises(RegistryError, match=r"no version or alias 'beta' \(versions: 1\)"):
        catalog.resolve("bot", "beta")


def test_an_unreachable_database_is_an_actionable_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(RegistryError, match="cannot open the registry database .*check --database-url"):
        Catalog(f"sqlite:///{tmp_path / 'a-file' / 'x.db'}", tmp_path / "registry")


def test_the_catalog_opens_the_database_as_metering_does(tmp_path: Path) -> None:
    """WAL mode on SQLite: the server may write while `inferline registry ...` reads the same file."""
    database = tmp_path / "registry.db"
    catalog = Catalog(f"sqlite:///{database}", tmp_path / "home" / "registry")
    catalog.close()
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
