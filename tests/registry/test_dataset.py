"""The registry's telemetry dataset: uploads through the registry server, and `inferline registry dataset
export` to JSONL and Parquet with the model version that produced each record."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from inferline.cli import main
from inferline.registry.dataset import Dataset, parse_batch
from inferline.registry.tuf_repo import TufRepository
from inferline.registry.tuf_serve import RepositoryServer, start_repository_server

NOW = time.time()


def _batch(device_id: str, seqs: range, version: str, model: str = "classifier", age_s: float = 60) -> bytes:
    records = [
        {
            "seq": seq,
            "kind": "flagged" if seq % 3 == 0 else "usage",
            "model": model,
            "model_version": version,
            "ts": NOW - age_s + seq,
            "confidence": seq / 100,
        }
        for seq in seqs
    ]
    return json.dumps({"device_id": device_id, "num_dropped": 0, "records": records}).encode()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'registry.db'}"


@pytest.fixture
def registry(tmp_path: Path, db_url: str) -> Iterator[RepositoryServer]:
    repo = TufRepository.create(tmp_path / "repo", tmp_path / "keys", num_root_keys=1, root_threshold=1)
    with Dataset(db_url) as dataset:
        server = start_repository_server(repo.repo_dir, dataset=dataset)
        yield server
        server.close()


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"{url}/v1/telemetry", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_uploads_are_acknowledged_and_a_resent_batch_is_stored_once(registry: RepositoryServer) -> None:
    assert _post(registry.url, _batch("cam-1", range(4), "1.0.0")) == (
        200,
        {"num_stored": 4, "num_duplicates": 0},
    )
    assert _post(registry.url, _batch("cam-1", range(2, 6), "1.0.0")) == (
        200,
        {"num_stored": 2, "num_duplicates": 2},
    )
    # The same sequence numbers from another device are other records.
    assert _post(registry.url, _batch("cam-2", range(4), "1.0.0")) == (
        200,
        {"num_stored": 4, "num_duplicates": 0},
    )


def test_a_malformed_upload_is_refused_with_the_field_to_fix(registry: RepositoryServer) -> None:
    body = json.loads(_batch("cam-1", range(2), "1.0.0"))
    del body["records"][1]["model_version"]
    status, answer = _post(registry.url, json.dumps(body).encode())
    assert status == 400
    assert "records.1.model_version" in answer["error"]
    status, answer = _post(registry.url, b"not json")
    assert status == 400
    assert "telemetry upload rejected" in answer["error"]


def _fill(db_url: str) -> None:
    with Dataset(db_url) as dataset:
        dataset.store(parse_batch(_batch("cam-1", range(5), "1.0.0")))
        dataset.store(parse_batch(_batch("cam-1", range(5, 9), "1.1.0")))
        dataset.store(parse_batch(_batch("cam-2", range(3), "1.1.0")))
        dataset.store(parse_batch(_batch("cam-2", range(3, 5), "0.9.0", model="detector", age_s=30 * 86400)))


def _expected(model: str | None = None) -> list[tuple[str, int, str, str]]:
    rows = [("cam-1", s, "classifier", "1.0.0") for s in range(5)]
    rows += [("cam-1", s, "classifier", "1.1.0") for s in range(5, 9)]
    rows += [("cam-2", s, "classifier", "1.1.0") for s in range(3)]
    rows += [("cam-2", s, "detector", "0.9.0") for s in range(3, 5)]
    return sorted(r for r in rows if model is None or r[2] == model)


def test_export_jsonl_has_every_record_with_its_model_version(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(db_url)
    out = tmp_path / "exports" / "all.jsonl"
    assert main(["registry", "dataset", "export", "--database-url", db_url, "--out", str(out)]) == 0
    assert "wrote 14 record(s)" in capsys.readouterr().out
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["device_id"], r["seq"], r["model"], r["model_version"]) for r in lines) == _expected()
    flagged = next(r for r in lines if r["device_id"] == "cam-1" and r["seq"] == 6)
    assert (flagged["kind"], flagged["payload"]) == ("flagged", {"confidence": 0.06})

    # --model and --since filter: the detector's records are a month old.
    args = ["registry", "dataset", "export", "--database-url", db_url, "--out", str(out), "--since", "7d"]
    assert main(args) == 0
    recent = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["model"] for r in recent} == {"classifier"}
    assert main([*args[:-2], "--model", "detector"]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_export_parquet_has_every_record_with_its_model_version(tmp_path: Path, db_url: str) -> None:
    _fill(db_url)
    out = tmp_path / "all.parquet"
    args = [
        "registry",
        "dataset",
        "export",
        "--database-url",
        db_url,
        "--format",
        "parquet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    table = pq.read_table(out).to_pylist()
    assert sorted((r["device_id"], r["seq"], r["model"], r["model_version"]) for r in table) == _expected()
    assert {json.loads(r["payload"])["confidence"] for r in table if r["device_id"] == "cam-2"} == {
        0.0,
        0.01,
        0.02,
        0.03,
        0.04,
    }


def test_export_names_a_wrong_since(tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "registry",
        "dataset",
        "export",
        "--database-url",
        db_url,
        "--out",
        str(tmp_path / "x"),
        "--since",
        "soon",
    ]
    assert main(args) != 0
    assert "since='soon'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _post_when_listening(url: str, body: bytes) -> int:
    """The command prints its address just before it binds the port: retry a refused connection briefly."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return _post(url, body)[0]
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_registry_serve_takes_uploads_into_its_database(tmp_path: Path, db_url: str) -> None:
    repo = TufRepository.create(tmp_path / "repo", tmp_path / "keys", num_root_keys=1, root_threshold=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "inferline.cli", "registry", "serve", "--repo", str(repo.repo_dir)]
    command += ["--database-url", db_url, "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as server:
        try:
            assert server.stdout is not None
            assert "/v1/telemetry" in server.stdout.readline()
            assert _post_when_listening(f"http://127.0.0.1:{port}", _batch("cam-9", range(3), "2.0.0")) == 200
        finally:
            server.terminate()
            server.wait(timeout=10)
    out = tmp_path / "served.jsonl"
    assert main(["registry", "dataset", "export", "--database-url", db_url, "--out", str(out)]) == 0
    assert [json.loads(line)["model_version"] for line in out.read_text().splitlines()] == ["2.0.0"] * 3
