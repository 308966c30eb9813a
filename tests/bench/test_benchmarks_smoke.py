"""Every script in benchmarks/ imports, and its `--smoke` run ends well and prints its figures.

A smoke run is the script's smallest run on the CPU: every code path, peers that are not installed
skipped, results written to a temporary folder, never to benchmarks/results or RESULTS.md.
"""

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
FIGURES = {
    "batch.py": [
        r"^chat +batch +\d+\.\d tok/s +online best \d+\.\d tok/s \(c=\d+\) +ratio \d+\.\d\dx",
        r"^engine ceiling \d+\.\d tok/s \(in process, max_num_seqs \d+; .*\) +ceiling / online best "
        r"\d+\.\d\dx",
        r"^embed +batch +\d+\.\d/s +online best \d+\.\d/s",
        r"^ttft +p95 idle \d+\.\d ms +during batch \d+\.\d ms",
    ],
    "cold_start.py": [r"\| inferline serve \| 1 \| \d+\.\d\d \|", r"model loads in its median run: \S+ \d"],
    "compare_cpu.py": [r"\| 1 \| \d+\.\d \| \d+ \|", r"peak RSS MiB: inferline-default \d+"],
    "cpu_kernels_isa.py": [
        r"^x86-64-v2 \(scalar\) +int4 +1 x 576 -> 1536 +\d+\.\d µs +\d+\.\d\d +1\.00x",
        r"^x86-64-v3 \(AVX2\) +int8 +16 x 576 -> 1536 +\d+\.\d µs +\d+\.\d\d +\d+\.\d\dx",
    ],
    "engine_offline.py": [r"^ +1 \| +\d+\.\d"],
    "gpu.py": [r"^ +2 \| +\d+\.\d +\| +\d+\.\d +\| +\d+\.\d"],
    "http_overhead.py": [
        r"overhead, httpx.AsyncClient +-?\d+\.\d\d",
        r"inferline 1 client \d+\.\d, 32 clients \d",
    ],
    "quant_quality.py": [r"\| default \| \d+\.\d\d \| [+-]\d+\.\d%"],
    "ray_scale.py": [
        r"^serve +\d+\.\d tok/s +TTFT p50 +\d+\.\d ms +p99 +\d+\.\d ms +failed 0",
        r"^serve --ray, 1 replica +\d+\.\d tok/s .*failed 0 +ratio \d+\.\d\dx +added TTFT p50 [+-]\d+\.\d ms",
    ],
    "retrieval.py": [
        r"^inferline embedded hnsw +\d+\.\d +\d+\.\d\d +\d+\.\d\d +\d\.\d{3}",
        r"^pgvector hnsw \(m=32, efc=128, ef=128\) +\d+\.\d +\d+\.\d\d +\d+\.\d\d +\d\.\d{3}",
        r"\(first \d+ rows at once: \d+\.\d s; then \d+ rows/s\)",
        r"MiniLM on the CPU \+ embedded store: \d+\.\d chunks/s",
        r"^ +0\.92 +\d\.\d{3} +\d\.\d{3} \| +\d\.\d{3} +\d\.\d{3} .*<- chosen",
        r"^hit \(exact, memory\) +\d+\.\d{3} +\d+\.\d{3}",
    ],
    "router_overhead.py": [r"^inferline -> stub +\d+\.\d{3}", r"^inferline -> stub +4 +\d+ +0 "],
    "speculative.py": [r"open +draft +\d+\.\d +\d+\.\d\dx +\d\.\d\d +\d\.\d\d +yes"],
    "streams.py": [
        r"^\| redis \| inferline \| \d+ \| 50% \| \d+ \| \d+\.\d\d \| \d+\.\d\d \|",
        r"^\| redis \| plain \| \d+ \| 90% \| \d+ \| \d+\.\d\d \| \d+\.\d\d \|",
        r"^\| nats \| inferline \| \d+ \| 50% \| \d+ \| \d+\.\d\d \| \d+\.\d\d \|",
        r"^\| nats \| plain \| \d+ \| 90% \| \d+ \| \d+\.\d\d \| \d+\.\d\d \|",
    ],
    "structured.py": [
        r"^validity inferline: greedy \d+/\d+, sampled \d+/\d+",
        r"^\| inferline \| 1 \| \d+\.\d \| \d+\.\d \| \d\.\d\d \|",
        r"^TTFT p50 ms inferline: unconstrained \d+, schema cold \d+, schema cached \d+",
        r"^engine step .* mask \d+\.\d us per token",
    ],
    "telemetry_overhead.py": [
        r"^telemetry on +\d+\.\d{3}",
        r"^telemetry off +\d+\.\d{3}",
        r"usage rows written: on [1-9]",
    ],
    "token_budget.py": [
        r"^wall: inter-token p50 \d+\.\d\d ms",
        r"\| engine: forward \+ sample \| \d+\.\d{3} \|",
    ],
    "tracing_overhead.py": [r"tracing sampled +\d+\.\d µs/request", r"access line.* \d+\.\d µs/request"],
}
"""What each script prints when it worked: rows of its result table, figures included (each line)."""
TIMEOUT_S = 480


def test_every_benchmark_has_a_smoke_check() -> None:
    assert sorted(p.name for p in BENCHMARKS.glob("*.py")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_benchmark_imports(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module_name = f"benchmark_{name.removesuffix('.py')}"
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert callable(module.main)


def kept_results() -> dict[Path, tuple[int, int]]:
    """What a benchmark keeps: each file under benchmarks/results and RESULTS.md, by size and mtime."""
    files = [BENCHMARKS / "RESULTS.md", *(BENCHMARKS / "results").rglob("*")]
    return {f: (f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_benchmark_smoke_run_prints_its_figures(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    before = kept_results()
    args = ["--smoke"]
    if name == "ray_scale.py":  # on the tests' Ray instance, not one of its own
        args += ["--ray-address", request.getfixturevalue("ray_cluster").address]
    # Its own session, so a run that hangs is killed with the servers it started.
    process = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / name), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{name} --smoke ran past {TIMEOUT_S} s:\n{out[-3000:]}\n{err[-3000:]}")
    assert process.returncode == 0, f"{name} --smoke exited with {process.returncode}:\n{err[-5000:]}"
    missing = [pattern for pattern in FIGURES[name] if not re.search(pattern, out, re.MULTILINE)]
    assert not missing, f"{name} --smoke printed no {missing}:\n{out[-5000:]}"
    assert kept_results() == before
