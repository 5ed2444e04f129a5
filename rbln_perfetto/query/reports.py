"""Canned reports: each one SQL string that runs unchanged on trace_processor and the embedded backend.

A run has about a million commands, most of them a split op's; the reports test a slice's track
first, so that no name or arg of a slice of another track is read, and they read a command's name
only where nothing else gives what they group by: commands are summed per split op (an integer key)
before the few ops are named. An arg is read with `extract_arg`, which both backends answer in C
(the embedded backend's `_sqlite_tables` extension; where it is not built, a Python function).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..naming import LAYER_SQL, NOT_UNTRACED_SQL


@dataclass(frozen=True)
class Report:
    title: str
    sql: str


def on_tracks(*names: str, alias: str = "s") -> str:
    """SQL condition: slice `alias` is on a track named one of `names` (an IN over the few track ids)."""
    return f"{alias}.track_id IN (SELECT id FROM track WHERE name IN ({', '.join(repr(n) for n in names)}))"


REPORTS = {
    "invocations": Report("per-submodule invocation times", f"""
SELECT extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
       extract_arg(s.arg_set_id, 'debug.device') AS device,
       count(*) AS calls,
       sum(s.dur) / 1e6 AS total_ms,
       avg(s.dur) / 1e6 AS mean_ms,
       min(s.dur) / 1e6 AS min_ms,
       max(s.dur) / 1e6 AS max_ms
FROM slice s
WHERE {on_tracks('Workload')} AND {NOT_UNTRACED_SQL}
GROUP BY submodule, device
ORDER BY min(s.ts)
"""),
    # `items` counts what `counted` names: a split op's parent slice is no command, so Compute counts
    # the slices that carry a command_index. The span is that of the invocations and host work, as
    # `rbln-perfetto run` computes it (`summary.RunStats`). Untraced stretches (`profile(steps=...)`)
    # are no work; only Workload slices at depth 0 can be one, so no other slice's name is read.
    "devices": Report("per-device busy time and utilisation (% of the run span) per track category", f"""
WITH span AS (
  SELECT max(s.ts + s.dur) - min(s.ts) AS ns
  FROM slice s
  WHERE {on_tracks('Workload', 'Host')} AND s.dur >= 0 AND {NOT_UNTRACED_SQL}),
per_track AS (
  SELECT s.track_id, count(*) AS slices, count(extract_arg(s.arg_set_id, 'debug.command_index')) AS commands,
         sum(CASE WHEN s.depth = 0 THEN s.dur ELSE 0 END) AS busy_ns
  FROM slice s
  WHERE {on_tracks('Workload', 'Host', 'Compute', 'DMA')}
    AND (s.depth > 0 OR NOT {on_tracks('Workload')} OR {NOT_UNTRACED_SQL})
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
       busy_ns / 1e6 AS busy_ms, 100.0 * busy_ns / span.ns AS utilisation_pct
FROM busy, span
ORDER BY device, CASE category WHEN 'Workload' THEN 0 WHEN 'Host' THEN 1 WHEN 'Compute' THEN 2 ELSE 3 END
"""),
    # Most commands are a split op's (depth 1): summed per split op first (an integer key, no name
    # read; one command's args name the submodule of all), then named after it: a split op is named
    # after its layer and holds its op (`naming`). The other commands (depth 0) get their layer from
    # their names (`layer_sql`).
    "top_layers": Report("top layers by total command time", f"""
WITH per_op AS (
  SELECT s.parent_id, extract_arg(min(s.arg_set_id), 'debug.submodule') AS submodule,
         count(*) AS commands, sum(s.dur) AS total_ns
  FROM slice s
  WHERE {on_tracks('Compute')} AND s.depth = 1 AND extract_arg(s.arg_set_id, 'debug.command_index') IS NOT NULL
  GROUP BY s.parent_id),
per_layer AS (
  SELECT p.name AS layer, o.submodule, extract_arg(p.arg_set_id, 'debug.op') AS op,
         sum(o.commands) AS commands, sum(o.total_ns) AS total_ns
  FROM per_op o JOIN slice p ON p.id = o.parent_id
  GROUP BY layer, o.submodule, op
  UNION ALL
  SELECT {LAYER_SQL} AS layer, extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
         extract_arg(s.arg_set_id, 'debug.op') AS op, count(*) AS commands, sum(s.dur) AS total_ns
  FROM slice s
  WHERE {on_tracks('Compute')} AND s.depth = 0 AND extract_arg(s.arg_set_id, 'debug.command_index') IS NOT NULL
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
    # The commands are summed per split op first, so only the split ops, twenty times fewer, are joined
    # to their names and args and grouped by them. A split op's commands are all of one invocation, so
    # any one's args name their submodule (the op's args hold its op and command count, no submodule).
    "split_ops": Report("ops split into several commands", f"""
WITH per_op AS (
  SELECT c.parent_id, extract_arg(min(c.arg_set_id), 'debug.submodule') AS submodule, count(*) AS commands,
         sum(c.dur) AS total_ns, max(c.dur) AS max_ns
  FROM slice c
  WHERE {on_tracks('Compute', alias='c')} AND c.depth = 1
  GROUP BY c.parent_id)
SELECT p.name AS layer,
       o.submodule AS submodule,
       extract_arg(p.arg_set_id, 'debug.op') AS op,
       extract_arg(p.arg_set_id, 'debug.command_count') AS command_count,
       count(DISTINCT p.id) AS occurrences,
       sum(o.commands) AS commands,
       sum(o.total_ns) / 1e6 AS total_ms,
       CAST(sum(o.total_ns) AS REAL) / sum(o.commands) / 1e6 AS mean_ms,
       max(o.max_ns) / 1e6 AS max_ms
FROM per_op o JOIN slice p ON p.id = o.parent_id
WHERE p.depth = 0
GROUP BY layer, o.submodule, op, command_count
ORDER BY total_ms DESC, layer
"""),
    # A transfer to or from another rank (a run split across processes) goes from or to `rank N`; its
    # other end is the device of its track.
    "dma": Report("DMA transfers", f"""
WITH t AS (
  SELECT extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
         coalesce(extract_arg(s.arg_set_id, 'debug.tensor'), extract_arg(s.arg_set_id, 'debug.tensors')) AS tensor,
         extract_arg(s.arg_set_id, 'debug.src') AS src,
         extract_arg(s.arg_set_id, 'debug.dst') AS dst,
         extract_arg(s.arg_set_id, 'debug.bytes') AS size,
         extract_arg(s.arg_set_id, 'debug.transfer') AS transfer,
         extract_arg(s.arg_set_id, 'debug.peer_rank') AS peer_rank,
         s.track_id, s.dur
  FROM slice s WHERE {on_tracks('DMA')}),
here AS (
  SELECT t.id AS track_id, lower(p.name) AS device FROM track t JOIN track p ON p.id = t.parent_id
  WHERE t.name = 'DMA')
SELECT submodule, tensor,
       CASE WHEN transfer = 'recv' THEN 'rank ' || peer_rank WHEN transfer = 'send' THEN here.device
            WHEN src < 0 THEN 'host' ELSE 'device ' || src END AS source,
       CASE WHEN transfer = 'send' THEN 'rank ' || peer_rank WHEN transfer = 'recv' THEN here.device
            WHEN dst < 0 THEN 'host' ELSE 'device ' || dst END AS destination,
       count(*) AS transfers,
       sum(size) AS bytes,
       sum(dur) / 1e6 AS total_ms,
       CAST(sum(size) AS REAL) / max(sum(dur), 1) AS gb_per_s
FROM t LEFT JOIN here USING (track_id)
GROUP BY submodule, tensor, source, destination
ORDER BY bytes DESC, submodule, tensor, source
"""),
    # A command counts for a range when it starts inside it. Running sums over one time-ordered pass
    # (range edges sort before commands at the same ts) give every range's share without a
    # ranges x commands join; a range's numbers include those of the ranges nested in it.
    "ranges": Report("user ranges (rbln_perfetto.range) and the device time inside them", """
WITH r AS MATERIALIZED (
  SELECT s.id, s.ts, s.dur, s.name, s.depth, s.arg_set_id
  FROM slice s JOIN track t ON s.track_id = t.id
  WHERE t.name = 'Ranges' AND s.dur >= 0),
span AS (SELECT min(ts) AS lo, max(ts + dur) AS hi FROM r),
cmd AS (
  SELECT s.ts, s.dur, t.name = 'DMA' AS is_dma
  FROM slice s JOIN track t ON s.track_id = t.id JOIN span
  WHERE t.name IN ('Compute', 'DMA') AND s.ts >= span.lo AND s.ts < span.hi AND s.dur >= 0
    AND s.id NOT IN (SELECT parent_id FROM slice WHERE parent_id IS NOT NULL)),
ev AS (
  SELECT ts, 1 AS k, dur * (1 - is_dma) AS compute_ns, dur * is_dma AS dma_ns, NULL AS rid, NULL AS edge FROM cmd
  UNION ALL SELECT ts, 0, 0, 0, id, 0 FROM r
  UNION ALL SELECT ts + dur, 0, 0, 0, id, 1 FROM r),
run AS (
  SELECT rid, edge, sum(k) OVER w AS commands, sum(compute_ns) OVER w AS compute_ns, sum(dma_ns) OVER w AS dma_ns
  FROM ev WINDOW w AS (ORDER BY ts, k ROWS UNBOUNDED PRECEDING)),
inside AS (
  SELECT rid, sum(CASE edge WHEN 1 THEN commands ELSE -commands END) AS commands,
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
       r.depth, r.ts, r.dur / 1e6 AS dur_ms, i.commands, i.compute_ns / 1e6 AS compute_ms, i.dma_ns / 1e6 AS dma_ms,
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
