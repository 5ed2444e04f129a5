"""A PNG timeline of a trace: one lane per device with its invocations, and its utilisation.

The data comes from SQL on an open `Trace`, so the plot works on either backend.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PlotError

_INVOCATIONS = """
SELECT p.name AS device, s.ts, s.dur, extract_arg(s.arg_set_id, 'debug.submodule') AS submodule
FROM slice s JOIN track t ON s.track_id = t.id JOIN track p ON t.parent_id = p.id
WHERE t.name = 'Workload' AND s.dur >= 0
ORDER BY s.ts
"""
_HOST = """
SELECT p.name AS device, s.ts, s.dur FROM slice s JOIN track t ON s.track_id = t.id JOIN track p ON t.parent_id = p.id
WHERE t.name = 'Host' AND s.depth = 0 AND s.dur >= 0
"""


def plot_timeline(trace, out: str | os.PathLike, *, width_in: float = 12.0, dpi: int = 100) -> Path:
    """Write a per-device timeline of `trace` (an open `Trace`) to `out` as PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inv = trace.query(_INVOCATIONS)
    host = trace.query(_HOST)
    util = trace.report("devices")
    if inv.empty:
        raise PlotError(f"{trace.path} has no Workload slices to plot (is it an rbln-perfetto trace?)")
    start = min(inv.ts.min(), host.ts.min() if not host.empty else inv.ts.min())
    devices = sorted(set(inv.device) | set(util.device), key=lambda d: (len(d), d))
    submodules = list(dict.fromkeys(inv.submodule))
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(submodules)}

    fig, ax = plt.subplots(figsize=(width_in, 1.0 + 0.9 * len(devices)), dpi=dpi)
    labels = []
    for row, device in enumerate(devices):
        y = len(devices) - 1 - row
        mine = inv[inv.device == device]
        ax.broken_barh(list(zip((mine.ts - start) / 1e6, mine.dur / 1e6)), (y - 0.35, 0.5),
                       facecolors=[colors[s] for s in mine.submodule], edgecolor="black", linewidth=0.3)
        h = host[host.device == device]
        if not h.empty:
            ax.broken_barh(list(zip((h.ts - start) / 1e6, h.dur / 1e6)), (y + 0.2, 0.15), facecolors="0.5")
        busy = util[(util.device == device) & (util.category == "Workload")].utilisation_pct
        labels.append(f"{device}\n{float(busy.iloc[0]) if len(busy) else 0.0:.1f}% busy")
    ax.set_yticks(range(len(devices)))
    ax.set_yticklabels(labels[::-1])
    ax.set_xlabel("time since first event (ms)")
    ax.set_title(f"{Path(trace.path).name}: invocations per device (grey: host work)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[s]) for s in submodules]
    ax.legend(handles, submodules, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(5, len(submodules)),
              fontsize="small", frameon=False)
    ax.grid(axis="x", linestyle=":", linewidth=0.5)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
