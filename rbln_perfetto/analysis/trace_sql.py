"""What the analyses read from a trace, as tables: invocations, untraced stretches and ops, per
unit (a (rank, device) pair; `query.trace_model` defines each of them, once, for every reader).

An *op* is a top-level slice of a Compute track: one command, or a split op (a parent slice named
after its layer, whose children are its commands and which spans them exactly). A run has about
twenty times fewer ops than commands, so the analyses read ops, and command names only where a
layer is asked for: each query then costs a scan of the slice table, not a Python object per
command. What SQL cannot do cheaply (which invocation holds an op) is a little numpy.
"""

from __future__ import annotations

import numpy as np

from ..naming import COMMAND_SLICE_NAME
from ..query.trace_model import (DEVICE_TRACKS, INVOCATION_ROWS, TRACK_UNITS, UNTRACED_ROWS, in_category, unit_label,
                                 with_ctes)

_OPS = with_ctes(DEVICE_TRACKS) + f"""
SELECT s.id, s.ts, s.dur, s.track_id{{name}} FROM slice s
WHERE {in_category('Compute')} AND s.depth = 0 AND s.dur >= 0"""


class Units:
    """The device tracks of an open trace: {track id: (category, unit, name prefix)}, and whether the
    trace is a merged one (its units are then named with their rank)."""

    def __init__(self, tr):
        rows = tr.query(TRACK_UNITS)
        self.tracks = {int(t): (c, int(u), p) for t, c, u, p in zip(rows.track_id, rows.category, rows.unit,
                                                                     rows.prefix)}
        self.merged = any(p for _, _, p in self.tracks.values())

    def unit(self, track_ids) -> np.ndarray:
        return np.array([self.tracks[int(t)][1] for t in track_ids], np.int64)

    def category(self, track_ids) -> list[str]:
        return [self.tracks[int(t)][0] for t in track_ids]

    def own_names(self, names, track_ids) -> list[str]:
        """The slices' names less the merged trace's `i{r}_` prefix."""
        if not self.merged:  # (no prefix to take off: one list, not a lookup per slice)
            return names.tolist() if hasattr(names, "tolist") else list(names)
        return [n[len(self.tracks[int(t)][2]):] for n, t in zip(names, track_ids)]

    def label(self, unit: int) -> str:
        return unit_label(unit, self.merged)


def invocations(tr):
    """Every invocation in run order: id, seq, submodule, call_index, unit, rank, device, name, ts, dur."""
    return tr.query(INVOCATION_ROWS)


def untraced(tr):
    """Every untraced stretch: id, ts, dur, unit, rank, name."""
    return tr.query(UNTRACED_ROWS)


def containing(ts: np.ndarray, end: np.ndarray, unit: np.ndarray, inv) -> np.ndarray:
    """Per interval, the row of `inv` (invocations: ts, dur, unit) on its unit that contains it; -1
    for none. Invocations of one unit do not overlap."""
    out = np.full(len(ts), -1, np.int64)
    inv_ts, inv_unit = inv.ts.to_numpy(np.int64), inv.unit.to_numpy(np.int64)
    inv_end = inv_ts + inv.dur.to_numpy(np.int64)
    for d in np.unique(inv_unit):
        rows = np.flatnonzero(inv_unit == d)
        rows = rows[np.argsort(inv_ts[rows], kind="stable")]
        mine = np.flatnonzero(unit == d)
        k = np.searchsorted(inv_ts[rows], ts[mine], side="right") - 1
        ok = (k >= 0) & (end[mine] <= inv_end[rows[np.maximum(k, 0)]])
        out[mine[ok]] = rows[k[ok]]
    return out


def ops(tr, *, names: bool = False, invocations=None, units: Units | None = None):
    """One row per op, in (ts, id) order: id, ts, dur, unit, and its invocation (`inv`: row of
    `invocations`, -1 for none; seq, submodule, call_index). With `names`: the op's own `name` and
    `layer` (a command's name less its sequence index and command index; a split op's name)."""
    import pandas as pd

    inv = tr.query(INVOCATION_ROWS) if invocations is None else invocations
    units = Units(tr) if units is None else units
    rows = tr.query(_OPS.format(name=", s.name" if names else ""))
    out = pd.DataFrame({"id": rows.id.to_numpy(np.int64), "ts": rows.ts.to_numpy(np.int64),
                        "dur": rows.dur.to_numpy(np.int64), "unit": units.unit(rows.track_id)})
    if names:
        out["name"] = np.asarray(units.own_names(rows.name, rows.track_id), dtype=object)
    out = out.sort_values(["ts", "id"], kind="stable").reset_index(drop=True)
    out["inv"] = containing(out.ts.to_numpy(), (out.ts + out.dur).to_numpy(), out.unit.to_numpy(), inv)
    has = out.inv.to_numpy() >= 0
    pick = np.maximum(out.inv.to_numpy(), 0)
    if len(inv):  # (a Workload slice without rbln-perfetto's args gives -1 and None)
        out["seq"] = np.where(has, _ints(inv.seq)[pick], -1)
        out["submodule"] = np.where(has, inv.submodule.to_numpy(object)[pick], None)
        out["call_index"] = np.where(has, _ints(inv.call_index)[pick], -1)
    else:
        out["seq"], out["submodule"], out["call_index"] = -1, None, -1
    if names:
        out["layer"] = _layers(out.name.tolist(), out.seq.tolist())
    return out


def _layers(names: list[str], seqs: list[int]) -> list[str]:
    """Each op's layer: a command's (its name says its invocation's sequence index), else the split
    op's name. (One regex match per op, as `parse_command_slice_name` makes, without its object.)"""
    match = COMMAND_SLICE_NAME.match
    parsed: dict[str, tuple] = {}  # name -> (its sequence index, its layer), (-2, name) for no command's
    out = []
    for name, seq in zip(names, seqs):
        p = parsed.get(name)
        if p is None:  # (a split op's name comes back every step: matched once)
            m = match(name)
            p = parsed[name] = (int(m.group(1)), m.group(2)) if m is not None else (-2, name)
        out.append(p[1] if p[0] == seq else name)
    return out


def op_args(tr, ids) -> dict[int, tuple]:
    """{op id: (op, command_count)} of the given ops, read from their args."""
    ids = sorted({int(i) for i in ids})
    out = {}
    for start in range(0, len(ids), 5000):  # bounded statement length
        chunk = ",".join(map(str, ids[start:start + 5000]))
        rows = tr.query(f"SELECT id, extract_arg(arg_set_id, 'debug.op') AS op, "
                        f"extract_arg(arg_set_id, 'debug.command_count') AS command_count "
                        f"FROM slice WHERE id IN ({chunk})")
        out.update({int(i): (op, None if cc is None or cc != cc else int(cc))
                    for i, op, cc in zip(rows.id, rows.op, rows.command_count)})
    return out


def _ints(column) -> np.ndarray:
    """An integer column as int64, -1 for NULL (either backend's way of holding one)."""
    import pandas as pd

    return pd.to_numeric(column, errors="coerce").fillna(-1).to_numpy(np.int64)
