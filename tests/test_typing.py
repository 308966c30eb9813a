"""The engine, the backends, the router and the server type-check (STYLE.md: mypy on engine/ and server/)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes_on_engine_backends_router_and_server() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "src/inferline/engine", "src/inferline/server"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
