"""Structured outputs: validity, the cost of the constraint, and the time to a new schema's first token.

On the schemas of benchmarks/data/structured_schemas.jsonl (57 JSON schemas with prompts: nested
objects, arrays, enums, bounded numbers, optional fields, patterns, anyOf/oneOf, $ref), against a real
`inferline serve` of the default model (max_num_seqs 16):

- validity: every schema asked once greedy and once sampled (temperature 0.8, seeded) through
  /v1/chat/completions with response_format json_schema; an output counts when it parses and
  validates with `jsonschema` (one cut by max_tokens does not).
- throughput: output tok/s of schema-constrained requests at 1 and 16 streams, beside unconstrained
  requests of the same prompts, each held to its constrained answer's length (ignore_eos, max_tokens =
  that length), so both decode the same number of tokens per request.
- TTFT (streamed): unconstrained; with a schema the server has never seen (the grammar compiles
  inside the request: each schema gets a fresh "title"); with the same schemas again (cached).
- engine: in-process, one step of 16 constrained sequences beside 16 unconstrained ones, and the
  time spent computing masks per token and waiting for them after the forward pass.
- llama-server (llama.cpp) with the same schemas as response_format json_schema, when installed
  (found as benchmarks/compare_cpu.py finds it); skipped when absent, and in a smoke run.

    .venv/bin/python benchmarks/structured.py [--smoke]

Figures taken on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import jsonschema

from inferline.bench.harness import ServerProcess, find_llama_server, inferline_server, llama_server
from inferline.config import EngineConfig, ServerConfig
from inferline.models.store import resolve

SCHEMAS = Path(__file__).resolve().parent / "data" / "structured_schemas.jsonl"
MODEL = "smollm2"
MAX_TOKENS = 256
SMOKE = {"num_schemas": 2, "streams": "1", "requests_per_stream": 1, "engine_steps": 2}


@dataclass
class Case:
    name: str
    prompt: str
    schema: dict[str, Any]

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{self.prompt} Answer in JSON."}]

    def response_format(self, title: str | None = None) -> dict[str, Any]:
        schema = self.schema if title is None else {**self.schema, "title": title}
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": schema, "strict": True}}


@dataclass
class Server:
    label: str
    url: str
    results: dict[str, Any] = field(default_factory=dict)


def load_cases(num: int | None) -> list[Case]:
    rows = [json.loads(line) for line in SCHEMAS.read_text().splitlines() if line.strip()]
    return [Case(r["name"], r["prompt"], r["schema"]) for r in rows[:num]]


async def chat(
    client: httpx.AsyncClient, server: Server, case: Case, **fields: Any
) -> tuple[str, int, float | None]:
    """(text, completion tokens, TTFT in seconds when streamed); ("", 0, None) past the client's timeout,
    counted in the server's results: a peer that takes minutes over one schema must not stall the run."""
    try:
        try:
            return await _chat(client, server, case, **fields)
        except httpx.RemoteProtocolError:  # a kept-alive connection the peer closed meanwhile: ask again
            return await _chat(client, server, case, **fields)
    except httpx.TimeoutException:
        server.results["timeouts"] = server.results.get("timeouts", 0) + 1
        return "", 0, None


async def _chat(
    client: httpx.AsyncClient, server: Server, case: Case, **fields: Any
) -> tuple[str, int, float | None]:
    body = {"model": MODEL, "messages": case.messages(), "max_tokens": MAX_TOKENS, **fields}
    if not body.get("stream"):
        reply = (await client.post(f"{server.url}/v1/chat/completions", json=body)).raise_for_status().json()
        return reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"], None
    started, ttft, text = time.perf_counter(), None, ""
    async with client.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            content = choices[0].get("delta", {}).get("content")
            if content and ttft is None:
                ttft = time.perf_counter() - started
            text += content or ""
    return text, 0, ttft


def is_valid(text: str, schema: dict[str, Any]) -> bool:
    # Decimals, not floats: 51.2893 is a multiple of 0.0001, which float division denies.
    exact_schema = json.loads(json.dumps(schema), parse_float=Decimal)
    try:
        jsonschema.validate(json.loads(text, parse_float=Decimal), exact_schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


async def validity(client: httpx.AsyncClient, server: Server, cases: list[Case]) -> None:
    limit = asyncio.Semaphore(16)

    async def one(case: Case, sampled: bool) -> bool:
        fields: dict[str, Any] = {"temperature": 0.8, "seed": 11} if sampled else {"temperature": 0}
        async with limit:
            text, _, _ = await chat(client, server, case, response_format=case.response_format(), **fields)
        return is_valid(text, case.schema)

    for mode, sampled in (("greedy", False), ("sampled", True)):
        valid = await asyncio.gather(*(one(c, sampled) for c in cases))
        server.results[f"valid_{mode}"] = (sum(valid), len(valid))
        server.results[f"invalid_{mode}"] = [c.name for c, ok in zip(cases, valid, strict=True) if not ok]


async def throughput(
    client: httpx.AsyncClient, server: Server, cases: list[Case], streams: int, per_stream: int
) -> tuple[float, float]:
    """(constrained tok/s, unconstrained tok/s decoding the same number of tokens per request).

    The unconstrained run asks each case for exactly as many tokens as its constrained (greedy, so
    repeatable) answer had, with ignore_eos, so both runs decode the same work in the same order.
    """
    lengths: dict[str, int] = {}

    async def closed_loop(fields_of: Callable[[Case], dict[str, Any]]) -> tuple[int, float]:
        queue = [cases[i % len(cases)] for i in range(streams * per_stream)]
        counted: list[int] = []

        async def worker() -> None:
            while queue:
                case = queue.pop()
                _, num_tokens, _ = await chat(client, server, case, temperature=0, **fields_of(case))
                lengths.setdefault(case.name, num_tokens)
                counted.append(num_tokens)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        return sum(counted), time.perf_counter() - started

    tokens, elapsed = await closed_loop(lambda c: {"response_format": c.response_format()})
    free_tokens, free_elapsed = await closed_loop(
        lambda c: {"max_tokens": max(1, lengths[c.name]), "ignore_eos": True}
    )
    return tokens / elapsed, free_tokens / free_elapsed


async def ttfts(client: httpx.AsyncClient, server: Server, cases: list[Case]) -> None:
    stamp = f"{time.time_ns()}"
    runs: dict[str, Callable[[Case], dict[str, Any]]] = {
        "unconstrained": lambda c: {},
        "schema cold": lambda c: {"response_format": c.response_format(f"{c.name}-{stamp}")},
        "schema cached": lambda c: {"response_format": c.response_format(f"{c.name}-{stamp}")},
    }
    for label, fields_of in runs.items():
        measured = [
            (await chat(client, server, c, temperature=0, max_tokens=4, stream=True, **fields_of(c)))[2]
            for c in cases
        ]
        answered = [t for t in measured if t is not None] or [float("nan")]
        server.results[f"ttft {label}"] = statistics.median(answered) * 1e3


async def measure(server: Server, cases: list[Case], args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(timeout=args.request_timeout_s, trust_env=False) as client:
        await validity(client, server, cases)
        await ttfts(client, server, cases)
        for streams in [int(s) for s in args.streams.split(",")]:
            rates = await throughput(client, server, cases, streams, args.requests_per_stream)
            server.results[f"tok/s {streams}"] = rates


def engine_step_costs(cases: list[Case], num_steps: int) -> dict[str, float]:
    """In-process: mean step time of 16 constrained vs 16 unconstrained sequences, and the mask work."""
    from inferline.engine.core import EngineCore
    from inferline.engine.guided import masks
    from inferline.engine.model_loader import load_model
    from inferline.types import Request, SamplingParams, StructuredOutput

    loaded = load_model(EngineConfig(device="cpu", dtype="float32"))
    compute_s, wait_s, num_rows = [0.0], [0.0], [0]
    original_compute, original_result = masks.GuidedDecoder._compute, masks.PendingMasks.result

    def timed_compute(self: masks.GuidedDecoder, jobs: list[Any]) -> dict[str, Any]:
        started = time.perf_counter()
        out = original_compute(self, jobs)
        compute_s[0] += time.perf_counter() - started
        num_rows[0] += sum(len(m) for m in out.values())
        return out

    def timed_result(self: masks.PendingMasks) -> dict[str, Any]:
        started = time.perf_counter()
        out = original_result(self)
        wait_s[0] += time.perf_counter() - started
        return out

    masks.GuidedDecoder._compute = timed_compute  # type: ignore[method-assign]
    masks.PendingMasks.result = timed_result  # type: ignore[method-assign]
    step_ms = {}
    try:
        for label, constrained in (("unconstrained", False), ("json_schema", True)):
            core = EngineCore(EngineConfig(kv_cache_bytes=256 << 20, max_num_seqs=16), loaded)
            for i in range(16):
                case = cases[i % len(cases)]
                structured = StructuredOutput("json_schema", json.dumps(case.schema)) if constrained else None
                sampling = SamplingParams(max_tokens=num_steps + 1, temperature=0, structured=structured)
                prompt = loaded.tokenizer.encode_chat(case.messages())
                core.add_request(Request(f"{label}-{i}", prompt, sampling))
            core.step()  # the prefill
            times = []
            for _ in range(num_steps):
                started = time.perf_counter()
                core.step()
                times.append(time.perf_counter() - started)
            step_ms[label] = statistics.median(times) * 1e3
    finally:
        masks.GuidedDecoder._compute, masks.PendingMasks.result = original_compute, original_result
    rows = max(num_rows[0], 1)
    return {
        "step ms unconstrained": step_ms["unconstrained"],
        "step ms json_schema": step_ms["json_schema"],
        "mask us per token": compute_s[0] / rows * 1e6,
        "mask wait us per step": wait_s[0] / (num_steps + 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-schemas", type=int, default=None, help="first N schemas (default: all)")
    parser.add_argument("--streams", default="1,16")
    parser.add_argument("--requests-per-stream", type=int, default=3)
    parser.add_argument("--engine-steps", type=int, default=24)
    parser.add_argument(
        "--request-timeout-s", type=float, default=120, help="per request; past it an answer counts invalid"
    )
    parser.add_argument("--smoke", action="store_true", help=f"tiny run: {SMOKE}")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    cases = load_cases(args.num_schemas)
    # A smoke run leaves the peer out: it covers inferline's paths in seconds; full runs measure the peer.
    llama = None if args.smoke else find_llama_server(required=False)
    servers: list[tuple[str, Callable[[Path], AbstractContextManager[ServerProcess]]]] = [
        ("inferline", lambda tmp: inferline_server(_config(), tmp, "inferline"))
    ]
    if llama is not None:
        servers.append(("llama-server", lambda tmp: llama_server(resolve("default").path, llama, tmp)))
    print(
        f"structured  {len(cases)} JSON schemas, SmolLM2-135M-Instruct (default), max_num_seqs 16, "
        f"max_tokens {MAX_TOKENS}; shared machine: indicative figures",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        for label, start in servers:
            with start(Path(tmp_name)) as running:
                server = Server(label, running.url)
                try:
                    asyncio.run(measure(server, cases, args))
                except httpx.HTTPError as error:  # a peer that stalls must not cost the figures taken
                    print(f"{label} failed: {type(error).__name__} {error}", flush=True)
                    continue
                print_server(server, args)
    print_engine(engine_step_costs(cases, args.engine_steps))


def _config() -> ServerConfig:
    engine = {"max_num_seqs": 16, "kv_cache_bytes": 512 << 20}
    deployment = {"name": MODEL, "kind": "llm", "source": "default", "engine": engine}
    return ServerConfig.model_validate({"deployments": [deployment]})


def print_server(s: Server, args: argparse.Namespace) -> None:
    (greedy, total), (sampled, _) = s.results["valid_greedy"], s.results["valid_sampled"]
    invalid = sorted(set(s.results["invalid_greedy"] + s.results["invalid_sampled"]))
    print(f"validity {s.label}: greedy {greedy}/{total}, sampled {sampled}/{total}  invalid: {invalid}")
    print("| server | streams | json_schema out tok/s | unconstrained out tok/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for streams in [int(n) for n in args.streams.split(",")]:
        constrained, free = s.results[f"tok/s {streams}"]
        print(f"| {s.label} | {streams} | {constrained:.1f} | {free:.1f} | {constrained / free:.2f} |")
    cells = ", ".join(f"{k.removeprefix('ttft ')} {s.results[k]:.0f}" for k in s.results if "ttft" in k)
    timeouts = s.results.get("timeouts", 0)
    print(f"TTFT p50 ms {s.label}: {cells}; requests past the timeout: {timeouts}", flush=True)


def print_engine(engine: dict[str, float]) -> None:
    print(
        f"engine step (16 seqs, in-process): unconstrained {engine['step ms unconstrained']:.1f} ms, "
        f"json_schema {engine['step ms json_schema']:.1f} ms; mask {engine['mask us per token']:.1f} us "
        f"per token on the worker thread, waited {engine['mask wait us per step']:.0f} us per step"
    )


if __name__ == "__main__":
    main()
