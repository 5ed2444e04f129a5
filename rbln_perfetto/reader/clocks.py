"""Clock snapshots, and the conversion of a timestamp on any snapshotted clock to the trace clock (BOOTTIME),
as trace_processor's clock tracker does it while it tokenizes (so with the snapshots read so far, in file
order: a one-pass reader sees the same ones):

- each snapshot adds, for every clock in it, a (snapshot id, ns) point to that clock's series for the
  snapshot's set of clocks (its hash), and graph edges between every two of its clocks;
- a timestamp is converted along the shortest path of edges (breadth first, edges in (source, target, hash)
  order), each hop through the latest snapshot whose time on the hop's source clock is at or before the
  timestamp (the first one when none is);
- a clock whose time goes backwards between snapshots is no longer a source; invalid snapshots (an
  incremental global clock, a clock whose unit or encoding changes, a duplicated clock, BOOTTIME not in
  ns or going backwards) are counted in `invalid_clock_snapshots`;
- incremental (delta-encoded) clocks keep their running value, advanced only when a conversion path exists;
- a TrackEvent whose clock has no path yet (`has_path`) is deferred to the end of the file, then converted
  through every snapshot (trace_processor's eof_deferred_packets_; see decoding.read_deferred).

Arithmetic is trace_processor's: int64 that wraps, with no overflow check (its ClockDomain::ToNs multiplies by
the unit and sums an incremental clock's deltas in plain int64; the oracle's traces 0750 and 0052 show v58.2
keeping a time whose 2**63 us wrapped to 0, and a running sum that overflows and wraps back into range). A
timestamp that comes out negative is invalid: the caller drops its event and counts
`track_event_invalid_timestamp`, as trace_processor does."""

from __future__ import annotations

from bisect import bisect_right
from collections import deque

import numpy as np
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

BOOTTIME = pt.BUILTIN_CLOCK_BOOTTIME
MONOTONIC = pt.BUILTIN_CLOCK_MONOTONIC
_MAX_PATH = 4  # (trace_processor's ClockPath::kMaxLen)


def wrap_int64(value: int) -> int:
    """`value` as int64 arithmetic leaves it (two's complement wrap-around)."""
    return (value + 2**63) % 2**64 - 2**63


def _clock_key(clock_id: int, seq_id: int) -> int:
    """trace_processor's global clock id: clocks 64..127 are scoped to their sequence (its id in the high bits)."""
    return (seq_id << 32) | clock_id if 64 <= clock_id < 128 else clock_id


def _snapshot_hash(keys: list[int]) -> int:
    """trace_processor's snapshot hash: FNV-1a (64 bit) over the clock ids' int64 bytes, cut to 32 bits."""
    h = 0xCBF29CE484222325
    for key in keys:
        for byte in (key % 2**64).to_bytes(8, "little"):
            h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h % 2**32


class _Domain:
    __slots__ = ("multiplier", "incremental", "last_ns", "series")

    def __init__(self, multiplier: int, incremental: bool):
        self.multiplier, self.incremental, self.last_ns = multiplier, incremental, 0
        self.series: dict[int, tuple[list, list]] = {}  # snapshot hash -> (snapshot ids, ns)


class ClockConverter:
    """The snapshots seen so far, converting timestamps to BOOTTIME (see the module's docstring)."""

    def __init__(self, stats):
        self.stats = stats
        self.domains: dict[int, _Domain] = {}
        self.edges: set[tuple[int, int, int]] = set()  # (source clock, target clock, snapshot hash)
        self.non_monotonic: set[int] = set()
        self.snapshot_count = 0
        self._paths: dict[int, list | None] = {}  # clock -> its hops to BOOTTIME (cleared by a snapshot)

    def add(self, snap: pt.ClockSnapshot, seq_id: int) -> None:
        snapshot_id = self.snapshot_count
        self.snapshot_count += 1
        self._paths.clear()
        clocks = [(_clock_key(c.clock_id, seq_id), c) for c in snap.clocks]
        keys = [key for key, _ in clocks]
        h = _snapshot_hash(keys)
        for key, c in clocks:
            multiplier = c.unit_multiplier_ns or 1
            domain = self.domains.get(key)
            if domain is None:
                if c.is_incremental and key < 2**32:  # (only sequence-scoped clocks may be incremental)
                    return self._invalid()
                domain = self.domains[key] = _Domain(multiplier, c.is_incremental)
            elif (domain.multiplier, domain.incremental) != (multiplier, c.is_incremental):
                return self._invalid()
            if key == BOOTTIME and domain.multiplier != 1:
                return self._invalid()
            ns = wrap_int64(wrap_int64(c.timestamp) * domain.multiplier)
            domain.last_ns = ns
            ids, times = domain.series.setdefault(h, ([], []))
            if ids and ids[-1] == snapshot_id:  # the same clock twice in one snapshot
                return self._invalid()
            if times and ns < times[-1]:
                if key == BOOTTIME:
                    return self._invalid()
                self.non_monotonic.add(key)  # (no longer a source: its edges go)
                self.edges = {e for e in self.edges if e[0] != key}
            ids.append(snapshot_id)
            times.append(ns)
        for i, a in enumerate(keys):
            for b in keys[i + 1:]:
                if a not in self.non_monotonic:
                    self.edges.add((a, b, h))
                if b not in self.non_monotonic:
                    self.edges.add((b, a, h))

    def _invalid(self) -> None:
        self.stats["invalid_clock_snapshots"] += 1

    def _path(self, key: int) -> list | None:
        """The hops (source, target, hash) from clock `key` to BOOTTIME, breadth first, or None."""
        if key in self._paths:
            return self._paths[key]
        found = None
        if key in self.domains and BOOTTIME in self.domains:
            by_source: dict[int, list] = {}
            for e in sorted(self.edges):
                by_source.setdefault(e[0], []).append(e)
            queue = deque([(key, [])])
            while queue and found is None:
                node, path = queue.popleft()
                if len(path) >= _MAX_PATH:
                    continue
                for e in by_source.get(node, ()):
                    if e[1] == BOOTTIME:
                        found = path + [e]
                        break
                    queue.append((e[1], path + [e]))
        self._paths[key] = found
        return found

    def _hop(self, edge, ns: int) -> int:
        """The translation of hop `edge` for a timestamp at `ns` on its source clock."""
        src, dst, h = edge
        ids, times = self.domains[src].series[h]
        i = max(bisect_right(times, ns) - 1, 0)
        dst_ids, dst_times = self.domains[dst].series[h]
        return wrap_int64(dst_times[dst_ids.index(ids[i])] - times[i])

    def to_boottime(self, clock_id: int, seq_id: int, ts: int) -> int | None:
        """`ts` (the packet's uint64 field) on clock `clock_id` in BOOTTIME ns (negative: invalid); None
        (counted) when no snapshot links the clock to BOOTTIME."""
        ts = wrap_int64(ts)
        if clock_id == BOOTTIME:
            return ts
        key = _clock_key(clock_id, seq_id)
        path = self._path(key)
        if path is None:
            return self._unlinked(key, 1)
        domain = self.domains[key]
        ns = wrap_int64(ts * domain.multiplier)
        if domain.incremental:
            ns = domain.last_ns = wrap_int64(domain.last_ns + ns)
        for edge in path:
            ns = wrap_int64(ns + self._hop(edge, ns))
        return ns

    def has_path(self, clock_id: int, seq_id: int) -> bool:
        """Whether the snapshots read so far link clock `clock_id` to BOOTTIME (trace_processor's
        HasPathToTraceTime: a packet on a clock without one is deferred to the end of the file)."""
        return clock_id == BOOTTIME or self._path(_clock_key(clock_id, seq_id)) is not None

    def legacy_to_boottime(self, ns: int) -> int:
        """A legacy TrackEvent timestamp (`timestamp_absolute_us` times 1000, wrapped) as trace_processor's
        tokenizer converts it: from MONOTONIC with the snapshots read so far, or kept as it is when none links
        MONOTONIC to BOOTTIME (counted, as trace_processor's failed conversion is; not deferred)."""
        path = self._path(MONOTONIC)
        if path is None:
            self.stats["clock_sync_failure_unknown_source_clock"] += 1
            return ns
        for edge in path:
            ns = wrap_int64(ns + self._hop(edge, ns))
        return ns

    def to_boottime_many(self, clock_id: int, seq_id: int, ts: np.ndarray) -> np.ndarray | None:
        """`to_boottime` of consecutive timestamps (int64, as the uint64 field wraps) of one clock on one
        sequence, a hop at a time; numpy's int64 arithmetic wraps as trace_processor's does."""
        if clock_id == BOOTTIME:
            return ts
        key = _clock_key(clock_id, seq_id)
        path = self._path(key)
        if path is None:
            return self._unlinked(key, len(ts))
        domain = self.domains[key]
        with np.errstate(over="ignore"):
            ns = ts * np.int64(domain.multiplier)
            if domain.incremental:
                ns = np.cumsum(ns) + np.int64(domain.last_ns)
                domain.last_ns = int(ns[-1]) if len(ns) else domain.last_ns
            for src, dst, h in path:
                ids, times = self.domains[src].series[h]
                dst_ids, dst_times = self.domains[dst].series[h]
                translation = np.asarray([wrap_int64(dst_times[dst_ids.index(i)] - t) for i, t in zip(ids, times)],
                                         dtype=np.int64)
                ns = ns + translation[np.maximum(np.searchsorted(np.asarray(times, dtype=np.int64), ns, "right") - 1, 0)]
        return ns

    def _unlinked(self, key: int, count: int) -> None:
        self.stats["clock_sync_failure_unknown_source_clock"] += count
        return None
