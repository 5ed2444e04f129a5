"""Pre-configured Perfetto UI views: the startup commands `rbln-perfetto open TRACE --view VIEW` puts
in the link it opens, so that the UI shows the answers, not only the raw slices.

Only commands of the UI's stable automation surface are used (Perfetto's
docs/visualization/commands-automation-reference.md: ids, argument order and types, every argument
a string), each run in order once the trace has loaded; a command the UI does not know or allow is
skipped and the rest still run (`ui/src/core/load_trace.ts`).

    every view      the device groups expanded; each device's Workload and Compute tracks pinned;
                    a workspace "rbln devices" with every device group in it
    overview        notes at the top finding of each of idle, critical-path and layers
    idle            a debug track per device of its idle gaps, and notes at the largest gaps
                    with their cause (`idle.idle`)
    critical-path   a debug track of the critical path's segments, and notes at the largest
    layers          a query tab with the per-layer totals (the `top_layers` report), and notes at
                    the longest op of the top layers

The hosted UI has no `rbln` SQL package, so each query is self-contained SQL over the tables
trace_processor fills (`slice`, `track`, `args` through `extract_arg`): the idle gaps are found in
SQL, the same gaps `idle(trace, gaps=True)` finds; the critical path is a longest-path walk that
SQL does not express cheaply, so its segments, found here, travel in the query as literal rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..query.reports import REPORTS
from ..query.trace_model import MODEL, RUN_SPAN_ROW, in_category, with_ctes
from .critical_path import find, segments
from .idle import idle
from .trace_sql import Units
from .ui_links import ns_of_ms, report_targets

VIEWS = ("overview", "idle", "critical-path", "layers")
WORKSPACE = "rbln devices"
NOTES = 3  # notes per finding
MAX_PATH_ROWS = 500  # critical-path segments carried in a link (the longest, beyond that): a link stays
# well under the 128 KiB one command-line argument may hold (`webbrowser` hands it to a browser process)
# A device group's name, and its tracks' paths (the UI joins a track's path with " > "). A UI that
# predates matching by path matches the pattern against names: the optional prefix then still matches.
DEVICE_GROUP = r"^(Rank \d+ / )?Device \d+$"
DEVICE_TRACK_PATH = r"^((Rank \d+ / )?Device \d+ > )?(Workload|Compute)$"


@dataclass(frozen=True)
class Command:
    """One UI command: its stable id and its arguments (strings)."""

    id: str
    args: tuple[str, ...]

    def as_json(self) -> dict:
        return {"id": self.id, "args": list(self.args)}


def _sql_text(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def idle_gaps_sql(min_gap_ns: int = 10_000) -> str:
    """Every idle gap of every device as slices (ts, dur, name: the gap's kind, device: its label),
    as `idle(trace, gaps=True)` finds them: before a device's first op and after its last (within
    the run span), between two invocations, and between two ops of one invocation of at least
    `min_gap_ns`. A gap over an untraced stretch says so in its name (that part is no idle time)."""
    return with_ctes(*MODEL, f"""ordered AS (
  SELECT d.unit, d.rank, d.device, d.prefix, s.ts, s.ts + s.dur AS end_ts,
         lag(s.ts + s.dur) OVER w AS prev_end, lead(s.ts) OVER w AS next_ts
  FROM slice s JOIN device_tracks d ON d.track_id = s.track_id
  WHERE {in_category('Compute')} AND s.depth = 0 AND s.dur >= 0
  WINDOW w AS (PARTITION BY s.track_id ORDER BY s.ts, s.id)),
inner_gaps AS (
  SELECT o.*, EXISTS (
      SELECT 1 FROM invocations i WHERE i.unit = o.unit AND i.ts <= o.prev_end - 1 AND o.prev_end - 1 <= i.ts + i.dur
        AND i.ts <= o.ts AND o.end_ts <= i.ts + i.dur) AS same
  FROM ordered o WHERE o.prev_end IS NOT NULL AND o.ts > o.prev_end),
gaps AS (
  SELECT o.rank, o.device, o.prefix, 'before first command' AS kind, r.lo AS ts, o.ts - r.lo AS dur
  FROM ordered o, run_span r WHERE o.prev_end IS NULL AND o.ts > r.lo
  UNION ALL
  SELECT rank, device, prefix, CASE WHEN same THEN 'between commands' ELSE 'between invocations' END, prev_end,
         ts - prev_end
  FROM inner_gaps WHERE NOT same OR ts - prev_end >= {int(min_gap_ns)}
  UNION ALL
  SELECT o.rank, o.device, o.prefix, 'after last command', o.end_ts, r.hi - o.end_ts
  FROM ordered o, run_span r WHERE o.next_ts IS NULL AND r.hi > o.end_ts)""") + """
SELECT g.ts, g.dur,
       CASE WHEN EXISTS (SELECT 1 FROM untraced u WHERE u.ts < g.ts + g.dur AND g.ts < u.ts + u.dur)
            THEN g.kind || ' (over an untraced stretch)' ELSE g.kind END AS name,
       CASE WHEN g.prefix = '' THEN 'device ' || g.device ELSE 'rank ' || g.rank || ' device ' || g.device END
         AS device
FROM gaps g
ORDER BY g.ts, device"""


def critical_path_sql(segments, merged: bool = False) -> str | None:
    """The critical path's segments (`critical_path.segments`) as slices (ts, dur: its time on the
    path, name, kind); None for an empty path. `merged`: name each invocation's rank too."""
    rows = segments[segments.on_path_ms > 0]
    if len(rows) > MAX_PATH_ROWS:
        rows = rows.nlargest(MAX_PATH_ROWS, "on_path_ms").sort_values("ts")
    if rows.empty:
        return None
    values = ",\n  ".join(
        f"({int(r.ts)}, {int(round(r.on_path_ms * 1e6))}, {_sql_text(_segment_name(r, merged))}, {_sql_text(r.kind)})"
        for r in rows.itertuples())
    return f"WITH path(ts, dur, name, kind) AS (VALUES\n  {values})\nSELECT ts, dur, name, kind FROM path ORDER BY ts"


def _segment_name(r, merged: bool) -> str:
    if r.kind != "invocation":
        return str(r.name)
    return f"{r.name} (rank {r.rank} device {r.device})" if merged else f"{r.name} (device {r.device})"


LAYERS_SQL = REPORTS["top_layers"].sql


def _layout() -> list[Command]:
    return [
        Command("dev.perfetto.ExpandTracksByRegex", (DEVICE_GROUP, "name")),
        Command("dev.perfetto.PinTracksByRegex", (DEVICE_TRACK_PATH, "path")),
        Command("dev.perfetto.CreateWorkspace", (WORKSPACE,)),
        Command("dev.perfetto.CopyTracksToWorkspaceByRegex", (DEVICE_GROUP, WORKSPACE, "name")),
    ]


def _note(ts: int, text: str) -> Command:
    return Command("dev.perfetto.AddNoteAtTimestamp", (str(int(ts)), text))


def idle_notes(tr, top: int = NOTES) -> list[Command]:
    """Notes at the `top` longest idle gaps (untraced stretches left out), each with its cause."""
    gaps = idle(tr, gaps=True)
    gaps = gaps[gaps.cause != "untraced"].nlargest(top, "dur_ms")
    if gaps.empty:
        return []
    run_start = int(tr.query(RUN_SPAN_ROW).lo.iloc[0])
    merged = Units(tr).merged
    out = []
    for g in gaps.itertuples():
        where = f"rank {g.rank} device {g.device}" if merged else f"device {g.device}"
        detail = f" ({g.detail})" if g.detail else ""
        out.append(_note(run_start + ns_of_ms(g.start_ms), f"idle {g.dur_ms:.3f} ms on {where}, {g.kind}: "
                                                      f"{g.cause}{detail}"))
    return out


def critical_path_notes(segments, merged: bool, top: int = NOTES) -> list[Command]:
    """Notes at the `top` segments with the most time on the critical path."""
    work = segments[~segments.kind.isin(["gap", "untraced"])]  # (an untraced stretch is no work to speed up)
    work = work.nlargest(top, "on_path_ms")
    return [_note(r.ts, f"critical path: {_segment_name(r, merged)}, {r.on_path_ms:.3f} ms "
                        f"({r.share_pct:.1f}% of the run)") for r in work.itertuples()]


def layer_notes(tr, top: int = NOTES) -> list[Command]:
    """Notes at the longest op of each of the `top` layers with the most command time."""
    table = tr.report("top_layers").head(top)
    out = []
    for r, target in zip(table.itertuples(), report_targets(tr, "top_layers", table)):
        if target is not None:
            out.append(_note(target.ts, f"top layer: {r.layer} ({r.submodule}, {r.op}): {r.total_ms:.3f} ms in "
                                        f"{r.commands} commands; its longest op here"))
    return out


def startup_commands(tr, view: str) -> list[Command]:
    """The startup commands of `view` (one of VIEWS) for an open `Trace`."""
    if view not in VIEWS:
        raise UsageError(f"--view {view!r} is not known; valid: {', '.join(VIEWS)}")
    commands = _layout()
    path = segments(find(tr)) if view in ("overview", "critical-path") else None
    merged = Units(tr).merged
    if view == "overview":
        commands += idle_notes(tr, 1) + critical_path_notes(path, merged, 1) + layer_notes(tr, 1)
    elif view == "idle":
        commands.append(Command("dev.perfetto.AddDebugSliceTrackWithPivot", (idle_gaps_sql(), "device", "rbln idle")))
        commands += idle_notes(tr)
    elif view == "critical-path":
        sql = critical_path_sql(path, merged)
        if sql is not None:
            commands.append(Command("dev.perfetto.AddDebugSliceTrack", (sql, "rbln critical path")))
        commands += critical_path_notes(path, merged)
    else:
        commands.append(Command("dev.perfetto.RunQueryAndShowTab", (LAYERS_SQL, "rbln per-layer totals")))
        commands += layer_notes(tr)
    return commands


__all__ = ["Command", "VIEWS", "critical_path_sql", "idle_gaps_sql", "startup_commands"]
