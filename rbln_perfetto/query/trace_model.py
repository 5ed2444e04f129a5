"""What a trace holds, defined once: device tracks, commands, DMAs, invocations, untraced stretches
and the run span, as SQL (CTEs and conditions) that every report, analysis, check metric and
summary reads. Plain SQLite plus trace_processor's `extract_arg`, so it runs on both backends.

    device track      a child (Workload, Host, Compute, DMA) of a top-level `Device d` track, or of
                      `Rank r / Device d` in a merged trace (`rbln-perfetto merge`), whose slice
                      names carry the prefix `i{r}_`; a (rank, device) pair is one *unit*
    invocation        a Workload slice that is no untraced stretch
    untraced stretch  a Workload slice with an `untraced` arg (`not traced: steps 0-9`): the run ran
                      there, the trace holds nothing of it; no work and no idle time
    command           a Compute slice with a `command_index` arg (not a split op's parent)
    op                a top-level Compute slice: a command, or a split op (its commands back to back)
    DMA               a DMA slice: a copy, or a transfer to or from another rank
    run span          from the first invocation or host work to the last, over every rank; its
                      traced part leaves the untraced stretches out (utilisation and idle shares are
                      of the traced part)
"""

from __future__ import annotations

CATEGORIES = ("Workload", "Host", "Compute", "DMA")
# A unit key: rank * RANK_STRIDE + device, one integer per (rank, device) for the analyses' arrays.
RANK_STRIDE = 1 << 20

_RANKED = "p.name GLOB 'Rank [0-9]* / Device [0-9]*'"
_RANK = f"CASE WHEN {_RANKED} THEN CAST(substr(p.name, 6, instr(p.name, ' / ') - 6) AS INT) ELSE 0 END"

# One row per device track: its category, rank, logical device, unit key, and the prefix its slice
# names carry (`i{r}_` in a merged trace, else '').
DEVICE_TRACKS = f"""device_tracks AS (
  SELECT t.id AS track_id, t.name AS category, {_RANK} AS rank,
         CAST(substr(p.name, instr(p.name, 'Device ') + 7) AS INT) AS device,
         {_RANK} * {RANK_STRIDE} + CAST(substr(p.name, instr(p.name, 'Device ') + 7) AS INT) AS unit,
         CASE WHEN {_RANKED} THEN 'i' || {_RANK} || '_' ELSE '' END AS prefix
  FROM track t JOIN track p ON t.parent_id = p.id
  WHERE (p.name GLOB 'Device [0-9]*' OR {_RANKED}) AND t.name IN ({', '.join(repr(c) for c in CATEGORIES)}))"""


def in_category(*categories: str, alias: str = "s") -> str:
    """SQL condition: slice `alias` is on a device track of one of `categories`. An IN over the few
    track ids keeps the slice scan the outer loop on both backends; put it first, so that a slice of
    another track costs no more than that test. Needs the `device_tracks` CTE."""
    names = ", ".join(repr(c) for c in categories)
    return f"{alias}.track_id IN (SELECT track_id FROM device_tracks WHERE category IN ({names}))"


def is_untraced(alias: str = "s") -> str:
    """SQL condition: Workload slice `alias` is an untraced stretch (its `untraced` arg; the name's
    prefix differs in a merged trace). Test it only on Workload slices: it reads their args."""
    return f"extract_arg({alias}.arg_set_id, 'debug.untraced') IS NOT NULL"


def not_untraced(alias: str = "s") -> str:
    return f"extract_arg({alias}.arg_set_id, 'debug.untraced') IS NULL"


def is_command(alias: str = "s") -> str:
    """SQL condition: Compute slice `alias` is a command (a split op's parent carries no command_index)."""
    return f"extract_arg({alias}.arg_set_id, 'debug.command_index') IS NOT NULL"


def own_name(alias: str = "s", tracks: str = "d") -> str:
    """SQL: slice `alias`'s name as its rank's own trace has it (less the merged trace's `i{r}_`);
    `tracks`: its row of `device_tracks`."""
    return f"substr({alias}.name, length({tracks}.prefix) + 1)"


# One row per invocation: unit, rank, device, its own name, and rbln-perfetto's args.
INVOCATIONS = f"""invocations AS (
  SELECT s.id, s.ts, s.dur, d.unit, d.rank, d.device, {own_name()} AS name,
         extract_arg(s.arg_set_id, 'debug.sequence_index') AS seq,
         extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
         extract_arg(s.arg_set_id, 'debug.call_index') AS call_index
  FROM slice s JOIN device_tracks d ON s.track_id = d.track_id
  WHERE {in_category('Workload')} AND s.depth = 0 AND s.dur >= 0 AND {not_untraced()})"""

# One row per untraced stretch.
UNTRACED = f"""untraced AS (
  SELECT s.id, s.ts, s.dur, d.unit, d.rank, d.device, {own_name()} AS name
  FROM slice s JOIN device_tracks d ON s.track_id = d.track_id
  WHERE {in_category('Workload')} AND s.depth = 0 AND s.dur >= 0 AND {is_untraced()})"""

# The run: lo, hi, ns (hi - lo), untraced_ns (of it), traced_ns (the rest). Needs device_tracks and untraced.
# Untraced stretches may overlap (every rank of a merged run leaves the same steps untraced; two units
# untraced at once): their union counts, each moment once (sorted by start, a stretch adds only what
# reaches past every earlier one).
RUN_SPAN = f"""run_bounds AS (
  SELECT min(s.ts) AS lo, max(s.ts + s.dur) AS hi FROM slice s
  WHERE {in_category('Workload', 'Host')} AND s.depth = 0 AND s.dur >= 0 AND {not_untraced()}),
untraced_clipped AS (
  SELECT max(u.ts, b.lo) AS s, min(u.ts + u.dur, b.hi) AS e FROM untraced u, run_bounds b
  WHERE min(u.ts + u.dur, b.hi) > max(u.ts, b.lo)),
untraced_reach AS (
  SELECT s, e, max(e) OVER (ORDER BY s, e ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
  FROM untraced_clipped),
run_span AS (
  SELECT b.lo, b.hi, b.hi - b.lo AS ns, t.ns AS untraced_ns, b.hi - b.lo - t.ns AS traced_ns
  FROM run_bounds b,
       (SELECT coalesce(sum(max(0, e - max(s, coalesce(reach, s)))), 0) AS ns FROM untraced_reach) t)"""

MODEL = (DEVICE_TRACKS, INVOCATIONS, UNTRACED, RUN_SPAN)


def with_ctes(*ctes: str) -> str:
    """`WITH a, b, ...` for the given CTE texts (each `name AS (...)`)."""
    return "WITH " + ",\n".join(ctes)


# Every invocation, in run order.
INVOCATION_ROWS = with_ctes(DEVICE_TRACKS, INVOCATIONS) + """
SELECT id, seq, submodule, call_index, unit, rank, device, name, ts, dur FROM invocations ORDER BY ts, seq"""
UNTRACED_ROWS = with_ctes(DEVICE_TRACKS, UNTRACED) + "\nSELECT id, ts, dur, unit, rank, name FROM untraced ORDER BY ts"
TRACK_UNITS = (with_ctes(DEVICE_TRACKS)
               + "\nSELECT track_id, category, unit, prefix FROM device_tracks ORDER BY track_id")
RUN_SPAN_ROW = with_ctes(*MODEL) + "\nSELECT lo, hi, ns, untraced_ns, traced_ns FROM run_span"


def unit_rank(unit: int) -> int:
    return int(unit) // RANK_STRIDE


def unit_device(unit: int) -> int:
    return int(unit) % RANK_STRIDE


def unit_label(unit: int, merged: bool) -> str:
    """`device 1`, or `rank 1 device 1` in a merged trace."""
    return f"rank {unit_rank(unit)} device {unit_device(unit)}" if merged else f"device {unit_device(unit)}"
