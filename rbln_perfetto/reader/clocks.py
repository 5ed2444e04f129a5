"""Clock snapshots, and the conversion of a timestamp on any snapshotted clock to the trace clock (BOOTTIME)."""

from __future__ import annotations

import numpy as np
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

BOOTTIME = pt.BUILTIN_CLOCK_BOOTTIME


def _clock_key(clock_id: int, seq_id: int) -> tuple[int, int]:
    """Clocks 64..127 are scoped to their sequence; the others are global."""
    return clock_id, seq_id if 64 <= clock_id < 128 else 0


class ClockConverter:
    """The snapshots seen so far, and each incremental clock's last value, converting timestamps to BOOTTIME."""

    def __init__(self, stats):
        self.stats = stats
        self.snapshots: list[dict] = []  # clock key -> ns
        self.incremental: dict = {}  # clock key -> last absolute ns
        self.multiplier: dict = {}
        self._offsets: dict = {}  # clock key -> offset to BOOTTIME through the latest snapshot

    def add(self, snap: pt.ClockSnapshot, seq_id: int) -> None:
        entry = {}
        for c in snap.clocks:
            key = _clock_key(c.clock_id, seq_id)
            mult = c.unit_multiplier_ns or 1
            self.multiplier[key] = mult
            entry[key] = c.timestamp * mult
            if c.is_incremental:
                self.incremental[key] = c.timestamp * mult
        self.snapshots.append(entry)
        self._offsets.clear()

    def to_boottime(self, clock_id: int, seq_id: int, ts: int) -> int | None:
        key = (clock_id, seq_id if 64 <= clock_id < 128 else 0)  # (inline: called once per packet)
        last = self.incremental.get(key)
        if last is not None:
            ns = self.incremental[key] = last + ts * self.multiplier[key]
        else:
            ns = ts * self.multiplier.get(key, 1)
        return self._on_boottime(clock_id, key, ns, 1)

    def to_boottime_many(self, clock_id: int, seq_id: int, ts: np.ndarray) -> np.ndarray | None:
        """`to_boottime` of consecutive timestamps of one clock on one sequence."""
        key = _clock_key(clock_id, seq_id)
        last = self.incremental.get(key)
        if last is not None:
            ns = last + np.cumsum(ts * self.multiplier[key])
            self.incremental[key] = int(ns[-1])
        else:
            ns = ts * self.multiplier.get(key, 1)
        return self._on_boottime(clock_id, key, ns, len(ts))

    def _on_boottime(self, clock_id: int, key, ns, count: int):
        """`ns` of clock `key` moved onto BOOTTIME; None (and `count` counted) when no snapshot links them."""
        if clock_id == BOOTTIME:
            return ns
        offset = self._offset(key)
        if offset is None:
            self.stats["clock_sync_failure_unknown_source_clock"] += count
            return None
        return ns + offset

    def _offset(self, key) -> int | None:
        offset = self._offsets.get(key)
        if offset is None:
            path = self._path(key)
            if path is None:
                return None
            offset = 0
            for src, dst in path:
                snap = self.snapshots[max(i for i, s in enumerate(self.snapshots) if src in s and dst in s)]
                offset += snap[dst] - snap[src]
            self._offsets[key] = offset
        return offset

    def _path(self, key):
        """The clock-to-clock steps from `key` to BOOTTIME through the snapshots (breadth first), or None."""
        target = (BOOTTIME, 0)
        frontier, seen = [(key, [])], {key}
        while frontier:
            node, path = frontier.pop(0)
            for snap in self.snapshots:
                if node not in snap:
                    continue
                for other in snap:
                    if other in seen:
                        continue
                    step = path + [(node, other)]
                    if other == target:
                        return step
                    seen.add(other)
                    frontier.append((other, step))
        return None
