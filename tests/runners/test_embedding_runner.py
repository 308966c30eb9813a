"""EmbeddingRunner: shapes and dtypes, padding within a batch changes nothing, truncation, pooling."""

import numpy as np
import pytest
import torch

from inferline.errors import ModelLoadError
from inferline.runners.embedding import EmbeddingRunner, pool


def test_shapes_norms_and_token_counts(minilm_runner: EmbeddingRunner) -> None:
    output = minilm_runner.embed(["hello world", "a somewhat longer sentence about embeddings"])
    assert output.vectors.shape == (2, 384)
    assert output.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(output.vectors, axis=1), 1.0, atol=1e-5)
    # [CLS] hello world [SEP], and "embeddings" is four word pieces; the padding is not counted.
    assert output.num_tokens == [4, 11]
    assert minilm_runner.embed([]).vectors.shape == (0, 384)


def test_padding_next_to_a_long_text_changes_nothing(minilm_runner: EmbeddingRunner) -> None:
    short = "The cat sat on the mat."
    alone = minilm_runner.embed([short]).vectors[0]
    batched = minilm_runner.embed([short, "word " * 300]).vectors[0]
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_long_texts_are_truncated_to_max_seq_length(minilm_runner: EmbeddingRunner) -> None:
    assert minilm_runner.max_seq_length == 256
    head = "word " * 254  # 254 tokens + [CLS] + [SEP] = 256
    output = minilm_runner.embed([head, head + "and then a great deal more " * 20])
    assert output.num_tokens == [256, 256]
    np.testing.assert_allclose(output.vectors[0], output.vectors[1], atol=1e-5)


def test_pooling_modes() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # [1, 3, 2]
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool(hidden, mask, "mean"), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), torch.tensor([[1.0, 2.0]]))


def test_a_gguf_source_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="GGUF"):
        EmbeddingRunner.from_source("default")
