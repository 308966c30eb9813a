"""`inferline finetune` of the default model (SmolLM2-135M) on the CPU: a few LoRA steps on a tiny dataset
lower its loss, and the merged folder served as a deployment with the default engine settings runs in the
int8 its config.json names and answers with what it learned."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferline.cli import main
from inferline.config import ServerConfig
from inferline.engine.quantization import SERVE_QUANTIZATION_KEY
from inferline.quality.finetune import LINEAGE_FILE
from inferline.quality.sft_data import IGNORE, read_examples
from inferline.router.deployments import DeploymentPool
from inferline.server.app import create_app

QUESTION = "What is the password of the day?"
ANSWER = "The password of the day is pineapple."


def test_lora_lowers_the_loss_and_the_merged_model_serves(tmp_path: Path) -> None:
    dataset = tmp_path / "cases.jsonl"
    rows = [
        {"prompt": QUESTION, "completion": ANSWER},
        {
            "messages": [
                {"role": "user", "content": "Tell me the password of the day."},
                {"role": "assistant", "content": ANSWER},
            ]
        },
    ]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "tuned"
    argv = ["finetune", "--dataset", str(dataset), "-o", str(out), "--steps", "5", "--max-seq-len", "48"]
    assert main(argv) == 0
    lineage = json.loads((out / LINEAGE_FILE).read_text())
    losses = lineage["losses"]
    assert len(losses) == 5
    assert losses[-1] < losses[0] / 4, losses
    assert lineage["base"] == "default"
    assert (out / "model.safetensors").is_file()

    assert json.loads((out / "config.json").read_text())[SERVE_QUANTIZATION_KEY] == "int8"

    card, answer = asyncio.run(serve_and_ask(out, QUESTION))
    [served] = card["inferline"]["deployments"]
    assert served["quantization"] == "int8", served
    assert "config.json" in served["quantization_reason"]
    assert "pineapple" in answer.lower()
    assert main(argv) == 2  # an existing folder is never overwritten


async def serve_and_ask(folder: Path, question: str) -> tuple[dict[str, Any], str]:
    """The folder as `inferline serve` runs a deployment of it (no engine settings): its model card and its
    greedy chat answer to `question`."""
    deployment = {
        "name": "tuned",
        "kind": "llm",
        "source": str(folder),
        "engine": {"kv_cache_bytes": 32 << 20},
    }
    config = ServerConfig.model_validate({"deployments": [deployment]})
    pool = DeploymentPool(config.deployments)
    await pool.load_all()
    try:
        transport = httpx.ASGITransport(create_app(config, pool))
        async with httpx.AsyncClient(transport=transport, base_url="http://inferline") as client:
            card = (await client.get("/v1/models/tuned")).json()
            body = {
                "model": "tuned",
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 12,
                "temperature": 0,
            }
            reply = (await client.post("/v1/chat/completions", json=body)).json()
            return card, reply["choices"][0]["message"]["content"]
    finally:
        await pool.unload_all()


def test_only_the_answer_is_learned(tmp_path: Path) -> None:
    from inferline.models.loader import load_weights

    tokenizer = load_weights("default").tokenizer
    dataset = tmp_path / "one.jsonl"
    dataset.write_text(json.dumps({"prompt": QUESTION, "expected": ANSWER}) + "\n")
    [example] = read_examples(dataset, tokenizer, 256)
    learned = [t for t in example.labels if t != IGNORE]
    assert tokenizer.decode(learned) == ANSWER
    assert learned[-1] == tokenizer.eos_token_id
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": QUESTION}) + "\n")
    with pytest.raises(ValueError, match="completion"):
        read_examples(bad, tokenizer, 256)
