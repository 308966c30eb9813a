"""One local Ray instance for every test that runs on Ray (`serve --ray`, `batch run --ray`, the ray_scale
benchmark's smoke run), started on first use and stopped at the end of the run: a Ray start costs seconds
of both cores, once instead of once per test. tests/conftest.py shares the fixture.

The instance is `ray start --head --block` in a session of its own, with a temp dir of its own (where
`ray start` notes its address, a plain `ray.init()` on this machine would join it; in /tmp/ray that would
be every other Ray user's here); stopping it stops that process tree only (never `ray stop`, which stops
every Ray instance on the machine). Token authentication is off: drivers of the tests join on loopback."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from inferline.bench.harness import free_port

RAY = Path(sys.executable).with_name("ray")
NUM_CPUS = 2


@dataclass(frozen=True)
class RayCluster:
    address: str
    """The GCS address drivers join (`inferline serve --ray ADDRESS`)."""
    process: psutil.Process
    """`ray start --block`: every Ray process of this instance (GCS, raylet, workers) descends from it."""

    def replica_processes(self, app_prefix: str = "ServeReplica:inferline-") -> list[psutil.Process]:
        return [p for p in self.process.children(recursive=True) if app_prefix in " ".join(p.cmdline())]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("ray") / "ray-start.log"
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths live under it
    command = [
        str(RAY),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={NUM_CPUS}",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    with log_path.open("w") as log:
        # Workers inherit this environment: PYTHONPATH puts the tested sources first in replicas too.
        started = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        )
    address, root = f"127.0.0.1:{port}", psutil.Process(started.pid)
    try:
        _wait_until_up(started, log_path, address)
        yield RayCluster(address, root)
    finally:
        processes = [root, *root.children(recursive=True)]
        # Killed, not drained: on SIGTERM `ray start` waits up to 30 s for work the tests have finished.
        os.killpg(started.pid, signal.SIGKILL)
        for process in psutil.wait_procs(processes, timeout=10)[1]:
            process.kill()  # one that left the session
        started.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_until_up(started: subprocess.Popen[bytes], log_path: Path, address: str) -> None:
    deadline = time.monotonic() + 120
    while not re.search(r"will now block forever", log_path.read_text()):
        if started.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"ray start at {address} did not come up:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
