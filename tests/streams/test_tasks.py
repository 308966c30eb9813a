"""The two other scoring tasks on a real Redis stream: embeddings of each message's text (one embed call
per batch) and an LLM answer to a prompt template filled from each message (the default chat model);
and, on the same model, what a stream's priority class does when an interactive request is running."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferline.config import ServerConfig
from inferline.router.deployments import DeploymentPool
from inferline.router.limits import Limiter
from inferline.router.router import Router
from inferline.streams.service import StreamWorkers
from inferline.types import Priority, Request, SamplingParams
from tests.server.conftest import llm_deployment
from tests.streams.brokers import RedisBroker
from tests.streams.conftest import run, until

COUNT = "Count from 1 to {n}, separated by commas."
"""A prompt the model answers at length: its sequences run their whole max_tokens."""


def counting_stream(broker: RedisBroker, priority: str) -> dict[str, Any]:
    return {
        "name": broker.name,
        "source": broker.source(),
        "sink": broker.sink(),
        "model": "smollm2-135m-instruct",
        "task": "generate",
        "prompt_template": COUNT,
        "max_tokens": 12,
        "priority": priority,
    }


async def results_while_interactive_runs(
    pool: DeploymentPool, batch: RedisBroker, interactive: RedisBroker
) -> tuple[int, int]:
    """Four messages to each stream once an interactive request of 32 tokens is in the engine: how many
    results each stream has written when that request ends."""
    request = Request(
        "foreground",
        sampling=SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True),
        priority=Priority.INTERACTIVE,
        messages=[{"role": "user", "content": "Tell me a long story."}],
    )
    deltas = pool.by_name["smollm2-135m-instruct"].backend.generate(request)
    async with asyncio.timeout(60):
        await anext(deltas)  # it is in the engine
        for broker in (batch, interactive):
            await broker.produce([json.dumps({"n": 40}).encode()] * 4)
        async for _ in deltas:
            pass
    return len(await batch.results()), len(await interactive.results())


@pytest.mark.slow  # loading the chat model: about 20 s on 2 loaded cores
def test_embed_and_generate_tasks_and_priority_classes(redis_url: str) -> None:
    suffix = secrets.token_hex(3)
    embed, generate = RedisBroker(redis_url, f"embed-{suffix}"), RedisBroker(redis_url, f"chat-{suffix}")
    batch, interactive = RedisBroker(redis_url, f"b-{suffix}"), RedisBroker(redis_url, f"i-{suffix}")
    config = ServerConfig.model_validate(
        {
            "deployments": [
                # While interactive or conversational work is in the engine, one batch sequence a step.
                llm_deployment(max_batch_seqs_while_busy=1),
                {"name": "all-minilm-l6-v2", "kind": "embedding", "source": "all-minilm-l6-v2"},
            ],
            "streams": [
                {
                    "name": embed.name,
                    "source": embed.source(),
                    "sink": embed.sink(),
                    "model": "all-minilm-l6-v2",
                    "task": "embed",
                },
                {
                    "name": generate.name,
                    "source": generate.source(),
                    "sink": generate.sink(),
                    "model": "smollm2-135m-instruct",
                    "task": "generate",
                    "prompt_template": "Reply with one word: is a {item} a fruit?",
                    "max_tokens": 3,
                    "priority": "conversational",
                },
                counting_stream(batch, "batch"),
                counting_stream(interactive, "interactive"),
            ],
        }
    )
    texts = [
        "a card payment of 40 EUR in Lyon",
        "a wire of 9,000 USD to a new payee",
        "a card payment of 40 EUR in Lyon",
    ]

    async def scenario() -> None:
        embed_ids = await embed.produce([json.dumps({"text": t}).encode() for t in texts])
        chat_ids = await generate.produce([json.dumps({"item": "banana"}).encode(), b'{"thing": "banana"}'])
        pool = DeploymentPool(config.deployments)
        await pool.load_all()
        workers = StreamWorkers(
            config, Router(config, pool, Limiter.from_config(config)), CollectorRegistry(), Path.home()
        )
        workers.start()
        try:

            async def all_written() -> bool:
                num_dead = len(await generate.dead_letters())
                return len(await embed.results()) == 3 and len(await generate.results()) + num_dead == 2

            await until(all_written, 60, "every message has a result or a dead letter")
            num_batch, num_interactive = await results_while_interactive_runs(pool, batch, interactive)

            async def batch_written() -> bool:
                return len(await batch.results()) == 4

            await until(batch_written, 60, "the batch stream's results, once the interactive request ended")
        finally:
            await workers.close()
            await pool.unload_all()
        vectors = dict(await embed.results())
        first, second, same = (np.array(vectors[i]["embedding"]) for i in embed_ids)
        assert first.shape == (384,)
        np.testing.assert_allclose(np.linalg.norm(first), 1.0, rtol=1e-4)
        np.testing.assert_allclose(first, same, atol=1e-5)  # batched together, the same text is the same
        assert float(first @ second) < 0.95
        answers = dict(await generate.results())
        assert answers.keys() == {chat_ids[0]}
        assert answers[chat_ids[0]]["text"].strip()
        dead = await generate.dead_letters()
        assert dead[chat_ids[1]].startswith("bad payload: KeyError: 'item'")
        # The interactive stream ran beside the interactive request and was done first; the batch one
        # computed one sequence a step at most (4 x 12 tokens > 32 steps), so it could not be.
        assert (num_batch, num_interactive) == (0, 4)
        for broker in (embed, generate, batch, interactive):
            await broker.close()

    run(scenario())
