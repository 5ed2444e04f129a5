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

import re
import sqlite3
import warnings
from pathlib import Path


from ..trace_reader import TraceTables, read_tables

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
CREATE TABLE args(id INTEGER PRIMARY KEY, arg_set_id INT, flat_key TEXT, key TEXT, int_value INT, string_value TEXT,
                  real_value REAL, value_type TEXT);
CREATE TABLE stats(name TEXT, idx INT, severity TEXT, source TEXT, value INT, description TEXT);
"""
INDEXES = """
CREATE INDEX __slice_track ON __slice(track_id);
CREATE INDEX __slice_parent ON __slice(parent_id);
CREATE INDEX args_set ON args(arg_set_id, key);
"""
# Severities of the stats the reader keeps, as trace_processor files them.
_SEVERITY = {
    "clock_sync_failure_unknown_source_clock": "error",
    "clock_sync_failure_undeferrable_packet_loss": "data_loss",
    "misplaced_end_event": "data_loss",
    "tokenizer_skipped_packets": "data_loss",
    "interned_data_skipped_incremental_state_invalid": "data_loss",
}
_PREFIXED = re.compile(r"(0|[1-9]\d{0,17})(\D.*)?\Z", re.S)


def _value_row(value) -> tuple:
    """(int_value, string_value, real_value, value_type) of one arg, as trace_processor types it."""
    if isinstance(value, bool):
        return int(value), None, None, "bool"
    if isinstance(value, int):
        return (value, None, None, "int") if value < 2**63 else (value - 2**64, None, None, "uint")
    if isinstance(value, float):
        return None, None, value, "real"
    return None, str(value), None, "string"


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
        self._args = self._load(tables)
        self.db.executescript(INDEXES)
        self.db.create_function("extract_arg", 2, self._extract_arg, deterministic=True)
        problems = {k: v for k, v in self.stats.items() if _SEVERITY.get(k, "error") != "info"}
        if problems:
            warnings.warn(f"{self.path}: reading it found problems: {problems} (see the stats table)", stacklevel=3)

    def _extract_arg(self, arg_set_id, key):
        return self._args.get((arg_set_id, key))

    def _load(self, t: TraceTables) -> dict:
        db = self.db
        strings: dict[str, int] = {}

        def intern(s):
            if s is None:
                return None
            i = strings.get(s)
            if i is None:
                i = strings[s] = len(strings)
            return i

        prefixes, name_ids = [], []
        for name in t.slice_name:
            m = _PREFIXED.match(name)
            if m and m.group(2) is not None:
                prefixes.append(int(m.group(1)))
                name_ids.append(intern(m.group(2)))
            else:
                prefixes.append(None)
                name_ids.append(intern(name))
        categories = [intern(c) for c in t.slice_category]
        track_id = {uuid: t.tracks[uuid].id for uuid in t.used_tracks}
        n = t.slice_count
        tracks_col = [track_id[u] for u in t.slice_track.tolist()]
        parent = [None if p < 0 else p for p in t.slice_parent.tolist()]
        argset = [None if a < 0 else a for a in t.slice_arg_set.tolist()]
        db.executemany("INSERT INTO __slice VALUES (?,?,?,?,?,?,?,?,?,?)", zip(
            range(n), t.slice_ts.tolist(), t.slice_dur.tolist(), tracks_col, categories, prefixes, name_ids,
            t.slice_depth.tolist(), parent, argset))
        db.executemany("INSERT INTO __string VALUES (?,?)", ((i, s) for s, i in strings.items()))
        db.executemany("INSERT INTO track VALUES (?,?,?,?,?,?,?)", (
            (tr.id, tr.name, "global_counter_track_event" if tr.is_counter else "global_merged_track_event",
             None if tr.parent_uuid is None else t.tracks[tr.parent_uuid].id,
             "counter" if tr.is_counter else "slice", tr.unit or None, tr.description or None)
            for tr in (t.tracks[u] for u in t.used_tracks)))
        db.executemany("INSERT INTO counter VALUES (?,?,?,?,NULL)", zip(
            range(len(t.counter_ts)), t.counter_ts.tolist(), [track_id[u] for u in t.counter_track.tolist()],
            t.counter_value.tolist()))
        db.executemany("INSERT INTO flow VALUES (?,?,?,NULL)", ((i, a, b) for i, (a, b) in enumerate(t.flows)))
        args, rows = {}, []
        for set_id, values in enumerate(t.arg_sets):
            for key, value in values.items():
                args[(set_id, key)] = value
                rows.append((set_id, key, key, *_value_row(value)))
        db.executemany("INSERT INTO args(arg_set_id, flat_key, key, int_value, string_value, real_value, value_type) "
                       "VALUES (?,?,?,?,?,?,?)", rows)
        db.executemany("INSERT INTO stats VALUES (?,NULL,?,'analysis',?,NULL)",
                       ((name, _SEVERITY.get(name, "error"), value) for name, value in t.stats.items()))
        db.commit()
        return args

    def query(self, sql: str):
        cursor = self.db.execute(sql)
        columns = [d[0] for d in cursor.description] if cursor.description else []
        return frame(cursor.fetchall(), columns)

    @property
    def slice_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM __slice").fetchone()[0]

    def close(self) -> None:
        self.db.close()

