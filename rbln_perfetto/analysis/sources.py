"""What an analysis reads: an open `Trace`, a trace file, or a run directory (its `aggregate.pb`)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import TraceNotFoundError
from ..naming import AGGREGATE_FILE_NAME
from ..query import Trace, open_trace


def trace_path(source: str | os.PathLike) -> Path:
    """The trace file of `source`: the file itself, or a run directory's aggregate trace."""
    path = Path(source)
    if path.is_dir():
        aggregate = path / AGGREGATE_FILE_NAME
        if not aggregate.is_file():
            raise TraceNotFoundError(f"{path} is a directory without {AGGREGATE_FILE_NAME}: give a trace file "
                                     "or a run directory (one that `rbln-perfetto run` or `export` wrote)")
        return aggregate
    return path


@contextmanager
def opened(source, backend: str = "auto", tp_bin: str | None = None):
    """`source` as an open `Trace`: one it is given stays open, one it opens is closed after."""
    if isinstance(source, Trace):
        yield source
        return
    with open_trace(trace_path(source), backend=backend, tp_bin=tp_bin) as trace:
        yield trace
