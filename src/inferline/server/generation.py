"""A generation as the OpenAI endpoints hand it around: the first deltas, then the rest (a stream), or
every delta (collected); one shape whether a deployment or a response cache produced it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from inferline.types import Delta

Tagged = tuple[int, Delta]
"""(prompt index, delta)"""


@dataclass
class Generation:
    firsts: list[Tagged]
    """Everything, when collected; otherwise the first delta of each request."""
    rest: AsyncIterator[Tagged] | None = None
    """The stream's remaining deltas; None when collected."""

    def deltas(self) -> AsyncIterator[Tagged]:
        """Every delta, the firsts then the rest."""
        return chain(self.firsts, self.rest)


async def chain(firsts: list[Tagged], rest: AsyncIterator[Tagged] | None) -> AsyncIterator[Tagged]:
    for item in firsts:
        yield item
    if rest is not None:
        async for item in rest:
            yield item
