"""Many traces queried as one: every invocation of a run, or many runs, answered in one DataFrame.

    with rbln_perfetto.open_traces("rbln_profile/run-1/") as ts:       # its per-invocation traces
        ts.query("select name, dur from slice where depth = 0")         # columns: trace, name, dur

The `trace` column (first) names each row's trace: its path relative to the directory that holds
all of them (see `trace_paths` for which files a directory gives). Rows come trace by trace, in set
order, each trace's rows in the query's own order. The traces are loaded once and stay loaded:
on trace_processor by the `perfetto` package's BatchTraceProcessor (one process per trace), on the
embedded backend by a pool of `workers` processes, each holding a share of the traces. Both give
the same rows, and the same errors and warnings as `open_trace` gives for each trace.
"""

from __future__ import annotations

import os
import warnings

from ..errors import QueryError, UsageError
from .reports import report_sql
from .backends import chosen_backend
from .trace_paths import FILES, trace_labels, trace_paths
from .trace_pool import TracePool, default_workers

TRACE_COLUMN = "trace"
# Under this size a trace loads in the embedded pool long before trace_processor has started the process
# BatchTraceProcessor runs for it (one per trace): 18 traces of a run took 10.9 s there, 1.0 s embedded.
# So "auto" takes the embedded backend for a set of small traces even where a binary is configured.
SMALL_TRACE_BYTES = 8 << 20


def all_small(paths) -> bool:
    """Whether every trace is small enough that starting trace_processor for it costs more than loading it."""
    return all(os.path.getsize(p) < SMALL_TRACE_BYTES for p in paths)


def combine(labels: list[str], frames: list):
    """One DataFrame: each trace's rows after a `trace` column holding its label, in `labels` order."""
    import pandas as pd

    if any(TRACE_COLUMN in f.columns for f in frames):
        raise QueryError(f"the query returns a column named {TRACE_COLUMN!r}, the column open_traces adds to name "
                         f"each row's trace; name it otherwise (... as {TRACE_COLUMN}_name)")
    # Traces without rows are left out (their all-object empty columns would turn the others' ints into objects).
    kept = [(label, f) for label, f in zip(labels, frames) if len(f)] or [(labels[0], frames[0])]
    parts = []
    for label, f in kept:
        f = f.copy(deep=False)
        f.insert(0, TRACE_COLUMN, label)
        parts.append(f)
    if len(parts) == 1:
        return parts[0]
    out = pd.concat(parts, ignore_index=True)
    # A column of integers that is all NULL in some trace comes out as objects: the whole column is
    # integers with NULLs, Int64, as one trace holding these rows gives it (and `combine_rows`).
    for name in out.columns[1:]:
        if out[name].dtype == object:
            types = set(map(type, out[name])) - {type(None), type(pd.NA)}
            if types == {int}:
                out[name] = pd.array([None if v is pd.NA else v for v in out[name]], dtype="Int64")
    return out


def combine_rows(labels: list[str], answers: list[tuple[list, list]]):
    """As `combine`, from each trace's (columns, rows): one DataFrame built once over every trace's rows."""
    from .result_frame import frame

    columns = answers[0][0]
    if TRACE_COLUMN in columns or any(c != columns for c, _ in answers):  # (its error; columns per trace)
        return combine(labels, [frame(r, c) for c, r in answers])
    rows, trace = [], []
    for label, (_, found) in zip(labels, answers):
        rows += found
        trace += [label] * len(found)
    if not rows:
        return combine(labels[:1], [frame([], columns)])
    out = frame(rows, columns)
    out.insert(0, TRACE_COLUMN, trace)
    return out


class TraceSet:
    """Traces opened together for SQL; `query` answers for all of them in one DataFrame."""

    def __init__(self, paths_or_dir, backend: str = "auto", tp_bin: str | None = None, workers: int | None = None,
                 files: str = "invocations"):
        chosen = chosen_backend(backend, tp_bin)  # (a bad name is refused before any file is looked at)
        if workers is not None and (type(workers) is not int or workers < 1):
            raise UsageError(f"workers={workers!r} is not valid; valid: a whole number >= 1 (default: the CPU count)")
        self.paths = trace_paths(paths_or_dir, files)
        backend = "sqlite" if backend == "auto" and all_small(self.paths) else chosen
        self.traces = trace_labels(self.paths)  # the `trace` column's values, in set order
        if backend == "sqlite":
            self._impl = TracePool(self.paths, min(workers or default_workers(), len(self.paths)))
        else:
            from .tp_batch_backend import BatchTraceProcessorBackend

            self._impl = BatchTraceProcessorBackend(self.paths, tp_bin)
        self.backend = backend
        self._closed = False
        try:  # what loading each trace warned about, in set order, as `open_trace` warns it
            for found in self._impl.warnings:
                for category, message in found:
                    warnings.warn(message, category, stacklevel=3)
        except BaseException:  # warnings turned into errors: do not leave the traces loaded
            self.close()
            raise

    def query(self, sql: str):
        """Run `sql` on every trace; one DataFrame, `trace` first. `QueryError` names the first trace that rejects it."""
        if isinstance(self._impl, TracePool):  # rows from the workers, one DataFrame built here
            return combine_rows(self.traces, self._answered(self._impl.query_rows, sql))
        return combine(self.traces, self._frames(sql))

    def query_dict(self, sql: str) -> dict:
        """Run `sql` on every trace; {trace label: its DataFrame}, in set order."""
        return dict(zip(self.traces, self._frames(sql)))

    def _frames(self, sql: str) -> list:
        return self._answered(self._impl.query, sql)

    def _answered(self, ask, sql: str) -> list:
        if self._closed:
            raise QueryError("SQL error: this trace set is closed (its traces are unloaded); open_traces opens them again")
        frames, failure = ask(sql)
        if failure is not None:
            index, error = failure
            raise QueryError(f"{self.paths[index]}: {error}")
        return frames

    def report(self, name: str):
        return self.query(report_sql(name))

    def __len__(self) -> int:
        return len(self.paths)

    def close(self) -> None:
        self._impl.close()
        self._closed = True

    def __enter__(self) -> TraceSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_traces(paths_or_dir: str | os.PathLike | list, backend: str = "auto", tp_bin: str | None = None,
                workers: int | None = None, files: str = "invocations") -> TraceSet:
    """Open many traces for SQL: a trace file, a run directory, a directory of runs, or a list of them.

    backend: "auto" (trace_processor when a binary is configured or cached and a trace is large, else
    "sqlite": for small traces trace_processor's start costs more than the embedded load), "sqlite" or
    "trace_processor". workers: the embedded backend's processes (default: the CPU count, at most one per
    trace); trace_processor runs one process per trace. files: which .pb files a directory gives, one of
    FILES (see `trace_paths`)."""
    return TraceSet(paths_or_dir, backend, tp_bin, workers, files)


__all__ = ["FILES", "TRACE_COLUMN", "TraceSet", "open_traces"]
