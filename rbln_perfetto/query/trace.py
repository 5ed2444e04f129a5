"""`Trace`: one trace file opened for trace_processor SQL on the backend chosen by name."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..errors import TraceNotFoundError
from ..reader.diagnosis import unfinished_slices_warning
from .backends import BACKEND_CLASSES, chosen_backend
from .reports import REPORTS, report_sql


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
        self._impl = BACKEND_CLASSES[backend](self.path, tp_bin)
        self.backend = backend
        try:
            unfinished = self._impl.unfinished_slices()
            if unfinished:  # the same one line on either backend
                warnings.warn(unfinished_slices_warning(self.path, unfinished), UserWarning, stacklevel=3)
        except BaseException:  # (warnings turned into errors, a failing query): do not leave the backend open
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
