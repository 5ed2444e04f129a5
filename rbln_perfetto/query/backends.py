"""The SQL backends a `Trace` runs on, by name: the interface each one implements, the registry, and
the choice of one (`chosen_backend`, which also resolves "auto").

A backend loads one trace file when it is made (`Backend(path, tp_bin)`), answers SQL with a DataFrame
(`QueryError` when it rejects the SQL), counts the slices that begin and never end, and closes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import UsageError
from .sqlite_backend import SqliteBackend
from .tp_backend import TraceProcessorBackend


class Backend(Protocol):
    """One trace file loaded for trace_processor SQL."""

    name: str

    def __init__(self, path: Path, tp_bin: str | None = None) -> None: ...

    @staticmethod
    def available(tp_bin: str | None = None) -> bool:
        """Whether it can run here without a download ("auto" takes the first backend that can)."""

    def unfinished_slices(self) -> int:
        """How many slices begin and never end."""

    def query(self, sql: str):
        """The rows of `sql` as a DataFrame; `QueryError` when the backend rejects it."""

    def close(self) -> None: ...


# In the order "auto" tries them: Perfetto's own engine where it can run, else the embedded one.
BACKEND_CLASSES: dict[str, type[Backend]] = {cls.name: cls for cls in (TraceProcessorBackend, SqliteBackend)}
BACKENDS = ("auto", *sorted(BACKEND_CLASSES))


def chosen_backend(backend: str, tp_bin: str | None = None) -> str:
    """The name of the backend `backend` (one of BACKENDS) stands for: itself, or for "auto" the first of
    BACKEND_CLASSES available here; `UsageError` for any other name."""
    if backend not in BACKENDS:
        raise UsageError(f"backend={backend!r} is not valid; valid: {', '.join(BACKENDS)}")
    if backend == "auto":
        return next(name for name, cls in BACKEND_CLASSES.items() if cls.available(tp_bin))
    return backend
