"""The embedded backend over many traces: worker processes that each load a shard of the traces once
and keep them open, so later queries cost only the SQL.

Each shard of the traces has its own worker process, served over a pipe: every request to it runs in
the process that holds the shard's traces (`_OPEN`, that process's cache). A
`concurrent.futures.ProcessPoolExecutor` does not say which worker runs a task, and one executor
per shard would start a manager thread per shard in the caller, before the next shard's fork. Shards
are balanced by file size (load and scan time grow with it), largest first onto the least loaded.

Workers are forked from the caller where no other Python thread runs: a worker then starts in
milliseconds and inherits the imported modules. Where other threads run (a progress bar, a server),
one of them may hold a lock at the moment of the fork that the child then waits on forever, so each
worker is a new interpreter instead, which imports this package (`trace_worker.main`) and nothing of
the caller's. multiprocessing's spawn and forkserver are not used: their children import the
caller's main module, which runs a script's top level again (profiling into the same directory,
say) when it opens traces without `if __name__ == "__main__":`.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

from ..errors import QueryError, WorkerError
from . import trace_worker

# Where this package is imported from, first on a new worker's path: the caller found it there.
_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])
_WORKER_MAIN = "from rbln_perfetto.query.trace_worker import main; main()"


def shards(sizes: list[int], workers: int) -> list[list[int]]:
    """Trace indexes split over `workers` shards of about equal total size, each in index order."""
    load = [0] * workers
    out: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        w = load.index(min(load))
        out[w].append(i)
        load[w] += sizes[i]
    return [sorted(s) for s in out if s]


class WorkerSubprocess:
    """A worker started as a new interpreter running `trace_worker.main`, with the methods of a
    `multiprocessing.Process` that the pool uses; `conn` is the pool's end of its pipe."""

    def __init__(self):
        mine, theirs = socket.socketpair()
        path = os.pathsep.join(p for p in (_IMPORT_ROOT, os.environ.get("PYTHONPATH")) if p)
        try:
            # Its own session: Ctrl-C at a terminal is the caller's to handle (it then ends the workers).
            self._popen = subprocess.Popen([sys.executable, "-c", _WORKER_MAIN, str(theirs.fileno())],
                                           pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                           env={**os.environ, "PYTHONPATH": path}, start_new_session=True)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self.conn = Connection(mine.detach())
        self.pid = self._popen.pid

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def terminate(self) -> None:
        if self.is_alive():
            self._popen.terminate()

    def kill(self) -> None:
        if self.is_alive():
            self._popen.kill()

    def join(self) -> None:
        self._popen.wait()


def _start_worker(forked: bool):
    """(process, the pool's end of its pipe): forked from this process, or a new interpreter."""
    if not forked:
        process = WorkerSubprocess()
        return process, process.conn
    context = multiprocessing.get_context("fork")
    mine, theirs = context.Pipe()
    process = context.Process(target=trace_worker.serve, args=(theirs,), daemon=True,
                              name="rbln-perfetto trace worker")
    process.start()
    theirs.close()
    return process, mine


def _worker_died(paths: list[Path], shard: list[int]) -> WorkerError:
    names = ", ".join(paths[i].name for i in shard[:3]) + (", ..." if len(shard) > 3 else "")
    return WorkerError(f"the worker process holding {names} died (out of memory? killed?)")


class TracePool:
    """`paths` loaded by the embedded backend in `workers` processes."""

    def __init__(self, paths: list[Path], workers: int):
        forked = threading.active_count() == 1
        self.paths = paths
        self.shards = shards([p.stat().st_size for p in paths], workers)
        self.workers = []
        self._answering = False  # a request was sent and not all of its replies read (interrupted)
        self.ended_by = "closed"  # why `workers` is empty, once it is
        try:
            for _ in self.shards:
                self.workers.append(_start_worker(forked))
            loaded = self._gather(trace_worker.load, [[(i, str(paths[i])) for i in shard] for shard in self.shards])
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
        return self._answers(trace_worker.query, sql)

    def query_rows(self, sql: str) -> tuple[list, tuple[int, QueryError] | None]:
        """As `query`, each trace's answer as (columns, rows), to be joined into one DataFrame by the caller."""
        return self._answers(trace_worker.query_rows, sql)

    def _answers(self, fn, sql: str) -> tuple[list, tuple[int, QueryError] | None]:
        answered = self._gather(fn, [sql] * len(self.shards))
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
