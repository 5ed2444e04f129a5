"""Links into the Perfetto UI: the URL format, and for each row of a report or check a link that
opens the trace at that row's slice or time range.

The UI reads its arguments from the route (`{origin}/#!/?a=1&b=2`; Perfetto's `ui/src/core/router.ts`),
every value a string (`ui/src/public/route_schema.ts`):

    url             a trace to fetch (a server that sends `Access-Control-Allow-Origin` for the UI)
    rpc_port        a trace_processor `--httpd` on another port than 9001 (`serve --port`)
    ts, dur         select the slice with this start and duration and scroll to it
                    (`dev.perfetto.DeeplinkQuerystring`: `select id from slice where ts = .. and dur = ..`)
    visStart/End    the visible window, in trace ns; ignored unless inside the trace's bounds
    startupCommands a JSON list of {"id": ..., "args": [strings]} run once the trace is loaded
                    (`ui_views`, docs/visualization/deep-linking-to-perfetto-ui)

The deep-link arguments apply to the first trace a UI tab loads, however it is loaded: from `url`,
from the trace_processor that `rbln-perfetto serve` runs on 127.0.0.1:9001 ("Use loaded trace"), or
from the file the user opens in that tab. So a row's link carries no `url` unless one is given: it
opens the trace `serve` serves, or the file opened by hand. (`open` serves its file once, for one
fetch: a link to it would outlive the server.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

from ..query.reports import DMA_ROWS
from ..query.trace_model import DEVICE_TRACKS, RUN_SPAN_ROW, with_ctes
from .idle import DEFAULT_MIN_GAP_MS, idle
from .trace_sql import invocations, ops

DEFAULT_ORIGIN = "https://ui.perfetto.dev"
PAD = 0.1  # a range's window: the range and a tenth of its length each side


@dataclass(frozen=True)
class Target:
    """Where a link opens the trace: the window [ts, ts + dur) and, with `select`, the slice that
    starts at ts and lasts dur."""

    ts: int
    dur: int
    select: bool = False


def ui_link(origin: str = DEFAULT_ORIGIN, *, url: str | None = None, target: Target | None = None,
            bounds: tuple[int, int] | None = None, commands=None) -> str:
    """The UI link with these route arguments. `bounds` (the trace's first and last ns) clamp the
    window, which the UI ignores when it reaches outside them; `commands`: `ui_views.Command`s."""
    args: list[tuple[str, str]] = []
    if url is not None:
        args.append(("url", url))
    if target is not None:
        if target.select:
            args += [("ts", str(target.ts)), ("dur", str(target.dur))]
        lo, hi = window(target, bounds)
        args += [("visStart", str(lo)), ("visEnd", str(hi))]
    # (`url` keeps its `:` and `/`, as the UI's own links write it; everything else is encoded, `+` too:
    # the router reads a `+` as a space)
    query = [f"{k}={quote(v, safe=':/' if k == 'url' else '')}" for k, v in args]
    if commands:
        query.append(startup_arg(commands))
    return f"{origin}/#!/" + (f"?{'&'.join(query)}" if query else "")


def startup_arg(commands) -> str:
    """The `startupCommands=` route argument: the commands as JSON, URL-encoded."""
    return "startupCommands=" + quote(json.dumps([c.as_json() for c in commands], separators=(",", ":")), safe="")


def window(target: Target, bounds: tuple[int, int] | None = None) -> tuple[int, int]:
    """[visStart, visEnd] for a target: the range padded by PAD of its length (at least 1 us) each
    side, inside `bounds`."""
    pad = max(int(target.dur * PAD), 1000)
    lo, hi = target.ts - pad, target.ts + target.dur + pad
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        if hi <= lo:  # (a zero-length range at a bound)
            lo, hi = bounds
    return int(lo), int(hi)


_BOUNDS = "SELECT min(ts) AS lo, max(ts + dur) AS hi FROM slice WHERE dur >= 0"


def bounds(tr) -> tuple[int, int] | None:
    """The first and last ns of the trace's slices (within the bounds trace_processor gives the trace)."""
    row = tr.query(_BOUNDS)
    if row.empty or row.lo.isna().all():
        return None
    return int(row.lo.iloc[0]), int(row.hi.iloc[0])


def ns_of_ms(ms) -> int:
    """A report's milliseconds back to the integer ns they were computed from."""
    return int(round(float(ms) * 1e6))


def _longest(frame, keys: dict) -> Target | None:
    """The longest slice (rows: ts, dur) among those of `frame` whose columns equal `keys`."""
    pick = frame
    for k, v in keys.items():
        if v is None or v != v:
            pick = pick[pick[k].isna()]
        else:
            pick = pick[pick[k].astype(str) == str(v)]
    if pick.empty:
        return None
    row = pick.loc[pick.dur.astype(np.int64).idxmax()]
    return Target(int(row.ts), int(row.dur), select=True)


_TRACK_SPANS = with_ctes(DEVICE_TRACKS) + """
SELECT p.name AS device, t.name AS category, min(s.ts) AS ts, max(s.ts + s.dur) - min(s.ts) AS dur
FROM slice s JOIN track t ON t.id = s.track_id JOIN track p ON p.id = t.parent_id
WHERE s.track_id IN (SELECT track_id FROM device_tracks) AND s.dur >= 0
GROUP BY p.name, t.name"""
_DMAS = with_ctes(DEVICE_TRACKS, DMA_ROWS) + "\nSELECT ts, dur, submodule, tensor, source, destination FROM dma_rows WHERE dur >= 0"


def _idle_targets(tr, table, min_gap_ms):
    run_start = int(tr.query(RUN_SPAN_ROW).lo.iloc[0])
    if "kind" in table:  # one row per gap
        return [Target(run_start + ns_of_ms(r.start_ms), ns_of_ms(r.dur_ms)) for r in table.itertuples()]
    gaps = idle(tr, min_gap_ms=DEFAULT_MIN_GAP_MS if min_gap_ms is None else min_gap_ms, gaps=True)
    gaps = gaps[gaps.cause != "untraced"]  # (an untraced stretch is no idle time)
    out = []
    for r in table.itertuples():
        mine = gaps[(gaps["rank"] == r.rank) & (gaps.device == r.device)]
        g = mine.loc[mine.dur_ms.idxmax()] if len(mine) else None
        out.append(None if g is None else Target(run_start + ns_of_ms(g.start_ms), ns_of_ms(g.dur_ms)))
    return out


def _path_targets(tr, table, _):
    if "ts" not in table:  # per layer: an op's, its longest op
        op = ops(tr, names=True)
        return [_longest(op, {"submodule": r.submodule, "layer": r.name}) if r.kind == "op" else None
                for r in table.itertuples()]
    if "dur_ms" in table:  # per element
        return [Target(int(r.ts), ns_of_ms(r.dur_ms), select=r.kind != "gap") for r in table.itertuples()]
    return [Target(int(r.ts), ns_of_ms(r.on_path_ms)) for r in table.itertuples()]


def _variance_targets(tr, table, _):
    inv = invocations(tr)
    if "sequence_index" in table:  # outliers: the call itself (a layer's: its longest op in that call)
        if (table.by == "layer").any():
            op = ops(tr, names=True, invocations=inv)
            return [_longest(op, {"submodule": r.submodule, "layer": r.layer, "seq": r.sequence_index})
                    for r in table.itertuples()]
        return [_longest(inv, {"submodule": r.submodule, "seq": r.sequence_index}) for r in table.itertuples()]
    if "layer" in table:
        op = ops(tr, names=True, invocations=inv)
        return [_longest(op, {"submodule": r.submodule, "layer": r.layer}) for r in table.itertuples()]
    return [_longest(inv, {"submodule": r.submodule}) for r in table.itertuples()]


def _device_targets(tr, table, _):
    spans = tr.query(_TRACK_SPANS)
    out = []
    for r in table.itertuples():
        hit = spans[(spans.device == r.device) & (spans.category == r.category)]
        out.append(Target(int(hit.ts.iloc[0]), int(hit.dur.iloc[0])) if len(hit) else None)
    return out


def _layer_targets(tr, table, _):
    return _longest_each(ops(tr, names=True), table, ("submodule", "layer"))


def _longest_each(frame, table, keys):
    """Per row of `table`, the longest slice of `frame` with the row's values of `keys`."""
    return [_longest(frame, {k: getattr(r, k) for k in keys}) for r in table.itertuples()]


_TARGETS = {
    "idle": _idle_targets,
    "critical-path": _path_targets,
    "variance": _variance_targets,
    "invocations": lambda tr, table, _: _longest_each(invocations(tr), table, ("submodule", "device")),
    "devices": _device_targets,
    "top_layers": _layer_targets,
    "split_ops": _layer_targets,
    "dma": lambda tr, table, _: _longest_each(tr.query(_DMAS), table,
                                              ("submodule", "tensor", "source", "destination")),
    "ranges": lambda tr, table, _: [Target(int(r.ts), ns_of_ms(r.dur_ms), select=True) for r in table.itertuples()],
}


def report_targets(tr, name: str, table, *, min_gap_ms: float | None = None) -> list:
    """Per row of report `name`'s `table` (as `rbln-perfetto report` prints it), the `Target` its link
    opens, or None where the row has no place in the trace:

        idle            a gap: its range; a device: its longest idle gap
        critical-path   a segment or gap: its range; an element: its slice (gaps: their range); a
                        layer of ops: its longest op
        variance        a submodule or layer: its longest call; an outlier: that call
        invocations     the longest invocation of the submodule on the device
        devices         the span of the device's slices of the category
        top_layers, split_ops   the longest op of the layer (a command, or a split op's parent)
        dma             the longest transfer of the submodule's tensor from that source to that destination
        ranges          the range's slice
    """
    if len(table) == 0:
        return []
    if name not in _TARGETS:
        return [None] * len(table)
    return _TARGETS[name](tr, table, min_gap_ms)


def metric_target(tr, metric: str) -> Target | None:
    """Where a `check` metric's value lies in the trace: `run.*` the run span; `<submodule>.max_ms`
    and `.mean_ms` its longest call; its `.calls` and `.total_ms` the span of its calls;
    `device<d>.*` the span of the device's invocations (`idle_pct`: its longest idle gap)."""
    head, _, value = metric.rpartition(".")
    if head == "run":
        span = tr.query(RUN_SPAN_ROW)
        return None if span.lo.isna().all() else Target(int(span.lo.iloc[0]), int(span.ns.iloc[0]))
    inv = invocations(tr)
    if head.startswith("device") and head[6:].isdigit():
        device = int(head[6:])
        if value == "idle_pct":
            gaps = idle(tr, gaps=True)
            gaps = gaps[(gaps.device == device) & (gaps.cause != "untraced")]
            if gaps.empty:
                return None
            g = gaps.loc[gaps.dur_ms.idxmax()]
            run_start = int(tr.query(RUN_SPAN_ROW).lo.iloc[0])
            return Target(run_start + ns_of_ms(g.start_ms), ns_of_ms(g.dur_ms))
        mine = inv[inv.device == device]
    else:
        mine = inv[inv.submodule == head]
        if value in ("max_ms", "mean_ms"):
            return _longest(mine, {})
    if mine.empty:
        return None
    lo, hi = int(mine.ts.min()), int((mine.ts + mine.dur).max())
    return Target(lo, hi - lo)
