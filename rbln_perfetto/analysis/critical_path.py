"""The chain of work that sets the run's end-to-end time: the longest path over the dependencies
the trace records, with each element's share.

Elements are host work (Host slices), DMA transfers (copies, and transfers between the ranks of
a merged trace), ops (a command, or a split op: its commands run back to back, so a path through
one runs through all of them) and untraced stretches (the run ran there, unrecorded: host time of
its own, no gap). Dependencies, all read from the trace:

    program order  on each device (a (rank, device) pair), its DMAs and ops run one after another
    host order     each rank's host issues host work, untraced stretches, transfers to other ranks
                   and invocations one after another: an invocation's first element, or a host
                   slice, follows the item (on any device of its rank) that ended last before it
                   started
    flows          a flow's source precedes its destination (a DMA before the command reading it,
                   a send before the recv on another rank that took it)

The path is found backwards from the element that ends last: at each element it steps to the
predecessor that finished last (the one it waited for). Gaps between consecutive path elements are
rows of their own ("gap": nothing recorded), so the path's times add up to the run's span exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..query.trace_model import DEVICE_TRACKS, RANK_STRIDE, in_category, unit_device, with_ctes
from .sources import opened
from .trace_sql import Units, containing, invocations, ops, untraced

BY = ("segment", "element", "layer")
KINDS = ("host", "dma", "op", "untraced")
VIA = ("", "program order", "flow", "host order")

_OTHER_LEAVES = with_ctes(DEVICE_TRACKS) + f"""
SELECT s.id, s.ts, s.dur, s.track_id, s.name FROM slice s
WHERE {in_category('Host', 'DMA')} AND s.depth = 0 AND s.dur >= 0"""
# A flow that ends in (or starts at) a split op's command counts for the split op.
_FLOWS = """
SELECT CASE WHEN so.depth = 0 THEN so.id ELSE so.parent_id END AS slice_out,
       CASE WHEN si.depth = 0 THEN si.id ELSE si.parent_id END AS slice_in
FROM flow f JOIN slice so ON so.id = f.slice_out JOIN slice si ON si.id = f.slice_in
WHERE so.depth <= 1 AND si.depth <= 1"""


@dataclass
class CriticalPath:
    """The critical path of one trace; `elements` index the leaf arrays, in time order."""

    run_start: int
    run_end: int
    ts: np.ndarray  # per leaf, sorted by (ts, id)
    end: np.ndarray
    device: np.ndarray  # unit (rank, device: `trace_model.RANK_STRIDE`); -1 for host work and untraced stretches
    rank: np.ndarray
    kind: np.ndarray  # index into KINDS
    item: np.ndarray  # invocation index (into `invocations`), or -1
    names: list  # per leaf: its name (ops: None unless asked for)
    layers: list  # per leaf: an op's layer, else its name (ops: None unless asked for)
    invocations: object  # DataFrame: id, ts, dur, unit, rank, device, name, submodule
    elements: np.ndarray  # path, in time order
    via: np.ndarray  # per path element: index into VIA (how it depends on the one before)
    on_path: np.ndarray  # per path element: ns until the next element starts (or its end)
    gap_before: np.ndarray  # per path element: ns of nothing recorded before it on the path

    @property
    def span(self) -> int:
        return self.run_end - self.run_start


def _leaves(tr, inv, names: bool):
    """(id, ts, end, unit, rank, kind, names, layers) of every element, sorted by (ts, id)."""
    units = Units(tr)
    other = tr.query(_OTHER_LEAVES)
    skipped = untraced(tr)
    op = ops(tr, names=names, invocations=inv, units=units)
    host = np.array([c == "Host" for c in units.category(other.track_id)], bool)
    other_unit = units.unit(other.track_id)
    other_names = units.own_names(other.name, other.track_id)
    ids = np.concatenate([other.id.to_numpy(np.int64), skipped.id.to_numpy(np.int64), op.id.to_numpy(np.int64)])
    ts = np.concatenate([other.ts.to_numpy(np.int64), skipped.ts.to_numpy(np.int64), op.ts.to_numpy(np.int64)])
    dur = np.concatenate([other.dur.to_numpy(np.int64), skipped.dur.to_numpy(np.int64), op.dur.to_numpy(np.int64)])
    unit = np.concatenate([np.where(host, -1, other_unit), np.full(len(skipped), -1, np.int64),
                           op.unit.to_numpy(np.int64)])
    rank = np.concatenate([other_unit, skipped.unit.to_numpy(np.int64), op.unit.to_numpy(np.int64)]) // RANK_STRIDE
    kind = np.concatenate([np.where(host, 0, 1), np.full(len(skipped), 3, np.int64), np.full(len(op), 2, np.int64)])
    blank = [None] * len(op)
    leaf_names = other_names + list(skipped.name) + (list(op.name) if names else blank)
    leaf_layers = other_names + list(skipped.name) + (list(op.layer) if names else blank)
    order = np.lexsort([ids, ts])
    pick = order.tolist()
    return (ids[order], ts[order], (ts + dur)[order], unit[order], rank[order], kind[order],
            [leaf_names[i] for i in pick], [leaf_layers[i] for i in pick])


def _index_of(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Position in `ids` of each of `values`; -1 where absent."""
    id_order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[id_order], values), 0, max(len(ids) - 1, 0))
    return np.where(ids[id_order][pos] == values, id_order[pos], -1)


def _host_order(starts, ends, firsts, lasts) -> dict[int, int]:
    """{first leaf of an item: last leaf of the item the host ran before it}: for each item (host
    slice or invocation), the earlier item with the latest end at or before its start."""
    n = len(starts)
    rank = np.lexsort([firsts, starts])  # items in the order the host issued them
    position = np.empty(n, np.int64)
    position[rank] = np.arange(n)
    by_end = np.lexsort([position, ends])
    sorted_ends = ends[by_end]
    out = {}
    for j in range(n):
        k = int(np.searchsorted(sorted_ends, starts[j], side="right")) - 1
        while k >= 0 and position[by_end[k]] >= position[j]:
            k -= 1
        if k >= 0:
            out[int(firsts[j])] = int(lasts[by_end[k]])
    return out


@dataclass
class Dependencies:
    """Every element of one trace (host work, DMA, op, untraced stretch), sorted by (ts, id), and what
    each one waited for: its previous element on the same device, in its rank's host order, and by a
    flow (-1: none); the predecessors are always earlier elements."""

    ids: np.ndarray
    ts: np.ndarray
    end: np.ndarray
    device: np.ndarray  # unit; -1 for host work and untraced stretches
    rank: np.ndarray
    kind: np.ndarray  # index into KINDS
    item: np.ndarray  # invocation index (into `invocations`), or -1
    names: list
    layers: list
    invocations: object
    dev_prev: np.ndarray
    host_prev: np.ndarray
    flow_prev: np.ndarray


def program_order(device: np.ndarray) -> np.ndarray:
    """Per element (in time order), the previous element on the same device (unit); -1 for none."""
    dev_prev = np.full(len(device), -1, np.int64)
    for d in np.unique(device[device >= 0]):
        mine = np.flatnonzero(device == d)
        dev_prev[mine[1:]] = mine[:-1]
    return dev_prev


def dependencies(tr, names: bool = False) -> Dependencies:
    """The elements of an open trace and the dependencies the trace records between them."""
    inv = invocations(tr)
    ids, ts, end, device, rank, kind, leaf_names, leaf_layers = _leaves(tr, inv, names)
    n = len(ts)
    item = containing(ts, end, device, inv)
    dev_prev = program_order(device)
    if n == 0:
        return Dependencies(ids, ts, end, device, rank, kind, item, leaf_names, leaf_layers, inv, dev_prev,
                            dev_prev.copy(), dev_prev.copy())

    # Host order between items, per rank: host slices and untraced stretches (one leaf each) and
    # invocations (their leaves).
    in_inv = np.flatnonzero(item >= 0)
    first_of = np.full(len(inv), -1, np.int64)
    last_of = np.full(len(inv), -1, np.int64)
    if len(in_inv):
        groups, first = np.unique(item[in_inv], return_index=True)  # leaves are in time order
        first_of[groups] = in_inv[first]
        by_end = in_inv[np.lexsort([in_inv, end[in_inv]])][::-1]
        groups, latest = np.unique(item[by_end], return_index=True)
        last_of[groups] = by_end[latest]  # each invocation's latest-ending leaf
    has = first_of >= 0
    # (A DMA outside any invocation is a transfer to or from another rank: its host issues it too.)
    host_leaves = np.flatnonzero((kind == 0) | (kind == 3) | ((kind == 1) & (item < 0)))
    firsts = np.concatenate([first_of[has], host_leaves])
    lasts = np.concatenate([last_of[has], host_leaves])
    ends = np.concatenate([end[last_of[has]], end[host_leaves]])
    item_rank = rank[firsts]
    host_prev = np.full(n, -1, np.int64)
    for r in np.unique(item_rank):
        mine = item_rank == r
        for first, last in _host_order(ts[firsts[mine]], ends[mine], firsts[mine], lasts[mine]).items():
            host_prev[first] = last

    # Flows: the source of each flow into an element, the latest-ending one when several.
    flow_prev = np.full(n, -1, np.int64)
    flows = tr.query(_FLOWS)
    if len(flows):
        src, dst = _index_of(ids, flows.slice_out.to_numpy(np.int64)), _index_of(ids, flows.slice_in.to_numpy(np.int64))
        ok = (src >= 0) & (dst >= 0) & (src < dst)
        src, dst = src[ok], dst[ok]
        pick = np.lexsort([src, end[src], dst])[::-1]
        dsts, latest = np.unique(dst[pick], return_index=True)
        flow_prev[dsts] = src[pick][latest]  # each destination's latest-ending source
    return Dependencies(ids, ts, end, device, rank, kind, item, leaf_names, leaf_layers, inv, dev_prev, host_prev,
                        flow_prev)


def find(tr, names: bool = False) -> CriticalPath:
    """The critical path of an open trace; `names`: also the ops' names and layers (for tables of them)."""
    deps = dependencies(tr, names)
    ts, end, device, rank, kind, item, inv = deps.ts, deps.end, deps.device, deps.rank, deps.kind, deps.item, \
        deps.invocations
    leaf_names, leaf_layers = deps.names, deps.layers
    n = len(ts)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return CriticalPath(0, 0, ts, end, device, rank, kind, empty, leaf_names, leaf_layers, inv, empty, empty,
                            empty, empty)
    order = np.arange(n)
    dev_prev, flow_prev, host_prev = deps.dev_prev, deps.flow_prev, deps.host_prev

    # Each element waits for its latest-finishing predecessor (ties: program order, flow, host order).
    pred = dev_prev.copy()
    via = np.where(dev_prev >= 0, 1, 0)
    best_end = np.where(dev_prev >= 0, end[np.maximum(dev_prev, 0)], np.iinfo(np.int64).min)
    for cand, code in ((flow_prev, 2), (host_prev, 3)):
        take = (cand >= 0) & (cand < order) & (end[np.maximum(cand, 0)] > best_end)  # earlier only: no cycles
        pred = np.where(take, cand, pred)
        via = np.where(take, code, via)
        best_end = np.where(take, end[np.maximum(cand, 0)], best_end)

    last = int(np.lexsort([order, end])[-1])
    chain = []
    i = last
    pred_list = pred.tolist()
    while i >= 0:
        chain.append(i)
        i = pred_list[i]
    elements = np.asarray(chain[::-1], np.int64)
    run_start = int(min(ts.min(), inv.ts.min())) if len(inv) else int(ts.min())
    run_end = int(max(end.max(), (inv.ts + inv.dur).max())) if len(inv) else int(end.max())
    starts_on = ts[elements]
    next_start = np.append(starts_on[1:], end[elements[-1]])
    on_path = np.maximum(np.minimum(end[elements], next_start) - starts_on, 0)
    gap_before = np.maximum(starts_on - np.concatenate([[run_start], end[elements[:-1]]]), 0)
    return CriticalPath(run_start, run_end, ts, end, device, rank, kind, item, leaf_names, leaf_layers, inv, elements,
                np.where(np.arange(len(elements)) == 0, 0, via[elements]), on_path, gap_before)


SEGMENT_COLUMNS = ["position", "kind", "rank", "device", "name", "ts", "start_ms", "on_path_ms", "share_pct", "elements",
                   "via"]
ELEMENT_COLUMNS = ["position", "kind", "rank", "device", "name", "invocation", "ts", "start_ms", "dur_ms", "on_path_ms",
                   "share_pct", "via"]
LAYER_COLUMNS = ["kind", "submodule", "name", "elements", "on_path_ms", "share_pct"]
GAP_NAME = "(nothing recorded)"


def segments(path: CriticalPath):
    """The path as consecutive runs of elements in one invocation (or one host slice, or a lone
    element outside any invocation), with the gaps between runs as rows of their own."""
    import pandas as pd

    e = path.elements
    rows = []
    if len(e):
        key = np.where(path.item[e] >= 0, path.item[e], -2 - e)
        starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        bounds = np.append(starts, len(e))
        opens = np.zeros(len(e), bool)
        opens[starts] = True
        inside = path.on_path + np.where(opens, 0, path.gap_before)  # gaps inside a run belong to it
        sums = np.add.reduceat(inside, starts)
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            first = e[a]
            if path.gap_before[a] > 0:
                gap = int(path.gap_before[a])
                rows.append(("gap", None, None, GAP_NAME, int(path.ts[first]) - gap, gap, 0, ""))
            inv = int(path.item[first])
            if inv >= 0:
                kind, device = "invocation", int(path.invocations.device.iloc[inv])
                rank = int(path.invocations["rank"].iloc[inv])
                name = path.invocations.name.iloc[inv]
            else:
                kind = KINDS[path.kind[first]]
                device = None if path.device[first] < 0 else unit_device(path.device[first])
                rank = int(path.rank[first])
                name = path.names[first]
            rows.append((kind, rank, device, name, int(path.ts[first]), int(sums[k]), int(b - a), VIA[path.via[a]]))
        tail = path.run_end - int(path.end[e[-1]])
        if tail > 0:
            rows.append(("gap", None, None, GAP_NAME, int(path.end[e[-1]]), tail, 0, ""))
    table = pd.DataFrame(rows, columns=["kind", "rank", "device", "name", "ts", "on_path_ns", "elements", "via"])
    return _finish(table, path, SEGMENT_COLUMNS)


def _finish(table, path: CriticalPath, columns):
    table.insert(0, "position", np.arange(len(table), dtype=np.int64))
    table["rank"] = table["rank"].astype("Int64")
    table["device"] = table.device.astype("Int64")
    table["start_ms"] = (table.ts - path.run_start) / 1e6
    table["on_path_ms"] = table.on_path_ns / 1e6
    table["share_pct"] = 100.0 * table.on_path_ns / path.span if path.span else 0.0
    return table[columns]


def elements(path: CriticalPath):
    """One row per path element, and one per gap before an element."""
    import pandas as pd

    e = path.elements
    inv_names = np.asarray(list(path.invocations.name) + [""], dtype=object)
    gaps = np.flatnonzero(path.gap_before > 0)
    element_rows = pd.DataFrame({
        "order": 2 * np.arange(len(e)) + 1, "kind": np.asarray(KINDS, dtype=object)[path.kind[e]],
        "rank": path.rank[e], "device": np.where(path.device[e] >= 0, path.device[e] % RANK_STRIDE, -1),
        "name": [path.names[i] for i in e.tolist()],
        "invocation": inv_names[path.item[e]], "ts": path.ts[e], "dur_ns": path.end[e] - path.ts[e],
        "on_path_ns": path.on_path, "via": np.asarray(VIA, dtype=object)[path.via]})
    gap_rows = pd.DataFrame({
        "order": 2 * gaps, "kind": "gap", "rank": -1, "device": -1, "name": GAP_NAME, "invocation": "",
        "ts": path.ts[e[gaps]] - path.gap_before[gaps], "dur_ns": path.gap_before[gaps],
        "on_path_ns": path.gap_before[gaps], "via": ""})
    table = pd.concat([gap_rows, element_rows]).sort_values("order", kind="stable").reset_index(drop=True)
    table["rank"] = table["rank"].where(table["rank"] >= 0)
    table["device"] = table.device.where(table.device >= 0)
    table["dur_ms"] = table.dur_ns / 1e6
    return _finish(table, path, ELEMENT_COLUMNS)


def layers(path: CriticalPath):
    """On-path time per layer (ops), per DMA and host slice name, and of the gaps; largest first."""
    import pandas as pd

    e = path.elements
    subs = np.asarray(list(path.invocations.submodule) + [None], dtype=object)
    table = pd.DataFrame({"kind": np.asarray(KINDS, dtype=object)[path.kind[e]], "submodule": subs[path.item[e]],
                          "name": [path.layers[i] for i in e.tolist()], "on_path_ns": path.on_path})
    gap = int(path.gap_before.sum()) + (path.run_end - int(path.end[e[-1]]) if len(e) else 0)
    if gap:
        gap_row = {"kind": "gap", "submodule": None, "name": GAP_NAME, "on_path_ns": gap}
        table = pd.concat([table, pd.DataFrame([gap_row])])
    table["submodule"] = table.submodule.fillna("")
    out = table.groupby(["kind", "submodule", "name"], sort=True).agg(
        elements=("on_path_ns", "size"), on_path_ns=("on_path_ns", "sum")).reset_index()
    out.loc[out.kind == "gap", "elements"] = int((path.gap_before > 0).sum())
    out["on_path_ms"] = out.on_path_ns / 1e6
    out["share_pct"] = 100.0 * out.on_path_ns / path.span if path.span else 0.0
    out = out.sort_values(["on_path_ns", "kind", "submodule", "name"], ascending=[False, True, True, True],
                          kind="stable")
    return out[LAYER_COLUMNS].reset_index(drop=True)


def critical_path(trace, by: str = "segment", top: int | None = None, *, backend: str = "auto",
                  tp_bin: str | None = None):
    """The critical path of `trace` (a trace file, a run directory or an open `Trace`) as a table:
    by "segment" (runs of elements per invocation or host slice, in path order), "element" (every
    command, DMA and host slice on it) or "layer" (on-path time per layer, largest first). Shares
    are of the run's span; with `top`, the `top` rows with the most time on the path."""
    if by not in BY:
        raise UsageError(f"by={by!r} is not valid; valid: {', '.join(BY)}")
    if top is not None and top < 1:
        raise UsageError(f"top={top} must be >= 1")
    with opened(trace, backend, tp_bin) as tr:
        path = find(tr, names=by != "segment")
    table = {"segment": segments, "element": elements, "layer": layers}[by](path)
    if top is not None:
        table = table.sort_values(["on_path_ms"] + (["position"] if "position" in table else []),
                                  ascending=[False] + ([True] if "position" in table else []), kind="stable").head(top)
    return table.reset_index(drop=True)
