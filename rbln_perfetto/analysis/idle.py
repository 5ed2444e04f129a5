"""Where each device waits, and why: the gaps in a device's compute, each attributed to what the
run was doing instead.

A device (a (rank, device) pair in a merged trace) is idle when none of its commands runs. Its
gaps are those between its invocations, the time before its first and after its last command within
the run, and gaps between two ops (a command, or a split op, whose commands run back to back) of one
invocation of at least `min_gap_ms`. Each instant of a gap goes to the first of these that covers it:

    untraced      an untraced stretch (`profile(steps=...)`): the trace holds nothing of it; no idle time
    done          after the device's last invocation: it has nothing left to run
    dma           a copy to or from this device, or a transfer to or from another rank (its DMA track)
    other_device  an invocation on another device of its rank that ended by the time this device
                  resumed, so that it can have produced this device's next input
    other_rank    the same, on another rank of a merged trace (the detail names the rank)
    host          host work (a Host slice: tokenize, scheduler step, ...)
    unrecorded    nothing the trace records

`idle(trace)` gives one row per device (count, total, median, max, share of the traced run span, time per
cause, the main cause); `idle(trace, gaps=True)` one row per gap.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..query.trace_model import (DEVICE_TRACKS, RUN_SPAN_ROW, in_category, not_untraced, unit_device, unit_rank,
                                 with_ctes)
from .sources import opened
from .trace_sql import Units, containing, invocations, untraced

CAUSES = ("untraced", "done", "dma", "other_device", "other_rank", "host", "unrecorded")  # in priority order
NOT_IDLE = ("untraced",)  # causes whose time is no idle time
DEFAULT_MIN_GAP_MS = 0.01

_GAPS = with_ctes(DEVICE_TRACKS, f"""ordered AS (
  SELECT s.track_id, s.ts, s.ts + s.dur AS end_ts, lag(s.ts + s.dur) OVER w AS prev_end, lead(s.ts) OVER w AS next_ts
  FROM slice s WHERE {in_category('Compute')} AND s.depth = 0 AND s.dur >= 0
  WINDOW w AS (PARTITION BY s.track_id ORDER BY s.ts, s.id))""") + """
SELECT track_id, prev_end, ts, end_ts, prev_end IS NULL AS is_first, next_ts IS NULL AS is_last
FROM ordered WHERE prev_end IS NULL OR next_ts IS NULL OR ts > prev_end
ORDER BY track_id, ts"""

_COVERS = with_ctes(DEVICE_TRACKS) + f"""
SELECT s.track_id, s.ts, s.ts + s.dur AS end_ts, s.name FROM slice s
WHERE {in_category('Workload', 'Host', 'DMA')} AND s.depth = 0 AND s.dur >= 0 AND {not_untraced()}
ORDER BY s.ts, s.id"""

GAP_COLUMNS = ["rank", "device", "kind", "start_ms", "dur_ms", "cause", "detail", "before", "after",
               *(f"{c}_ms" for c in CAUSES)]
DEVICE_COLUMNS = ["rank", "device", "gaps", "idle_ms", "idle_pct", "median_ms", "max_ms", *(f"{c}_ms" for c in CAUSES),
                  "main_cause"]


def _attribute(lo: int, hi: int, classes) -> tuple[list[int], list[str]]:
    """Time of [lo, hi) per class, each instant to the first class covering it, and per class the
    name of the interval that covered the most of it. `classes`: lists of (start, end, name)."""
    uncovered = [(lo, hi)]
    times, names = [], []
    for intervals in classes:
        got: dict[str, int] = {}
        for s, e, name in intervals:
            rest = []
            for a, b in uncovered:
                x, y = max(a, s), min(b, e)
                if x < y:
                    got[name] = got.get(name, 0) + y - x
                    rest += [(a, x)] if a < x else []
                    rest += [(y, b)] if y < b else []
                else:
                    rest.append((a, b))
            uncovered = rest
        times.append(sum(got.values()))
        names.append(max(got, key=lambda k: (got[k], k)) if got else "")
    times.append(sum(b - a for a, b in uncovered))
    names.append("")
    return times, names


class _Intervals:
    """Intervals sorted by start, for finding those that overlap a window."""

    def __init__(self, starts, ends, names):
        order = np.lexsort([ends, starts])
        self.starts, self.ends = np.asarray(starts)[order], np.asarray(ends)[order]
        self.names = [names[i] for i in order]
        self.longest = int((self.ends - self.starts).max()) if len(order) else 0

    def overlapping(self, lo: int, hi: int, ending_by: int | None = None):
        first = int(np.searchsorted(self.starts, lo - self.longest, side="left"))
        last = int(np.searchsorted(self.starts, hi, side="left"))
        window = zip(self.starts[first:last], self.ends[first:last], self.names[first:last])
        return [(int(s), int(e), n) for s, e, n in window
                if e > lo and (ending_by is None or e <= ending_by)]


def _gap_rows(trace, min_gap_ns: int):
    units = Units(trace)
    inv = invocations(trace)
    cmds = trace.query(_GAPS)
    covers = trace.query(_COVERS)
    span = trace.query(RUN_SPAN_ROW)
    if cmds.empty or span.lo.isna().all():
        return [], 0, 0, 0
    covers["category"] = units.category(covers.track_id)
    covers["unit"] = units.unit(covers.track_id)
    covers["name"] = units.own_names(covers.name, covers.track_id)
    cmds["unit"] = units.unit(cmds.track_id)
    run_start, run_end = int(span.lo.iloc[0]), int(span.hi.iloc[0])
    skipped = untraced(trace)
    untraced_iv = _Intervals(skipped.ts.to_numpy(), (skipped.ts + skipped.dur).to_numpy(), list(skipped.name))
    # The invocation holding the op after each gap, and the one holding the op before it.
    unit = cmds.unit.to_numpy()
    after = containing(cmds.ts.to_numpy(np.int64), cmds.end_ts.to_numpy(np.int64), unit, inv)
    prev_end = cmds.prev_end.fillna(run_start).to_numpy(np.int64)
    before = containing(prev_end - 1, prev_end - 1, unit, inv)
    names = list(inv.name) + [""]
    last_end = (inv.ts + inv.dur).groupby(inv.unit).max().to_dict() if len(inv) else {}
    host = covers[covers.category == "Host"]
    host_iv = _Intervals(host.ts.to_numpy(), host.end_ts.to_numpy(), list(host.name))
    work = covers[covers.category == "Workload"]
    rows = []
    for d in np.unique(unit):
        dma = covers[(covers.category == "DMA") & (covers.unit == d)]
        dma_iv = _Intervals(dma.ts.to_numpy(), dma.end_ts.to_numpy(), list(dma.name))
        others = []
        for same_rank in (True, False):
            other = work[(work.unit != d) & ((work.unit.map(unit_rank) == unit_rank(d)) == same_rank)]
            others.append(_Intervals(other.ts.to_numpy(), other.end_ts.to_numpy(),
                                     [f"{n} ({units.label(x)})" for n, x in zip(other.name, other.unit)]))
        done_at = int(last_end.get(d, run_end))
        done_iv = _Intervals(np.array([done_at]), np.array([max(run_end, done_at)]), [""])
        gaps = []
        for i in np.flatnonzero(unit == d).tolist():
            r = cmds.iloc[i]
            if r.is_first:
                gaps.append(("before first command", run_start, int(r.ts), -1, after[i]))
            elif int(r.ts) > prev_end[i]:
                same = before[i] == after[i] and after[i] >= 0
                if not same or int(r.ts) - prev_end[i] >= min_gap_ns:
                    gaps.append(("between commands" if same else "between invocations", int(prev_end[i]), int(r.ts),
                                 before[i], after[i]))
            if r.is_last:
                gaps.append(("after last command", int(r.end_ts), run_end, after[i], -1))
        for kind, lo, hi, inv_before, inv_after in gaps:
            if hi <= lo:
                continue
            # Another device's work explains a wait only for a next invocation of this device: after its
            # last one there is no input to wait for.
            waited_on = [iv.overlapping(lo, hi, ending_by=hi) if inv_after >= 0 else [] for iv in others]
            classes = [untraced_iv.overlapping(lo, hi), done_iv.overlapping(lo, hi), dma_iv.overlapping(lo, hi),
                       *waited_on, host_iv.overlapping(lo, hi)]
            times, details = _attribute(lo, hi, classes)
            idle_times = [0 if c in NOT_IDLE else t for c, t in zip(CAUSES, times)]
            main = int(np.argmax(idle_times)) if any(idle_times) else int(np.argmax(times))
            rows.append({"rank": unit_rank(d), "device": unit_device(d), "kind": kind,
                         "start_ms": (lo - run_start) / 1e6, "dur_ms": (hi - lo) / 1e6,
                         "cause": CAUSES[main], "detail": details[main], "before": names[inv_before],
                         "after": names[inv_after], **{f"{c}_ms": t / 1e6 for c, t in zip(CAUSES, times)}})
    return rows, run_start, run_end, int(span.traced_ns.iloc[0])


def idle(trace, min_gap_ms: float = DEFAULT_MIN_GAP_MS, gaps: bool = False, *, backend: str = "auto",
         tp_bin: str | None = None):
    """Idle time per device with its causes (`gaps=True`: one row per gap). `trace`: a trace file,
    a run directory or an open `Trace`."""
    import pandas as pd

    if not min_gap_ms >= 0:
        raise UsageError(f"min_gap_ms={min_gap_ms} must be >= 0")
    with opened(trace, backend, tp_bin) as tr:
        rows, run_start, run_end, traced_ns = _gap_rows(tr, round(min_gap_ms * 1e6))
    table = pd.DataFrame(rows, columns=GAP_COLUMNS)
    if gaps:
        return table
    span_ms = traced_ns / 1e6
    out = []
    for (rank, device), g in table.groupby(["rank", "device"], sort=True):
        per_cause = {f"{c}_ms": float(g[f"{c}_ms"].sum()) for c in CAUSES}
        main = max((c for c in CAUSES if c not in NOT_IDLE), key=lambda c: per_cause[f"{c}_ms"])
        details = g[g.cause == main].groupby("detail").dur_ms.sum()
        detail = details.idxmax() if len(details) and details.max() > 0 and details.idxmax() else ""
        idle_ms = float(g.dur_ms.sum()) - sum(per_cause[f"{c}_ms"] for c in NOT_IDLE)
        out.append({"rank": int(rank), "device": int(device), "gaps": len(g), "idle_ms": idle_ms,
                    "idle_pct": 100.0 * idle_ms / span_ms if span_ms else 0.0,
                    "median_ms": float(g.dur_ms.median()), "max_ms": float(g.dur_ms.max()), **per_cause,
                    "main_cause": main + (f": {detail}" if detail else "")})
    return pd.DataFrame(out, columns=DEVICE_COLUMNS)
