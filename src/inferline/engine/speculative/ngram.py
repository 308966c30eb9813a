"""The n-gram proposer (prompt lookup): copy what followed the most recent earlier occurrence of the
sequence's last n tokens. Free, and right whenever the output quotes its input. Its drafts are certain
(no distribution), so verification accepts one exactly when the target would have produced it."""

from __future__ import annotations

from array import array

from inferline.engine.scheduler import Proposal, ScheduledChunk


class NgramProposer:
    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, chunks: list[ScheduledChunk]) -> dict[str, Proposal]:
        proposals = {}
        for chunk in chunks:
            if chunk.num_lookahead_tokens:
                tokens = chunk.prompt_token_ids + chunk.output_token_ids
                proposals[chunk.seq_id] = Proposal(self.lookup(tokens, chunk.num_lookahead_tokens))
        return proposals

    def lookup(self, token_ids: list[int], max_drafts: int) -> list[int]:
        """Up to `max_drafts` tokens that followed the latest earlier occurrence of the last n tokens,
        trying the longest n first; [] when none of the last runs occurred before."""
        # bytes.rfind does the scan in C; a hit must start on a token boundary (4 bytes per token).
        data = array("i", token_ids).tobytes()
        searchable = len(data) - 4  # the occurrence must end before the last token
        for n in range(min(self.max_n, len(token_ids) - 1), self.min_n - 1, -1):
            pattern = data[-4 * n :]
            at = data.rfind(pattern, 0, searchable)
            while at > 0 and at % 4:
                at = data.rfind(pattern, 0, at + len(pattern) - 1)
            if at >= 0:
                start = at // 4 + n
                return token_ids[start : start + max_drafts]
        return []
