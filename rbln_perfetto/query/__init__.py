"""Query traces with trace_processor SQL, on trace_processor itself or on an embedded SQLite copy.

    with rbln_perfetto.open_trace("profile-out/aggregate.pb") as tr:   # backend="auto" | "sqlite" | "trace_processor"
        tr.query("select name, dur from slice where name like '%to_q%' order by dur desc")
        tr.report("devices")

    with rbln_perfetto.open_traces("profile-out/") as ts:   # many traces: one DataFrame, a `trace` column first
        ts.query("select name, dur from slice where depth = 0")
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import QueryError, TraceNotFoundError
from ..reader.diagnosis import unfinished_slices_warning
from .reports import REPORTS, Report, report_sql
from .sqlite_backend import SqliteBackend
from .tp_backend import BACKENDS, TP_BIN_ENV, TraceProcessorBackend, chosen_backend
from .trace_set import TraceSet, open_traces

def require_trace_file(path: str | os.PathLike) -> Path:
    """`path` as a Path; FileNotFoundError saying what is there instead when it is not a file."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a trace file" if path.is_dir() else "no such trace file"
        raise TraceNotFoundError(f"{path}: {what}")
    return path


class Trace:
    """One trace file opened for SQL; results are pandas DataFrames."""

    def __init__(self, path: str | os.PathLike, backend: str = "auto", tp_bin: str | None = None):
        backend = chosen_backend(backend, tp_bin)
        self.path = require_trace_file(path)
        self._impl = SqliteBackend(self.path) if backend == "sqlite" else TraceProcessorBackend(self.path, tp_bin)
        self.backend = backend
        unfinished = self._impl.unfinished_slices()
        if unfinished:  # the same one line on either backend
            try:
                warnings.warn(unfinished_slices_warning(self.path, unfinished), UserWarning, stacklevel=3)
            except BaseException:  # warnings turned into errors: do not leave the backend open
                self._impl.close()
                raise

    def query(self, sql: str):
        """Run `sql`; a DataFrame of the rows. `QueryError` when the backend rejects it."""
        return self._impl.query(sql)

    def report(self, name: str):
        return self.query(report_sql(name))

    def reports(self) -> dict:
        return {name: self.report(name) for name in REPORTS}

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_trace(path: str | os.PathLike, backend: str = "auto", tp_bin: str | None = None) -> Trace:
    return Trace(path, backend, tp_bin)


__all__ = ["BACKENDS", "REPORTS", "TP_BIN_ENV", "QueryError", "Report", "Trace", "TraceSet", "open_trace", "open_traces",
           "require_trace_file"]
