-- rbln.critical_path: the chain of work that sets the run's end-to-end time
-- (rbln_perfetto.analysis.critical_path, as SQL).
--
-- Elements: host work (Host slices), DMA transfers, ops (top-level Compute slices: a command, or a
-- split op whose commands run back to back) and untraced stretches. Each element waits for the
-- predecessor that finished last among:
--
--   program order  the element before it on its device (a (rank, device) pair)
--   flow           the source of a flow into it (a DMA before the command reading it, a send before
--                  the recv on another rank)
--   host order     for the first element of an invocation, and for host work, untraced stretches
--                  and transfers between ranks: the item of its rank (invocation or such element)
--                  that ended last before it started
--
-- (ties: program order, then flow, then host order). The path runs back from the element that ends
-- last. What stays in the project's Python: the tables by segment and by layer built from this path,
-- and the gaps as rows of their own (here: each element's gap_before_dur).

INCLUDE PERFETTO MODULE rbln.invocations;

-- Every element, in (ts, id) order (`pos`), with the invocation that holds it.
CREATE PERFETTO TABLE _rbln_cp_elements AS
WITH leaves AS (
  SELECT s.id, s.ts, s.ts + s.dur AS end_ts, CASE WHEN d.category = 'Host' THEN -1 ELSE d.unit END AS unit, d.rank,
         CASE d.category WHEN 'Host' THEN 0 WHEN 'DMA' THEN 1 ELSE 2 END AS kind,
         substr(s.name, length(d.prefix) + 1) AS name
  FROM slice s JOIN rbln_device_tracks d ON d.track_id = s.track_id
  WHERE s.track_id IN (SELECT track_id FROM rbln_device_tracks WHERE category IN ('Host', 'DMA', 'Compute'))
    AND s.depth = 0 AND s.dur >= 0
  UNION ALL
  SELECT id, ts, ts + dur, -1, rank, 3, name FROM rbln_untraced),
numbered AS (
  SELECT row_number() OVER (ORDER BY ts, id) - 1 AS pos, l.*,
         (SELECT i.id FROM rbln_invocations i WHERE i.unit = l.unit AND i.ts <= l.ts ORDER BY i.ts DESC LIMIT 1)
           AS candidate
  FROM leaves l)
SELECT n.pos, n.id, n.ts, n.end_ts, n.unit, n.rank, n.kind, n.name, i.id AS invocation_id
FROM numbered n LEFT JOIN rbln_invocations i ON i.id = n.candidate AND n.end_ts <= i.ts + i.dur
ORDER BY n.pos;

CREATE PERFETTO INDEX _rbln_cp_elements_id ON _rbln_cp_elements(id);

-- Host order: per item, the last element of the item its rank's host ran before it.
CREATE PERFETTO TABLE _rbln_cp_host_order AS
WITH firsts AS (
  SELECT invocation_id, min(pos) AS first_pos FROM _rbln_cp_elements WHERE invocation_id IS NOT NULL
  GROUP BY invocation_id),
lasts AS (
  SELECT invocation_id, pos AS last_pos, end_ts FROM (
    SELECT invocation_id, pos, end_ts,
           row_number() OVER (PARTITION BY invocation_id ORDER BY end_ts DESC, pos DESC) AS k
    FROM _rbln_cp_elements WHERE invocation_id IS NOT NULL)
  WHERE k = 1),
items AS (
  SELECT f.first_pos, l.last_pos, e.ts AS start_ts, l.end_ts, e.rank
  FROM firsts f JOIN lasts l ON l.invocation_id = f.invocation_id JOIN _rbln_cp_elements e ON e.pos = f.first_pos
  UNION ALL
  SELECT pos, pos, ts, end_ts, rank FROM _rbln_cp_elements
  WHERE kind IN (0, 3) OR (kind = 1 AND invocation_id IS NULL)),
ordered AS (
  SELECT *, row_number() OVER (PARTITION BY rank ORDER BY start_ts, first_pos) AS position FROM items)
SELECT o.first_pos AS pos,
       (SELECT p.last_pos FROM ordered p
        WHERE p.rank = o.rank AND p.end_ts <= o.start_ts AND p.position < o.position
        ORDER BY p.end_ts DESC, p.position DESC LIMIT 1) AS host_prev
FROM ordered o;

-- Per element, the predecessor it waited for (`pred`, a pos) and how (`via`: 1 program order,
-- 2 flow, 3 host order; 0 none).
CREATE PERFETTO TABLE _rbln_cp_graph AS
WITH flows AS (
  SELECT CASE WHEN so.depth = 0 THEN so.id ELSE so.parent_id END AS slice_out,
         CASE WHEN si.depth = 0 THEN si.id ELSE si.parent_id END AS slice_in
  FROM flow f JOIN slice so ON so.id = f.slice_out JOIN slice si ON si.id = f.slice_in
  WHERE so.depth <= 1 AND si.depth <= 1),
flow_sources AS (
  SELECT dst, src FROM (
    SELECT b.pos AS dst, a.pos AS src, row_number() OVER (PARTITION BY b.pos ORDER BY a.end_ts DESC, a.pos DESC) AS k
    FROM flows JOIN _rbln_cp_elements a ON a.id = flows.slice_out JOIN _rbln_cp_elements b ON b.id = flows.slice_in
    WHERE a.pos < b.pos)
  WHERE k = 1),
candidates AS (
  SELECT e.pos, e.end_ts,
         CASE WHEN e.unit >= 0 THEN lag(e.pos) OVER (PARTITION BY e.unit ORDER BY e.pos) END AS dev_prev,
         f.src AS flow_prev, h.host_prev
  FROM _rbln_cp_elements e LEFT JOIN flow_sources f ON f.dst = e.pos LEFT JOIN _rbln_cp_host_order h ON h.pos = e.pos),
program AS (
  SELECT c.pos, c.end_ts, c.flow_prev, c.host_prev, c.dev_prev AS pred,
         CASE WHEN c.dev_prev IS NULL THEN 0 ELSE 1 END AS via, d.end_ts AS best
  FROM candidates c LEFT JOIN _rbln_cp_elements d ON d.pos = c.dev_prev),
flowed AS (
  SELECT p.pos, p.end_ts, p.host_prev,
         CASE WHEN p.flow_prev < p.pos AND f.end_ts > coalesce(p.best, -9223372036854775807) THEN p.flow_prev
              ELSE p.pred END AS pred,
         CASE WHEN p.flow_prev < p.pos AND f.end_ts > coalesce(p.best, -9223372036854775807) THEN 2
              ELSE p.via END AS via,
         CASE WHEN p.flow_prev < p.pos AND f.end_ts > coalesce(p.best, -9223372036854775807) THEN f.end_ts
              ELSE p.best END AS best
  FROM program p LEFT JOIN _rbln_cp_elements f ON f.pos = p.flow_prev)
SELECT x.pos, x.end_ts,
       CASE WHEN x.host_prev < x.pos AND h.end_ts > coalesce(x.best, -9223372036854775807) THEN x.host_prev
            ELSE x.pred END AS pred,
       CASE WHEN x.host_prev < x.pos AND h.end_ts > coalesce(x.best, -9223372036854775807) THEN 3
            ELSE x.via END AS via
FROM flowed x LEFT JOIN _rbln_cp_elements h ON h.pos = x.host_prev
ORDER BY x.pos;

CREATE PERFETTO INDEX _rbln_cp_graph_pos ON _rbln_cp_graph(pos);

-- The critical path: one row per element on it, in time order.
CREATE PERFETTO TABLE rbln_critical_path(
  -- 0, 1, ... along the path.
  position LONG,
  -- The element's slice (`slice.id`).
  id LONG,
  -- host, dma, op or untraced.
  kind STRING,
  rank LONG,
  -- NULL for host work and untraced stretches.
  device LONG,
  -- The slice's name (less a merged trace's `i{r}_`).
  name STRING,
  -- The invocation that holds it ('' for none).
  invocation STRING,
  ts TIMESTAMP,
  dur DURATION,
  -- Its time on the path: until the next element starts (the last: its end).
  on_path_dur DURATION,
  -- Nothing recorded on the path before it (since the previous element's end, or the run's start).
  gap_before_dur DURATION,
  -- How it depends on the element before it: program order, flow, host order ('' for the first).
  via STRING
) AS
WITH RECURSIVE walk(pos, pred, via, step) AS (
  SELECT pos, pred, via, 0 FROM (SELECT pos, pred, via FROM _rbln_cp_graph ORDER BY end_ts DESC, pos DESC LIMIT 1)
  UNION ALL
  SELECT g.pos, g.pred, g.via, w.step + 1 FROM walk w JOIN _rbln_cp_graph g ON g.pos = w.pred),
start AS (
  SELECT min(coalesce((SELECT min(ts) FROM rbln_invocations), (SELECT min(ts) FROM _rbln_cp_elements)),
             (SELECT min(ts) FROM _rbln_cp_elements)) AS ts),
path AS (
  SELECT row_number() OVER (ORDER BY w.step DESC) - 1 AS position, w.via, e.*,
         lead(e.ts) OVER (ORDER BY w.step DESC) AS next_ts, lag(e.end_ts) OVER (ORDER BY w.step DESC) AS prev_end
  FROM walk w JOIN _rbln_cp_elements e ON e.pos = w.pos)
SELECT p.position, p.id, CASE p.kind WHEN 0 THEN 'host' WHEN 1 THEN 'dma' WHEN 2 THEN 'op' ELSE 'untraced' END AS kind,
       p.rank, CASE WHEN p.unit >= 0 THEN p.unit % 1048576 END AS device, p.name, coalesce(i.name, '') AS invocation,
       p.ts, p.end_ts - p.ts AS dur,
       max(min(p.end_ts, coalesce(p.next_ts, p.end_ts)) - p.ts, 0) AS on_path_dur,
       max(p.ts - coalesce(p.prev_end, start.ts), 0) AS gap_before_dur,
       CASE WHEN p.position = 0 THEN '' WHEN p.via = 1 THEN 'program order' WHEN p.via = 2 THEN 'flow'
            WHEN p.via = 3 THEN 'host order' ELSE '' END AS via
FROM path p LEFT JOIN rbln_invocations i ON i.id = p.invocation_id, start
ORDER BY p.position;
