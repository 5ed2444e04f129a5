"""The embedded SQL backend: a trace read into stdlib sqlite3 tables named as trace_processor names them.

Tables and views: `slice` (id, ts, dur, track_id, category, name, depth, parent_id, arg_set_id),
`track` (id, name, type, parent_id, event_type, counter_unit, description), `counter_track`,
`counter` (id, ts, track_id, value, arg_set_id), `flow` (id, slice_out, slice_in, arg_set_id),
`args` (id, arg_set_id, flat_key, key, int_value, string_value, real_value, value_type), `stats`
(name, idx, severity, source, value, description), and trace_processor's `EXTRACT_ARG(arg_set_id,
key)` function.

`slice` is a view over an all-integer table: a name is stored as an interned string, or as a
decimal prefix plus an interned rest when it has one (`6_transformer_blocks.0.attn.to_q_1`), so
a run's many per-call names cost an integer each and the view gives back the exact text.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import warnings
from pathlib import Path

import numpy as np

from ..errors import QueryError
from ..reader import TraceTables, read_tables
from ..reader.clocks import LATE_SNAPSHOT
from ..reader.debug_args import Pointer, Uint
from ..reader.diagnosis import UNFINISHED_SLICES

SCHEMA = """
CREATE TABLE __string(id INTEGER PRIMARY KEY, str TEXT);
CREATE TABLE __slice(id INTEGER PRIMARY KEY, ts INT, dur INT, track_id INT, category_id INT, name_prefix INT,
                     name_id INT, depth INT, parent_id INT, arg_set_id INT);
CREATE VIEW slice AS
  SELECT s.id, s.ts, s.dur, s.track_id, c.str AS category,
         CASE WHEN s.name_prefix IS NULL THEN n.str ELSE s.name_prefix || n.str END AS name,
         s.depth, s.parent_id, s.arg_set_id
  FROM __slice s LEFT JOIN __string n ON n.id = s.name_id LEFT JOIN __string c ON c.id = s.category_id;
CREATE TABLE track(id INTEGER PRIMARY KEY, name TEXT, type TEXT, parent_id INT, event_type TEXT, counter_unit TEXT,
                   description TEXT);
CREATE VIEW counter_track AS SELECT id, name, type, parent_id, counter_unit, description FROM track
  WHERE event_type = 'counter';
CREATE TABLE counter(id INTEGER PRIMARY KEY, ts INT, track_id INT, value REAL, arg_set_id INT);
CREATE TABLE flow(id INTEGER PRIMARY KEY, slice_out INT, slice_in INT, arg_set_id INT);
CREATE TABLE __arg_value(id INTEGER PRIMARY KEY, flat_key TEXT, key TEXT, int_value INT, string_value TEXT,
                          real_value REAL, value_type TEXT);
CREATE TABLE __arg(id INTEGER PRIMARY KEY, arg_set_id INT, value_id INT);
CREATE VIEW args AS
  SELECT a.id, a.arg_set_id, v.flat_key, v.key, v.int_value, v.string_value, v.real_value, v.value_type
  FROM __arg a JOIN __arg_value v ON v.id = a.value_id;
CREATE TABLE stats(name TEXT, idx INT, severity TEXT, source TEXT, value INT, description TEXT);
"""
# No secondary indexes: building them costs a third of the load, and the reports and the usual joins
# do not use them (ids are rowids; SQLite makes automatic indexes for other joins when they pay off).
# Severities of the stats the reader keeps, as trace_processor files them.
_SEVERITY = {
    "clock_sync_failure_unknown_source_clock": "error",
    "clock_sync_failure_undeferrable_packet_loss": "data_loss",
    "misplaced_end_event": "data_loss",
    "tokenizer_skipped_packets": "data_loss",
    "interned_data_skipped_incremental_state_invalid": "data_loss",
    UNFINISHED_SLICES: "data_loss",
}
# Descriptions of the stats trace_processor does not have.
_DESCRIPTION = {
    UNFINISHED_SLICES: "Slices that begin and never end (dur = -1): the trace was cut short, or its producer stopped "
                       "mid-slice. Added by rbln-perfetto's embedded backend; trace_processor v58.2 shows them only as "
                       "dur = -1.",
    LATE_SNAPSHOT: "Events dropped because the clock snapshot linking their clock to BOOTTIME comes only later in "
                   "the file; trace_processor converts them through it. Read this trace with the trace_processor "
                   "backend.",
}


def _value_row(value) -> tuple:
    """(int_value, string_value, real_value, value_type) of one arg, as trace_processor types it."""
    if isinstance(value, bool):
        return int(value), None, None, "bool"
    if isinstance(value, (Uint, Pointer)):  # uint64 in an int64 column
        return value - 2**64 if value >= 2**63 else int(value), None, None, "pointer" if isinstance(value, Pointer) else "uint"
    if isinstance(value, int):
        return (value, None, None, "int") if value < 2**63 else (value - 2**64, None, None, "uint")
    if isinstance(value, float):
        return None, None, value, "real"
    return None, str(value), None, "string"


_ARRAY_INDEX = re.compile(r"\[\d+\]")


class _Nullable:
    """An int column with -1 for NULL, turned into Python values (None for NULL) a slice at a time."""

    def __init__(self, column: np.ndarray):
        self.column = column

    def __getitem__(self, index: slice) -> np.ndarray:
        part = self.column[index]
        values = part.astype(object)
        values[part < 0] = None
        return values


ROWS_PER_INSERT = 500


def _insert(db, table: str, columns: list[np.ndarray], chunk: int = 200 * ROWS_PER_INSERT) -> None:
    """Bulk insert of columns: many rows per INSERT statement, which halves sqlite3's per-row cost;
    a chunk of rows at a time, so that only that many rows exist as Python objects at once."""
    n = len(columns[0])
    for start in range(0, n, chunk):
        rows = np.empty((min(chunk, n - start), len(columns)), dtype=object)
        for j, column in enumerate(columns):
            rows[:, j] = column[start:start + chunk]
        _insert_flat(db, table, rows.reshape(-1), len(columns))


def _insert_flat(db, table: str, values, width: int) -> None:
    """Insert rows given as one flat sequence of `width` values per row."""
    n = len(values) // width
    full = n - n % ROWS_PER_INSERT
    one = "(" + ",".join("?" * width) + ")"
    step = ROWS_PER_INSERT * width
    if full:
        batches = (values[i:i + step] for i in range(0, full * width, step))
        db.executemany(f"INSERT INTO {table} VALUES {','.join([one] * ROWS_PER_INSERT)}", batches)
    if full < n:
        tail = values[full * width:]
        db.executemany(f"INSERT INTO {table} VALUES {one}", (tail[i:i + width] for i in range(0, len(tail), width)))


def frame(rows: list[tuple], columns: list[str]):
    """A DataFrame whose integer columns stay integers when they hold NULLs (pandas' nullable Int64)."""
    import pandas as pd

    data = {}
    for j, name in enumerate(columns):
        values = [r[j] for r in rows]
        present = [v for v in values if v is not None]
        if present and all(type(v) is int for v in present) and len(present) < len(values):
            data[name] = pd.array(values, dtype="Int64")
        else:
            data[name] = values
    return pd.DataFrame(data, columns=columns)


class SqliteBackend:
    """A trace loaded into an in-memory SQLite database."""

    name = "sqlite"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        tables = read_tables(self.path)
        self.stats = dict(tables.stats)
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self.db.executescript(SCHEMA)
        self._load(tables)
        self._tables = tables
        self.db.create_function("extract_arg", 2, self._extract_arg, deterministic=True)
        # (unfinished slices are warned about by `Trace`, on either backend)
        problems = {k: v for k, v in self.stats.items()
                    if _SEVERITY.get(k, "error") != "info" and k != UNFINISHED_SLICES}
        if problems:
            warnings.warn(f"{self.path}: reading it found problems: {problems} (see the stats table)", stacklevel=3)

    def unfinished_slices(self) -> int:
        """How many slices begin and never end (dur = -1)."""
        return self.stats.get(UNFINISHED_SLICES, 0)

    def _extract_arg(self, arg_set_id, key):
        if not isinstance(arg_set_id, int) or not 0 <= arg_set_id < len(self._tables.arg_set_values):
            return None
        value = self._tables.arg_set(arg_set_id).get(key)
        if isinstance(value, int) and value >= 2**63:
            return value - 2**64  # a uint64 reads back as the args table's int_value holds it
        return value

    def _load(self, t: TraceTables) -> None:
        db = self.db
        # The reader stores names as the view wants them: decimal prefix + interned rest.
        uuids = np.asarray(t.used_tracks, dtype=np.uint64)
        order = np.argsort(uuids)
        track_ids = np.asarray([t.tracks[u].id for u in t.used_tracks], dtype=np.int64)[order]
        tracks_col = track_ids[np.searchsorted(uuids[order], t.slice_track)] if len(uuids) else t.slice_track
        _insert(db, "__slice", [
            np.arange(t.slice_count), t.slice_ts, t.slice_dur, tracks_col, _Nullable(t.slice_category_id),
            _Nullable(t.slice_name_prefix), _Nullable(t.slice_name_id), t.slice_depth, _Nullable(t.slice_parent),
            _Nullable(t.slice_arg_set)])
        db.executemany("INSERT INTO __string VALUES (?,?)", enumerate(t.strings))
        db.executemany("INSERT INTO track VALUES (?,?,?,?,?,?,?)", (
            (tr.id, tr.name, tr.type,
             None if tr.parent_uuid is None else t.tracks[tr.parent_uuid].id,
             "counter" if tr.is_counter else "slice", tr.unit or None, tr.description or None)
            for tr in (t.tracks[u] for u in t.used_tracks)))
        track_id = {uuid: t.tracks[uuid].id for uuid in t.used_tracks}
        db.executemany("INSERT INTO counter VALUES (?,?,?,?,NULL)", zip(
            range(len(t.counter_ts)), t.counter_ts.tolist(), [track_id[u] for u in t.counter_track.tolist()],
            t.counter_value.tolist()))
        db.executemany("INSERT INTO flow VALUES (?,?,?,NULL)", ((i, a, b) for i, (a, b) in enumerate(t.flows)))
        # args as the reader normalized them: each distinct (key, value) once, an arg a (set, value) pair.
        value_rows = []
        for vid, (key, value) in enumerate(t.arg_values):
            value_rows.extend((vid, _ARRAY_INDEX.sub("", key), key, *_value_row(value)))  # flat_key: no [i]
        _insert_flat(db, "__arg_value", value_rows, 7)
        sets = t.arg_set_values
        sizes = np.fromiter(map(len, sets), dtype=np.int64, count=len(sets))
        value_col = np.fromiter(itertools.chain.from_iterable(sets), dtype=np.int64, count=int(sizes.sum()))
        _insert(db, "__arg", [np.arange(len(value_col)), np.repeat(np.arange(len(sets)), sizes), value_col])
        db.executemany("INSERT INTO stats VALUES (?,NULL,?,'analysis',?,?)",
                       ((name, _SEVERITY.get(name, "error"), value, _DESCRIPTION.get(name))
                        for name, value in t.stats.items()))
        db.commit()

    def query(self, sql: str):
        try:  # rows are computed while fetched: a function or an overflow can fail on any row
            cursor = self.db.execute(sql)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise QueryError(f"SQL error: {exc}") from None
        columns = [d[0] for d in cursor.description] if cursor.description else []
        return frame(rows, columns)

    def close(self) -> None:
        self.db.close()

