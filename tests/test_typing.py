"""The engine, the server, telemetry, the registry, the edge agent, batch, streams, the cluster, the
quality loop and the CLI type-check (STYLE.md: mypy on engine/ and server/), with the backends and the
router they import."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_passes() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "src/inferline/engine",
            "src/inferline/server",
            "src/inferline/telemetry",
            "src/inferline/edge",
            "src/inferline/registry",
            "src/inferline/cli",
            "src/inferline/batch",
            "src/inferline/streams",
            "src/inferline/cluster",
            "src/inferline/quality",
            "src/inferline/retrieval",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
