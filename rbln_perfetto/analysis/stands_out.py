"""A few lines on what stands out in a run: the largest idle share, the top critical-path element,
and the outlier calls; what `rbln-perfetto summary` prints under "what stands out"."""

from __future__ import annotations

from .critical_path import find, segments
from .idle import idle
from .variance import variance


def stands_out(tr) -> list[str]:
    """The lines, from an open `Trace`; none for a trace without device tracks."""
    lines = []
    per_device = idle(tr)
    ranks = bool((per_device["rank"] > 0).any())  # a merged trace: name the rank too

    def device(rank, d) -> str:
        return f"rank {rank} device {d}" if ranks else f"device {d}"

    if len(per_device):
        worst = per_device.loc[per_device.idle_pct.idxmax()]
        lines.append(f"{device(worst['rank'], worst.device)} is idle {worst.idle_pct:.1f}% of the traced run "
                     f"({worst.idle_ms:.3f} ms in {worst.gaps} gaps), mostly {worst.main_cause}")
    path = segments(find(tr))
    work = path[~path.kind.isin(["gap", "untraced"])]  # (an untraced stretch is no work to speed up)
    if len(work):
        top = work.loc[work.on_path_ms.idxmax()]
        where = f" ({device(top['rank'], top.device)})" if top.kind == "invocation" else ""
        gaps = path[path.kind == "gap"].share_pct.sum()
        lines.append(f"critical path: {top['name']}{where} is its largest element, {top.share_pct:.1f}% of the run; "
                     f"gaps with nothing recorded {gaps:.1f}%")
    for by in ("submodule", "layer"):
        hits = variance(tr, by=by, outliers=True)
        if len(hits):
            worst = hits.loc[(hits.vs_median - 1).abs().idxmax()]
            what = worst.submodule + (f" {worst.layer}" if by == "layer" else "")
            lines.append(f"{len(hits)} outlier {by} calls; the largest: {what} at sequence index "
                         f"{worst.sequence_index}, {worst.ms:.3f} ms, {worst.vs_median:.2f}x its median")
    return lines
