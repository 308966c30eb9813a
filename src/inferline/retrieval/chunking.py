"""Static chunking, as OpenAI's `chunking_strategy: {type: static}`: fixed-size windows of words that
overlap, so a sentence cut at one chunk's end is whole at the next one's start.

Sizes count whitespace-separated words, not the embedding model's word pieces: the same file cuts the
same way whatever model embeds it, and a word is about 1.3 MiniLM word pieces, so the default 200
words stay under the 256 pieces MiniLM reads (see VectorStoresConfig)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkingStrategy:
    max_chunk_size_tokens: int
    """Words per chunk."""
    chunk_overlap_tokens: int
    """Words a chunk repeats from the one before."""

    def to_openai(self) -> dict[str, object]:
        return {
            "type": "static",
            "static": {
                "max_chunk_size_tokens": self.max_chunk_size_tokens,
                "chunk_overlap_tokens": self.chunk_overlap_tokens,
            },
        }


def chunk_text(text: str, strategy: ChunkingStrategy) -> list[str]:
    """The text's chunks in order; none for a text without words."""
    words = text.split()
    step = strategy.max_chunk_size_tokens - strategy.chunk_overlap_tokens
    chunks = []
    for start in range(0, len(words), step):
        chunks.append(" ".join(words[start : start + strategy.max_chunk_size_tokens]))
        if start + strategy.max_chunk_size_tokens >= len(words):
            break
    return chunks
