"""`inferline serve` configuration: YAML plus command-line values, checked before anything loads."""

import hashlib
from pathlib import Path

import pytest

from inferline.config import TenantConfig
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
        ("deployments:\n  - {name: x, kind: speech, source: default}\n", "deployments.0.kind"),
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
            "c.yaml:2: deployments.0: Value error, a remote deployment needs base_url",
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
