"""The BERT encoder and the sentence-transformers loader against transformers' BertModel.

sentence-transformers is not installed, so its reference output is rebuilt from what it runs:
transformers' BertModel over the tokenizer's ids (truncated at max_seq_length 256), mean pooling
over the attention mask, then L2 normalisation.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inferline.errors import ModelLoadError
from inferline.models.bert import BertConfig, BertModel
from inferline.models.sentence_loader import bert_config, bert_state_dict, load_sentence_model
from inferline.runners.embedding import EmbeddingRunner

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Stocks fell sharply after the central bank raised interest rates.",
    "",
    "naïve café déjà vu — 東京 🚀",
    "The quick brown fox jumps over the lazy dog. " * 40,  # ~400 tokens: truncated at 256
]


def reference_embeddings(folder: Path, texts: list[str]) -> tuple[np.ndarray, list[int]]:
    from transformers import AutoTokenizer
    from transformers import BertModel as HFBertModel

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = HFBertModel.from_pretrained(folder, local_files_only=True).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # [B, S, 384]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1).numpy(), batch["attention_mask"].sum(dim=1).tolist()


def test_embeddings_match_the_sentence_transformers_reference(
    minilm_path: Path, minilm_runner: EmbeddingRunner
) -> None:
    expected, expected_tokens = reference_embeddings(minilm_path, SENTENCES)
    output = minilm_runner.embed(SENTENCES)
    assert output.vectors.dtype == np.float32
    assert output.vectors.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(output.vectors, expected, atol=1e-4, rtol=0)
    assert output.num_tokens == expected_tokens
    assert output.num_tokens[-1] == 256  # sentence_bert_config's limit, not tokenizer.json's 128
    np.testing.assert_allclose(np.linalg.norm(output.vectors, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(minilm_runner: EmbeddingRunner) -> None:
    eating, bread, baby, stocks = minilm_runner.embed(SENTENCES[:4]).vectors
    assert eating @ bread > 0.6
    assert eating @ bread > eating @ baby + 0.3
    assert eating @ bread > eating @ stocks + 0.3


def test_loader_reads_the_sentence_transformers_settings(minilm_path: Path) -> None:
    model = load_sentence_model(minilm_path)
    assert (model.max_seq_length, model.pooling, model.normalize, model.embedding_dim) == (
        256,
        "mean",
        True,
        384,
    )
    assert model.model.config.num_hidden_layers == 6
    assert not model.model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.model.parameters())


TINY = {
    "model_type": "bert",
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 32,
    "max_position_embeddings": 20,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
}


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_random_bert_with_prefixed_names_matches_transformers(hidden_act: str) -> None:
    """A BertForMaskedLM-style checkpoint (`bert.` prefix, MLM head) loads and agrees with transformers,
    padding included."""
    from transformers import BertConfig as HFBertConfig
    from transformers import BertModel as HFBertModel

    torch.manual_seed(0)
    reference = HFBertModel(HFBertConfig(**TINY, hidden_act=hidden_act), add_pooling_layer=True).eval()
    checkpoint = {f"bert.{name}": tensor for name, tensor in reference.state_dict().items()}
    checkpoint["cls.predictions.bias"] = torch.zeros(50)
    model = BertModel(bert_config({**TINY, "hidden_act": hidden_act}, Path("tiny")))
    model.load_state_dict(bert_state_dict(checkpoint), strict=True)

    input_ids = torch.randint(1, 50, (3, 7))
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    token_type_ids = torch.tensor([[0] * 4 + [1] * 3, [0] * 7, [0] * 7])
    with torch.inference_mode():
        expected = reference(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        got = model(input_ids, attention_mask, token_type_ids)
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_bert_config_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ModelLoadError, match="model_type 'roberta'"):
        bert_config({**TINY, "model_type": "roberta"}, Path("m"))
    with pytest.raises(ModelLoadError, match="hidden_act 'relu'"):
        bert_config({**TINY, "hidden_act": "relu"}, Path("m"))
    with pytest.raises(ModelLoadError, match="position_embedding_type 'relative_key'"):
        bert_config({**TINY, "position_embedding_type": "relative_key"}, Path("m"))
    assert bert_config(TINY, Path("m")) == BertConfig(50, 16, 2, 4, 32, 20)


def test_unsupported_sentence_transformers_module(tmp_path: Path, minilm_path: Path) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="Dense"):
        load_sentence_model(tmp_path)
