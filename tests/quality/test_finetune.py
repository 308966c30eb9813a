"""`inferline finetune` of the default model (SmolLM2-135M) on the CPU: a few LoRA steps on a tiny dataset
lower its loss, and the merged folder loads in the engine and answers with what it learned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferline.cli import main
from inferline.engine.llm import LLM
from inferline.quality.finetune import LINEAGE_FILE
from inferline.quality.sft_data import IGNORE, read_examples
from inferline.types import SamplingParams

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

    llm = LLM(str(out))
    greedy = SamplingParams(max_tokens=12, temperature=0)
    [answer] = llm.chat([[{"role": "user", "content": QUESTION}]], greedy)
    assert "pineapple" in answer.outputs[0].text.lower()
    assert llm.tokenizer.has_chat_template
    assert main(argv) == 2  # an existing folder is never overwritten


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
