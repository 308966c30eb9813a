"""The two other scoring tasks on a real Redis stream: embeddings of each message's text (one embed call
per batch) and an LLM answer to a prompt template filled from each message (the default chat model)."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inferline.config import ServerConfig
from inferline.router.deployments import DeploymentPool
from inferline.router.limits import Limiter
from inferline.router.router import Router
from inferline.streams.service import StreamWorkers
from tests.server.conftest import llm_deployment
from tests.streams.brokers import RedisBroker
from tests.streams.conftest import until


@pytest.mark.slow  # loading the chat model: about 20 s on 2 loaded cores
def test_embed_and_generate_tasks(redis_url: str) -> None:
    suffix = secrets.token_hex(3)
    embed, generate = RedisBroker(redis_url, f"embed-{suffix}"), RedisBroker(redis_url, f"chat-{suffix}")
    config = ServerConfig.model_validate(
        {
            "deployments": [
                llm_deployment(),
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
        await embed.close()
        await generate.close()

    asyncio.run(scenario())
