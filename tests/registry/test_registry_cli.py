"""`inferline registry ...` end to end: keygen, push, list, show, verify, promote, rollback, refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferline.cli import main
from inferline.registry.bundle import SIGNATURE_FILE

KEY = "keys/inferline-signing.key.pem"
PUB = "keys/inferline-signing.pub.pem"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with a model and a key pair, as the current directory, and $INFERLINE_HOME inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("INFERLINE_HOME", str(tmp_path / "home"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 8}')
    (model / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    (model / "tokenizer.json").write_text("{}")
    assert main(["registry", "keygen", "--out", "keys"]) == 0
    return tmp_path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INFERLINE_HOME": str(cwd / "home")}
    return subprocess.run(
        [sys.executable, "-m", "inferline.cli", "registry", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_push_promote_verify_and_rollback_through_the_installed_command(workdir: Path) -> None:
    pushed = run_cli(
        "push", "model", "--name", "bot", "--version", "1", "--key", KEY, "--score", "acc=0.5", cwd=workdir
    )
    assert pushed.returncode == 0, pushed.stderr
    assert f"pushed bot:1 to {workdir / 'home' / 'registry' / 'bot' / '1'}" in pushed.stdout
    second = run_cli(
        "push", "model", "--name", "bot", "--version", "2", "--parent", "1", "--key", KEY, cwd=workdir
    )
    assert second.returncode == 0, second.stderr

    for version in ("1", "2"):
        assert run_cli("promote", f"bot:{version}", "--alias", "prod", cwd=workdir).returncode == 0
    shown = run_cli("show", "bot:prod", cwd=workdir)
    details = json.loads(shown.stdout)
    assert (details["version"], details["parent_version"], details["aliases"]) == ("2", "1", ["prod"])

    verified = run_cli("verify", details["path"], "--pubkey", PUB, cwd=workdir)
    assert verified.returncode == 0, verified.stderr
    assert "is bot:2, signed by" in verified.stdout

    rolled = run_cli("rollback", "bot", "--alias", "prod", cwd=workdir)
    assert rolled.stdout.strip() == "bot:prod rolled back to 1"
    assert json.loads(run_cli("show", "bot:prod", cwd=workdir).stdout)["scores"] == {"acc": 0.5}


def test_list_and_show_a_model(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for version in ("1.0", "1.1"):
        assert main(["registry", "push", "model", "--name", "bot", "--version", version, "--key", KEY]) == 0
    assert main(["registry", "promote", "bot:1.1", "--alias", "canary"]) == 0
    capsys.readouterr()

    assert main(["registry", "list"]) == 0
    listing = capsys.readouterr().out
    assert "1.0" in listing
    assert "canary" in listing
    assert main(["registry", "show", "bot"]) == 0
    overview = json.loads(capsys.readouterr().out)
    assert overview == {
        "name": "bot",
        "versions": ["1.0", "1.1"],
        "aliases": {"canary": {"version": "1.1", "previous": []}},
    }


def test_database_url_keeps_the_catalog_in_another_database(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{workdir / 'elsewhere.db'}"
    push = [
        "registry",
        "push",
        "model",
        "--name",
        "bot",
        "--version",
        "1",
        "--key",
        KEY,
        "--database-url",
        url,
    ]
    assert main(push) == 0
    capsys.readouterr()
    assert main(["registry", "show", "bot", "--database-url", url]) == 0
    assert json.loads(capsys.readouterr().out)["versions"] == ["1"]
    assert "no model 'bot' in the registry" in refused(["registry", "show", "bot"], capsys)


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_tampered_and_wrongly_keyed_bundles_fail_verify_with_a_fix(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["registry", "push", "model", "--name", "bot", "--version", "1", "--key", KEY]) == 0
    stored = workdir / "home" / "registry" / "bot" / "1"
    assert main(["registry", "keygen", "--out", "other"]) == 0

    error = refused(
        ["registry", "verify", str(stored), "--pubkey", "other/inferline-signing.pub.pem"], capsys
    )
    assert "was not signed by the key whose public half was given" in error

    weights = stored / "model.safetensors"
    weights.write_bytes(b"\xff" + weights.read_bytes()[1:])  # the first byte was 0x00
    error = refused(["registry", "verify", str(stored), "--pubkey", PUB], capsys)
    assert "changed since signing: model.safetensors" in error

    (stored / SIGNATURE_FILE).unlink()
    assert "has no signature" in refused(["registry", "verify", str(stored), "--pubkey", PUB], capsys)


def test_refusals_exit_2_with_actionable_messages(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    push = ["registry", "push", "model", "--name", "bot", "--key", KEY]
    assert main([*push, "--version", "1"]) == 0
    assert "already in the registry: push under a new --version" in refused([*push, "--version", "1"], capsys)
    assert "parent version bot:7" in refused([*push, "--version", "2", "--parent", "7"], capsys)
    assert "is not an unencrypted PEM private key" in refused(
        ["registry", "push", "model", "--name", "bot", "--version", "3", "--key", PUB], capsys
    )
    typo = ["registry", "push", "model-typo", "--name", "bot", "--version", "4", "--key", KEY]
    assert "model-typo does not exist: check the path" in refused(typo, capsys)
    assert "write NAME:VERSION" in refused(["registry", "promote", "bot", "--alias", "prod"], capsys)
    rollback = ["registry", "rollback", "bot", "--alias", "prod"]
    assert "no alias 'prod': promote a version to it first" in refused(rollback, capsys)
    assert main(["registry", "promote", "bot:1", "--alias", "prod"]) == 0
    assert "no earlier version to roll back to" in refused(rollback, capsys)
    assert "no model 'nobody'" in refused(["registry", "show", "nobody"], capsys)
    assert "name: String should match pattern" in refused(
        ["registry", "push", "model", "--name", "Bad/Name", "--version", "1", "--key", KEY], capsys
    )


def test_publish_to_the_update_repository_and_a_device_fetches_a_verified_bundle(workdir: Path) -> None:
    import tarfile
    import time

    import httpx

    from inferline.edge.updater import EdgeUpdater
    from inferline.registry.signing import verify_bundle
    from tests.server.conftest import free_port

    assert (
        run_cli("push", "model", "--name", "bot", "--version", "1", "--key", KEY, cwd=workdir).returncode == 0
    )
    assert run_cli("promote", "bot:1", "--alias", "canary", cwd=workdir).returncode == 0
    init = run_cli("repo-init", "--repo", "repo", "--keys", "repo-keys", cwd=workdir)
    assert init.returncode == 0, init.stderr
    assert "repo/metadata/1.root.json" in init.stdout
    published = run_cli(
        "publish",
        "bot:canary",
        "--repo",
        "repo",
        "--keys",
        "repo-keys",
        "--label",
        "ring=canary",
        cwd=workdir,
    )
    assert published.returncode == 0, published.stderr
    assert "published bot/1.tar (for ring=canary)" in published.stdout
    again = run_cli("publish", "bot:1", "--repo", "repo", "--keys", "repo-keys", cwd=workdir)
    assert again.returncode == 2
    assert "already published" in again.stderr

    port = free_port()
    serve = subprocess.Popen(
        [sys.executable, "-m", "inferline.cli", "registry", "serve", "--repo", "repo", "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/metadata/1.root.json", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        root = workdir / "repo" / "metadata" / "1.root.json"
        fleet = EdgeUpdater(url, root, workdir / "device-fleet", {"ring": "fleet"})
        assert fleet.check("bot") is None  # published for the canary ring only
        canary = EdgeUpdater(url, root, workdir / "device-canary", {"ring": "canary"})
        update = canary.check("bot")
        assert update is not None
        assert (update.name, update.version, update.labels) == ("bot", "1", {"ring": "canary"})
        archive = canary.download(update)
        # The canary ring is happy: widen the same version to every device.
        widened = run_cli("relabel", "bot:1", "--repo", "repo", "--keys", "repo-keys", cwd=workdir)
        assert widened.returncode == 0, widened.stderr
        assert "bot/1.tar is now for every device" in widened.stdout
        for_fleet = fleet.check("bot")
        assert for_fleet is not None
        assert (for_fleet.version, for_fleet.labels) == ("1", {})
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    with tarfile.open(archive) as tar:
        tar.extractall(workdir / "installed", filter="data")
    bundles = [p.parent for p in (workdir / "installed").rglob(SIGNATURE_FILE)]
    assert len(bundles) == 1
    verify_bundle(bundles[0], workdir / PUB)  # the device checks the publisher's signature too
