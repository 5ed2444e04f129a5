"""What changed between two runs: per submodule, layer, op or device, the count and total / mean
time in both, the delta and the ratio, sorted by the absolute delta; and that as a bar chart.

    rbln_perfetto.diff("base-run/", "cand-run/aggregate.pb", by="layer")

A layer is compared by its name without the sequence index, so two runs whose `command_budget`
split it into a different number of commands still compare, each side showing its command count
(`status` "resplit"). A key present in only one run is "added" or "removed". The columns say what
they count: `base_calls` (by layer or submodule), `base_commands` (by op: every command of the
run), `base_invocations` (by device); by layer, `base_commands_per_call` is how many commands one
call of the layer runs.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import UsageError
from .sources import opened
from .trace_sql import invocations, op_args, ops

BY = ("layer", "submodule", "op", "device")
KEYS = {"layer": ["submodule", "layer"], "submodule": ["submodule"], "op": ["op"], "device": ["device"]}
# What the count of a row counts, per `by`.
COUNTS = {"layer": "calls", "submodule": "calls", "op": "commands", "device": "invocations"}


def _side(trace, by: str):
    """One run's rows for `by`: key columns, count, total_ns (and for layers: op, commands per call)."""
    import pandas as pd

    if by in ("submodule", "device"):
        inv = invocations(trace)
        return inv.groupby(KEYS[by], sort=True).agg(count=("dur", "size"), total_ns=("dur", "sum")).reset_index()
    table = ops(trace, names=True)
    table = table[table.inv >= 0]
    layers = table.groupby(["submodule", "layer"], sort=True).agg(
        count=("dur", "size"), total_ns=("dur", "sum"), some_op=("id", "min")).reset_index()
    args = op_args(trace, layers.some_op)
    layers["op"] = [args[i][0] for i in layers.some_op]
    layers["commands"] = pd.array([args[i][1] for i in layers.some_op], dtype="Int64")
    if by == "op":  # a split op's time is its commands' time: they run back to back inside it
        layers["count"] = layers["count"] * layers.commands.fillna(1).astype(np.int64)
        return layers.groupby("op", sort=True).agg(count=("count", "sum"), total_ns=("total_ns", "sum")).reset_index()
    return layers[["submodule", "layer", "op", "commands", "count", "total_ns"]]


def compare(base, cand, by: str):
    """The diff table of two sides' rows (as `_side` gives them)."""
    keys = KEYS[by]
    merged = base.merge(cand, on=keys, how="outer", suffixes=("_base", "_cand"), indicator=True)
    count = COUNTS[by]
    out = merged[keys].copy()
    if by == "layer":
        out["op"] = merged.op_cand.where(merged.op_cand.notna(), merged.op_base)
        for side in ("base", "cand"):
            out[f"{side}_commands_per_call"] = merged[f"commands_{side}"].astype("Int64")
    for side in ("base", "cand"):
        out[f"{side}_{count}"] = merged[f"count_{side}"].fillna(0).astype(np.int64)
    for side in ("base", "cand"):
        out[f"{side}_total_ms"] = merged[f"total_ns_{side}"].fillna(0) / 1e6
    for side in ("base", "cand"):
        n = out[f"{side}_{count}"]
        out[f"{side}_mean_ms"] = (out[f"{side}_total_ms"] / n.where(n > 0)).astype(float)
    out["delta_ms"] = out.cand_total_ms - out.base_total_ms
    base_total = out.base_total_ms.where(out.base_total_ms > 0)
    out["ratio"] = (out.cand_total_ms / base_total).astype(float)
    status = np.where(merged._merge == "left_only", "removed", np.where(merged._merge == "right_only", "added", "both"))
    if by == "layer":
        differs = (merged.commands_base != merged.commands_cand).fillna(False).to_numpy(bool)
        resplit = (merged._merge == "both").to_numpy() & differs
        status = np.where(resplit, "resplit", status)
    out["status"] = status
    out["abs_delta"] = out.delta_ms.abs()
    out = out.sort_values(["abs_delta", *keys], ascending=[False] + [True] * len(keys), kind="mergesort")
    return out.drop(columns="abs_delta").reset_index(drop=True)


def diff(base, cand, by: str = "layer", top: int | None = None, *, backend: str = "auto", tp_bin: str | None = None):
    """Per `by` (layer, submodule, op or device): count, total and mean time in `base` and `cand`
    (each a trace file, a run directory or an open `Trace`), delta (cand - base, ms) and ratio
    (cand / base total), sorted by the absolute delta; the first `top` rows when given."""
    if by not in BY:
        raise UsageError(f"by={by!r} is not valid; valid: {', '.join(BY)}")
    if top is not None and top < 1:
        raise UsageError(f"top={top} must be >= 1")
    with opened(base, backend, tp_bin) as b:
        base_rows = _side(b, by)
    with opened(cand, backend, tp_bin) as c:
        cand_rows = _side(c, by)
    out = compare(base_rows, cand_rows, by)
    return out if top is None else out.head(top)


def _label(row, by: str) -> str:
    if by == "layer":
        split = f" [{_count_text(row.base_commands_per_call)}->{_count_text(row.cand_commands_per_call)} cmds]" \
            if row.status == "resplit" else ("" if row.status == "both" else f" ({row.status})")
        return f"{row.layer} ({row.submodule}){split}"
    return f"device {row.device}" if by == "device" else str(getattr(row, KEYS[by][0]))


def _count_text(value) -> str:
    import pandas as pd

    return "-" if pd.isna(value) else str(int(value))


def plot_diff(table, out: str | os.PathLike, by: str = "layer", top: int = 20, title: str = ""):
    """The `top` rows of a diff table as horizontal bars of delta_ms (slower red, faster green),
    the largest change on top; written to `out` as PNG."""
    from matplotlib.figure import Figure

    rows = table.head(top)
    fig = Figure(figsize=(10, 1.2 + 0.32 * max(len(rows), 1)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    labels = [_label(r, by) for r in rows.itertuples()][::-1]
    deltas = rows.delta_ms.to_numpy()[::-1]
    colors = ["#d62728" if d > 0 else "#2ca02c" for d in deltas]
    ax.barh(range(len(rows)), deltas, color=colors)
    ax.set_yticks(range(len(rows)), [lab if len(lab) <= 70 else "..." + lab[-67:] for lab in labels],
                  fontsize="small")
    ax.axvline(0, color="black", linewidth=0.6)
    for y, (d, r) in enumerate(zip(deltas, rows.ratio.to_numpy()[::-1])):
        text = f"{d:+.3f} ms" + ("" if np.isnan(r) else f" ({r:.2f}x)")
        ax.annotate(text, (d, y), xytext=(4 if d >= 0 else -4, 0), textcoords="offset points",
                    ha="left" if d >= 0 else "right", va="center", fontsize="x-small")
    ax.set_xlabel("change in total time, candidate - baseline (ms): red slower, green faster")
    ax.set_title(title or f"largest changes per {by}", fontsize="medium")
    ax.margins(x=0.4)  # room for the labels at the bars' ends
    fig.savefig(out)
    return out
