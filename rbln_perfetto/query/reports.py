"""Canned reports: each one SQL string that runs unchanged on trace_processor and the embedded backend."""

from __future__ import annotations

from dataclasses import dataclass

from ..naming import LAYER_SQL, NOT_UNTRACED_SQL


@dataclass(frozen=True)
class Report:
    title: str
    sql: str


REPORTS = {
    "invocations": Report("per-submodule invocation times", f"""
SELECT extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
       extract_arg(s.arg_set_id, 'debug.device') AS device,
       count(*) AS calls,
       sum(s.dur) / 1e6 AS total_ms,
       avg(s.dur) / 1e6 AS mean_ms,
       min(s.dur) / 1e6 AS min_ms,
       max(s.dur) / 1e6 AS max_ms
FROM slice s JOIN track t ON s.track_id = t.id
WHERE t.name = 'Workload' AND {NOT_UNTRACED_SQL}
GROUP BY submodule, device
ORDER BY min(s.ts)
"""),
    # `items` counts what `counted` names: a split op's parent slice is no command, so Compute counts
    # the slices that carry a command_index. The span is that of the invocations and host work, as
    # `rbln-perfetto run` computes it (`summary.RunStats`). Untraced stretches (`profile(steps=...)`) are no work.
    "devices": Report("per-device busy time and utilisation (% of the run span) per track category", f"""
WITH span AS (
  SELECT max(s.ts + s.dur) - min(s.ts) AS ns
  FROM slice s JOIN track t ON s.track_id = t.id
  WHERE s.dur >= 0 AND t.name IN ('Workload', 'Host') AND {NOT_UNTRACED_SQL}),
busy AS (
  SELECT p.name AS device, t.name AS category,
         sum(CASE WHEN t.name = 'Compute' THEN extract_arg(s.arg_set_id, 'debug.command_index') IS NOT NULL
                  ELSE 1 END) AS items,
         sum(CASE WHEN s.depth = 0 THEN s.dur ELSE 0 END) AS busy_ns
  FROM slice s JOIN track t ON s.track_id = t.id JOIN track p ON t.parent_id = p.id
  WHERE t.name IN ('Workload', 'Host', 'Compute', 'DMA') AND {NOT_UNTRACED_SQL}
  GROUP BY p.name, t.name)
SELECT device, category, items,
       CASE category WHEN 'Workload' THEN 'invocations' WHEN 'Host' THEN 'host events'
                     WHEN 'Compute' THEN 'commands' ELSE 'transfers' END AS counted,
       busy_ns / 1e6 AS busy_ms, 100.0 * busy_ns / span.ns AS utilisation_pct
FROM busy, span
ORDER BY device, CASE category WHEN 'Workload' THEN 0 WHEN 'Host' THEN 1 WHEN 'Compute' THEN 2 ELSE 3 END
"""),
    "top_layers": Report("top layers by total command time", f"""
SELECT {LAYER_SQL} AS layer,
       extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
       extract_arg(s.arg_set_id, 'debug.op') AS op,
       count(*) AS commands,
       sum(s.dur) / 1e6 AS total_ms,
       avg(s.dur) / 1e6 AS mean_ms
FROM slice s JOIN track t ON s.track_id = t.id
WHERE t.name = 'Compute' AND extract_arg(s.arg_set_id, 'debug.command_index') IS NOT NULL
GROUP BY layer, submodule, op
ORDER BY total_ms DESC, layer
LIMIT 25
"""),
    "split_ops": Report("ops split into several commands", """
SELECT p.name AS layer,
       extract_arg(c.arg_set_id, 'debug.submodule') AS submodule,
       extract_arg(p.arg_set_id, 'debug.op') AS op,
       extract_arg(p.arg_set_id, 'debug.command_count') AS command_count,
       count(DISTINCT p.id) AS occurrences,
       count(*) AS commands,
       sum(c.dur) / 1e6 AS total_ms,
       avg(c.dur) / 1e6 AS mean_ms,
       max(c.dur) / 1e6 AS max_ms
FROM slice p JOIN slice c ON c.parent_id = p.id JOIN track t ON p.track_id = t.id
WHERE t.name = 'Compute' AND p.depth = 0
GROUP BY layer, submodule, op, command_count
ORDER BY total_ms DESC, layer
"""),
    "dma": Report("DMA transfers", """
SELECT extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
       extract_arg(s.arg_set_id, 'debug.tensor') AS tensor,
       CASE WHEN extract_arg(s.arg_set_id, 'debug.src') < 0 THEN 'host'
            ELSE 'device ' || extract_arg(s.arg_set_id, 'debug.src') END AS source,
       CASE WHEN extract_arg(s.arg_set_id, 'debug.dst') < 0 THEN 'host'
            ELSE 'device ' || extract_arg(s.arg_set_id, 'debug.dst') END AS destination,
       count(*) AS transfers,
       sum(extract_arg(s.arg_set_id, 'debug.bytes')) AS bytes,
       sum(s.dur) / 1e6 AS total_ms,
       CAST(sum(extract_arg(s.arg_set_id, 'debug.bytes')) AS REAL) / max(sum(s.dur), 1) AS gb_per_s
FROM slice s JOIN track t ON s.track_id = t.id
WHERE t.name = 'DMA'
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
