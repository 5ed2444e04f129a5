-- rbln.idle: where each device waits, and why (rbln_perfetto.analysis.idle, as SQL).
--
-- A device (a (rank, device) pair in a merged trace) is idle when none of its ops runs. Its gaps
-- are those between its invocations, before its first and after its last op within the run span,
-- and those between two ops of one invocation that last at least 10 us (filter `dur` for a larger
-- threshold). Each instant of a gap goes to the first of these causes that covers it:
--
--   untraced      an untraced stretch: the trace holds nothing of it; no idle time
--   done          after the device's last invocation: nothing left to run
--   dma           a copy to or from this device, or a transfer to or from another rank
--   other_device  an invocation on another device of its rank that ended by the gap's end (only
--                 for a gap before a next invocation of this device)
--   other_rank    the same, on another rank of a merged trace
--   host          host work (a Host slice)
--   unrecorded    nothing the trace records
--
-- Within a cause, an instant goes to the interval that starts first (then ends first).

INCLUDE PERFETTO MODULE rbln.invocations;

-- Per Compute track, its top-level slices (ops) that begin or end a gap, with the invocations that
-- hold them (`after_id`) and that hold the op before (`before_id`).
CREATE PERFETTO TABLE _rbln_idle_edges AS
WITH ops AS (
  SELECT d.unit, d.rank, d.device, s.ts, s.ts + s.dur AS end_ts,
         lag(s.ts + s.dur) OVER w AS prev_end, lead(s.ts) OVER w AS next_ts
  FROM slice s JOIN rbln_device_tracks d ON d.track_id = s.track_id
  WHERE s.track_id IN (SELECT track_id FROM rbln_device_tracks WHERE category = 'Compute')
    AND s.depth = 0 AND s.dur >= 0
  WINDOW w AS (PARTITION BY s.track_id ORDER BY s.ts, s.id)),
edges AS (
  SELECT * FROM ops WHERE prev_end IS NULL OR next_ts IS NULL OR ts > prev_end),
located AS (
  SELECT e.*,
         (SELECT i.id FROM rbln_invocations i WHERE i.unit = e.unit AND i.ts <= e.ts
          ORDER BY i.ts DESC LIMIT 1) AS after_candidate,
         (SELECT i.id FROM rbln_invocations i WHERE i.unit = e.unit AND i.ts <= e.prev_end - 1
          ORDER BY i.ts DESC LIMIT 1) AS before_candidate
  FROM edges e)
SELECT l.unit, l.rank, l.device, l.ts, l.end_ts, l.prev_end, l.next_ts,
       (SELECT i.id FROM rbln_invocations i WHERE i.id = l.after_candidate AND i.ts + i.dur >= l.end_ts) AS after_id,
       (SELECT i.id FROM rbln_invocations i WHERE i.id = l.before_candidate AND i.ts + i.dur >= l.prev_end - 1)
         AS before_id
FROM located l;

-- Every gap: [lo, hi) on its unit.
CREATE PERFETTO TABLE _rbln_idle_gap_list AS
WITH span AS (SELECT ts AS lo, end_ts AS hi FROM rbln_run_span),
gaps AS (
  SELECT e.unit, e.rank, e.device, 'before first command' AS kind, span.lo AS lo, e.ts AS hi, NULL AS before_id,
         e.after_id AS after_id, 0 AS k
  FROM _rbln_idle_edges e, span WHERE e.prev_end IS NULL
  UNION ALL
  SELECT e.unit, e.rank, e.device,
         CASE WHEN e.before_id = e.after_id THEN 'between commands' ELSE 'between invocations' END,
         e.prev_end, e.ts, e.before_id, e.after_id, 1
  FROM _rbln_idle_edges e
  WHERE e.prev_end IS NOT NULL AND e.ts > e.prev_end
    AND (coalesce(e.before_id = e.after_id, 0) = 0 OR e.ts - e.prev_end >= 10000)
  UNION ALL
  SELECT e.unit, e.rank, e.device, 'after last command', e.end_ts, span.hi, e.after_id, NULL, 2
  FROM _rbln_idle_edges e, span WHERE e.next_ts IS NULL)
SELECT row_number() OVER (ORDER BY unit, lo, k) AS gap_id, unit, rank, device, kind, lo, hi, before_id, after_id
FROM gaps
WHERE hi > lo AND (SELECT lo FROM span) IS NOT NULL;

-- Per gap, each interval of each cause (0 untraced .. 5 host) that overlaps it: s, e as recorded,
-- a, b clipped to the gap.
CREATE PERFETTO TABLE _rbln_idle_covers AS
WITH span AS (SELECT end_ts AS hi FROM rbln_run_span),
recorded AS (
  SELECT s.id, s.ts AS s, s.ts + s.dur AS e, d.category, d.unit, d.rank, d.label,
         substr(s.name, length(d.prefix) + 1) AS name
  FROM slice s JOIN rbln_device_tracks d ON d.track_id = s.track_id
  WHERE s.track_id IN (SELECT track_id FROM rbln_device_tracks WHERE category IN ('Workload', 'Host', 'DMA'))
    AND s.depth = 0 AND s.dur >= 0 AND extract_arg(s.arg_set_id, 'debug.untraced') IS NULL),
done AS (
  SELECT u.unit, coalesce((SELECT max(i.ts + i.dur) FROM rbln_invocations i WHERE i.unit = u.unit), span.hi) AS s,
         span.hi AS hi
  FROM (SELECT DISTINCT unit FROM rbln_device_tracks) u, span),
covers AS (
  SELECT g.gap_id, 0 AS cause, u.id, u.ts AS s, u.ts + u.dur AS e, u.name
  FROM _rbln_idle_gap_list g JOIN rbln_untraced u ON u.ts < g.hi AND u.ts + u.dur > g.lo
  UNION ALL
  SELECT g.gap_id, 1, -1, d.s, max(d.hi, d.s), ''
  FROM _rbln_idle_gap_list g JOIN done d ON d.unit = g.unit AND d.s < g.hi AND max(d.hi, d.s) > g.lo
  UNION ALL
  SELECT g.gap_id, 2, x.id, x.s, x.e, x.name
  FROM _rbln_idle_gap_list g JOIN recorded x ON x.category = 'DMA' AND x.unit = g.unit AND x.s < g.hi AND x.e > g.lo
  UNION ALL
  SELECT g.gap_id, CASE WHEN x.rank = g.rank THEN 3 ELSE 4 END, x.id, x.s, x.e, x.name || ' (' || x.label || ')'
  FROM _rbln_idle_gap_list g JOIN recorded x
    ON x.category = 'Workload' AND x.unit != g.unit AND x.s < g.hi AND x.e > g.lo AND x.e <= g.hi
  WHERE g.after_id IS NOT NULL
  UNION ALL
  SELECT g.gap_id, 5, x.id, x.s, x.e, x.name
  FROM _rbln_idle_gap_list g JOIN recorded x ON x.category = 'Host' AND x.s < g.hi AND x.e > g.lo)
SELECT c.gap_id, c.cause, c.id, c.s, c.e, max(c.s, g.lo) AS a, min(c.e, g.hi) AS b, c.name
FROM covers c JOIN _rbln_idle_gap_list g ON g.gap_id = c.gap_id
WHERE max(c.s, g.lo) < min(c.e, g.hi)
ORDER BY c.gap_id;

CREATE PERFETTO INDEX _rbln_idle_covers_gap ON _rbln_idle_covers(gap_id);

-- Each gap cut at every end of an interval inside it; each piece goes to the first cause covering it,
-- and within the cause to the interval that starts first.
CREATE PERFETTO TABLE _rbln_idle_pieces AS
WITH points AS (
  SELECT gap_id, lo AS p FROM _rbln_idle_gap_list
  UNION SELECT gap_id, hi FROM _rbln_idle_gap_list
  UNION SELECT gap_id, a FROM _rbln_idle_covers
  UNION SELECT gap_id, b FROM _rbln_idle_covers),
pieces AS (
  SELECT gap_id, p AS a, lead(p) OVER (PARTITION BY gap_id ORDER BY p) AS b FROM points),
claimed AS (
  SELECT p.gap_id, p.a, p.b, c.cause, c.name,
         row_number() OVER (PARTITION BY p.gap_id, p.a ORDER BY c.cause, c.s, c.e, c.id) AS k
  FROM pieces p JOIN _rbln_idle_covers c ON c.gap_id = p.gap_id AND c.a <= p.a AND c.b >= p.b
  WHERE p.b IS NOT NULL)
SELECT gap_id, cause, name, b - a AS dur FROM claimed WHERE k = 1;

-- One row per gap.
CREATE PERFETTO TABLE rbln_idle_gaps(
  rank LONG,
  device LONG,
  -- before first command, between invocations, between commands, after last command.
  kind STRING,
  ts TIMESTAMP,
  dur DURATION,
  -- The cause with the most idle time in it (untraced only when it is all untraced).
  cause STRING,
  -- Of that cause, the interval that covered the most of the gap (a slice name; `name (device d)`
  -- for another device's invocation).
  detail STRING,
  -- The invocation of the op before the gap, and of the op after it ('' for none).
  before_invocation STRING,
  after_invocation STRING,
  -- The gap's time per cause.
  untraced_dur DURATION,
  done_dur DURATION,
  dma_dur DURATION,
  other_device_dur DURATION,
  other_rank_dur DURATION,
  host_dur DURATION,
  unrecorded_dur DURATION
) AS
WITH per_cause AS (
  SELECT g.gap_id,
         coalesce(sum(CASE p.cause WHEN 0 THEN p.dur END), 0) AS c0,
         coalesce(sum(CASE p.cause WHEN 1 THEN p.dur END), 0) AS c1,
         coalesce(sum(CASE p.cause WHEN 2 THEN p.dur END), 0) AS c2,
         coalesce(sum(CASE p.cause WHEN 3 THEN p.dur END), 0) AS c3,
         coalesce(sum(CASE p.cause WHEN 4 THEN p.dur END), 0) AS c4,
         coalesce(sum(CASE p.cause WHEN 5 THEN p.dur END), 0) AS c5,
         g.hi - g.lo - coalesce(sum(p.dur), 0) AS c6
  FROM _rbln_idle_gap_list g LEFT JOIN _rbln_idle_pieces p ON p.gap_id = g.gap_id
  GROUP BY g.gap_id),
main AS (
  SELECT gap_id, c0, c1, c2, c3, c4, c5, c6,
         CASE max(c1, c2, c3, c4, c5, c6) WHEN 0 THEN 0 WHEN c1 THEN 1 WHEN c2 THEN 2 WHEN c3 THEN 3 WHEN c4 THEN 4
              WHEN c5 THEN 5 ELSE 6 END AS cause
  FROM per_cause),
per_name AS (
  SELECT gap_id, cause, name,
         row_number() OVER (PARTITION BY gap_id, cause ORDER BY sum(dur) DESC, name DESC) AS k
  FROM _rbln_idle_pieces GROUP BY gap_id, cause, name)
SELECT g.rank, g.device, g.kind, g.lo AS ts, g.hi - g.lo AS dur,
       CASE m.cause WHEN 0 THEN 'untraced' WHEN 1 THEN 'done' WHEN 2 THEN 'dma' WHEN 3 THEN 'other_device'
                    WHEN 4 THEN 'other_rank' WHEN 5 THEN 'host' ELSE 'unrecorded' END AS cause,
       coalesce(n.name, '') AS detail,
       coalesce(b.name, '') AS before_invocation, coalesce(a.name, '') AS after_invocation,
       m.c0 AS untraced_dur, m.c1 AS done_dur, m.c2 AS dma_dur, m.c3 AS other_device_dur, m.c4 AS other_rank_dur,
       m.c5 AS host_dur, m.c6 AS unrecorded_dur
FROM _rbln_idle_gap_list g JOIN main m ON m.gap_id = g.gap_id
LEFT JOIN per_name n ON n.gap_id = g.gap_id AND n.cause = m.cause AND n.k = 1
LEFT JOIN rbln_invocations b ON b.id = g.before_id
LEFT JOIN rbln_invocations a ON a.id = g.after_id
ORDER BY g.rank, g.device, g.lo, g.gap_id;

-- One row per device: its gaps, idle time (less untraced time) and its share of the traced run span,
-- and the main cause (the one with the most idle time, with its largest detail).
CREATE PERFETTO TABLE rbln_idle(
  rank LONG,
  device LONG,
  gaps LONG,
  idle_dur DURATION,
  -- 100 * idle_dur / rbln_run_span.traced_dur.
  idle_pct DOUBLE,
  median_gap_dur DOUBLE,
  max_gap_dur DURATION,
  untraced_dur DURATION,
  done_dur DURATION,
  dma_dur DURATION,
  other_device_dur DURATION,
  other_rank_dur DURATION,
  host_dur DURATION,
  unrecorded_dur DURATION,
  -- `cause` or `cause: detail`.
  main_cause STRING
) AS
WITH per_device AS (
  SELECT rank, device, count(*) AS gaps, sum(dur) - sum(untraced_dur) AS idle_dur, max(dur) AS max_gap_dur,
         sum(untraced_dur) AS c0, sum(done_dur) AS c1, sum(dma_dur) AS c2, sum(other_device_dur) AS c3,
         sum(other_rank_dur) AS c4, sum(host_dur) AS c5, sum(unrecorded_dur) AS c6
  FROM rbln_idle_gaps GROUP BY rank, device),
main AS (
  SELECT *, CASE max(c1, c2, c3, c4, c5, c6) WHEN c1 THEN 'done' WHEN c2 THEN 'dma' WHEN c3 THEN 'other_device'
                 WHEN c4 THEN 'other_rank' WHEN c5 THEN 'host' ELSE 'unrecorded' END AS cause
  FROM per_device),
ordered AS (
  SELECT rank, device, dur, row_number() OVER (PARTITION BY rank, device ORDER BY dur) AS k,
         count(*) OVER (PARTITION BY rank, device) AS n
  FROM rbln_idle_gaps),
median AS (
  SELECT rank, device, avg(dur) AS dur FROM ordered WHERE k IN ((n + 1) / 2, (n + 2) / 2) GROUP BY rank, device),
details AS (
  SELECT g.rank, g.device, g.detail,
         row_number() OVER (PARTITION BY g.rank, g.device ORDER BY sum(g.dur) DESC, g.detail) AS k, sum(g.dur) AS dur
  FROM rbln_idle_gaps g JOIN main m ON m.rank = g.rank AND m.device = g.device AND m.cause = g.cause
  GROUP BY g.rank, g.device, g.detail)
SELECT m.rank, m.device, m.gaps, m.idle_dur,
       CASE WHEN s.traced_dur > 0 THEN 100.0 * m.idle_dur / s.traced_dur ELSE 0.0 END AS idle_pct,
       CAST(md.dur AS DOUBLE) AS median_gap_dur, m.max_gap_dur, m.c0 AS untraced_dur, m.c1 AS done_dur,
       m.c2 AS dma_dur, m.c3 AS other_device_dur, m.c4 AS other_rank_dur, m.c5 AS host_dur, m.c6 AS unrecorded_dur,
       m.cause || CASE WHEN d.dur > 0 AND d.detail != '' THEN ': ' || d.detail ELSE '' END AS main_cause
FROM main m JOIN median md ON md.rank = m.rank AND md.device = m.device
LEFT JOIN details d ON d.rank = m.rank AND d.device = m.device AND d.k = 1, rbln_run_span s
ORDER BY m.rank, m.device;
