"""Canned reports: each one SQL string that runs unchanged on trace_processor and the embedded backend."""

from __future__ import annotations

from dataclasses import dataclass

from ..naming import LAYER_SQL


@dataclass(frozen=True)
class Report:
    title: str
    sql: str


REPORTS = {
    "invocations": Report("per-submodule invocation times", """
SELECT extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
       extract_arg(s.arg_set_id, 'debug.device') AS device,
       count(*) AS calls,
       sum(s.dur) / 1e6 AS total_ms,
       avg(s.dur) / 1e6 AS mean_ms,
       min(s.dur) / 1e6 AS min_ms,
       max(s.dur) / 1e6 AS max_ms
FROM slice s JOIN track t ON s.track_id = t.id
WHERE t.name = 'Workload'
GROUP BY submodule, device
ORDER BY min(s.ts)
"""),
    "devices": Report("per-device busy time and utilisation per track category", """
WITH span AS (SELECT max(ts + dur) - min(ts) AS ns FROM slice WHERE dur >= 0),
busy AS (
  SELECT p.name AS device, t.name AS category, count(*) AS slices, sum(s.dur) AS busy_ns
  FROM slice s JOIN track t ON s.track_id = t.id JOIN track p ON t.parent_id = p.id
  WHERE s.depth = 0 AND t.name IN ('Workload', 'Host', 'Compute', 'DMA')
  GROUP BY p.name, t.name)
SELECT device, category, slices, busy_ns / 1e6 AS busy_ms, 100.0 * busy_ns / span.ns AS utilisation_pct
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
}
