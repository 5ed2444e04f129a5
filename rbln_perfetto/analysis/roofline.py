"""Roofline: how close each command, layer and submodule ran to what its device can do.

A device's roofs are its profile (`pipeline.device_profiles`: measured by a calibration, or given in
`rbln_config['device_profile']`), which the trace carries as Run slice args (`device_{d}_...`; in a
merged trace, each rank's `Rank r / Run` slice holds its own devices'). For a command of F flops and
B bytes (its `flops` and `bytes` args) that took T on a device of peak P FLOP/s and bandwidth W bytes/s:

    roofline time     R = max(F / P, B / W): the least time the command can take there
    time above roof   max(0, T - R): where time is lost (summed per row, ranked: first row first)
    achieved          F / T FLOP/s and B / T bytes/s; arithmetic intensity F / B (FLOP per byte)
    MFU, MBU          (F / T) / P and (B / T) / W: the share of each roof reached
    bound             "overhead" when R < OVERHEAD_EFFICIENCY x T (far below both roofs: launch,
                      dispatch and Python time dominate), else "compute" when F / P >= B / W (the
                      compute roof is the one that limits), else "memory"

A row of many commands sums F, B, T, R and the time above the roof over them (each command's R is
its own), and labels itself by the same rule on those sums. Durations are the commands' own (not
the DMAs or gaps around them). A trace whose Run slice holds no profile (older traces) still gets
the achieved rates and intensity; its roof columns are empty and its bound "unknown".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import os
from pathlib import Path

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from ..errors import PlotError, UsageError
from ..naming import DEVICE_PROFILE_FIELDS, device_profile_arg, layer_sql
from ..query.trace_model import DEVICE_TRACKS, RANK_STRIDE, in_category, is_command, own_name, unit_label, with_ctes
from .sources import opened

BY = ("layer", "command", "submodule", "device")
OVERHEAD_EFFICIENCY = 0.10  # (the `rbln.roofline` SQL module states the same rule; a test checks they agree)
_ROOF_COLORS = ("black", "#d62728", "#7f7f7f", "#8c564b")  # one per device profile drawn
# The Run slice args a device's profile is written as: debug.device_{d}_{field} (`naming.device_profile_arg`).
_PREFIX = "debug." + device_profile_arg(0, "").removesuffix("0_")

_RUN_RANK = ("CASE WHEN t.name GLOB 'Rank [0-9]* / Run' THEN CAST(substr(t.name, 6, instr(t.name, ' / ') - 6) AS INT) "
             "ELSE 0 END")
_REST = f"substr(a.key, {len(_PREFIX) + 1})"  # '{d}_{field}'
_PIVOT = ",\n       ".join(f"max(CASE field WHEN '{f}' THEN coalesce(string_value, real_value, int_value) END) AS {f}"
                           for f in DEVICE_PROFILE_FIELDS)
PROFILE_ROWS = f"""
SELECT rank, device, {RANK_STRIDE} * rank + device AS unit,
       {_PIVOT}
FROM (
  SELECT {_RUN_RANK} AS rank, CAST(substr({_REST}, 1, instr({_REST}, '_') - 1) AS INT) AS device,
         substr({_REST}, instr({_REST}, '_') + 1) AS field, a.real_value, a.int_value, a.string_value
  FROM slice s JOIN track t ON s.track_id = t.id JOIN args a ON a.arg_set_id = s.arg_set_id
  WHERE (t.name = 'Run' OR t.name GLOB 'Rank [0-9]* / Run') AND a.key GLOB '{_PREFIX}[0-9]*_*')
GROUP BY rank, device
ORDER BY rank, device
"""


def _commands_sql(per_command: bool) -> str:
    """One row per (unit, submodule, layer, op[, command index]): its commands' sums, each command's
    roofline time its own (`max` of two values is SQLite's scalar max on both backends; NULL without a
    profile). As the canned reports do, a split op's commands are summed per op (and command index) first,
    an integer key, so that only the ops, and the commands of no split op, are named (`naming.layer_sql`)."""
    index = "c.command_index" if per_command else "NULL"
    by_index = ", c.command_index" if per_command else ""
    return with_ctes(DEVICE_TRACKS) + f""",
profiles AS ({PROFILE_ROWS}),
costed AS (
  SELECT s.id, s.parent_id, s.depth, s.dur, s.arg_set_id, d.unit, d.prefix,
         extract_arg(s.arg_set_id, 'debug.command_index') AS command_index,
         extract_arg(s.arg_set_id, 'debug.flops') AS flops, extract_arg(s.arg_set_id, 'debug.bytes') AS bytes,
         1e9 * max(1.0 * extract_arg(s.arg_set_id, 'debug.flops') / p.peak_flops_per_s,
                   1.0 * extract_arg(s.arg_set_id, 'debug.bytes') / p.mem_bandwidth_bytes_per_s) AS roof_ns
  FROM slice s JOIN device_tracks d ON d.track_id = s.track_id LEFT JOIN profiles p ON p.unit = d.unit
  WHERE {in_category('Compute')} AND {is_command()} AND s.dur >= 0),
split AS MATERIALIZED (
  SELECT c.parent_id, c.unit, {index} AS command_index, min(c.arg_set_id) AS any_args, count(*) AS calls,
         sum(c.dur) AS dur_ns, sum(c.flops) AS flops, sum(c.bytes) AS bytes, sum(c.roof_ns) AS roofline_ns,
         sum(max(0, c.dur - c.roof_ns)) AS above_ns
  FROM costed c WHERE c.depth > 0
  GROUP BY c.parent_id{by_index}),
ops AS (
  SELECT o.parent_id, extract_arg(min(o.any_args), 'debug.submodule') AS submodule
  FROM split o GROUP BY o.parent_id),
op_names AS MATERIALIZED (
  SELECT o.parent_id, o.submodule, {own_name('p')} AS layer, extract_arg(p.arg_set_id, 'debug.op') AS op
  FROM ops o JOIN slice p ON p.id = o.parent_id JOIN device_tracks d ON d.track_id = p.track_id),
named AS (
  SELECT o.unit, n.submodule, n.layer, n.op, o.command_index, o.calls, o.dur_ns, o.flops, o.bytes,
         o.roofline_ns, o.above_ns
  FROM split o JOIN op_names n ON n.parent_id = o.parent_id
  UNION ALL
  SELECT c.unit, extract_arg(c.arg_set_id, 'debug.submodule'),
         {layer_sql("substr(n.name, length(c.prefix) + 1)", "c.command_index")},
         extract_arg(c.arg_set_id, 'debug.op'), {index}, 1, c.dur, c.flops, c.bytes, c.roof_ns,
         max(0, c.dur - c.roof_ns)
  FROM costed c JOIN slice n ON n.id = c.id WHERE c.depth = 0)
SELECT unit, submodule, layer, op, command_index, sum(calls) AS calls, sum(dur_ns) AS dur_ns, sum(flops) AS flops,
       sum(bytes) AS bytes, sum(roofline_ns) AS roofline_ns, sum(above_ns) AS above_ns
FROM named
GROUP BY unit, submodule, layer, op, command_index
"""


_COMMANDS = {per_command: _commands_sql(per_command) for per_command in (False, True)}
_MERGED = with_ctes(DEVICE_TRACKS) + "\nSELECT count(*) AS n FROM device_tracks WHERE prefix != ''"

COLUMNS = ["time_ms", "roofline_ms", "above_roof_ms", "above_roof_pct", "bound", "roof_pct", "mfu_pct", "mbu_pct",
           "gflop_per_s", "gb_per_s", "intensity", "flops", "bytes"]


def device_profiles(trace, *, backend: str = "auto", tp_bin: str | None = None) -> "pd.DataFrame":
    """The device profiles a trace holds (its Run slices' args): one row per (rank, device) with rank,
    device, unit, source ("measured" / "given"), peak_flops_per_s, mem_bandwidth_bytes_per_s,
    capacity_bytes, dtype, label. Empty for a trace recorded without profiles."""
    with opened(trace, backend, tp_bin) as tr:
        out = tr.query(PROFILE_ROWS)
    return out.astype({"rank": "int64", "device": "int64", "unit": "int64"}) if len(out) else out


def roofs_text(profiles) -> str:
    """What the roofs were (a `device_profiles` table) and the bound rule, as lines under a report."""
    merged = bool(len(profiles)) and bool((profiles["rank"] > 0).any())
    lines = [f"{unit_label(int(p.unit), merged)}: {p.source} profile, {float(p.peak_flops_per_s) / 1e9:.4g} GFLOP/s "
             f"({p.dtype}), {float(p.mem_bandwidth_bytes_per_s) / 1e9:.4g} GB/s ({p.label})"
             for p in profiles.itertuples()]
    if not lines:
        lines = ["no device profile in this trace: roofline columns are empty, bound is unknown"]
    lines.append(f"bound: overhead when the roofline time is under {OVERHEAD_EFFICIENCY:.0%} of the time, else "
                 "compute when flops / peak >= bytes / bandwidth, else memory")
    return "\n".join(lines)


def bound_of(flops, nbytes, time_ns, roofline_ns, peak_flops_per_s, mem_bandwidth_bytes_per_s):
    """The bound label(s) by the module's rule (scalars or arrays): overhead, compute, memory; unknown
    without a profile."""
    flops, nbytes, time_ns, roof = (np.asarray(x, dtype=float) for x in (flops, nbytes, time_ns, roofline_ns))
    peak, bw = np.asarray(peak_flops_per_s, dtype=float), np.asarray(mem_bandwidth_bytes_per_s, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        compute = flops / peak >= nbytes / bw
        overhead = roof < OVERHEAD_EFFICIENCY * time_ns
    label = np.where(overhead, "overhead", np.where(compute, "compute", "memory"))
    label = np.where(np.isnan(roof) | np.isnan(peak) | np.isnan(bw), "unknown", label)
    return label if label.ndim else str(label)


def _keys(by: str) -> list[str]:
    return {"command": ["unit", "submodule", "layer", "op", "command_index"],
            "layer": ["unit", "submodule", "layer", "op"],
            "submodule": ["unit", "submodule"],
            "device": ["unit"]}[by]


def roofline(trace, *, by: str = "layer", top: int | None = None, backend: str = "auto",
             tp_bin: str | None = None) -> "pd.DataFrame":
    """The roofline per `by` (layer, command, submodule or device) of a trace, ranked by time above the roof
    (first row: where the most time is lost); ties and rows without a profile by time.

    Columns: device (`device 0`, or `rank 1 device 1` in a merged trace), the keys of `by`
    (submodule; layer and op; command_index), commands (command calls summed), then time_ms,
    roofline_ms, above_roof_ms, above_roof_pct (of all time above the roof), bound, roof_pct (roofline
    time / time), mfu_pct, mbu_pct, gflop_per_s and gb_per_s achieved, intensity (FLOP/byte), flops,
    bytes. The roofs are `device_profiles(trace)`."""
    import pandas as pd

    if by not in BY:
        raise UsageError(f"by={by!r} is not valid; valid: {', '.join(BY)}")
    with opened(trace, backend, tp_bin) as tr:
        rows = tr.query(_COMMANDS[by == "command"])
        profiles = tr.query(PROFILE_ROWS)
        merged = int(tr.query(_MERGED).n.iloc[0]) > 0
    keys = _keys(by)
    for col in ("dur_ns", "flops", "bytes", "roofline_ns", "above_ns"):
        rows[col] = pd.to_numeric(rows[col], errors="coerce").astype(float)
    rows["unit"] = rows.unit.astype("int64")
    if by == "command":
        rows["command_index"] = rows.command_index.astype("int64")
    # A sum over rows without a profile (or without flops and bytes args) stays NaN (pandas would make it 0).
    sums = (rows.rename(columns={"calls": "commands"})
            .groupby(keys, sort=False, dropna=False)[["commands", "dur_ns", "flops", "bytes", "roofline_ns", "above_ns"]]
            .sum(min_count=1).reset_index())
    prof = profiles[["unit", "peak_flops_per_s", "mem_bandwidth_bytes_per_s", "source"]].copy() if len(profiles) else \
        pd.DataFrame({"unit": pd.Series([], dtype="int64"), "peak_flops_per_s": pd.Series([], dtype=float),
                      "mem_bandwidth_bytes_per_s": pd.Series([], dtype=float), "source": pd.Series([], dtype=object)})
    prof["unit"] = prof.unit.astype("int64")
    out = sums.merge(prof, on="unit", how="left")
    for col in ("peak_flops_per_s", "mem_bandwidth_bytes_per_s"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    secs = out.dur_ns / 1e9
    with np.errstate(divide="ignore", invalid="ignore"):
        out["time_ms"] = out.dur_ns / 1e6
        out["roofline_ms"] = out.roofline_ns / 1e6
        out["above_roof_ms"] = out.above_ns / 1e6
        total_above = out.above_ns.sum()
        out["above_roof_pct"] = 100.0 * out.above_ns / total_above if total_above > 0 else np.nan
        flops_per_s = (out.flops / secs).where(secs > 0)
        bytes_per_s = (out.bytes / secs).where(secs > 0)
        out["gflop_per_s"] = flops_per_s / 1e9
        out["gb_per_s"] = bytes_per_s / 1e9
        out["intensity"] = (out.flops / out.bytes).where(out.bytes > 0)
        out["mfu_pct"] = 100.0 * flops_per_s / out.peak_flops_per_s
        out["mbu_pct"] = 100.0 * bytes_per_s / out.mem_bandwidth_bytes_per_s
        out["roof_pct"] = (100.0 * out.roofline_ns / out.dur_ns).where(out.dur_ns > 0)
    out["bound"] = bound_of(out.flops, out.bytes, out.dur_ns, out.roofline_ns, out.peak_flops_per_s,
                            out.mem_bandwidth_bytes_per_s)
    out["device"] = [unit_label(u, merged) for u in out.unit]
    out["flops"] = out.flops.round().astype("Int64")
    out["bytes"] = out.bytes.round().astype("Int64")
    out = out.sort_values(["above_ns", "dur_ns", *keys], ascending=[False, False, *[True] * len(keys)],
                          na_position="last", kind="stable")
    columns = ["device", *keys[1:], "commands", *COLUMNS]
    out = out[columns].reset_index(drop=True)
    return out if top is None else out.head(top)


def draw_roofline(trace, *, width_in: float = 8.0, dpi: int = 100, backend: str = "auto",
                  tp_bin: str | None = None):
    """The roofline plot of a trace as a matplotlib Figure: log-log, arithmetic intensity (FLOP/byte)
    against achieved FLOP/s, one point per layer sized by its time and coloured by submodule, under
    each device's roofs (min(peak, intensity x bandwidth)). The points are one collection per
    submodule with gid "layers:<submodule>"; the roofs, one line per device profile, "roof:<device>"."""
    from matplotlib.figure import Figure

    from .plot import submodule_color

    with opened(trace, backend, tp_bin) as tr:
        table = roofline(tr, by="layer")
        profiles = tr.query(PROFILE_ROWS)
        merged = int(tr.query(_MERGED).n.iloc[0]) > 0
        name = Path(tr.path).name
    points = table[(table.flops > 0) & (table.bytes > 0) & (table.time_ms > 0)]
    rate = points.gflop_per_s * 1e9
    if points.empty:
        raise PlotError(f"{name} has no command with flops and bytes to plot (is it an rbln-perfetto trace?)")
    fig = Figure(figsize=(width_in, 0.7 * width_in), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo_i, hi_i = points.intensity.min(), points.intensity.max()
    top_y = rate.max()
    for p in profiles.itertuples():
        peak, bw = float(p.peak_flops_per_s), float(p.mem_bandwidth_bytes_per_s)
        ridge = peak / bw
        lo_i, hi_i, top_y = min(lo_i, ridge / 10), max(hi_i, ridge * 10), max(top_y, peak)
    lo_i, hi_i = lo_i / 2, hi_i * 2
    xs = np.geomspace(lo_i, hi_i, 200)
    for i, p in enumerate(profiles.itertuples()):
        peak, bw = float(p.peak_flops_per_s), float(p.mem_bandwidth_bytes_per_s)
        label = unit_label(int(p.unit), merged)
        (line,) = ax.plot(xs, np.minimum(peak, xs * bw), color=_ROOF_COLORS[i % len(_ROOF_COLORS)], linewidth=1.2,
                          linestyle="-" if p.source == "measured" else "--",
                          label=f"{label} roof ({p.source}: {peak / 1e9:.3g} GFLOP/s, {bw / 1e9:.3g} GB/s)")
        line.set_gid(f"roof:{label}")
    total = points.time_ms.sum()
    for sub, mine in points.groupby("submodule", sort=False):
        sizes = 20 + 600 * mine.time_ms / total
        dots = ax.scatter(mine.intensity, mine.gflop_per_s * 1e9, s=sizes, color=submodule_color(sub), alpha=0.6,
                          edgecolors="black", linewidths=0.4, label=sub)
        dots.set_gid(f"layers:{sub}")
    ax.set_xlim(lo_i, hi_i)
    ax.set_ylim(rate.min() / 3, top_y * 3)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("achieved FLOP/s")
    ax.set_title(f"{name}: roofline, one point per layer (area: its time)", fontsize="medium")
    ax.grid(which="major", linestyle=":", linewidth=0.5)
    ax.legend(fontsize="x-small", loc="lower right", frameon=False)
    return fig


def plot_roofline(trace, out: str | os.PathLike, *, width_in: float = 8.0, dpi: int = 100,
                  backend: str = "auto", tp_bin: str | None = None) -> Path:
    """Write the roofline plot of `trace` to `out` as PNG; returns the path."""
    fig = draw_roofline(trace, width_in=width_in, dpi=dpi, backend=backend, tp_bin=tp_bin)
    out = Path(out)
    fig.savefig(out)
    return out
