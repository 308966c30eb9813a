"""Cold start: seconds from launching `inferline serve` (the README's command, default config) to a 200
from /ready, beside llama-server on the same GGUF (launch to a 200 from /health), in the same run.

Each server is started `--runs` times in turn; the disk cache is warm after the first start (the
figure a restarted server sees). The first start of inferline after `scripts/install.sh` does not
compile: install.sh builds the C++ kernels. Reported: min / median / max per server, and where
inferline's time went in its median run, from its own log (the load line of each deployment).

    .venv/bin/python benchmarks/cold_start.py
    .venv/bin/python benchmarks/cold_start.py --smoke   # one start each; llama-server only if installed
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from inferline.bench.harness import INFERLINE, find_llama_server, free_port
from inferline.models.store import resolve

LOAD_LINE = re.compile(r"loaded (\S+) on .* in ([\d.]+) s")


def time_to_ready(command: list[str], url: str, log_path: Path, env: dict[str, str]) -> float:
    """Launch, poll `url` every 20 ms until it answers 200, stop; the seconds from launch to ready."""
    started = time.perf_counter()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    try:
        while True:
            if process.poll() is not None:
                sys.exit(f"{command[0]} exited with {process.returncode}; see {log_path}")
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.perf_counter() - started > 120:
                sys.exit(f"{command[0]} was not ready within 120 s; see {log_path}")
            time.sleep(0.02)
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="one start of each")
    args = parser.parse_args()
    runs = 1 if args.smoke else args.runs
    llama = find_llama_server(required=not args.smoke)
    times: dict[str, list[float]] = {"inferline serve": [], "llama-server": []}
    loads: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for run in range(runs):
            port = free_port()
            log_path = tmp / f"inferline-{run}.log"
            command = [str(INFERLINE), "serve", "--port", str(port)]
            env = {"INFERLINE_HOME": str(tmp / "home"), "PYTHONUNBUFFERED": "1"}
            times["inferline serve"].append(
                time_to_ready(command, f"http://127.0.0.1:{port}/ready", log_path, env)
            )
            loads.append({m[1]: float(m[2]) for m in LOAD_LINE.finditer(log_path.read_text())})
            if llama is not None:
                port = free_port()
                gguf = str(resolve("default").path)
                command = [str(llama), "-m", gguf, "--port", str(port), "-np", "16", "-c", "16384"]
                url = f"http://127.0.0.1:{port}/health"
                env = {"LD_LIBRARY_PATH": str(llama.parent)}
                times["llama-server"].append(time_to_ready(command, url, tmp / "llama.log", env))
    print("| server | runs | min s | median s | max s |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in times.items():
        if seconds:
            print(
                f"| {name} | {len(seconds)} | {min(seconds):.2f} | {statistics.median(seconds):.2f} "
                f"| {max(seconds):.2f} |"
            )
    ours = times["inferline serve"]
    median_run = loads[ours.index(sorted(ours)[len(ours) // 2])]
    print(
        "inferline model loads in its median run: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in median_run.items())
    )


if __name__ == "__main__":
    main()
