"""A PNG timeline of a trace: one row per device with its invocations, or its commands and DMA
(`level`), host work on a lane of its own, and each submodule in the same colour in every plot
(every second command and DMA copy in a lighter shade of it, the longest commands named).

The data comes from SQL on an open `Trace`, so the plot works on either backend. Bars narrower
than `MIN_BAR_PX` pixels are drawn that wide, so that short host work and commands stay visible.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from ..errors import PlotError, UsageError
from ..query.trace_model import DEVICE_TRACKS, in_category, is_command, not_untraced, own_name, with_ctes

LEVELS = ("auto", "invocations", "commands")  # auto: commands for a one-invocation file, else invocations

# A colour per submodule (rbln_config's submodule keys), the same in every plot; any other submodule
# gets one of `_SPARE_COLORS` by a hash of its name, so it too has the same colour everywhere.
SUBMODULE_COLORS = {
    "text_encoder": "#1f77b4",
    "text_encoder_2": "#17becf",
    "text_encoder_3": "#9467bd",
    "transformer": "#ff7f0e",
    "vae": "#2ca02c",
}
_SPARE_COLORS = ("#8c564b", "#e377c2", "#bcbd22", "#d62728", "#aec7e8", "#98df8a")
HOST_COLOR = "#404040"
MIN_BAR_PX = 1.5
LABELLED_COMMANDS = 6  # at the commands level, the longest commands wide enough for it are named on their bar

# A device's row is named after its top-level track (`Device 1`, `Rank 1 / Device 1` in a merged trace).
_SLICES = with_ctes(DEVICE_TRACKS) + """
SELECT p.name AS device, s.ts, s.dur, extract_arg(s.arg_set_id, 'debug.submodule') AS submodule
FROM slice s JOIN track t ON s.track_id = t.id JOIN track p ON t.parent_id = p.id
WHERE {where} AND s.dur >= 0
ORDER BY s.ts
"""
_QUERIES = {
    "invocations": _SLICES.format(where=f"{in_category('Workload')} AND s.depth = 0 AND {not_untraced()}"),
    "commands": _SLICES.format(where=f"{in_category('Compute')} AND {is_command()}"),
    "dma": _SLICES.format(where=in_category("DMA")),
    "host": _SLICES.format(where=f"{in_category('Host')} AND s.depth = 0"),
}
_LONGEST = with_ctes(DEVICE_TRACKS) + f"""
SELECT p.name AS device, s.ts, s.dur, {own_name()} AS name
FROM slice s JOIN device_tracks d ON d.track_id = s.track_id JOIN track t ON s.track_id = t.id
  JOIN track p ON t.parent_id = p.id
WHERE {in_category('Compute')} AND s.dur >= 0 AND {is_command()}
ORDER BY s.dur DESC, s.ts
LIMIT {{n}}
"""
# Lanes of a device's row: (offset of the bar's bottom from the row's centre, height).
_LANES = {"host": (0.22, 0.18), "invocations": (-0.40, 0.56), "commands": (-0.08, 0.26), "dma": (-0.40, 0.26)}
_LANE_NAMES = {"host": "host", "invocations": "invocations", "commands": "compute", "dma": "DMA"}


def submodule_color(submodule: str | None) -> str:
    """The colour of `submodule`'s bars, the same in every plot."""
    if submodule in SUBMODULE_COLORS:
        return SUBMODULE_COLORS[submodule]
    return _SPARE_COLORS[zlib.crc32(str(submodule).encode()) % len(_SPARE_COLORS)]


def submodule_tint(submodule: str | None) -> str:
    """The lighter shade of `submodule`'s colour that every second command and DMA bar wears, so that
    back-to-back commands show as separate bars."""
    from matplotlib.colors import to_hex, to_rgb

    return to_hex([0.55 * c + 0.45 for c in to_rgb(submodule_color(submodule))])


def _device_key(name: str):
    number = name.rsplit(" ", 1)[-1]
    return (0, int(number), name) if number.isdigit() else (1, 0, name)


def draw_timeline(trace, *, level: str = "auto", width_in: float = 12.0, dpi: int = 100):
    """The timeline of `trace` (an open `Trace`) as a matplotlib Figure. Each lane's bars are one
    collection whose gid is "<lane>:<device>" (lane: host, invocations, commands or dma)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if level not in LEVELS:
        raise UsageError(f"level={level!r} is not valid; valid: {', '.join(LEVELS)}")
    data = {"invocations": trace.query(_QUERIES["invocations"]), "host": trace.query(_QUERIES["host"])}
    if level == "auto":
        level = "commands" if len(data["invocations"]) == 1 else "invocations"
    if level == "commands":
        data = {lane: trace.query(_QUERIES[lane]) for lane in ("commands", "dma")} | {"host": data["host"]}
    drawn = [lane for lane in data if lane != "host"]
    if all(data[lane].empty for lane in drawn):
        what = "Workload" if level == "invocations" else "command or DMA"
        raise PlotError(f"{trace.path} has no {what} slices to plot (is it an rbln-perfetto trace?)")
    util = trace.report("devices")
    frames = [df for df in data.values() if not df.empty]
    start = min(int(df.ts.min()) for df in frames)
    span = max(max(int((df.ts + df.dur).max()) for df in frames) - start, 1)
    unit, scale = ("ms", 1e6) if span >= 1e6 else ("µs", 1e3)
    devices = sorted({d for df in frames for d in df.device}, key=_device_key)

    fig = Figure(figsize=(width_in, 1.0 + 0.9 * len(devices)), dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.set_xlim(-0.01 * span / scale, 1.01 * span / scale)
    ax.set_ylim(-0.5, len(devices) - 0.5)
    busy_category = "Workload" if level == "invocations" else "Compute"
    labels = []
    for device in devices:
        busy = util[(util.device == device) & (util.category == busy_category)].utilisation_pct
        labels.append(f"{device}\n{float(busy.iloc[0]) if len(busy) else 0.0:.1f}% busy")
    ax.set_yticks(range(len(devices)), labels[::-1])
    lanes = [lane for lane in ("host", *drawn) if not data[lane].empty]
    lane_axis = ax.twinx()  # the lanes' names, on the right
    lane_axis.set_ylim(ax.get_ylim())
    ticks = [(len(devices) - 1 - row + _LANES[lane][0] + _LANES[lane][1] / 2, _LANE_NAMES[lane])
             for row, device in enumerate(devices) for lane in lanes if (data[lane].device == device).any()]
    lane_axis.set_yticks([t for t, _ in ticks], [n for _, n in ticks], fontsize="x-small")
    lane_axis.tick_params(axis="y", length=0)
    ax.set_xlabel(f"time since the first event ({unit})")
    what = "invocations" if level == "invocations" else "commands and DMA"
    ax.set_title(f"{Path(trace.path).name}: {what} per device", fontsize="medium")
    ax.grid(axis="x", linestyle=":", linewidth=0.5)
    submodules = {s for lane in drawn for s in data[lane].submodule if s is not None}
    ordered = [s for s in SUBMODULE_COLORS if s in submodules] + sorted(submodules - set(SUBMODULE_COLORS))
    handles = [Patch(color=submodule_color(s), label=s) for s in ordered]
    if not data["host"].empty:
        handles.append(Patch(color=HOST_COLOR, label="host work"))
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)
    fig.draw_without_rendering()  # the layout, so that a pixel's width in time is known
    min_width = MIN_BAR_PX * (span / scale) * 1.02 / max(ax.get_window_extent().width, 1.0)
    for row, device in enumerate(devices):
        y = len(devices) - 1 - row
        for lane in lanes:
            mine = data[lane][data[lane].device == device]
            if mine.empty:
                continue
            if lane == "host":
                colors = HOST_COLOR
            elif lane == "invocations":  # (black edges part them)
                colors = [submodule_color(s) for s in mine.submodule]
            else:
                colors = [(submodule_tint if i % 2 else submodule_color)(s) for i, s in enumerate(mine.submodule)]
            widths = (mine.dur / scale).clip(lower=min_width)
            offset, height = _LANES[lane]
            bars = ax.broken_barh(list(zip((mine.ts - start) / scale, widths)), (y + offset, height), facecolors=colors,
                                  edgecolor="black" if lane == "invocations" else "none", linewidth=0.3)
            bars.set_gid(f"{lane}:{device}")
    if level == "commands":
        _label_longest_commands(trace, ax, devices, start, scale, min_width)
    return fig


def _label_longest_commands(trace, ax, devices, start: int, scale: float, min_width: float) -> None:
    """The layer names of the longest commands, written on their bars where they fit."""
    from ..naming import parse_command_slice_name

    longest = trace.query(_LONGEST.format(n=LABELLED_COMMANDS))
    px_per_unit = MIN_BAR_PX / min_width
    for c in longest.itertuples():
        parsed = parse_command_slice_name(c.name)
        width_px = c.dur / scale * px_per_unit
        chars = int(width_px // 6)  # about 6 px per character at this size
        if parsed is None or chars < 8 or c.device not in devices:
            continue
        text = parsed.layer if len(parsed.layer) <= chars else "…" + parsed.layer[-(chars - 1):]
        y = len(devices) - 1 - devices.index(c.device) + _LANES["commands"][0] + _LANES["commands"][1] / 2
        ax.text((c.ts - start + c.dur / 2) / scale, y, text, ha="center", va="center", fontsize=6, clip_on=True,
                gid="command-label")


def plot_timeline(trace, out: str | os.PathLike, *, level: str = "auto", width_in: float = 12.0,
                  dpi: int = 100) -> Path:
    """Write the timeline of `trace` (an open `Trace`) to `out` as PNG; returns the path."""
    fig = draw_timeline(trace, level=level, width_in=width_in, dpi=dpi)
    out = Path(out)
    fig.savefig(out)
    return out
