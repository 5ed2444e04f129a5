-- rbln.tracks: the device tracks of an rbln-perfetto trace.
--
-- A device track is a child (Workload, Host, Compute or DMA) of a top-level `Device d` track, or of
-- `Rank r / Device d` in a merged trace (`rbln-perfetto merge`), whose slice names then carry the
-- prefix `i{r}_`. A (rank, device) pair is one unit. The same definition as
-- rbln_perfetto/query/trace_model.py (DEVICE_TRACKS), which the project's own reports read.

-- One row per device track.
CREATE PERFETTO TABLE rbln_device_tracks(
  -- The track (`track.id`).
  track_id LONG,
  -- Workload, Host, Compute or DMA.
  category STRING,
  -- The rank (0 outside a merged trace).
  rank LONG,
  -- The logical device within its rank.
  device LONG,
  -- rank * 1048576 + device: one integer per (rank, device).
  unit LONG,
  -- What the names of its slices start with: `i{r}_` in a merged trace, else ''.
  prefix STRING,
  -- `device d`, or `rank r device d` in a merged trace.
  label STRING
) AS
WITH parents AS (
  SELECT t.id AS track_id, t.name AS category, p.name AS parent,
         p.name GLOB 'Rank [0-9]* / Device [0-9]*' AS ranked
  FROM track t JOIN track p ON t.parent_id = p.id
  WHERE (p.name GLOB 'Device [0-9]*' OR p.name GLOB 'Rank [0-9]* / Device [0-9]*')
    AND t.name IN ('Workload', 'Host', 'Compute', 'DMA')),
units AS (
  SELECT track_id, category, ranked,
         CASE WHEN ranked THEN CAST(substr(parent, 6, instr(parent, ' / ') - 6) AS INT) ELSE 0 END AS rank,
         CAST(substr(parent, instr(parent, 'Device ') + 7) AS INT) AS device
  FROM parents)
SELECT track_id, category, rank, device, rank * 1048576 + device AS unit,
       CASE WHEN ranked THEN 'i' || rank || '_' ELSE '' END AS prefix,
       CASE WHEN (SELECT max(ranked) FROM units) THEN 'rank ' || rank || ' device ' || device
            ELSE 'device ' || device END AS label
FROM units
ORDER BY track_id;
