"""The `rag` route policy: retrieve the chunks that answer the last user message from a store of the
caller's tenant, and put them into the prompt through the route's template (RagConfig.template).

The route's deployments then answer as a fixed route's would. Retrieval is its own span
("retrieve STORE") and its own histogram (inferline_retrieval_seconds); the retrieved text is part of
the prompt the deployment bills, so it is metered as prompt tokens, and the query's embedding is
metered as an embeddings request of the same tenant.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inferline.config import RagConfig
from inferline.retrieval.stores import SearchResult, VectorStores
from inferline.router.embedder import embedder
from inferline.router.request import Caller
from inferline.router.router import Router
from inferline.telemetry import tracing


@dataclass(frozen=True)
class Retrieved:
    prompt: str
    """The user message to send: the template with the sources and the question."""
    citations: list[dict[str, Any]]
    """Per source, in the prompt's order ([1] first): file_id, filename, chunk, score, text."""

    @property
    def context(self) -> str:
        """What the answer depends on beyond the request, for response-cache keys: the chunks and their
        text (a file added again with new text changes it)."""
        return json.dumps([(c["file_id"], c["chunk"], c["text"]) for c in self.citations])


def sources_text(results: list[SearchResult]) -> str:
    return "\n\n".join(f"[{n}] {r.hit.chunk.text}" for n, r in enumerate(results, 1))


class RagRetriever:
    def __init__(
        self,
        router: Router,
        stores: VectorStores,
        embedding_deployment: str | None,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.router = router
        self.stores = stores
        self.embedding_deployment = embedding_deployment
        self.observe = observe
        """Called with (route, seconds) per retrieval: the latency histogram."""

    async def retrieve(self, route: str, config: RagConfig, caller: Caller, question: str) -> Retrieved:
        started = time.perf_counter()
        span = tracing.start_span(f"retrieve {config.vector_store}", {"inferline.rag.top_k": config.top_k})
        try:
            embed = embedder(self.router, self.embedding_deployment, caller)
            results = await self.stores.search(
                caller.principal.tenant,
                config.vector_store,
                question,
                config.top_k,
                None,
                config.score_threshold,
                embed,
            )
        except BaseException as error:
            tracing.end_span(span, error=error)
            raise
        tracing.end_span(span, {"inferline.rag.num_chunks": len(results)})
        if self.observe is not None:
            self.observe(route, time.perf_counter() - started)
        values = {"sources": sources_text(results), "question": question}
        # One pass, so braces inside the question or a chunk are text, never placeholders.
        prompt = re.sub(r"\{(sources|question)\}", lambda m: values[m.group(1)], config.template)
        citations = [
            {
                "file_id": r.hit.chunk.file_id,
                "filename": r.filename,
                "chunk": r.hit.chunk.index,
                "score": round(r.hit.score, 4),
                "text": r.hit.chunk.text,
            }
            for r in results
        ]
        return Retrieved(prompt, citations)
