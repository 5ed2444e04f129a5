"""Rank clocks: how the times of each rank of a run split across processes go onto rank 0's clock.

Each rank recorded its offset from rank 0 (`pipeline.ranks.exchange_clocks`, at the start and at the
end of the run); its transfers with rank 0 narrow it further, since a message is received after it
was sent. `merge` moves a rank's times by minus one constant (`RankClock.offset_ns`), so its
durations and relative times stay as captured, and shows the numbers as args of the rank's Run slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..recorder.capture import CaptureInfo, iter_records


@dataclass
class RankClock:
    """How a rank's times are moved onto rank 0's clock: minus `offset_ns`, within `uncertainty_ns`.

    The clock exchanges bound the offset (their mean, within the larger uncertainty plus half the drift
    between them); every transfer bounds it too, since a message is received after it was sent: a
    recv on this rank that started at r for a send of rank 0 that started at s means offset < r - s,
    and a send of this rank received by rank 0 the other way round. The offset used is the middle of
    what both allow (the exchanges alone when they contradict the transfers, which clock drift can do).
    """

    offset_ns: int = 0  # this rank's clock minus rank 0's
    uncertainty_ns: int = 0
    exchange_offset_ns: int = 0  # as the clock exchanges alone measured it
    exchange_uncertainty_ns: int = 0
    drift_ns: int | None = None  # end exchange minus start exchange; None without both
    transfers_bound: bool = False  # the transfers narrowed it
    measured: bool = True  # False: no exchange recorded (the rank died first); left unaligned

    @classmethod
    def of(cls, info: CaptureInfo, bounds: tuple[float, float] = (-math.inf, math.inf)) -> RankClock:
        if info.rank == 0:
            return cls()
        syncs = {s.label: s for s in info.clock_syncs}
        if not syncs:
            return cls(measured=False)
        offsets = [s.offset_ns for s in syncs.values()]
        uncertainty = max(s.uncertainty_ns for s in syncs.values())
        drift = None
        if "start" in syncs and "end" in syncs:
            drift = syncs["end"].offset_ns - syncs["start"].offset_ns
            uncertainty += (abs(drift) + 1) // 2
        offset = round(sum(offsets) / len(offsets))
        clock = cls(offset, uncertainty, offset, uncertainty, drift)
        lo, hi = max(offset - uncertainty, bounds[0]), min(offset + uncertainty, bounds[1])
        if lo <= hi and (lo, hi) != (offset - uncertainty, offset + uncertainty):
            clock.offset_ns, clock.uncertainty_ns = (lo + hi) // 2, (hi - lo + 1) // 2
            clock.transfers_bound = True
        return clock

    def annotations(self, rank: int) -> list[pt.DebugAnnotation]:
        if not self.measured:
            how = "not aligned: the rank recorded no clock exchange"
        else:
            how = ("rank 0's clock; this rank's times moved by -clock_offset_ns (+-clock_uncertainty_ns), measured "
                   "over the process group at the run's start and end (NTP style)"
                   + (", narrowed by its transfers (each received after it was sent)" if self.transfers_bound else ""))
        out = [pt.DebugAnnotation(name="rank", int_value=rank),
               pt.DebugAnnotation(name="clock_offset_ns", int_value=self.offset_ns),
               pt.DebugAnnotation(name="clock_uncertainty_ns", int_value=self.uncertainty_ns),
               pt.DebugAnnotation(name="clock_exchange_offset_ns", int_value=self.exchange_offset_ns),
               pt.DebugAnnotation(name="clock_exchange_uncertainty_ns", int_value=self.exchange_uncertainty_ns),
               pt.DebugAnnotation(name="clock_alignment", string_value=how)]
        if self.drift_ns is not None:
            out.append(pt.DebugAnnotation(name="clock_drift_ns", int_value=self.drift_ns))
        return out


def transfer_starts(capture: Path) -> dict[int, tuple[str, int, int]]:
    """flow key -> (direction, peer, start_ns) of every transfer a capture recorded."""
    out = {}
    for _, record in iter_records(capture):
        if record.WhichOneof("kind") == "transfer":
            t = record.transfer
            out[t.flow] = (t.direction, t.peer, t.start_ns)
    return out


def causal_bounds(rank: int, own: dict, rank0: dict) -> tuple[float, float]:
    """The (low, high) bounds on `rank`'s clock offset from rank 0 that its transfers with rank 0 set:
    each message is received after it was sent (strictly, so a flow's ends sort in order)."""
    lo, hi = -math.inf, math.inf
    for flow, (direction, peer, start) in own.items():
        other = rank0.get(flow)
        if peer != 0 or other is None or other[1] != rank:
            continue
        if direction == "recv":  # rank 0 sent at other[2] (its clock): start - offset > other[2]
            hi = min(hi, start - other[2] - 1)
        else:  # rank 0 received at other[2]: other[2] > start - offset
            lo = max(lo, start - other[2] + 1)
    return lo, hi
