"""The `inferline` command, run as a user would: a real process."""

import os
import subprocess
import sys
from pathlib import Path

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
