"""The embedded backend's tables: their schema (named as trace_processor names them), their rows as
columns (`table_columns`), and the two ways those get into SQLite, with identical contents:

- `load_image`: the optional C extension `rbln_perfetto.query._sqlite_tables` writes the whole database
  file image from the columns (no SQL statement per row) and the connection deserializes it;
- `load_inserts`: INSERTs from Python, where the extension is not built, is disabled
  (RBLN_PERFETTO_PURE_PYTHON=1) or Python's sqlite3 cannot deserialize (before 3.11).

`slice` is a view over an all-integer table: a name is stored as an interned string, or as a
decimal prefix plus an interned rest when it has one (`6_transformer_blocks.0.attn.to_q_1`), so
a run's many per-call names cost an integer each and the view gives back the exact text. The view
looks a name or category up with a scalar subquery, run only for a row whose name is read: SQLite
(3.40) does not drop an unused LEFT JOIN from an aggregate, which cost two seeks per slice to every
query that counts or sums slices (a million slices: 0.57 s where the table alone takes 0.12 s).
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
import sqlite3
import warnings

import numpy as np

from ..reader import TraceTables
from ..reader.threads import thread_process_rows
from ..reader.track_names import THREAD_PROCESS_TRACKS
from ..reader.debug_args import Pointer, Uint
from ..reader.diagnosis import UNFINISHED_SLICES

SCHEMA = """
CREATE TABLE __string(id INTEGER PRIMARY KEY, str TEXT);
CREATE TABLE __slice(id INTEGER PRIMARY KEY, ts INT, dur INT, track_id INT, category_id INT, name_prefix INT,
                     name_id INT, depth INT, parent_id INT, arg_set_id INT);
CREATE VIEW slice AS
  SELECT s.id, s.ts, s.dur, s.track_id, (SELECT c.str FROM __string c WHERE c.id = s.category_id) AS category,
         CASE WHEN s.name_prefix IS NULL THEN (SELECT n.str FROM __string n WHERE n.id = s.name_id)
              ELSE s.name_prefix || (SELECT n.str FROM __string n WHERE n.id = s.name_id) END AS name,
         s.depth, s.parent_id, s.arg_set_id
  FROM __slice s;
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
CREATE TABLE thread(id INTEGER PRIMARY KEY, type TEXT, utid INT, tid INT, name TEXT, start_ts INT, end_ts INT,
                    upid INT, is_main_thread INT, is_idle INT, machine_id INT, arg_set_id INT);
CREATE TABLE process(id INTEGER PRIMARY KEY, type TEXT, upid INT, pid INT, name TEXT, start_ts INT, end_ts INT,
                     parent_upid INT, uid INT, android_appid INT, android_user_id INT, cmdline TEXT, arg_set_id INT,
                     machine_id INT);
-- (the track tables' ids are track ids, not row numbers)
CREATE TABLE thread_track(id INT, name TEXT, type TEXT, parent_id INT, source_arg_set_id INT,
                          machine_id INT, utid INT);
CREATE TABLE process_track(id INT, name TEXT, type TEXT, parent_id INT, source_arg_set_id INT,
                           machine_id INT, upid INT);
CREATE TABLE thread_counter_track(id INT, name TEXT, type TEXT, parent_id INT,
                                  source_arg_set_id INT, machine_id INT, unit TEXT, description TEXT, utid INT);
CREATE TABLE process_counter_track(id INT, name TEXT, type TEXT, parent_id INT,
                                   source_arg_set_id INT, machine_id INT, unit TEXT, description TEXT, upid INT);
CREATE TABLE state(id INTEGER PRIMARY KEY, ts INT, dur INT, track_id INT, name TEXT, arg_set_id INT);
"""
# One hidden secondary index, made after the tables are in (`add_indexes`, on either load path): every
# report and analysis picks a device track's slices first (`trace_model.in_category`: `track_id IN
# (...)`, mostly with a depth), and with it SQLite reads only those tracks' slices, in id order, instead
# of scanning every slice: the 76 Workload slices of a 1M-command run in microseconds, not a full scan.
# Its name says it is rbln-perfetto's, not trace_processor's; `slice` and the other tables are unchanged.
# (More indexes are not made: each costs a sort of its table at load; ids are rowids, and SQLite makes
# automatic indexes for other joins when they pay off.)
INDEXES = "CREATE INDEX __rbln_slice_track_depth ON __slice(track_id, depth, parent_id);"
# Severities of the stats the reader keeps, as trace_processor files them.
SEVERITY = {
    "clock_sync_failure_unknown_source_clock": "error",
    "clock_sync_failure_undeferrable_packet_loss": "data_loss",
    "misplaced_end_event": "data_loss",
    "tokenizer_skipped_packets": "data_loss",
    "interned_data_skipped_incremental_state_invalid": "data_loss",
    "track_event_parser_errors": "info",
    "track_event_skipped_timestamp_delta_without_valid_state": "info",  # (trace_processor: kNotice)
    UNFINISHED_SLICES: "data_loss",
}
# Descriptions of the stats trace_processor does not have.
_DESCRIPTION = {
    UNFINISHED_SLICES: "Slices that begin and never end (dur = -1): the trace was cut short, or its producer stopped "
                       "mid-slice. Added by rbln-perfetto's embedded backend; trace_processor v58.2 shows them only as "
                       "dur = -1.",
    THREAD_PROCESS_TRACKS: "Tracks whose descriptor (or an ancestor's) names a thread or a process: trace_processor "
                           "makes them thread or process tracks, typed and named its own way. Read this trace with "
                           "the trace_processor backend.",
    "unsupported_state_track_event": "TYPE_STATE events on state tracks, which the embedded backend does not read.",
}


def _load_extension():
    """The C table writer, if it was built, is not disabled, and Python's sqlite3 can take its image."""
    if os.environ.get("RBLN_PERFETTO_PURE_PYTHON") == "1" or not hasattr(sqlite3.Connection, "deserialize"):
        return None
    try:
        extension = importlib.import_module("._sqlite_tables", __package__)  # (names the module when it is missing)
    except ImportError as e:
        # Said once, not silently: an install without a C compiler or SQLite's headers works, only slower.
        warnings.warn(f"rbln-perfetto: the C table writer is not built ({e}); the embedded backend INSERTs its "
                      "tables from Python (same rows, slower). Reinstall where a C compiler and SQLite's headers "
                      "are present to build it.", RuntimeWarning, stacklevel=2)
        return None
    return extension


# The loaded C extension, or None (see `_load_extension`).
EXTENSION = _load_extension()


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


def _i64(column) -> np.ndarray:
    return np.ascontiguousarray(column, dtype=np.int64)


def table_columns(t: TraceTables) -> dict[str, tuple[int, str, list]]:
    """{table: (rows, spec, columns)}: a spec letter per column, 'r' the row number (the INTEGER PRIMARY
    KEY; no data), 'z' NULL, 'i' int64 array, 'n' int64 array with negatives as NULL, 'f' float64 array,
    'o' a list of Python values. The reader keeps names as the view wants them: decimal prefix + interned rest."""
    uuids = np.asarray(t.used_tracks, dtype=np.uint64)
    order = np.argsort(uuids)
    track_ids = np.asarray([t.tracks[u].id for u in t.used_tracks], dtype=np.int64)[order]

    def track_id(uuid_column):
        return track_ids[np.searchsorted(uuids[order], uuid_column)] if len(uuids) else _i64(uuid_column)

    tracks = [t.tracks[u] for u in t.used_tracks]
    values = [(_ARRAY_INDEX.sub("", key), key, *_value_row(value)) for key, value in t.arg_values]  # flat_key: no [i]
    sets = t.arg_set_values
    sizes = np.fromiter(map(len, sets), dtype=np.int64, count=len(sets))
    arg_value = np.fromiter(itertools.chain.from_iterable(sets), dtype=np.int64, count=int(sizes.sum()))
    stats = list(t.stats.items())
    return {**_thread_process_columns(t, tracks), 
        "__slice": (t.slice_count, "riiinnninn", [
            None, _i64(t.slice_ts), _i64(t.slice_dur), track_id(t.slice_track), _i64(t.slice_category_id),
            _i64(t.slice_name_prefix), _i64(t.slice_name_id), _i64(t.slice_depth), _i64(t.slice_parent),
            _i64(t.slice_arg_set)]),
        "__string": (len(t.strings), "ro", [None, list(t.strings)]),
        "track": (len(tracks), "roooooo", [
            None, [tr.name for tr in tracks], [tr.type for tr in tracks],
            [None if tr.shown_parent is None else t.tracks[tr.shown_parent].id for tr in tracks],
            ["counter" if tr.is_counter else "slice" for tr in tracks], [tr.unit or None for tr in tracks],
            [tr.description or None for tr in tracks]]),
        "counter": (len(t.counter_ts), "riifz", [
            None, _i64(t.counter_ts), track_id(t.counter_track), np.ascontiguousarray(t.counter_value, dtype=np.float64),
            None]),
        "flow": (len(t.flows), "rooz", [None, [a for a, _ in t.flows], [b for _, b in t.flows], None]),
        "__arg_value": (len(values), "roooooo", [None, *map(list, zip(*values))] if values else [None] + [[]] * 6),
        "__arg": (len(arg_value), "rii", [None, np.repeat(np.arange(len(sets), dtype=np.int64), sizes), arg_value]),
        "stats": (len(stats), "ozoooo", [
            [name for name, _ in stats], None, [SEVERITY.get(name, "error") for name, _ in stats],
            ["analysis"] * len(stats), [value for _, value in stats], [_DESCRIPTION.get(name) for name, _ in stats]]),
    }


def _thread_process_columns(t: TraceTables, tracks: list) -> dict:
    """The thread and process tables as trace_processor fills them from TrackEvent thread and process
    descriptors (`reader.threads`), and the used tracks that belong to one (`descriptor_owner`), as
    thread/process (counter) tracks. (`state` stays empty: TYPE_STATE events on state tracks are refused.)"""
    rows = thread_process_rows(t)
    threads, processes = rows.threads, rows.processes
    owned: dict[str, list] = {"thread_track": [], "process_track": [], "thread_counter_track": [],
                              "process_counter_track": []}
    for tr in tracks:
        owner = t.descriptor_owner(tr.uuid)
        if owner is None:
            continue
        by_thread = owner.thread is not None
        parent = None if tr.shown_parent is None else t.tracks[tr.shown_parent].id
        row = [tr.id, tr.name, tr.type, parent, None, None]
        if tr.is_counter:
            row += [tr.unit or None, tr.description or None]
        row.append(rows.utid_of.get(owner.uuid) if by_thread else rows.upid_of.get(owner.uuid))
        owned[f"{'thread' if by_thread else 'process'}{'_counter' if tr.is_counter else ''}_track"].append(row)
    n_threads, n_processes = len(threads), len(processes)
    columns = {
        "thread": (n_threads, "roooozzooozz", [
            None, ["thread"] * n_threads, list(range(n_threads)), [r[0] for r in threads], [r[2] for r in threads],
            None, None, [r[1] for r in threads], [r[3] for r in threads], [1] + [0] * (n_threads - 1), None, None]),
        "process": (n_processes, "roooozzzzzzzzz", [
            None, ["process"] * n_processes, list(range(n_processes)), [r[0] for r in processes],
            [r[1] for r in processes], None, None, None, None, None, None, None, None, None]),
    }
    for table, owned_rows in owned.items():
        if owned_rows:
            width = len(owned_rows[0])
            columns[table] = (len(owned_rows), "o" * width, [[r[j] for r in owned_rows] for j in range(width)])
    return columns


_schema_rows: list = []


def schema_rows() -> list[tuple]:
    """sqlite_schema's (type, name, tbl_name, sql) rows for SCHEMA, as SQLite itself writes them."""
    if not _schema_rows:
        scratch = sqlite3.connect(":memory:")
        scratch.executescript(SCHEMA)
        _schema_rows.extend(scratch.execute("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY rowid"))
        scratch.close()
    return _schema_rows


def add_indexes(db: sqlite3.Connection) -> None:
    """The hidden helper index (`INDEXES`) on the loaded tables."""
    db.execute("PRAGMA temp_store = MEMORY")  # (its sort, as the reports' sorts: in memory)
    db.executescript(INDEXES)


def load_image(db: sqlite3.Connection, columns: dict) -> None:
    """The tables into the empty connection `db`, through a database image the C extension writes."""
    image = EXTENSION.build_database(4096, schema_rows(), columns)
    columns.clear()  # (the numpy columns go before the connection copies the image)
    db.deserialize(image)
    add_indexes(db)


class _Nullable:
    """An int column with -1 for NULL, turned into Python values (None for NULL) a slice at a time."""

    def __init__(self, column: np.ndarray):
        self.column = column

    def __getitem__(self, index: slice) -> np.ndarray:
        part = self.column[index]
        values = part.astype(object)
        values[part < 0] = None
        return values


class _Repeat:
    """One value for every row."""

    def __init__(self, value):
        self.value = value

    def __getitem__(self, index: slice):
        return self.value


ROWS_PER_INSERT = 500


def load_inserts(db: sqlite3.Connection, columns: dict) -> None:
    """The tables into the connection `db`, by INSERTs from Python."""
    db.executescript(SCHEMA)
    for table, (rows, spec, data) in columns.items():
        python = []
        for kind, column in zip(spec, data):
            python.append(np.arange(rows) if kind == "r" else _Repeat(None) if kind == "z" else
                          _Nullable(column) if kind == "n" else column)
        _insert(db, table, rows, python)
    db.commit()
    add_indexes(db)


def _insert(db, table: str, n: int, columns: list, chunk: int = 200 * ROWS_PER_INSERT) -> None:
    """Bulk insert of columns: many rows per INSERT statement, which halves sqlite3's per-row cost;
    a chunk of rows at a time, so that only that many rows exist as Python objects at once."""
    width = len(columns)
    one = "(" + ",".join("?" * width) + ")"
    for start in range(0, n, chunk):
        rows = np.empty((min(chunk, n - start), width), dtype=object)
        for j, column in enumerate(columns):
            rows[:, j] = column[start:start + chunk]
        values = rows.reshape(-1)
        m = len(rows)
        full = m - m % ROWS_PER_INSERT
        step = ROWS_PER_INSERT * width
        if full:
            batches = (values[i:i + step] for i in range(0, full * width, step))
            db.executemany(f"INSERT INTO {table} VALUES {','.join([one] * ROWS_PER_INSERT)}", batches)
        if full < m:
            tail = values[full * width:]
            db.executemany(f"INSERT INTO {table} VALUES {one}", (tail[i:i + width] for i in range(0, len(tail), width)))
