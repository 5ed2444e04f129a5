"""Clock snapshots, and the conversion of a timestamp on any snapshotted clock to the trace clock (BOOTTIME).

Arithmetic is trace_processor's: int64 that wraps. A timestamp that comes out negative (a uint64 past
int64, or a delta or offset that overflows) is invalid; the caller drops its event and counts
`track_event_invalid_timestamp`, as trace_processor does."""

from __future__ import annotations

import numpy as np
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

BOOTTIME = pt.BUILTIN_CLOCK_BOOTTIME


LATE_SNAPSHOT = "unsupported_clock_snapshot_after_its_events"
DRIFTING_CLOCK = "unsupported_clock_offset_changing_between_snapshots"


def wrap_int64(value: int) -> int:
    """`value` as int64 arithmetic leaves it (two's complement wrap-around)."""
    return (value + 2**63) % 2**64 - 2**63


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
        self.failed: dict = {}  # clock key -> events dropped for want of a snapshot linking it to BOOTTIME
        self.converted: dict = {}  # clock key -> events moved onto BOOTTIME
        self._pair_offsets: dict = {}  # (clock key, clock key) -> their difference in the first snapshot of both
        self.drifting: set = set()  # clock keys whose difference to another clock changes between snapshots

    def add(self, snap: pt.ClockSnapshot, seq_id: int) -> None:
        entry = {}
        for c in snap.clocks:
            key = _clock_key(c.clock_id, seq_id)
            mult = c.unit_multiplier_ns or 1
            self.multiplier[key] = mult
            entry[key] = wrap_int64(c.timestamp * mult)
            if c.is_incremental:
                self.incremental[key] = entry[key]
        keys = sorted(entry)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                if self._pair_offsets.setdefault((a, b), entry[b] - entry[a]) != entry[b] - entry[a]:
                    self.drifting.update((a, b))
        self.snapshots.append(entry)
        self._offsets.clear()

    def to_boottime(self, clock_id: int, seq_id: int, ts: int) -> int | None:
        key = (clock_id, seq_id if 64 <= clock_id < 128 else 0)  # (inline: called once per packet)
        last = self.incremental.get(key)
        if last is not None:
            ns = self.incremental[key] = wrap_int64(last + ts * self.multiplier[key])
        else:
            ns = wrap_int64(ts * self.multiplier.get(key, 1))
        ns = self._on_boottime(clock_id, key, ns, 1)
        return ns if ns is None else wrap_int64(ns)

    def to_boottime_many(self, clock_id: int, seq_id: int, ts: np.ndarray) -> np.ndarray | None:
        """`to_boottime` of consecutive timestamps (int64, as the uint64 field wraps) of one clock on one
        sequence; numpy's int64 arithmetic wraps as trace_processor's does."""
        key = _clock_key(clock_id, seq_id)
        last = self.incremental.get(key)
        multiplier = self.multiplier.get(key, 1)
        if multiplier != 1:
            ts = ts * np.int64(multiplier)
        if last is not None:
            ns = np.cumsum(ts)
            ns += np.int64(wrap_int64(last))
            self.incremental[key] = int(ns[-1])
        else:
            ns = ts
        return self._on_boottime(clock_id, key, ns, len(ts))

    def _on_boottime(self, clock_id: int, key, ns, count: int):
        """`ns` of clock `key` moved onto BOOTTIME; None (and `count` counted) when no snapshot links them."""
        if clock_id == BOOTTIME:
            return ns
        offset = self._offset(key)
        if offset is None:
            self.stats["clock_sync_failure_unknown_source_clock"] += count
            self.failed[key] = self.failed.get(key, 0) + count
            return None
        self.converted[key] = self.converted.get(key, 0) + count
        return ns + (np.int64(wrap_int64(offset)) if isinstance(ns, np.ndarray) else offset)

    def count_refusals(self) -> None:
        """After the whole trace, what this one-pass converter cannot answer as trace_processor does, counted
        in stats (the backend warns) rather than answered differently:
        - events dropped because their clock's snapshot came only later in the file (trace_processor
          converts them through it);
        - events of a clock whose offset to BOOTTIME changes between snapshots (trace_processor picks the
          snapshot by the event's own time, this reader the latest one read)."""
        late = sum(n for key, n in self.failed.items() if self._path(key) is not None)
        if late:
            self.stats[LATE_SNAPSHOT] += late
        if self.drifting:
            drifted = 0
            for key, n in self.converted.items():
                path = self._path(key) or []
                if key in self.drifting or any(dst in self.drifting for _, dst in path):
                    drifted += n
            if drifted:
                self.stats[DRIFTING_CLOCK] += drifted

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
