"""The server loads registry versions only when a trusted key verifies them: a real `inferline serve` with
one good deployment and three refused ones (one changed byte, no signature, another signer)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from inferline.config import LLMDeploymentConfig, RegistryServingConfig
from inferline.registry.bundle import SIGNATURE_FILE
from inferline.registry.serving import RegistrySourceError, RegistrySources
from inferline.registry.signing import generate_key_pair
from tests.registry.conftest import (
    ServedRegistry,
    admin_get,
    chat,
    registry_deployment,
    set_version,
    start_until_loaded,
)


def tiny_model(folder: Path) -> Path:
    """A model-shaped folder: verification refuses these bundles before anything reads the weights."""
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 16)
    return folder


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))


def push_refused_versions(registry: ServedRegistry, tmp_path: Path) -> None:
    """bot:tampered (a weight byte changed after push), bot:unsigned (signature removed after push), and
    stranger:1 (signed by a key the server does not trust)."""
    model = tiny_model(tmp_path / "tiny")
    tampered = registry.push(model, "bot", "tampered", registry.private_key, registry.public_key)
    flip_one_byte(tampered / "model.gguf")
    unsigned = registry.push(model, "bot", "unsigned", registry.private_key, registry.public_key)
    (unsigned / SIGNATURE_FILE).unlink()
    other = generate_key_pair(tmp_path / "other-keys")
    registry.push(model, "stranger", "1", other.private_key, other.public_key)


def test_verified_versions_serve_and_refused_ones_say_why(
    served_registry: ServedRegistry, tmp_path: Path
) -> None:
    push_refused_versions(served_registry, tmp_path)
    config = served_registry.server_config(
        [
            registry_deployment("bot", "registry:bot:prod"),
            registry_deployment("tampered", "registry:bot:tampered"),
            registry_deployment("unsigned", "registry:bot:unsigned"),
            registry_deployment("stranger", "registry:stranger:1"),
        ]
    )
    config["on_load_failure"] = "serve_rest"  # by default a refused deployment stops the server
    server = start_until_loaded(config, tmp_path)
    try:
        states = {d["name"]: d for d in admin_get(server, "/admin/deployments")["deployments"]}
        assert (states["bot"]["state"], states["bot"]["version"]) == ("ready", "1")
        assert states["bot"]["source"].endswith("/bot/1")
        tampered = states["tampered"]["error"]
        assert states["tampered"]["state"] == "failed"
        assert "bot:tampered" in tampered
        assert "has files that changed since signing: model.gguf" in tampered
        assert "has no signature" in states["unsigned"]["error"]
        assert "was not signed by the key" in states["stranger"]["error"]
        assert str(served_registry.public_key) in states["stranger"]["error"]

        ready = httpx.get(f"{server.url}/ready", timeout=5)
        assert ready.status_code == 200  # serve_rest: the deployments that loaded take traffic
        assert "changed since signing" in ready.json()["models"]["tampered"]
        assert set(ready.json()["failed"]) == {"tampered", "unsigned", "stranger"}

        served = chat(server, "bot")
        assert served.status_code == 200, served.text
        assert served.headers["x-inferline-version"] == "1"
        refused = chat(server, "tampered")
        assert refused.status_code == 503
        assert "refuses bot:tampered" in refused.json()["error"]["message"]
    finally:
        server.stop()


def test_a_refused_swap_keeps_the_current_version_serving(
    served_registry: ServedRegistry, tmp_path: Path
) -> None:
    model = tiny_model(tmp_path / "tiny")
    bad = served_registry.push(
        model, "bot", "swap-tampered", served_registry.private_key, served_registry.public_key
    )
    flip_one_byte(bad / "model.gguf")
    server = start_until_loaded(
        served_registry.server_config([registry_deployment("bot", "registry:bot:1")]), tmp_path
    )
    try:
        refused = set_version(server, "bot", "swap-tampered")
        assert refused.status_code == 409
        message = refused.json()["error"]["message"]
        assert "changed since signing: model.gguf" in message
        assert message.endswith("version 1 keeps serving")

        unknown = set_version(server, "bot", "9")
        assert unknown.status_code == 404
        assert "bot has no version or alias '9'" in unknown.json()["error"]["message"]

        served = chat(server, "bot")
        assert served.status_code == 200, served.text
        assert served.headers["x-inferline-version"] == "1"
        (state,) = admin_get(server, "/admin/deployments")["deployments"]
        assert (state["version"], state["state"], state["draining"]) == ("1", "ready", None)
    finally:
        server.stop()


def test_a_registry_source_resolves_to_its_verified_bundle_through_the_telemetry_database(
    served_registry: ServedRegistry,
) -> None:
    """Without registry.database_url the catalog is the one telemetry.database_url names."""
    trusted = RegistryServingConfig(trusted_public_keys=[served_registry.public_key])
    sources = RegistrySources(trusted, telemetry_database_url=served_registry.database_url)
    configured = LLMDeploymentConfig(name="bot", source="registry:bot:prod")

    prepared = sources.prepare(configured)

    assert isinstance(prepared, LLMDeploymentConfig)
    assert (Path(prepared.source).parts[-2:], prepared.version) == (("bot", "1"), "1")
    assert sources.resolve(configured, "2").version == "2"
    local = LLMDeploymentConfig(name="plain", source="default")
    assert sources.prepare(local) is local


@pytest.mark.parametrize(
    ("source", "keys", "expected"),
    [
        ("registry:bot", True, "write 'registry:NAME:VERSION_OR_ALIAS'"),
        ("registry:bot:prod", False, "list the signing key's .pub.pem under registry.trusted_public_keys"),
    ],
)
def test_a_registry_source_that_cannot_be_served_says_how_to_fix_it(
    served_registry: ServedRegistry, source: str, keys: bool, expected: str
) -> None:
    config = RegistryServingConfig(trusted_public_keys=[served_registry.public_key] if keys else [])
    sources = RegistrySources(config, telemetry_database_url=served_registry.database_url)
    with pytest.raises(RegistrySourceError, match=re.escape(expected)):
        sources.prepare(LLMDeploymentConfig(name="bot", source=source))
