"""`inferline bench` run as a user runs it: real processes, a real server (the suite's shared one, from
tests/conftest.py), files on disk."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from inferline.bench.schema import validate
from tests.server.conftest import API_KEY, ServerProcess, free_port

BIN = Path(sys.executable).with_name("inferline")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "bench", *args], capture_output=True, text=True, timeout=120, check=False
    )


def most_in_flight(requests: list[dict[str, Any]]) -> int:
    """The most requests whose [send, end] intervals overlap at any send time."""
    spans = [(r["send_offset_s"], r["send_offset_s"] + r["e2e_s"]) for r in requests]
    return max(sum(start <= s < end for start, end in spans) for s, _ in spans)


@pytest.fixture(scope="module")
def serve_run(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("run")
    done = bench(
        "serve", "--base-url", server.url, "--api-key", API_KEY, "--model", "default",
        "--concurrency", "1,4", "--num-prompts", "8", "--input-len", "16", "--output-len", "8",
        "--ignore-eos", "--warmup", "1", "--slo", "ttft=30,tpot=30",
        "--json", str(out / "run.json"), "--plot", str(out / "run.png"),
    )  # fmt: skip
    return {"done": done, "json": out / "run.json", "png": out / "run.png"}


def test_serve_measures_every_request_of_every_point(serve_run: dict[str, Any]) -> None:
    done = serve_run["done"]
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "concurrency 1" in done.stdout
    assert "concurrency 4" in done.stdout
    document = json.loads(serve_run["json"].read_text())
    validate(document)
    assert [p["concurrency"] for p in document["points"]] == [1, 4]
    for point in document["points"]:
        assert (point["num_succeeded"], point["num_failed"], point["errors"]) == (8, 0, [])
        assert point["output_tokens"] == 64
        assert point["goodput_rps"] == point["request_throughput_rps"]
        for request in point["requests"]:
            assert request["error"] is None
            assert request["output_tokens"] == 8  # ignore_eos: exact lengths
            assert 16 <= request["prompt_tokens"] <= 18  # the word list is about a token a word
            assert 0 < request["ttft_s"] < request["e2e_s"]
            assert request["tpot_s"] == pytest.approx((request["e2e_s"] - request["ttft_s"]) / 7)
        assert point["ttft_s"]["p99"] <= point["e2e_s"]["max"]
    one, four = document["points"]
    assert most_in_flight(one["requests"]) == 1
    assert 2 <= most_in_flight(four["requests"]) <= 4
    assert document["server"]["models_listed"]  # the server answered /v1/models


def test_serve_writes_a_png_plot(serve_run: dict[str, Any]) -> None:
    assert serve_run["png"].read_bytes().startswith(PNG_MAGIC)


def test_plot_draws_several_result_files(serve_run: dict[str, Any], tmp_path: Path) -> None:
    other = json.loads(serve_run["json"].read_text())
    other["label"] = "a peer @ 127.0.0.1:1"
    (tmp_path / "peer.json").write_text(json.dumps(other))
    done = bench(
        "plot", str(serve_run["json"]), str(tmp_path / "peer.json"), "--out", str(tmp_path / "both.png")
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "both.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_rejects_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"schema": "something-else"}')
    done = bench("plot", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.png"))
    assert done.returncode == 2
    assert "bad.json is not an inferline-bench/1 result" in done.stderr
    assert "Traceback" not in done.stderr


def test_server_errors_are_counted_and_reported(server: ServerProcess, tmp_path: Path) -> None:
    done = bench(
        "serve", "--base-url", server.url, "--api-key", API_KEY, "--model", "no-such-model",
        "--num-prompts", "3", "--output-len", "4", "--warmup", "0", "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert done.returncode == 1  # every request failed
    assert "Traceback" not in done.stderr
    assert "concurrency 1: 3 failed: HTTP 404" in done.stdout
    assert "no-such-model" in done.stdout
    assert "every request failed (3 of 3)" in done.stderr
    point = json.loads((tmp_path / "r.json").read_text())["points"][0]
    assert (point["num_succeeded"], point["num_failed"]) == (0, 3)
    assert point["errors"][0]["count"] == 3
    assert "no-such-model" in point["errors"][0]["message"]


def test_wrong_url_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = bench("serve", "--base-url", url, "--model", "default", "--num-prompts", "2")
    assert done.returncode == 2
    assert f"cannot reach {url}/v1" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_options_name_the_option() -> None:
    done = bench("serve", "--model", "m", "--len-jitter", "1.5")
    assert done.returncode == 2
    assert "--len-jitter" in done.stderr
    assert "Traceback" not in done.stderr


def test_offline_reports_throughput_per_batch_size(tmp_path: Path) -> None:
    done = bench(
        "offline", "--batch-sizes", "1,2", "--input-len", "8", "--output-len", "4", "--repeats", "1",
        "--dtype", "float32", "--device", "cpu", "--json", str(tmp_path / "off.json"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "off.json").read_text())
    validate(document)
    assert [(p["batch_size"], p["output_tokens"]) for p in document["points"]] == [(1, 4), (2, 8)]
    assert all(p["output_throughput_tps"] > 0 for p in document["points"])
