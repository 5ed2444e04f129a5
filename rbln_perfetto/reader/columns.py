"""Column stores the decoder fills: events in file order (`EventColumns`), and uint64 hash -> id
tables looked up a column at a time (`HashIdTable`)."""

from __future__ import annotations

import numpy as np


class HashIdTable:
    """uint64 hash -> id, looked up a column at a time (sorted keys, binary search)."""

    def __init__(self):
        self.keys = np.zeros(0, dtype=np.uint64)
        self.ids = np.zeros(0, dtype=np.int64)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids of `hashes` (-1 where unknown) and where they are unknown."""
        if not len(self.keys):
            return np.full(len(hashes), -1, dtype=np.int64), np.ones(len(hashes), dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys, hashes), len(self.keys) - 1)
        known = self.keys[pos] == hashes
        return np.where(known, self.ids[pos], -1), ~known

    def add(self, hashes: np.ndarray, ids: np.ndarray) -> None:
        """Merge unknown `hashes` in: linear in the table, so many small additions stay cheap."""
        order = np.argsort(hashes)
        hashes, ids = hashes[order], ids[order]
        at = np.searchsorted(self.keys, hashes)
        self.keys, self.ids = np.insert(self.keys, at, hashes), np.insert(self.ids, at, ids)

    def resolve(self, hashes: np.ndarray, first: np.ndarray, make) -> np.ndarray:
        """ids of sorted unique `hashes`; `make(i)` gives the id of a new hashes[i]. New ones are made in
        the order they first appear (`first`: the row of each), so ids follow file order."""
        ids, unknown = self.lookup(hashes)
        new = np.flatnonzero(unknown)
        new = new[np.argsort(first[new], kind="stable")]
        for u in new.tolist():
            ids[u] = make(u)
        if len(new):
            self.add(hashes[new], ids[new])
        return ids


class EventColumns:
    """Event columns in file order: numpy chunks from scanned runs, Python lists from single packets."""

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
