"""`inferline serve` configuration: YAML plus command-line values, checked before anything loads."""

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from inferline.config import LLMDeploymentConfig, RemoteDeploymentConfig, ServerConfig, TenantConfig
from inferline.errors import InvalidRequestError
from inferline.server.auth import Authenticator
from inferline.server.serve import check_exposure, is_loopback, load_server_config
from inferline.types import Priority


def test_defaults_serve_the_two_default_models_on_loopback() -> None:
    config = load_server_config(None)
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    assert [(m.name, m.kind) for m in config.deployments] == [
        ("smollm2-135m-instruct", "llm"),
        ("all-minilm-l6-v2", "embedding"),
    ]
    assert config.deployments[0].aliases == ["default"]


def test_command_line_values_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("port: 9000\nhost: 127.0.0.2\napi_keys: [from-file]\n")
    config = load_server_config(str(path), port=9100, api_keys=["from-cli"])
    assert (config.host, config.port) == ("127.0.0.2", 9100)
    assert config.api_keys == ["from-file", "from-cli"]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("port: 70000\n", "port"),
        (
            "deployments:\n  - {name: x, kind: llm, source: default, max_batch_size: 0}\n",
            "deployments.0.max_batch_size",
        ),
        (
            "deployments:\n  - {name: x, kind: embedding, source: default, max_batch_size: 0}\n",
            "deployments.0.max_batch_size",
        ),
        ("deployments:\n  - {name: x, kind: speech, source: default}\n", "deployments.0.kind"),
        ("deployments:\n  - {name: x, source: default}\n", "deployments.0.kind"),
        ("on_load_failure: ignore\n", "on_load_failure"),
        ("bogus: 1\n", "bogus"),
        ("- just\n- a list\n", "config"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InvalidRequestError) as error:
        load_server_config(str(path))
    assert error.value.param == field
    assert field in str(error.value) or field == "config"


def test_exposure_needs_keys_beyond_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(InvalidRequestError, match="--api-key"):
        check_exposure(load_server_config(None, host="0.0.0.0"))
    check_exposure(load_server_config(None, host="0.0.0.0", api_keys=["k"]))


def test_keys_map_to_tenants_and_digests_work() -> None:
    digest = hashlib.sha256(b"secret-key").hexdigest()
    config = load_server_config(None, api_keys=["plain-key"])
    config.tenants = [TenantConfig(name="shop", api_keys=[f"sha256:{digest}"], priority="interactive")]
    auth = Authenticator(config)
    assert auth.tenant("Bearer plain-key").name == "default"
    assert auth.tenant("Bearer secret-key").name == "shop"
    assert auth.tenant("Bearer secret-key").priority is Priority.INTERACTIVE


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "deployments:\n  - {name: a, kind: remote, base_url: 'http://h/v1'}\nroutes:\n  - name: r\n"
            "    policy: cascade\n    deployments:\n      - a\n      - nope\n",
            "c.yaml:8: routes.0.deployments.1: deployment 'nope' is not defined",
        ),
        (
            "deployments:\n  - {name: a, kind: remote, base_url: 'http://h/v1'}\n"
            "tenants:\n  - name: t\n    api_keys: [k]\n    team: ghosts\n",
            "c.yaml:6: tenants.0.team: team 'ghosts' is not defined",
        ),
        (
            "deployments:\n  - name: a\n    kind: remote\n",
            "c.yaml:2: deployments.0.base_url: a deployment of kind remote needs base_url",
        ),
        (
            "deployments:\n  - {name: a, kind: llm, source: default}\n  - name: b\n    kind: remote\n"
            "    base_url: 'http://h/v1'\n    engine: {max_num_seqs: 4}\n",
            "c.yaml:6: deployments.1.engine: field 'engine' is not allowed in a deployment of kind remote; "
            "it is a setting of kind llm",
        ),
        (
            "deployments:\n  - name: a\n    kind: onnx\n    source: /m/a.onnx\n    base_ulr: 'http://h/v1'\n",
            "c.yaml:5: deployments.0.base_ulr: field 'base_ulr' is not allowed in a deployment of kind onnx, "
            "which takes: name, kind, aliases, version, timeout_s,",
        ),
        (
            "deployments:\n  - name: a\n    kind: llm\n    source: default\n    engine: {model: other}\n",
            "c.yaml:5: deployments.0.engine: Value error, engine.model is not read in a deployment",
        ),
        (
            "deployments:\n  - {name: a, kind: remote, base_url: 'http://h/v1'}\n"
            "routes:\n  - {name: a, deployments: [a]}\n",
            "c.yaml:4: routes.0.name: name 'a' is already used at deployments.0.name",
        ),
        (
            "deployments:\n  - {name: a, kind: remote, base_url: 'http://h/v1'}\n"
            "routes:\n  - {name: r, policy: weighted, deployments: [a]}\n",
            "c.yaml:4: routes.0.policy: a weighted route needs `weights",
        ),
    ],
)
def test_router_config_errors_name_file_line_and_field(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InvalidRequestError) as error:
        load_server_config(str(path))
    assert where in str(error.value).replace(str(tmp_path) + "/", "")


def test_each_kind_takes_only_its_own_fields() -> None:
    """Kinds build from Python as from YAML: the kind is implied, another kind's field is refused."""
    assert LLMDeploymentConfig(name="a", source="default").kind == "llm"
    with pytest.raises(ValidationError, match="source"):
        RemoteDeploymentConfig(name="r", base_url="http://h/v1", source="default")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="base_url"):
        RemoteDeploymentConfig(name="r")  # type: ignore[call-arg]


def test_every_server_config_checks_its_references_wherever_it_is_built() -> None:
    """Not only `inferline serve`: a config built in Python is checked by its own validation."""
    remote = RemoteDeploymentConfig(name="a", base_url="http://h/v1")
    with pytest.raises(ValidationError) as error:
        ServerConfig(deployments=[remote], tenants=[TenantConfig(name="t", api_keys=["k"], team="ghosts")])
    (first,) = error.value.errors()
    assert (first["loc"], first["msg"]) == (("tenants", 0, "team"), "team 'ghosts' is not defined in `teams`")
    with pytest.raises(ValidationError, match=r"routes\.0\.deployments\.0\n.*'nope' is not defined"):
        ServerConfig.model_validate(
            {"deployments": [remote], "routes": [{"name": "r", "deployments": ["nope"]}]}
        )
