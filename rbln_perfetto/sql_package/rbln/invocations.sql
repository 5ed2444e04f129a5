-- rbln.invocations: the invocations (submodule calls), the untraced stretches and the run span of an
-- rbln-perfetto trace; the same definitions as rbln_perfetto/query/trace_model.py.

INCLUDE PERFETTO MODULE rbln.tracks;

-- One row per invocation: a top-level slice of a Workload track that is no untraced stretch.
CREATE PERFETTO TABLE rbln_invocations(
  -- The slice (`slice.id`).
  id LONG,
  ts TIMESTAMP,
  dur DURATION,
  rank LONG,
  device LONG,
  -- rank * 1048576 + device (`rbln_device_tracks.unit`).
  unit LONG,
  -- `{submodule} #{call_index}` (less a merged trace's `i{r}_`).
  name STRING,
  -- The invocation's place in the run.
  sequence_index LONG,
  submodule STRING,
  -- Which call of its submodule it is (0, 1, ...).
  call_index LONG
) AS
SELECT s.id, s.ts, s.dur, d.rank, d.device, d.unit, substr(s.name, length(d.prefix) + 1) AS name,
       extract_arg(s.arg_set_id, 'debug.sequence_index') AS sequence_index,
       extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
       extract_arg(s.arg_set_id, 'debug.call_index') AS call_index
FROM slice s JOIN rbln_device_tracks d ON s.track_id = d.track_id
WHERE s.track_id IN (SELECT track_id FROM rbln_device_tracks WHERE category = 'Workload')
  AND s.depth = 0 AND s.dur >= 0 AND extract_arg(s.arg_set_id, 'debug.untraced') IS NULL
ORDER BY s.ts, sequence_index;

-- One row per untraced stretch (`profile(steps=...)`): the run ran there, the trace holds nothing of it.
CREATE PERFETTO TABLE rbln_untraced(
  id LONG,
  ts TIMESTAMP,
  dur DURATION,
  rank LONG,
  device LONG,
  unit LONG,
  -- `not traced: steps 0-9` (less a merged trace's `i{r}_`).
  name STRING
) AS
SELECT s.id, s.ts, s.dur, d.rank, d.device, d.unit, substr(s.name, length(d.prefix) + 1) AS name
FROM slice s JOIN rbln_device_tracks d ON s.track_id = d.track_id
WHERE s.track_id IN (SELECT track_id FROM rbln_device_tracks WHERE category = 'Workload')
  AND s.depth = 0 AND s.dur >= 0 AND extract_arg(s.arg_set_id, 'debug.untraced') IS NOT NULL
ORDER BY s.ts;

-- The run span (one row): from the first invocation or host work to the last, over every rank; its
-- traced part leaves the untraced stretches out. Untraced stretches may overlap (each rank of a merged
-- run leaves the same steps untraced): their union counts, each moment once (in order of start, a
-- stretch adds only what reaches past every earlier one).
CREATE PERFETTO TABLE rbln_run_span(
  ts TIMESTAMP,
  -- ts + dur.
  end_ts TIMESTAMP,
  dur DURATION,
  -- Of dur, the time inside untraced stretches.
  untraced_dur DURATION,
  -- dur - untraced_dur: what utilisation and idle shares are of.
  traced_dur DURATION
) AS
WITH bounds AS (
  SELECT min(s.ts) AS lo, max(s.ts + s.dur) AS hi FROM slice s
  WHERE s.track_id IN (SELECT track_id FROM rbln_device_tracks WHERE category IN ('Workload', 'Host'))
    AND s.depth = 0 AND s.dur >= 0 AND extract_arg(s.arg_set_id, 'debug.untraced') IS NULL),
clipped AS (
  SELECT max(u.ts, b.lo) AS s, min(u.ts + u.dur, b.hi) AS e FROM rbln_untraced u, bounds b
  WHERE min(u.ts + u.dur, b.hi) > max(u.ts, b.lo)),
reach AS (
  SELECT s, e, max(e) OVER (ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
  FROM clipped),
skipped AS (
  SELECT coalesce(sum(max(0, e - max(s, coalesce(reach, s)))), 0) AS ns FROM reach)
SELECT b.lo AS ts, b.hi AS end_ts, b.hi - b.lo AS dur, k.ns AS untraced_dur, b.hi - b.lo - k.ns AS traced_dur
FROM bounds b, skipped k;
