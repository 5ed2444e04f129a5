-- rbln.commands: one row per device command of an rbln-perfetto trace.
--
-- A command is a slice of a Compute track with a `command_index` arg: an op that ran as one
-- command (a top-level slice), or one of the commands of a split op (children of a parent slice
-- named after their layer). Its name is `{sequence_index}_{layer}_{command_index}` (a merged
-- trace's names start with `i{r}_`); the layer is read from the name, the rest from the args.
-- A view: a run holds about a million commands, so nothing is copied until a query asks.

INCLUDE PERFETTO MODULE rbln.tracks;

CREATE PERFETTO VIEW rbln_commands(
  -- The command's slice (`slice.id`).
  id LONG,
  ts TIMESTAMP,
  dur DURATION,
  -- Its Compute track (`track.id`).
  track_id LONG,
  rank LONG,
  device LONG,
  submodule STRING,
  -- The sequence index of its invocation.
  sequence_index LONG,
  -- The layer (fused layers joined with `+`).
  layer STRING,
  -- The op type (linear, bmm, conv, ...).
  op STRING,
  -- Which of its op's commands it is (0 .. command_count - 1).
  command_index LONG,
  -- How many commands its op was split into (1: not split).
  command_count LONG,
  bytes LONG,
  flops LONG,
  -- The split op it belongs to (`rbln_split_ops.id`); NULL for an op of one command.
  split_op_id LONG,
  -- The slice's name as its rank's own trace has it (less a merged trace's `i{r}_`).
  name STRING
) AS
SELECT id, ts, dur, track_id, rank, device, submodule, sequence_index,
       substr(name, instr(name, '_') + 1, length(name) - instr(name, '_') - length(CAST(command_index AS TEXT)) - 1)
         AS layer,
       op, command_index, command_count, bytes, flops, split_op_id, name
FROM (
  SELECT s.id, s.ts, s.dur, s.track_id, d.rank, d.device,
         extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
         extract_arg(s.arg_set_id, 'debug.sequence_index') AS sequence_index,
         extract_arg(s.arg_set_id, 'debug.op') AS op,
         extract_arg(s.arg_set_id, 'debug.command_index') AS command_index,
         extract_arg(s.arg_set_id, 'debug.command_count') AS command_count,
         extract_arg(s.arg_set_id, 'debug.bytes') AS bytes,
         extract_arg(s.arg_set_id, 'debug.flops') AS flops,
         CASE WHEN s.depth > 0 THEN s.parent_id END AS split_op_id,
         substr(s.name, length(d.prefix) + 1) AS name
  FROM slice s JOIN rbln_device_tracks d ON s.track_id = d.track_id
  WHERE s.track_id IN (SELECT track_id FROM rbln_device_tracks WHERE category = 'Compute')
    AND extract_arg(s.arg_set_id, 'debug.command_index') IS NOT NULL);
