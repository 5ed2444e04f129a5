"""What the analyses read from a trace, shared: device tracks, invocations, and ops.

An *op* is a top-level slice of a Compute track: one command, or a split op (a parent slice named
after its layer, whose children are its commands and which spans them exactly). A run has about
twenty times fewer ops than commands, so the analyses read ops, and command names only where a
layer is asked for: each query then costs a scan of the slice table, not a Python object per
command. Every query is plain SQLite plus trace_processor's `extract_arg`, so it runs unchanged on
both backends; what SQL cannot do cheaply (which invocation holds an op) is a little numpy.
"""

from __future__ import annotations

import numpy as np

from ..naming import COMMAND_SLICE_NAME, NOT_UNTRACED_SQL

# `Device 3` -> 3: the device tracks' children, with their category and logical device.
DEVICE_TRACKS = """device_tracks AS (
  SELECT t.id AS track_id, t.name AS category, CAST(substr(p.name, 8) AS INT) AS device
  FROM track t JOIN track p ON t.parent_id = p.id
  WHERE p.name GLOB 'Device [0-9]*' AND t.name IN ('Workload', 'Host', 'Compute', 'DMA'))"""


def in_category(*categories: str) -> str:
    """SQL condition: slice `s` is on a device track of one of `categories` (Compute, DMA, Host,
    Workload). An IN over the few track ids keeps the slice scan the outer loop on both backends;
    put it first, so that a slice of another track costs no more than that test."""
    names = ", ".join(repr(c) for c in categories)
    return f"s.track_id IN (SELECT track_id FROM device_tracks WHERE category IN ({names}))"


# One row per submodule invocation (Workload slice; not the "not traced: ..." slices of a selected run).
# The track test comes first, so that only the few Workload slices have their name and args read.
INVOCATIONS = f"""invocations AS (
  SELECT s.id, s.ts, s.dur, d.device, s.name,
         extract_arg(s.arg_set_id, 'debug.sequence_index') AS seq,
         extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
         extract_arg(s.arg_set_id, 'debug.call_index') AS call_index
  FROM slice s JOIN device_tracks d ON s.track_id = d.track_id
  WHERE {in_category('Workload')} AND s.dur >= 0 AND {NOT_UNTRACED_SQL})"""


def with_ctes(*ctes: str) -> str:
    """`WITH a, b, ...` for the given CTE texts (each `name AS (...)`)."""
    return "WITH " + ",\n".join(ctes)


# Every invocation, in run order.
INVOCATION_ROWS = with_ctes(DEVICE_TRACKS, INVOCATIONS) + """
SELECT id, seq, submodule, call_index, device, name, ts, dur FROM invocations ORDER BY ts, seq"""
TRACK_DEVICES = with_ctes(DEVICE_TRACKS) + "\nSELECT track_id, category, device FROM device_tracks ORDER BY track_id"
_OPS = with_ctes(DEVICE_TRACKS) + f"""
SELECT s.id, s.ts, s.dur, s.track_id{{name}} FROM slice s
WHERE {in_category('Compute')} AND s.depth = 0 AND s.dur >= 0"""


def containing(ts: np.ndarray, end: np.ndarray, device: np.ndarray, inv) -> np.ndarray:
    """Per interval, the row of `inv` (invocations: ts, dur, device) on its device that contains
    it; -1 for none. Invocations of one device do not overlap."""
    out = np.full(len(ts), -1, np.int64)
    inv_ts, inv_dev = inv.ts.to_numpy(np.int64), inv.device.to_numpy(np.int64)
    inv_end = inv_ts + inv.dur.to_numpy(np.int64)
    for d in np.unique(inv_dev):
        rows = np.flatnonzero(inv_dev == d)
        rows = rows[np.argsort(inv_ts[rows], kind="stable")]
        mine = np.flatnonzero(device == d)
        k = np.searchsorted(inv_ts[rows], ts[mine], side="right") - 1
        ok = (k >= 0) & (end[mine] <= inv_end[rows[np.maximum(k, 0)]])
        out[mine[ok]] = rows[k[ok]]
    return out


def track_devices(tr) -> dict[int, tuple[str, int]]:
    """{track id: (category, device)} of the device tracks."""
    rows = tr.query(TRACK_DEVICES)
    return {int(t): (c, int(d)) for t, c, d in zip(rows.track_id, rows.category, rows.device)}


def ops(tr, *, names: bool = False, invocations=None):
    """One row per op, in (ts, id) order: id, ts, dur, device, and its invocation (`inv`: row of
    `invocations`, -1 for none; seq, submodule, call_index). With `names`: the op's `name` and
    `layer` (a command's name less its sequence index and command index; a split op's name)."""
    import pandas as pd

    inv = tr.query(INVOCATION_ROWS) if invocations is None else invocations
    rows = tr.query(_OPS.format(name=", s.name" if names else ""))
    device = {track: d for track, (_, d) in track_devices(tr).items()}
    out = pd.DataFrame({"id": rows.id.to_numpy(np.int64), "ts": rows.ts.to_numpy(np.int64),
                        "dur": rows.dur.to_numpy(np.int64),
                        "device": rows.track_id.astype(np.int64).map(device).to_numpy(np.int64)})
    if names:
        out["name"] = rows.name.to_numpy(object)
    out = out.sort_values(["ts", "id"], kind="stable").reset_index(drop=True)
    out["inv"] = containing(out.ts.to_numpy(), (out.ts + out.dur).to_numpy(), out.device.to_numpy(), inv)
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
    out = []
    for name, seq in zip(names, seqs):
        m = match(name)
        out.append(m.group(2) if m is not None and int(m.group(1)) == seq else name)
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
