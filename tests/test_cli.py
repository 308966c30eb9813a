"""The `inferline` command, run as a user would: a real process."""

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from inferline.bench.config import OfflineBenchConfig, ServeBenchConfig
from inferline.cli import build_parser
from inferline.cli.bench import offline_bench_config, serve_bench_config
from inferline.cli.edge import agent_config
from inferline.cli.options import given
from inferline.config import EngineConfig, ServerConfig
from inferline.edge.config import AgentConfig

BIN = Path(sys.executable).with_name("inferline")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )


def test_chat_answers_with_the_default_model() -> None:
    done = run(
        "chat", "What is the capital of France?", "--max-tokens", "16", "--temperature", "0", "--stats"
    )
    assert done.returncode == 0, done.stderr
    assert "Paris" in done.stdout
    assert "tok/s" in done.stderr


def subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = commands.choices[name]
    return parser


# Every command whose options fill a config model, with the least command line it accepts.
EDGE_REQUIRED = ["--registry", "http://r", "--device-id", "d", "--model", "m", "--trusted-root", "root.json"]
EDGE_REQUIRED += ["--pubkey", "key.pem", "--home", "home"]
CONFIGURED = {
    ("bench", "serve"): (ServeBenchConfig, ["--model", "m"]),
    ("bench", "offline"): (OfflineBenchConfig, []),
    ("chat",): (EngineConfig, ["hi"]),
    ("serve",): (ServerConfig, []),
    ("edge",): (AgentConfig, EDGE_REQUIRED),
}


@pytest.mark.parametrize("path", list(CONFIGURED), ids=" ".join)
def test_options_that_fill_a_config_model_leave_its_defaults_to_it(path: tuple[str, ...]) -> None:
    model, _ = CONFIGURED[path]
    fields = model.model_fields if issubclass(model, BaseModel) else AgentConfig.__dataclass_fields__
    shadowing = {
        action.dest: action.default
        for action in subparser(*path)._actions
        if action.dest in fields and action.default is not None
    }
    assert shadowing == {}, f"argparse defaults shadow {model.__name__}'s: give them default None"


def test_the_least_command_line_builds_each_model_with_its_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFERLINE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    parse = build_parser().parse_args
    assert serve_bench_config(parse(["bench", "serve", "--model", "m"])) == ServeBenchConfig(model="m")
    assert offline_bench_config(parse(["bench", "offline"])) == OfflineBenchConfig()
    assert given(parse(["chat", "hi"]), EngineConfig) == {}
    assert given(parse(["serve"]), ServerConfig) == {}
    assert agent_config(parse(["edge", *EDGE_REQUIRED])) == AgentConfig(
        registry_url="http://r",
        device_id="d",
        labels={},
        model="m",
        trusted_root=Path("root.json"),
        public_key=Path("key.pem"),
        home=Path("home"),
    )


def test_values_given_win_over_the_model_defaults() -> None:
    args = build_parser().parse_args(["bench", "offline", "--repeats", "5", "--batch-sizes", "2,4"])
    assert offline_bench_config(args) == OfflineBenchConfig(repeats=5, batch_sizes=[2, 4])


def test_help_shows_the_defaults_the_models_hold() -> None:
    offline = subparser("bench", "offline").format_help()
    assert f"(default {OfflineBenchConfig.model_fields['repeats'].default})" in offline
    assert "(default 1,8,32)" in " ".join(offline.split())
    assert f"(default {AgentConfig.poll_s})" in subparser("edge").format_help()


def test_commands_that_run_no_model_start_without_importing_torch() -> None:
    # torch takes seconds to import: every `inferline registry ...` call, and serve's start, would pay it.
    probe = "import sys; from inferline.cli import build_parser as b; b(); print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.stdout.strip() == "False", done.stderr


def test_models_list_shows_the_default_model(tmp_path: Path) -> None:
    done = run("models", "list", env={**os.environ, "INFERLINE_HOME": str(tmp_path), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "smollm2-135m-instruct" in done.stdout
    assert "default" in done.stdout
    assert str(tmp_path) in done.stdout


def test_unknown_model_is_a_clear_error_not_a_traceback() -> None:
    done = run("chat", "hi", "--model", "no-such-model")
    assert done.returncode == 2
    assert "no-such-model" in done.stderr
    assert "Traceback" not in done.stderr


def test_chat_rejects_bad_sampling_with_the_field_name() -> None:
    done = run("chat", "hi", "--top-p", "0")
    assert done.returncode == 2
    assert "top_p" in done.stderr
    assert "Traceback" not in done.stderr


def usage_database(url: str) -> str:
    """Alpha: two requests to fast@1 ($0.75); beta: one to slow@2 that failed ($0.125)."""
    from inferline.telemetry.usage_store import UsageStore
    from inferline.types import UsageRecord

    def record(tenant: str, deployment: str, version: str, cost: float, outcome: str = "ok") -> UsageRecord:
        return UsageRecord(
            request_id=f"{tenant}-{cost}",
            tenant=tenant,
            route="chat",
            deployment=deployment,
            model_version=version,
            prompt_tokens=100,
            completion_tokens=20,
            ttft_s=0.05,
            latency_s=0.25,
            outcome=outcome,
            cost=cost,
        )

    store = UsageStore(url)
    store.insert_many(
        [
            record("alpha", "fast", "1", 0.5),
            record("alpha", "fast", "1", 0.25),
            record("beta", "slow", "2", 0.125, "error"),
        ]
    )
    store.close()
    return url


def test_usage_prints_a_table_from_the_default_database(tmp_path: Path) -> None:
    usage_database(f"sqlite:///{tmp_path / 'inferline.db'}")
    env = {**os.environ, "INFERLINE_HOME": str(tmp_path), "COLUMNS": "200"}
    done = run("usage", "--by", "tenant", "--since", "1h", env=env)
    assert done.returncode == 0, done.stderr
    lines = {
        line.split()[1]: line.split()
        for line in done.stdout.splitlines()
        if "alpha" in line or "beta" in line
    }
    # │ key │ requests │ prompt │ completion │ cost │ p95 latency │ p95 TTFT │ errors │ rejected │
    assert lines["alpha"][1:18:2] == ["alpha", "2", "200", "40", "0.750000", "250.0", "50.0", "0", "0"]
    assert lines["beta"][1:18:2] == ["beta", "1", "100", "20", "0.125000", "250.0", "50.0", "1", "0"]
    assert str(tmp_path / "inferline.db") in done.stdout.replace("\n", "")


def test_usage_writes_csv_with_a_header_row(tmp_path: Path) -> None:
    url = usage_database(f"sqlite:///{tmp_path / 'usage.db'}")
    out = tmp_path / "usage.csv"
    done = run("usage", "--database-url", url, "--by", "model", "--csv", str(out))
    assert done.returncode == 0, done.stderr
    assert list(csv.reader(out.read_text().splitlines())) == [
        [
            "key",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "p95_latency_ms",
            "p95_ttft_ms",
            "errors",
            "rejected",
        ],
        ["fast@1", "2", "200", "40", "0.75", "250.0", "50.0", "0", "0"],
        ["slow@2", "1", "100", "20", "0.125", "250.0", "50.0", "1", "0"],
    ]


def test_usage_reads_the_database_the_server_config_names(tmp_path: Path) -> None:
    url = usage_database(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    config = tmp_path / "inferline.yaml"
    config.write_text(f"telemetry:\n  database_url: {url}\n")
    out = tmp_path / "beta.csv"
    done = run("usage", "--config", str(config), "--tenant", "beta", "--by", "deployment", "--csv", str(out))
    assert done.returncode == 0, done.stderr
    assert [row[:2] for row in csv.reader(out.read_text().splitlines())][1:] == [["slow", "1"]]


def test_usage_names_a_bad_grouping_and_the_accepted_ones(tmp_path: Path) -> None:
    done = run("usage", "--by", "user", "--database-url", f"sqlite:///{tmp_path / 'usage.db'}")
    assert done.returncode == 2
    assert "by='user'" in done.stderr
    assert "tenant, route, deployment, model" in done.stderr
    assert "Traceback" not in done.stderr
