"""Retrieval: vector stores (OpenAI's /v1/vector_stores), the `rag` route policy, and response caches."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RAG_TEMPLATE = (
    "Answer the question using the numbered sources below. Cite a source as [n]. If the sources do not "
    "contain the answer, say so.\n\n{sources}\n\nQuestion: {question}"
)
"""The default `rag.template`: `{sources}` becomes one "[n] text" paragraph per retrieved chunk,
`{question}` the last user message."""


class VectorStoresConfig(BaseModel):
    """Where vector stores keep their chunks, how files are cut into chunks, and which model embeds them."""

    model_config = ConfigDict(extra="forbid")

    embedding_deployment: str | None = Field(
        None,
        description="The embedding deployment that embeds chunks and queries; default: the first "
        "deployment of kind 'embedding'. A store records its name and version and refuses queries "
        "once either changes (re-create the store to re-embed).",
    )
    backend: Literal["embedded", "pgvector"] = Field(
        "embedded",
        description="'embedded': chunks in inferline's database, searched in-process with FAISS (no "
        "server); 'pgvector': chunks and HNSW indexes in PostgreSQL, shared by every replica.",
    )
    pgvector_url: str | None = Field(
        None, description="pgvector: postgresql+psycopg://USER@HOST/DB of a server with the vector extension."
    )
    index: Literal["auto", "flat", "hnsw"] = Field(
        "auto",
        description="embedded: 'flat' scans every vector (exact); 'hnsw' is approximate; 'auto' scans "
        "stores under hnsw_min_chunks and builds HNSW above.",
    )
    hnsw_min_chunks: int = Field(
        50_000,
        ge=1,
        description="auto: the size at which a store switches to HNSW. A flat scan of 50,000 x 384 "
        "float32 vectors takes about 5 ms on one CPU core; past that HNSW answers in ~2 ms.",
    )
    hnsw_ef_search: int = Field(
        128, ge=10, le=4096, description="HNSW candidates kept per search: higher is slower and more exact."
    )
    max_chunk_size_tokens: int = Field(
        200,
        ge=16,
        le=4096,
        description="Default chunk size, in words (whitespace-separated). MiniLM reads at most 256 "
        "word pieces and a word is about 1.3 of them, so 200 words fit; OpenAI's 800 would be cut.",
    )
    chunk_overlap_tokens: int = Field(
        50, ge=0, le=2048, description="Default words shared by consecutive chunks (at most half the size)."
    )
    max_file_bytes: int = Field(
        8 << 20,
        ge=1,
        description="Largest file a store ingests (400 above it): its text is embedded at once.",
    )

    @model_validator(mode="after")
    def _overlap_fits(self) -> VectorStoresConfig:
        if self.chunk_overlap_tokens * 2 > self.max_chunk_size_tokens:
            raise ValueError(
                f"chunk_overlap_tokens {self.chunk_overlap_tokens} must be at most half of "
                f"max_chunk_size_tokens {self.max_chunk_size_tokens}"
            )
        return self


class RagConfig(BaseModel):
    """policy 'rag': retrieve from a store of the caller's tenant, put the chunks into the prompt, answer
    with the route's deployments, and cite the chunks."""

    model_config = ConfigDict(extra="forbid")

    vector_store: str = Field(
        ..., min_length=1, description="The store's name (or id), looked up among the caller's tenant's."
    )
    top_k: int = Field(4, ge=1, le=50, description="Chunks retrieved per request.")
    score_threshold: float = Field(0.0, ge=-1, le=1, description="Chunks scoring below this are left out.")
    template: str = Field(RAG_TEMPLATE, description="The user message sent: needs {sources} and {question}.")

    @model_validator(mode="after")
    def _placeholders(self) -> RagConfig:
        missing = [p for p in ("{sources}", "{question}") if p not in self.template]
        if missing:
            raise ValueError(f"rag.template lacks {', '.join(missing)}: both must appear once")
        return self


class CacheConfig(BaseModel):
    """A route's response cache. Keys are scoped to the tenant and cover the whole conversation, the
    model and its version, the sampling settings and the tools, so no tenant ever reads another's."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(True, description="Serve an identical earlier request's answer.")
    semantic_threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Also serve an earlier answer whose conversation embeds within this cosine similarity "
        "(e.g. 0.92: benchmarks/retrieval.py gives precision and recall on paraphrases and near-misses); "
        "None: exact only.",
    )
    embedding_deployment: str | None = Field(
        None, description="semantic: the embedding deployment; default: vector_stores.embedding_deployment."
    )
    store: Literal["memory", "redis"] = Field(
        "memory", description="'memory': this process; 'redis': shared by replicas (needs redis_url)."
    )
    ttl_s: float = Field(3600.0, gt=0, le=30 * 86400, description="Seconds an entry is served.")
    max_entries: int = Field(10_000, ge=1, le=10_000_000, description="memory: least recently used go first.")
    cache_sampled: bool = Field(
        False,
        description="Also cache requests with temperature > 0 or n > 1 (by default they bypass: a cached "
        "answer would repeat what should vary).",
    )
    price_per_1m: float = Field(
        0.0, ge=0, description="USD per million tokens of a cached answer (prompt and completion)."
    )
