"""How repeated calls vary: per submodule and per layer across a submodule's calls (the transformer's
steps), the mean, std, min and max, the first call against the rest, and the outlier calls.

The rule for an outlier (groups of at least `MIN_CALLS` calls): a call whose time is more than
`MAD_LIMIT` scaled median absolute deviations (1.4826 x MAD, the std of normal noise) and more than
`RELATIVE_LIMIT` of the median away from the median of its group. The median and MAD are not
moved by the outlier itself, and the relative floor keeps sub-percent jitter out.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from .sources import opened
from .trace_sql import invocations, ops

BY = ("submodule", "layer")
MIN_CALLS = 3
MAD_LIMIT = 3.0
RELATIVE_LIMIT = 0.10
RULE = (f"more than {MAD_LIMIT:g} x 1.4826 x MAD and more than {RELATIVE_LIMIT:.0%} of the median away from the "
        f"median of its group's calls (groups of >= {MIN_CALLS} calls)")


STAT_COLUMNS = ["calls", "mean_ms", "std_ms", "min_ms", "max_ms", "first_ms", "rest_mean_ms", "first_vs_rest",
                "outliers"]
OUTLIER_COLUMNS = ["by", "submodule", "layer", "sequence_index", "call_index", "ms", "median_ms", "vs_median"]


def _calls(tr, by: str):
    """One row per call: key columns, seq, call_index, ms."""
    inv = invocations(tr)
    if by == "submodule":
        rows = inv[["submodule", "seq", "call_index", "dur"]]
    else:  # per layer and call, of the submodules called more than once
        repeated = inv.submodule.value_counts()
        table = ops(tr, names=True, invocations=inv)
        table = table[table.submodule.isin(repeated[repeated > 1].index)]
        rows = table.groupby(["submodule", "layer", "seq", "call_index"], sort=True).dur.sum().reset_index()
    rows = rows.rename(columns={"seq": "sequence_index"})
    rows["ms"] = rows.pop("dur").astype(np.int64) / 1e6
    return rows.sort_values([*_keys(by), "sequence_index"], kind="stable").reset_index(drop=True)


def _keys(by: str) -> list[str]:
    return ["submodule"] if by == "submodule" else ["submodule", "layer"]


def _flag_outliers(rows, keys):
    """Per call: the median of its group and whether it is an outlier."""
    group = rows.groupby(keys, sort=False).ms
    n = group.transform("size")
    median = group.transform("median")
    deviation = (rows.ms - median).abs()
    mad = deviation.groupby([rows[k] for k in keys], sort=False).transform("median")
    outlier = (n >= MIN_CALLS) & (deviation > MAD_LIMIT * 1.4826 * mad) & (deviation > RELATIVE_LIMIT * median)
    return median, outlier


def _stats(rows, keys):
    median, outlier = _flag_outliers(rows, keys)
    rows = rows.assign(is_outlier=outlier, median_ms=median)
    g = rows.groupby(keys, sort=True)
    # `rows` are in sequence-index order within each group, so "first" is the first call.
    out = g.ms.agg(calls="size", mean_ms="mean", std_ms="std", min_ms="min", max_ms="max", sum_ms="sum",
                   first_ms="first").reset_index()
    rest = out.calls - 1
    out["rest_mean_ms"] = ((out.sum_ms - out.first_ms) / rest.where(rest > 0)).astype(float)
    out["first_vs_rest"] = (out.first_ms / out.rest_mean_ms.where(out.rest_mean_ms > 0)).astype(float)
    out["outliers"] = g["is_outlier"].sum().to_numpy().astype(np.int64)  # same group order as `out`
    return out[[*keys, *STAT_COLUMNS]], rows


def variance(trace, by: str = "submodule", outliers: bool = False, *, backend: str = "auto",
             tp_bin: str | None = None):
    """Per submodule (or per layer of the submodules called more than once): calls, mean, std
    (sample), min, max, the first call, the mean of the rest, their ratio and the number of outlier
    calls. `outliers=True`: one row per outlier call, with its sequence index (see `RULE`).
    `trace`: a trace file, a run directory or an open `Trace`."""
    import pandas as pd

    if by not in BY:
        raise UsageError(f"by={by!r} is not valid; valid: {', '.join(BY)}")
    keys = _keys(by)
    with opened(trace, backend, tp_bin) as tr:
        rows = _calls(tr, by)
    stats, flagged = _stats(rows, keys)
    if not outliers:
        if by == "layer":  # the most variable first
            stats = stats.sort_values(["std_ms", *keys], ascending=[False, True, True], na_position="last",
                                      kind="stable").reset_index(drop=True)
        return stats
    hits = flagged[flagged.is_outlier]
    out = pd.DataFrame({"by": by, "submodule": hits.submodule, "layer": hits.layer if by == "layer" else "",
                        "sequence_index": hits.sequence_index.astype(np.int64),
                        "call_index": hits.call_index.astype(np.int64), "ms": hits.ms, "median_ms": hits.median_ms})
    out["vs_median"] = out.ms / out.median_ms.where(out.median_ms > 0)
    return out[OUTLIER_COLUMNS].reset_index(drop=True)
