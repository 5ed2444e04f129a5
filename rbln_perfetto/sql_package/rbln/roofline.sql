-- rbln.roofline: each device's roofs (its profile) and each command against them.
--
-- A device's profile (peak FLOP/s at the run's dtype, memory bandwidth and capacity: measured by a
-- calibration, or given in rbln_config['device_profile']) is held by the args of its rank's Run slice
-- (track `Run`, or `Rank r / Run` in a merged trace): debug.device_{d}_peak_flops_per_s and so on.
-- A command of F flops and B bytes on a device of peak P and bandwidth W has a roofline time of
-- max(F / P, B / W), the least it can take there; its time above the roof is what it took beyond
-- that. Its bound: `overhead` when the roofline time is under 10% of its time (far below both roofs),
-- else `compute` when F / P >= B / W, else `memory`; `unknown` without a profile. The rule is that of
-- `rbln-perfetto report roofline` (`analysis/roofline.py`), which sums these per layer, submodule and
-- device (a test checks that both agree).

INCLUDE PERFETTO MODULE rbln.commands;

-- One row per (rank, device) of the trace; the profile's columns are NULL where the trace holds none.
CREATE PERFETTO TABLE rbln_device_roofs(
  rank LONG,
  device LONG,
  -- `measured` (a calibration on its torch device) or `given` (rbln_config['device_profile']).
  source STRING,
  -- FLOP/s at `dtype`.
  peak_flops_per_s DOUBLE,
  -- Bytes/s.
  mem_bandwidth_bytes_per_s DOUBLE,
  capacity_bytes LONG,
  dtype STRING,
  -- How it was measured, or the name it was given.
  label STRING
) AS
WITH runs AS (
  SELECT CASE WHEN t.name GLOB 'Rank [0-9]* / Run' THEN CAST(substr(t.name, 6, instr(t.name, ' / ') - 6) AS INT)
              ELSE 0 END AS rank,
         min(s.arg_set_id) AS arg_set_id
  FROM slice s JOIN track t ON s.track_id = t.id
  WHERE t.name = 'Run' OR t.name GLOB 'Rank [0-9]* / Run'
  GROUP BY rank),
units AS (
  SELECT DISTINCT rank, device FROM rbln_device_tracks)
SELECT u.rank, u.device,
       extract_arg(r.arg_set_id, 'debug.device_' || u.device || '_source') AS source,
       CAST(extract_arg(r.arg_set_id, 'debug.device_' || u.device || '_peak_flops_per_s') AS REAL) AS peak_flops_per_s,
       CAST(extract_arg(r.arg_set_id, 'debug.device_' || u.device || '_mem_bandwidth_bytes_per_s') AS REAL)
         AS mem_bandwidth_bytes_per_s,
       CAST(extract_arg(r.arg_set_id, 'debug.device_' || u.device || '_capacity_bytes') AS INT) AS capacity_bytes,
       extract_arg(r.arg_set_id, 'debug.device_' || u.device || '_dtype') AS dtype,
       extract_arg(r.arg_set_id, 'debug.device_' || u.device || '_label') AS label
FROM units u LEFT JOIN runs r ON r.rank = u.rank
ORDER BY u.rank, u.device;

-- One row per command (`rbln_commands`), with its roofline time and bound.
CREATE PERFETTO VIEW rbln_command_roofline(
  -- The command's slice (`slice.id`).
  id LONG,
  ts TIMESTAMP,
  dur DURATION,
  rank LONG,
  device LONG,
  submodule STRING,
  layer STRING,
  op STRING,
  command_index LONG,
  flops LONG,
  bytes LONG,
  -- max(flops / peak, bytes / bandwidth) in ns: the least time it can take on its device; NULL without a profile.
  roofline_dur DOUBLE,
  -- max(0, dur - roofline_dur): the time lost.
  above_roof_dur DOUBLE,
  -- flops / bytes (FLOP per byte).
  intensity DOUBLE,
  -- compute, memory, overhead or unknown (see above).
  bound STRING
) AS
SELECT id, ts, dur, rank, device, submodule, layer, op, command_index, flops, bytes, roofline_dur,
       max(0, dur - roofline_dur) AS above_roof_dur,
       CASE WHEN bytes > 0 THEN 1.0 * flops / bytes END AS intensity,
       CASE WHEN roofline_dur IS NULL THEN 'unknown'
            WHEN roofline_dur < 0.1 * dur THEN 'overhead'
            WHEN 1.0 * flops / peak >= 1.0 * bytes / bandwidth THEN 'compute'
            ELSE 'memory' END AS bound
FROM (
  SELECT c.id, c.ts, c.dur, c.rank, c.device, c.submodule, c.layer, c.op, c.command_index, c.flops, c.bytes,
         r.peak_flops_per_s AS peak, r.mem_bandwidth_bytes_per_s AS bandwidth,
         1e9 * max(1.0 * c.flops / r.peak_flops_per_s, 1.0 * c.bytes / r.mem_bandwidth_bytes_per_s) AS roofline_dur
  FROM rbln_commands c LEFT JOIN rbln_device_roofs r ON r.rank = c.rank AND r.device = c.device);
