"""The embedded backend over many traces: worker processes that each load a shard of the traces once
and keep them open, so later queries cost only the SQL.

Each shard of the traces has its own worker process, served over a pipe: every request to it runs in
the process that holds the shard's traces (`_OPEN`, that process's cache). A
`concurrent.futures.ProcessPoolExecutor` does not say which worker runs a task, and one executor
per shard would start a manager thread per shard in the caller, before the next shard's fork. Shards
are balanced by file size (load and scan time grow with it), largest first onto the least loaded.

Workers are forked from the caller where no other Python thread runs: a worker then starts in
milliseconds and inherits the imported modules. Where other threads run (a progress bar, a server),
one of them may hold a lock at the moment of the fork that the child then waits on forever, so the
workers come from a fork server instead (started once per process, with this module and pandas
imported: about half a second more on 2 cores, `bench/trace_set.py`). Its workers import the
caller's main module, as with any start method but fork: a script that opens traces at top level
from a threaded program needs `if __name__ == "__main__":`.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
import warnings
from pathlib import Path

from ..errors import QueryError, RblnPerfettoError, TraceReadError, WorkerError

_OPEN: dict[int, object] = {}  # in a worker: trace index -> open `Trace`
_PRELOAD = ["rbln_perfetto.query.trace_pool", "pandas"]


def shards(sizes: list[int], workers: int) -> list[list[int]]:
    """Trace indexes split over `workers` shards of about equal total size, each in index order."""
    load = [0] * workers
    out: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        w = load.index(min(load))
        out[w].append(i)
        load[w] += sizes[i]
    return [sorted(s) for s in out if s]


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives the trip to the parent, else its message as the nearest error that does."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return TraceReadError(str(exc)) if isinstance(exc, RblnPerfettoError) else RuntimeError(repr(exc))


def _serve(conn) -> None:
    """A worker: run each (function, argument) request on this process's traces until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle; it then ends the workers
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the caller is gone
            return
        if request is None:
            return
        fn, arg = request
        try:
            reply = (True, fn(arg))
        except Exception as exc:  # a bug or a resource error: the caller raises it
            reply = (False, _portable(exc))
        conn.send(reply)


def _load(shard: list[tuple[int, str]]):
    """In a worker: open the shard's traces. (warnings per trace, None), or (warnings so far, (index, error))
    at the first trace that fails (the parent then ends the pool, and the traces with it)."""
    from . import open_trace

    caught_per_trace = []
    for index, path in shard:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                _OPEN[index] = open_trace(path, backend="sqlite")
            except RblnPerfettoError as exc:
                return caught_per_trace, (index, _portable(exc))
        caught_per_trace.append([(w.category, str(w.message)) for w in caught])
    return caught_per_trace, None


def _query(sql: str):
    """In a worker: (frames in index order, None), or (frames so far, (index, error)) at the first failure."""
    frames = []
    for index in sorted(_OPEN):
        try:
            frames.append(_OPEN[index].query(sql))
        except QueryError as exc:
            return frames, (index, exc)
    return frames, None


def _worker_died(paths: list[Path], shard: list[int]) -> WorkerError:
    names = ", ".join(paths[i].name for i in shard[:3]) + (", ..." if len(shard) > 3 else "")
    return WorkerError(f"the worker process holding {names} died (out of memory? killed?); or, in a program "
                       "with threads, the main module opens traces at top level without "
                       "`if __name__ == \"__main__\":` (its workers import it)")


class TracePool:
    """`paths` loaded by the embedded backend in `workers` processes."""

    def __init__(self, paths: list[Path], workers: int):
        context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
        context.set_forkserver_preload(_PRELOAD)  # (only the first fork server of a process starts with it)
        self.paths = paths
        self.shards = shards([p.stat().st_size for p in paths], workers)
        self.workers = []
        self._answering = False  # a request was sent and not all of its replies read (interrupted)
        self.ended_by = "closed"  # why `workers` is empty, once it is
        try:
            for _ in self.shards:
                mine, theirs = context.Pipe()
                process = context.Process(target=_serve, args=(theirs,), daemon=True, name="rbln-perfetto trace worker")
                process.start()
                theirs.close()
                self.workers.append((process, mine))
            loaded = self._gather(_load, [[(i, str(paths[i])) for i in shard] for shard in self.shards])
        except BaseException:
            self.close()
            raise
        self.warnings: list[list[tuple[type, str]]] = [[] for _ in paths]
        failures = []
        for shard, (caught, failure) in zip(self.shards, loaded):
            for index, found in zip(shard, caught):
                self.warnings[index] = found
            if failure:
                failures.append(failure)
        if failures:
            self.close()
            raise min(failures, key=lambda f: f[0])[1]  # the first trace, in set order, that failed

    def _gather(self, fn, per_shard_args: list) -> list:
        """`fn(arg)` in each shard's worker, all at once; their results in shard order. Interrupted (Ctrl-C,
        a dead worker), the pool ends: replies left unread in the pipes would answer the next request."""
        if not self.workers:
            raise QueryError(f"SQL error: this trace set's workers were ended ({self.ended_by}); "
                             "open_traces opens the traces again")
        self._answering = True
        try:
            for shard, (_, conn), arg in zip(self.shards, self.workers, per_shard_args):
                try:
                    conn.send((fn, arg))
                except OSError:  # (a broken pipe here is no reader of stdout going away)
                    raise _worker_died(self.paths, shard) from None
            replies = []
            for shard, (_, conn) in zip(self.shards, self.workers):
                try:
                    replies.append(conn.recv())
                except (EOFError, OSError):
                    raise _worker_died(self.paths, shard) from None
        except BaseException as exc:
            self.ended_by = "a query was interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            self.close()
            raise
        self._answering = False
        for ok, value in replies:
            if not ok:
                raise value
        return [value for _, value in replies]

    def query(self, sql: str) -> tuple[list, tuple[int, QueryError] | None]:
        """One DataFrame per trace, in set order, and the first failing trace's (index, QueryError), if any."""
        answered = self._gather(_query, [sql] * len(self.shards))
        frames: list = [None] * len(self.paths)
        failures = []
        for shard, (found, failure) in zip(self.shards, answered):
            for index, frame in zip(shard, found):
                frames[index] = frame
            if failure:
                failures.append(failure)
        return frames, min(failures, key=lambda f: f[0]) if failures else None

    def close(self) -> None:
        """End the workers; their traces (in-memory databases) go with them."""
        for process, conn in self.workers:
            if self._answering:  # busy with a request the caller no longer waits for (Ctrl-C, a dead sibling)
                process.terminate()
            else:
                try:
                    conn.send(None)
                except OSError:
                    pass  # it is gone already
        for process, conn in self.workers:
            process.join()
            conn.close()
        self.workers = []


def default_workers() -> int:
    return os.cpu_count() or 1
