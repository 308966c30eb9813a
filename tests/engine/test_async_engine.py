"""The asyncio engine: concurrent streams, abort by leaving the loop, errors surface to the caller."""

import asyncio
import threading
import time

import pytest
import torch

from inferline.config import EngineConfig
from inferline.engine.async_engine import AsyncEngine
from inferline.engine.core import EngineCore
from inferline.engine.model_loader import LoadedModel
from inferline.errors import EngineStoppedError, InvalidRequestError
from inferline.types import Request, SamplingParams


@pytest.fixture
def engine(default_model: LoadedModel):
    engine = AsyncEngine(lambda: EngineCore(EngineConfig(kv_cache_bytes=64 << 20), default_model))
    yield engine
    asyncio.run(engine.shutdown(drain_timeout_s=0))


def request(model: LoadedModel, request_id: str, text: str, **sampling: object) -> Request:
    return Request(request_id, model.tokenizer.encode(text), SamplingParams(**sampling))  # type: ignore[arg-type]


async def collect(engine: AsyncEngine, req: Request) -> tuple[str, str | None, int]:
    text, reason, completion_tokens = "", None, 0
    async for delta in engine.generate(req):
        text += delta.text
        reason = delta.finish_reason or reason
        if delta.usage is not None:
            completion_tokens = delta.usage.completion_tokens
    return text, reason, completion_tokens


def test_concurrent_streams_match_their_solo_output(engine: AsyncEngine, default_model: LoadedModel) -> None:
    prompts = [f"Give me fact number {i} about the moon." for i in range(6)]

    async def main() -> list[tuple[str, str | None, int]]:
        solo = await collect(engine, request(default_model, "solo", prompts[0], max_tokens=16, temperature=0))
        together = await asyncio.gather(
            *(
                collect(engine, request(default_model, f"r{i}", p, max_tokens=16, temperature=0))
                for i, p in enumerate(prompts)
            )
        )
        return [solo, *together]

    solo, *together = asyncio.run(main())
    assert together[0] == solo
    assert all(reason in {"stop", "length"} for _, reason, _ in together)
    assert all(0 < n <= 16 for _, _, n in together)


def test_leaving_the_stream_aborts_and_frees_blocks(engine: AsyncEngine, default_model: LoadedModel) -> None:
    async def main() -> None:
        req = request(default_model, "gone", "Write a very long essay:", max_tokens=500, ignore_eos=True)
        received = 0
        async for _ in engine.generate(req):
            received += 1
            if received == 3:
                break
        deadline = time.monotonic() + 5
        while engine.stats().kv_num_free_blocks != engine.stats().kv_num_blocks:
            assert time.monotonic() < deadline, "blocks of the abandoned request were not freed"
            await asyncio.sleep(0.01)
        assert not engine.core.has_unfinished()

    asyncio.run(main())


def test_invalid_request_raises_to_its_caller_only(engine: AsyncEngine, default_model: LoadedModel) -> None:
    async def main() -> tuple[str, str | None, int]:
        good = asyncio.create_task(collect(engine, request(default_model, "good", "Hi", max_tokens=8)))
        with pytest.raises(InvalidRequestError) as error:
            await collect(engine, request(default_model, "bad", "Hi", temperature=-1.0))
        assert error.value.param == "temperature"
        return await good

    _, reason, tokens = asyncio.run(main())
    assert reason in {"stop", "length"}
    assert tokens > 0


def test_shutdown_drains_in_flight_requests_then_refuses_new_ones(default_model: LoadedModel) -> None:
    engine = AsyncEngine(lambda: EngineCore(EngineConfig(kv_cache_bytes=64 << 20), default_model))

    async def main() -> tuple[str, str | None, int]:
        in_flight = asyncio.create_task(
            collect(engine, request(default_model, "a", "Count:", max_tokens=12, ignore_eos=True))
        )
        await asyncio.sleep(0.05)
        await engine.shutdown(drain_timeout_s=30)
        with pytest.raises(EngineStoppedError):
            await collect(engine, request(default_model, "late", "Hi"))
        return await in_flight

    _, reason, tokens = asyncio.run(main())
    assert (reason, tokens) == ("length", 12)


def test_duplicate_request_id_is_refused_without_hurting_the_first(
    engine: AsyncEngine, default_model: LoadedModel
) -> None:
    async def main() -> tuple[str, str | None, int]:
        first = asyncio.create_task(collect(engine, request(default_model, "same", "Hello", max_tokens=6)))
        await asyncio.sleep(0.01)
        with pytest.raises(InvalidRequestError) as error:
            await collect(engine, request(default_model, "same", "Other", max_tokens=6))
        assert error.value.param == "request_id"
        return await first

    _, reason, tokens = asyncio.run(main())
    assert reason in {"stop", "length"}
    assert tokens > 0


def test_the_engine_thread_builds_the_model_and_runs_every_step_on_all_threads(
    default_model: LoadedModel,
) -> None:
    # One thread owns the model: libgomp keeps an OpenMP pool per thread that ever ran a parallel region,
    # and a second pool (a model loaded elsewhere) made every barrier sleep on a futex (40 % slower).
    cores = torch.get_num_threads()
    built_on: list[threading.Thread] = []
    seen: list[tuple[int, int, threading.Thread]] = []  # (tokens in the step, torch threads, thread)

    def build() -> EngineCore:
        built_on.append(threading.current_thread())
        return EngineCore(EngineConfig(kv_cache_bytes=64 << 20), default_model)

    async def main() -> None:
        engine = await asyncio.to_thread(AsyncEngine, build)
        model = engine.core.runner.model
        forward = model.forward

        def recording_forward(input_ids, *args):  # type: ignore[no-untyped-def]
            seen.append((len(input_ids), torch.get_num_threads(), threading.current_thread()))
            return forward(input_ids, *args)

        model.forward = recording_forward  # type: ignore[method-assign]
        try:
            await collect(engine, request(default_model, "r1", "Count to five:", max_tokens=4, temperature=0))
        finally:
            await engine.shutdown(drain_timeout_s=0)

    asyncio.run(main())
    assert built_on[0].name == "inferline-engine"
    assert {thread for _, _, thread in seen} == {built_on[0]}
    assert seen[0][0] > 1
    assert len(seen) == 4
    assert {threads for _, threads, _ in seen} == {cores}  # ...each on every thread


def test_a_failed_build_is_raised_to_the_caller() -> None:
    def build() -> EngineCore:
        raise InvalidRequestError("no such model", "model")

    with pytest.raises(InvalidRequestError, match="no such model"):
        AsyncEngine(build)


def test_an_explicit_single_stream_thread_count_is_kept(default_model: LoadedModel) -> None:
    async def main() -> int | None:
        engine = await AsyncEngine.load(EngineConfig(kv_cache_bytes=64 << 20, single_stream_threads=1))
        await engine.shutdown(drain_timeout_s=0)
        return engine.core.runner.single_stream_threads

    assert asyncio.run(main()) == 1
