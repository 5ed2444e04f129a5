"""Canned reports: each one SQL string that runs unchanged on trace_processor and the embedded backend.

A report reads a module of the `rbln` PerfettoSQL package (`sql_package/rbln/`, which both backends
load: `perfetto_sql`) where one gives its rows at no extra cost: `split_ops` (rbln.split_ops). The
others stay single statements over trace_processor's tables: `top_layers` sums a split op's commands
before naming it, which `rbln_commands` (a view naming every command) cannot; `invocations` keeps
unfinished invocations that `rbln_invocations` leaves out; `devices`, `dma` and `ranges` are one
pass over the slices that a module table would only copy first.

A run has about a million commands, most of them a split op's; the reports test a slice's track
first, so that no name or arg of a slice of another track is read, and they read a command's name
only where nothing else gives what they group by: commands are summed per split op (an integer key)
before the few ops are named. An arg is read with `extract_arg`, which both backends answer in C
(the embedded backend's `_sqlite_tables` extension; where it is not built, a Python function).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..naming import LAYER_SQL
from .trace_model import DEVICE_TRACKS, MODEL, in_category, is_command, not_untraced, own_name, with_ctes


@dataclass(frozen=True)
class Report:
    title: str
    sql: str


# One row per DMA slice: its submodule, tensor, source and destination as the `dma` report names them
# (a transfer to or from another rank goes from or to `rank N`; its other end is the device of its
# track), bytes (`size`), ts and dur. Needs device_tracks. The report groups these rows; a row's link
# (`analysis.ui_links`) picks one of them.
DMA_ROWS = f"""dma_here AS (
  SELECT track_id, CASE WHEN prefix = '' THEN 'device ' || device ELSE 'rank ' || rank || ' / device ' || device END
           AS device
  FROM device_tracks WHERE category = 'DMA'),
dma_rows AS (
  SELECT t.ts, t.dur, t.submodule, t.tensor,
         CASE WHEN t.transfer = 'recv' THEN 'rank ' || t.peer_rank WHEN t.transfer = 'send' THEN here.device
              WHEN t.src < 0 THEN 'host' ELSE 'device ' || t.src END AS source,
         CASE WHEN t.transfer = 'send' THEN 'rank ' || t.peer_rank WHEN t.transfer = 'recv' THEN here.device
              WHEN t.dst < 0 THEN 'host' ELSE 'device ' || t.dst END AS destination,
         t.size
  FROM (
    SELECT extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
           coalesce(extract_arg(s.arg_set_id, 'debug.tensor'), extract_arg(s.arg_set_id, 'debug.tensors')) AS tensor,
           extract_arg(s.arg_set_id, 'debug.src') AS src,
           extract_arg(s.arg_set_id, 'debug.dst') AS dst,
           extract_arg(s.arg_set_id, 'debug.bytes') AS size,
           extract_arg(s.arg_set_id, 'debug.transfer') AS transfer,
           extract_arg(s.arg_set_id, 'debug.peer_rank') AS peer_rank,
           s.track_id, s.ts, s.dur
    FROM slice s WHERE {in_category('DMA')}) t
  LEFT JOIN dma_here here USING (track_id))"""


REPORTS = {
    "invocations": Report("per-submodule invocation times", with_ctes(DEVICE_TRACKS) + f"""
SELECT extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
       extract_arg(s.arg_set_id, 'debug.device') AS device,
       count(*) AS calls,
       sum(s.dur) / 1e6 AS total_ms,
       avg(s.dur) / 1e6 AS mean_ms,
       min(s.dur) / 1e6 AS min_ms,
       max(s.dur) / 1e6 AS max_ms
FROM slice s
WHERE {in_category('Workload')} AND s.depth = 0 AND {not_untraced()}
GROUP BY submodule, device
ORDER BY min(s.ts)
"""),
    # `items` counts what `counted` names: a split op's parent slice is no command, so Compute counts
    # the slices that carry a command_index. The span is that of the invocations and host work, as
    # `rbln-perfetto run` computes it (`run_totals.RunTotals`), less the untraced stretches
    # (`profile(steps=...)`), which are neither work nor idle time (`trace_model`).
    "devices": Report("per-device busy time and utilisation (% of the traced run span) per track category",
                      with_ctes(*MODEL) + f""",
per_track AS (
  SELECT s.track_id, count(*) AS slices, count(extract_arg(s.arg_set_id, 'debug.command_index')) AS commands,
         sum(CASE WHEN s.depth = 0 THEN s.dur ELSE 0 END) AS busy_ns
  FROM slice s
  WHERE {in_category('Workload', 'Host', 'Compute', 'DMA')}
    AND (s.depth > 0 OR NOT {in_category('Workload')} OR {not_untraced()})
  GROUP BY s.track_id),
busy AS (
  SELECT p.name AS device, t.name AS category,
         sum(CASE WHEN t.name = 'Compute' THEN pt.commands ELSE pt.slices END) AS items,
         sum(pt.busy_ns) AS busy_ns
  FROM per_track pt JOIN track t ON t.id = pt.track_id JOIN track p ON t.parent_id = p.id
  GROUP BY p.name, t.name)
SELECT device, category, items,
       CASE category WHEN 'Workload' THEN 'invocations' WHEN 'Host' THEN 'host events'
                     WHEN 'Compute' THEN 'commands' ELSE 'transfers' END AS counted,
       busy_ns / 1e6 AS busy_ms, 100.0 * busy_ns / run_span.traced_ns AS utilisation_pct
FROM busy, run_span
ORDER BY device, CASE category WHEN 'Workload' THEN 0 WHEN 'Host' THEN 1 WHEN 'Compute' THEN 2 ELSE 3 END
"""),
    # Most commands are a split op's (depth 1): summed per split op first (an integer key, no name
    # read; one command's args name the submodule of all), then named after it: a split op is named
    # after its layer and holds its op (`naming`). The other commands (depth 0) get their layer from
    # their names (`layer_sql`), less a merged trace's `i{r}_` (`trace_model.own_name`).
    "top_layers": Report("top layers by total command time", with_ctes(DEVICE_TRACKS) + f""",
per_op AS (
  SELECT s.parent_id, extract_arg(min(s.arg_set_id), 'debug.submodule') AS submodule,
         count(*) AS commands, sum(s.dur) AS total_ns
  FROM slice s
  WHERE {in_category('Compute')} AND s.depth = 1 AND {is_command()}
  GROUP BY s.track_id, s.parent_id),
-- (materialized: the layer expression reads a name several times, and each read of the slice view's
-- name is a lookup on the embedded backend)
cmd0 AS MATERIALIZED (
  SELECT {own_name()} AS name, s.arg_set_id, s.dur
  FROM slice s JOIN device_tracks d ON d.track_id = s.track_id
  WHERE {in_category('Compute')} AND s.depth = 0 AND {is_command()}),
per_layer AS (
  SELECT {own_name('p')} AS layer, o.submodule, extract_arg(p.arg_set_id, 'debug.op') AS op,
         sum(o.commands) AS commands, sum(o.total_ns) AS total_ns
  FROM per_op o JOIN slice p ON p.id = o.parent_id JOIN device_tracks d ON d.track_id = p.track_id
  GROUP BY layer, o.submodule, op
  UNION ALL
  SELECT {LAYER_SQL} AS layer, extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
         extract_arg(s.arg_set_id, 'debug.op') AS op, count(*) AS commands, sum(s.dur) AS total_ns
  FROM cmd0 s
  GROUP BY layer, submodule, op)
SELECT layer, submodule, op,
       sum(commands) AS commands,
       sum(total_ns) / 1e6 AS total_ms,
       CAST(sum(total_ns) AS REAL) / sum(commands) / 1e6 AS mean_ms
FROM per_layer
GROUP BY layer, submodule, op
ORDER BY total_ms DESC, layer
LIMIT 25
"""),
    # The `rbln.split_ops` module (the package's one source for split ops, on both backends) sums
    # the commands per split op first, so only the split ops, twenty times fewer, are named.
    "split_ops": Report("ops split into several commands", """INCLUDE PERFETTO MODULE rbln.split_ops;
SELECT layer, submodule, op, command_count,
       count(*) AS occurrences,
       sum(commands) AS commands,
       sum(commands_dur) / 1e6 AS total_ms,
       CAST(sum(commands_dur) AS REAL) / sum(commands) / 1e6 AS mean_ms,
       max(max_command_dur) / 1e6 AS max_ms
FROM rbln_split_ops
GROUP BY layer, submodule, op, command_count
ORDER BY total_ms DESC, layer
"""),
    # A transfer to or from another rank (a run split across processes) goes from or to `rank N`; its
    # other end is the device of its track (`DMA_ROWS`).
    "dma": Report("DMA transfers", with_ctes(DEVICE_TRACKS, DMA_ROWS) + """
SELECT submodule, tensor, source, destination,
       count(*) AS transfers,
       sum(size) AS bytes,
       sum(dur) / 1e6 AS total_ms,
       CAST(sum(size) AS REAL) / max(sum(dur), 1) AS gb_per_s
FROM dma_rows
GROUP BY submodule, tensor, source, destination
ORDER BY bytes DESC, submodule, tensor, source
"""),
    # A command (a leaf Compute slice) or a DMA counts for a range when it starts inside it; `commands`
    # counts the commands, `transfers` the DMAs. Running sums over one time-ordered pass
    # (range edges sort before commands at the same ts) give every range's share without a
    # ranges x commands join; a range's numbers include those of the ranges nested in it. In a merged
    # trace the Ranges track is rank 0's, its names less their `i0_` (everything to the first `_`).
    # (The track first, then its slices by track (CROSS JOIN keeps that order; the embedded backend's
    # `__rbln_slice_track_depth` index finds them); the commands are most slices, read in one scan:
    # the unary `+` keeps SQLite from reading them through that index, a seek per slice.)
    "ranges": Report("user ranges (rbln_perfetto.range) and the device time inside them",
                     with_ctes(DEVICE_TRACKS) + f""",
r AS MATERIALIZED (
  SELECT s.id, s.ts, s.dur, s.depth, s.arg_set_id,
         substr(s.name, CASE WHEN p.name GLOB 'Rank [0-9]* / *' THEN instr(s.name, '_') + 1 ELSE 1 END) AS name
  FROM track t CROSS JOIN slice s ON s.track_id = t.id LEFT JOIN track p ON t.parent_id = p.id
  WHERE t.name = 'Ranges' AND s.dur >= 0),
span AS (SELECT min(ts) AS lo, max(ts + dur) AS hi FROM r),
cmd AS (
  SELECT s.ts, s.dur, {in_category('DMA')} AS is_dma
  FROM slice s JOIN span
  WHERE +{in_category('Compute', 'DMA')} AND s.ts >= span.lo AND s.ts < span.hi AND s.dur >= 0
    AND s.id NOT IN (SELECT parent_id FROM slice WHERE parent_id IS NOT NULL)),
ev AS (
  SELECT ts, 1 AS k, 1 - is_dma AS c, is_dma AS x, dur * (1 - is_dma) AS compute_ns, dur * is_dma AS dma_ns,
         NULL AS rid, NULL AS edge FROM cmd
  UNION ALL SELECT ts, 0, 0, 0, 0, 0, id, 0 FROM r
  UNION ALL SELECT ts + dur, 0, 0, 0, 0, 0, id, 1 FROM r),
run AS (
  SELECT rid, edge, sum(c) OVER w AS commands, sum(x) OVER w AS transfers, sum(compute_ns) OVER w AS compute_ns,
         sum(dma_ns) OVER w AS dma_ns
  FROM ev WINDOW w AS (ORDER BY ts, k ROWS UNBOUNDED PRECEDING)),
inside AS (
  SELECT rid, sum(CASE edge WHEN 1 THEN commands ELSE -commands END) AS commands,
         sum(CASE edge WHEN 1 THEN transfers ELSE -transfers END) AS transfers,
         sum(CASE edge WHEN 1 THEN compute_ns ELSE -compute_ns END) AS compute_ns,
         sum(CASE edge WHEN 1 THEN dma_ns ELSE -dma_ns END) AS dma_ns
  FROM run WHERE rid IS NOT NULL GROUP BY rid),
range_args AS MATERIALIZED (
  SELECT a.arg_set_id, a.key, substr(a.key, 7) || '=' || CASE a.value_type
           WHEN 'bool' THEN CASE a.int_value WHEN 0 THEN 'false' ELSE 'true' END
           WHEN 'real' THEN a.real_value WHEN 'string' THEN a.string_value ELSE a.int_value END AS kv
  FROM args a WHERE a.arg_set_id IN (SELECT arg_set_id FROM r))
SELECT r.name,
       coalesce((SELECT group_concat(kv, ', ') FROM (
         SELECT kv FROM range_args WHERE range_args.arg_set_id = r.arg_set_id ORDER BY key)), '') AS args,
       r.depth, r.ts, r.dur / 1e6 AS dur_ms, i.commands, i.transfers, i.compute_ns / 1e6 AS compute_ms,
       i.dma_ns / 1e6 AS dma_ms,
       100.0 * (i.compute_ns + i.dma_ns) / max(r.dur, 1) AS device_pct
FROM r JOIN inside i ON i.rid = r.id
ORDER BY r.ts, r.depth
"""),
}


def report_sql(name: str) -> str:
    """The SQL of canned report `name`; `UsageError` listing the valid names for any other."""
    if name not in REPORTS:
        raise UsageError(f"report {name!r} is not known; valid: {', '.join(REPORTS)}")
    return REPORTS[name].sql
