"""The embedded SQL backend: a trace read into stdlib sqlite3 tables named as trace_processor names them.

Tables and views: `slice` (id, ts, dur, track_id, category, name, depth, parent_id, arg_set_id),
`track` (id, name, type, parent_id, event_type, counter_unit, description), `counter_track`,
`counter` (id, ts, track_id, value, arg_set_id), `flow` (id, slice_out, slice_in, arg_set_id),
`args` (id, arg_set_id, flat_key, key, int_value, string_value, real_value, value_type), `stats`
(name, idx, severity, source, value, description), `thread`, `process`, `thread_track`, `process_track`,
`thread_counter_track`, `process_counter_track` and `state` (trace_processor's columns; see
`sqlite_tables`), and trace_processor's `EXTRACT_ARG(arg_set_id, key)` function (see `sqlite_tables` for how
the tables are built).

EXTRACT_ARG is a C function over compact copies of the args (made at its first call) when the C
extension is there (see `_sqlite_tables.c`), a Python one over the reader's argument sets otherwise;
both give what the `args` table holds (a uint64 >= 2**63 reads back negative, as its int_value),
NULL for a missing key or arg set.

A query may hold several statements (its rows are the last one's) and the PerfettoSQL that the `rbln`
package's modules use (`INCLUDE PERFETTO MODULE rbln.commands`; see `perfetto_sql`).
"""

from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

from ..errors import QueryError
from ..reader import TraceTables, read_tables
from ..reader.diagnosis import UNFINISHED_SLICES
from . import sqlite_tables
from .perfetto_sql import Session
from .result_frame import frame
from .sqlite_tables import SEVERITY, load_image, load_inserts, table_columns


class SqliteBackend:
    """A trace loaded into an in-memory SQLite database."""

    name = "sqlite"

    @staticmethod
    def available(tp_bin: str | None = None) -> bool:
        """Always: it is Python's own sqlite3."""
        return True

    def __init__(self, path: str | Path, tp_bin: str | None = None):
        """`tp_bin` is not used (no binary runs): it is there so every backend is made alike."""
        self.path = Path(path)
        tables = read_tables(self.path)
        self.stats = dict(tables.stats)
        # Only the argument sets outlive the load (for the Python EXTRACT_ARG); the columns go into
        # the database and are released as it takes them.
        args = TraceTables(arg_values=tables.arg_values, arg_set_values=tables.arg_set_values)
        columns = table_columns(tables)
        del tables
        extension = sqlite_tables.EXTENSION
        if extension is not None:
            extension.arm()  # (the connection opened now gets __rbln_index_args; see _sqlite_tables.c)
            try:
                self.db = sqlite3.connect(":memory:", check_same_thread=False)
            finally:
                extension.disarm()
            load_image(self.db, columns)
        else:
            self.db = sqlite3.connect(":memory:", check_same_thread=False)
            load_inserts(self.db, columns)
        # Sorts (GROUP BY, ORDER BY, DISTINCT over a million commands) in memory, as the database is:
        # SQLite's default spills them to temporary files (the reports' big GROUP BYs took ~1.5x as long).
        self.db.execute("PRAGMA temp_store = MEMORY")
        self._sql = Session(self.db)  # (PerfettoSQL: the rbln package's modules, several statements)
        self._args = None if self._c_extract_arg() else args
        if self._args is not None:
            self.db.create_function("extract_arg", 2, self._extract_arg, deterministic=True)
        # (unfinished slices are warned about by `Trace`, on either backend)
        problems = {k: v for k, v in self.stats.items()
                    if SEVERITY.get(k, "error") != "info" and k != UNFINISHED_SLICES}
        if problems:
            warnings.warn(f"{self.path}: reading it found problems: {problems} (see the stats table)", stacklevel=3)

    def _c_extract_arg(self) -> bool:
        """Register the C EXTRACT_ARG; False where the connection did not get it (no extension, or a
        Python whose sqlite3 links another libsqlite3 than the extension)."""
        if sqlite_tables.EXTENSION is None:
            return False
        try:
            self.db.execute("SELECT __rbln_index_args()").fetchall()
        except sqlite3.OperationalError:
            return False
        return True

    def unfinished_slices(self) -> int:
        """How many slices begin and never end (dur = -1)."""
        return self.stats.get(UNFINISHED_SLICES, 0)

    def _extract_arg(self, arg_set_id, key):
        if not isinstance(arg_set_id, int) or not 0 <= arg_set_id < len(self._args.arg_set_values):
            return None
        value = self._args.arg_set(arg_set_id).get(key)
        if isinstance(value, int) and value >= 2**63:
            return value - 2**64  # a uint64 reads back as the args table's int_value holds it
        return value

    def query(self, sql: str):
        try:  # rows are computed while fetched: a function or an overflow can fail on any row
            cursor = self._sql.query(sql)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise QueryError(f"SQL error: {exc}") from None
        columns = [d[0] for d in cursor.description] if cursor.description else []
        return frame(rows, columns)

    def close(self) -> None:
        self.db.close()

