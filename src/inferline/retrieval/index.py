"""An in-memory vector index of one store: a flat scan (exact) or HNSW (FAISS), chosen by size.

Design note: the embedded backend was chosen by measuring the candidates on 100,000 clustered
384-dimensional vectors on this project's 2-core CPU (benchmarks/retrieval.py; figures in the README):
FAISS HNSW (M=32) answered k=10 in ~1.8 ms p50 at recall@10 0.97 and built in about half the time of
usearch (which answered in ~3.5 ms at 0.96); a flat scan takes ~11 ms. sqlite-vec scans flat only, and
this interpreter's sqlite3 is built without extension loading, so it cannot load at all. FAISS also
gives both index kinds and its own file format, so one dependency covers flat, HNSW and persistence.

The vectors stay in memory beside the index (float32, 1.5 KB per 384-d chunk): exact re-scans and
filtered searches (a subset of files) scan them directly, which is exact and, for the subsets a filter
leaves, cheaper than walking the graph and throwing most of it away.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

HNSW_NEIGHBOURS = 32
"""M: links per node. 16 lost recall (0.69 at ef 128) on the clustered set; 32 reaches 0.97."""
HNSW_EF_CONSTRUCTION = 128


class StoreIndex:
    """Row ids and vectors of one store, searched flat or through HNSW."""

    def __init__(self, dim: int, use_hnsw: bool, ef_search: int) -> None:
        self.dim = dim
        self.use_hnsw = use_hnsw
        self.ef_search = ef_search
        self.row_ids = np.zeros(0, dtype=np.int64)
        self.file_ids: list[str] = []
        """Per row, the file it came from (parallel to row_ids)."""
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.hnsw: faiss.Index | None = self._new_hnsw() if use_hnsw else None
        self.lock = threading.Lock()
        """FAISS's HNSW must not be searched while it grows."""

    def _new_hnsw(self) -> faiss.Index:
        graph = faiss.IndexHNSWFlat(self.dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        graph.hnsw.efSearch = self.ef_search
        return faiss.IndexIDMap2(graph)

    def __len__(self) -> int:
        return len(self.row_ids)

    def add(self, row_ids: np.ndarray, file_ids: list[str], vectors: np.ndarray) -> None:
        with self.lock:
            self.row_ids = np.concatenate([self.row_ids, row_ids.astype(np.int64)])
            self.file_ids += file_ids
            self.vectors = np.concatenate([self.vectors, vectors]) if len(self.vectors) else vectors
            if self.hnsw is not None:
                self.hnsw.add_with_ids(vectors, row_ids.astype(np.int64))

    def search(
        self, query: np.ndarray, k: int, file_ids: set[str] | None, exact: bool
    ) -> list[tuple[int, float]]:
        """(row id, score) of the k best rows, best first."""
        if self.hnsw is not None and not exact and file_ids is None:
            with self.lock:
                scores, ids = self.hnsw.search(query[None, :], k)
            return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        with self.lock:
            vectors, row_ids = self.vectors, self.row_ids
            if file_ids is not None:
                mask = np.fromiter((f in file_ids for f in self.file_ids), bool, len(self.file_ids))
                vectors, row_ids = vectors[mask], row_ids[mask]
        scores = vectors @ query
        top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
        top = top[np.argsort(-scores[top])]
        return [(int(row_ids[i]), float(scores[i])) for i in top]

    def save(self, path: Path) -> None:
        """The HNSW graph to a file, so a restart need not rebuild it (minutes at 100,000 chunks)."""
        if self.hnsw is not None:
            with self.lock:
                faiss.write_index(self.hnsw, str(path))

    def fill(self, row_ids: np.ndarray, file_ids: list[str], vectors: np.ndarray, saved: Path) -> None:
        """Load a store's rows into an empty index, taking the saved graph when it holds exactly them
        (else building it, and saving it for the next start)."""
        if self.hnsw is not None and saved.exists():
            graph: Any = faiss.read_index(str(saved))  # an IndexIDMap2 over HNSW, as written
            if graph.ntotal == len(row_ids):
                self.row_ids, self.file_ids, self.vectors = row_ids.astype(np.int64), file_ids, vectors
                inner: Any = faiss.downcast_index(graph.index)
                inner.hnsw.efSearch = self.ef_search  # as configured, whatever the file says
                self.hnsw = graph
                return
        self.add(row_ids, file_ids, vectors)
        self.save(saved)
