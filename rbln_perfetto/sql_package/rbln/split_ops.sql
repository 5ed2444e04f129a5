-- rbln.split_ops: the ops that were split into several commands.
--
-- A split op is a top-level slice of a Compute track named after its layer, whose children are its
-- commands, run back to back. Its commands are summed per op first (an integer key, no name read),
-- so only the split ops, many times fewer than the commands, are named.

INCLUDE PERFETTO MODULE rbln.tracks;

-- One row per split op.
CREATE PERFETTO TABLE rbln_split_ops(
  -- The split op's slice (`slice.id`; its commands' `rbln_commands.split_op_id`).
  id LONG,
  ts TIMESTAMP,
  dur DURATION,
  track_id LONG,
  rank LONG,
  device LONG,
  -- The layer (the slice's name, less a merged trace's `i{r}_`).
  layer STRING,
  -- The submodule its commands ran in.
  submodule STRING,
  op STRING,
  -- How many commands it was split into (the op's own arg).
  command_count LONG,
  -- How many command slices it holds.
  commands LONG,
  -- The sum of its commands' durations.
  commands_dur DURATION,
  -- Its longest command.
  max_command_dur DURATION
) AS
WITH per_op AS (
  SELECT c.parent_id, extract_arg(min(c.arg_set_id), 'debug.submodule') AS submodule, count(*) AS commands,
         sum(c.dur) AS commands_dur, max(c.dur) AS max_command_dur
  FROM slice c
  WHERE c.track_id IN (SELECT track_id FROM rbln_device_tracks WHERE category = 'Compute') AND c.depth = 1
  GROUP BY c.parent_id)
SELECT p.id, p.ts, p.dur, p.track_id, d.rank, d.device, substr(p.name, length(d.prefix) + 1) AS layer, o.submodule,
       extract_arg(p.arg_set_id, 'debug.op') AS op, extract_arg(p.arg_set_id, 'debug.command_count') AS command_count,
       o.commands, o.commands_dur, o.max_command_dur
FROM per_op o JOIN slice p ON p.id = o.parent_id JOIN rbln_device_tracks d ON d.track_id = p.track_id
WHERE p.depth = 0
ORDER BY p.id;
