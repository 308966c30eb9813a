"""From sampled token ids to text deltas: incremental detokenization and stop strings.

Decoding a token on its own can split a multi-byte character (byte-level BPE) or lose the space a
sentencepiece token carries, so each new piece of text is the difference between decoding a short
window of recent tokens with and without the newest ones; text ending in U+FFFD (an incomplete
character) is held back until the next token completes it. Text that could be the start of a stop
string is held back too, so a stop string is never emitted, even in part.
"""

from __future__ import annotations

from collections.abc import Sequence

from inferline.engine.sampler import SampledToken
from inferline.models.tokenizer import Tokenizer
from inferline.types import TokenLogprob, TopLogprob

_CONTEXT_TOKENS = 5
"""Prompt tokens decoded as left context so the first generated token's text comes out right."""


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.token_ids = list(prompt_token_ids[-_CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.token_ids)

    def append(self, token_id: int) -> str:
        """New text that `token_id` completes; '' while a character is still incomplete."""
        self.token_ids.append(token_id)
        decode = self.tokenizer.decode
        prefix_text = decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = decode(self.token_ids[self.prefix_offset :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.token_ids)
            return full_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back, incomplete characters included: the completion has ended."""
        decode = self.tokenizer.decode
        prefix_text = decode(self.token_ids[self.prefix_offset : self.read_offset])
        full_text = decode(self.token_ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.token_ids)
        return full_text[len(prefix_text) :]


class TextStream:
    """The text of one completion: what is emitted, what is held back, where a stop string cut it."""

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], stop: list[str]) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer, prompt_token_ids)
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.text = ""
        self.num_emitted = 0
        self.stopped_by: str | None = None

    def append(self, token_id: int, finished: bool) -> str:
        """Add a token; return the text now safe to emit. Sets `stopped_by` when a stop string appears."""
        if self.stopped_by is not None:
            return ""
        new_text = self.detokenizer.append(token_id)
        if finished:
            new_text += self.detokenizer.flush()
        search_from = max(len(self.text) - self.hold, 0)
        self.text += new_text
        if self.stop and new_text:
            self._find_stop(search_from)
        end = len(self.text) if finished or self.stopped_by is not None else len(self.text) - self.hold
        if end <= self.num_emitted:
            return ""
        piece = self.text[self.num_emitted : end]
        self.num_emitted = end
        return piece

    def _find_stop(self, search_from: int) -> None:
        cut: int | None = None
        for stop in self.stop:
            index = self.text.find(stop, search_from)
            if index != -1 and (cut is None or index < cut):
                cut, self.stopped_by = index, stop
        if cut is not None:
            self.text = self.text[:cut]


def to_token_logprob(tokenizer: Tokenizer, sampled: SampledToken) -> TokenLogprob | None:
    if sampled.logprob is None:
        return None
    top = [
        TopLogprob(token_id, tokenizer.id_to_piece(token_id), logprob)
        for token_id, logprob in zip(sampled.top_token_ids, sampled.top_logprobs, strict=True)
    ]
    return TokenLogprob(sampled.token_id, tokenizer.id_to_piece(sampled.token_id), sampled.logprob, top)
