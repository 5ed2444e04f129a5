"""One trace, both query backends: the rows trace_processor gives (`tp_rows`, the real binary) and the
rows the embedded backend gives (`embedded_rows`) for slice, track, counter, flow, args and the
error-severity rows of stats, as one JSON document each, so that the two compare with `==`.

The same SQL runs on both: trace_processor_shell prints it as CSV, SQLite builds the JSON in both
engines, reals are printed with 14 significant digits (the two SQLite versions round the 15th differently)."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

TP_BIN = os.environ.get("RBLN_PERFETTO_TP_BIN")

TABLES = {
    "slice": "select json_array(id, ts, dur, track_id, category, name, depth, parent_id) as r from slice order by id",
    "track": "select json_array(id, name, type, parent_id) as r from track order by id",
    "counter": "select json_array(id, ts, track_id, iif(value is null, null, printf('%.13e', value))) as r from counter order by id",
    "flow": "select json_array(slice_out, slice_in) as r from flow order by slice_out, slice_in",
    "args": "select json_array(s.id, a.flat_key, a.key, a.int_value, a.string_value, iif(a.real_value is null, null, printf('%.13e', a.real_value)), "
            "a.value_type) as r from slice s join args a using (arg_set_id) order by s.id, a.key",
    "stats": "select json_array(name, idx, value) as r from stats where severity = 'error' and value > 0 "
             "order by name, idx",
}
QUERY = "select json_object(" + ", ".join(
    f"'{name}', (select json_group_array(json(r)) from ({sql}))" for name, sql in TABLES.items()) + ") as rows"

# Stats the embedded backend adds where it refuses what it does not read (trace_processor has no such rows).
REFUSALS = ("unsupported_", "compressed_packets_unsupported")


def tp_rows(trace: Path, tp_bin: str | None = None) -> dict:
    """The rows of `trace` from trace_processor_shell (one process, one query)."""
    query = trace.with_suffix(".sql")
    query.write_text(QUERY)
    out = subprocess.run([tp_bin or TP_BIN, "-q", str(query), str(trace)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, f"trace_processor failed on {trace}: {out.stderr[-2000:]}"
    lines = out.stdout.split("\n")  # (not splitlines: a string value may hold \x1c or \u2028)
    assert lines[0] == '"rows"', out.stdout[:500]
    return json.loads(lines[1][1:-1])  # (the shell quotes the cell without escaping it)


def embedded_rows(trace: Path) -> tuple[dict, list[str]]:
    """The rows of `trace` from the embedded backend, and the warnings it gave."""
    from rbln_perfetto.query import open_trace

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_trace(trace, backend="sqlite") as tr:
            rows = json.loads(tr.query(QUERY).rows[0])
    return rows, [str(w.message) for w in caught]


def refusals(rows: dict) -> list[str]:
    """The embedded backend's refusal stats among `rows`."""
    return [name for name, _, _ in rows["stats"] if name.startswith(REFUSALS)]


def _same_value(x, y) -> bool:
    """Equal, or two printed reals within the last printed digit (the two engines' SQLite printf may round
    the 14th significant digit apart: 5.9804782263118e+14 vs 5.9804782263117e+14)."""
    if x == y:
        return True
    if isinstance(x, str) and isinstance(y, str) and "e" in x and "e" in y:
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        return abs(fx - fy) <= 2e-13 * max(abs(fx), abs(fy))
    return False


def _same_row(a, b) -> bool:
    return a == b or (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
                      and all(_same_value(x, y) for x, y in zip(a, b)))


def differences(want: dict, got: dict) -> str:
    """A short account of where `got` differs from `want`, table by table ("" when they are equal)."""
    out = []
    for table in TABLES:
        a, b = want.get(table, []), got.get(table, [])
        if len(a) != len(b) or not all(_same_row(x, y) for x, y in zip(a, b)):
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if not _same_row(x, y)), min(len(a), len(b)))
            out.append(f"{table}: {len(a)} rows from trace_processor, {len(b)} embedded; first difference at row "
                       f"{first}: trace_processor {a[first] if first < len(a) else None} vs embedded "
                       f"{b[first] if first < len(b) else None}")
    return "\n".join(out)
