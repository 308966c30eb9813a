"""The one interface every vector-store backend implements (embedded.py, pgvector.py), and the values
it takes and gives. Vectors are float32 and L2-normalised, so inner product is cosine similarity."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from inferline.errors import InvalidRequestError


@dataclass(frozen=True)
class Chunk:
    file_id: str
    index: int
    """Its position among its file's chunks."""
    text: str


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float
    """Cosine similarity to the query, in [-1, 1]."""


class VectorBackend(Protocol):
    """Chunks and their vectors, per store. `search` with `exact` re-scans every vector (the reference
    an approximate index's recall is measured against); `file_ids` restricts it to those files."""

    def create(self, store_id: str, dim: int) -> None:
        """Make the store known: when it is created, and again on its first use after a restart."""

    def add(self, store_id: str, chunks: list[Chunk], vectors: np.ndarray) -> None: ...

    def search(
        self,
        store_id: str,
        query: np.ndarray,
        k: int,
        file_ids: Collection[str] | None = None,
        exact: bool = False,
    ) -> list[Hit]: ...

    def delete_file(self, store_id: str, file_id: str) -> None: ...

    def drop(self, store_id: str) -> None: ...

    def close(self) -> None: ...


def normalised(vectors: np.ndarray, dim: int) -> np.ndarray:
    """[n, dim] float32 rows of unit length; InvalidRequestError for another dimension."""
    matrix = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if matrix.shape[1] != dim:
        raise InvalidRequestError(
            f"vectors have {matrix.shape[1]} dimensions but this store holds {dim}-dimensional ones: embed "
            "with the store's model, or create a new store",
            "query",
        )
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.ascontiguousarray(matrix / np.maximum(norms, 1e-12))
