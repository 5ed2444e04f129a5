"""Column stores the decoder fills: events in file order (`EventColumns`), uint64 hash -> id
tables looked up a column at a time (`HashIdTable`), and the distinct values of a column (`distinct`,
`values_of`)."""

from __future__ import annotations

import sys

import numpy as np

# From this many values `distinct` hashes with pandas (imported then) rather than sorting with numpy.
PANDAS_FROM = 1 << 18


def distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uniques, first, inverse) of `values`, the uniques in order of first appearance: np.unique's
    return_index and return_inverse, reordered. Large columns go through pandas' factorize (hashing
    rather than sorting, several times faster on a long run); small ones stay in numpy, so that
    loading a small trace does not import pandas (its import alone costs more than such a load)."""
    if len(values) >= PANDAS_FROM or "pandas" in sys.modules:
        import pandas as pd

        inverse, uniques = pd.factorize(values)
        seen = np.maximum.accumulate(inverse) if len(inverse) else inverse
        first = np.flatnonzero(np.r_[True, seen[1:] > seen[:-1]]) if len(inverse) else np.zeros(0, dtype=np.int64)
        return np.asarray(uniques), first, inverse
    uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # the sorted uniques -> first-appearance order
    rank = np.empty(len(order), dtype=np.intp)
    rank[order] = np.arange(len(order))
    return uniques[order], first[order], rank[inverse.reshape(-1)]


def values_of(column: np.ndarray) -> list:
    """The sorted distinct values of a column that mostly holds one (a run's sequence, its clock)."""
    if len(column) and column.min() == column.max():
        return [column[0].item()]
    return np.unique(column).tolist()


class HashIdTable:
    """uint64 hash -> id, looked up a column at a time: an open-addressing table in two numpy buffers,
    probed by the C scanner (`table_lookup`, `table_insert`), which is there whenever the reader meets
    hashes (they come from its scan)."""

    def __init__(self, scanner):
        self.scanner = scanner
        self.keys = np.zeros(1024, dtype=np.uint64)  # 0: an empty slot (the scan's hashes are never 0)
        self.ids = np.zeros(1024, dtype=np.int64)
        self.count = 0

    def ids_of(self, hashes: np.ndarray, make) -> np.ndarray:
        """ids of `hashes` (one per row); `make(i)` gives the id of a hash not seen before, called for the
        first row i of each, in row order, so that ids follow file order."""
        hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        ids = np.frombuffer(self.scanner.table_lookup(self.keys, self.ids, hashes), dtype=np.int64)
        unknown = np.flatnonzero(ids < 0)
        if len(unknown):
            ids = ids.copy()
            new, first, inverse = distinct(hashes[unknown])
            made = np.fromiter((make(int(i)) for i in unknown[first].tolist()), dtype=np.int64, count=len(first))
            self._insert(new, made)
            ids[unknown] = made[inverse]
        return ids

    def _insert(self, hashes: np.ndarray, ids: np.ndarray) -> None:
        size = len(self.keys)
        while 2 * (self.count + len(hashes)) > size:  # (at most half full: probes stay short)
            size *= 2
        if size != len(self.keys):
            used = self.keys != 0
            old_keys, old_ids = self.keys[used], self.ids[used]
            self.keys, self.ids = np.zeros(size, dtype=np.uint64), np.zeros(size, dtype=np.int64)
            self.scanner.table_insert(self.keys, self.ids, old_keys, old_ids)
        self.count += self.scanner.table_insert(self.keys, self.ids, hashes, np.ascontiguousarray(ids, dtype=np.int64))


class EventColumns:
    """Event columns in file order: numpy chunks from scanned batches, Python lists from single packets."""

    NAMES = ("ts", "type", "track", "name_prefix", "name_id", "cat_id", "argset")
    # As narrow as their values allow: a 1M-slice trace holds 2M events, all alive until slices are built.
    DTYPES = {"ts": np.int64, "type": np.int8, "track": np.uint64, "name_prefix": np.int64, "name_id": np.int32,
              "cat_id": np.int32, "argset": np.int32}

    def __init__(self):
        self.chunks = {k: [] for k in self.NAMES}
        self.pending = {k: [] for k in self.NAMES}
        self.counter_chunks: list = []
        self.counter_pending: list = []
        self.count = 0

    def add(self, ts, kind, track, name_prefix, name_id, cat_id, argset) -> None:
        for k, v in zip(self.NAMES, (ts, kind, track, name_prefix, name_id, cat_id, argset)):
            self.pending[k].append(v)
        self.count += 1

    def flush(self) -> None:
        if self.pending["ts"]:
            for k in self.NAMES:
                self.chunks[k].append(np.asarray(self.pending[k], dtype=self.DTYPES[k]))
                self.pending[k] = []
        if self.counter_pending:
            self.counter_chunks.append(np.asarray(self.counter_pending, dtype=np.float64))
            self.counter_pending = []

    def add_arrays(self, columns: dict, counters: np.ndarray) -> None:
        self.flush()
        for k in self.NAMES:
            self.chunks[k].append(columns[k].astype(self.DTYPES[k], copy=False))
        self.counter_chunks.append(counters)
        self.count += len(columns["ts"])

    def column(self, k: str) -> np.ndarray:
        """Column `k` in one array; its chunks are released (each column is taken once)."""
        self.flush()
        parts = self.chunks.pop(k)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.DTYPES[k])

    def counters(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self.counter_chunks) if self.counter_chunks else np.zeros(0)
