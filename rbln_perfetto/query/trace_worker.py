"""One worker of the embedded backend's trace pool (`trace_pool`): it holds a shard of the traces open and
runs each request it is sent on them.

A worker is forked from the caller, or started as a new interpreter that runs `main` and imports only
this package, never the caller's main module: a script is never run a second time by its workers.
Workers only read: they open traces and query them.
"""

from __future__ import annotations

import pickle
import signal
import socket
import sys
import warnings
from multiprocessing.connection import Connection

from ..errors import QueryError, RblnPerfettoError, TraceReadError

_OPEN: dict[int, object] = {}  # trace index -> open `Trace`, in this worker


def portable(exc: BaseException) -> BaseException:
    """`exc` if it survives the trip to the parent, else its message as the nearest error that does."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return TraceReadError(str(exc)) if isinstance(exc, RblnPerfettoError) else RuntimeError(repr(exc))


def serve(conn) -> None:
    """Run each (function, argument) request on this process's traces until told to stop."""
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
            reply = (False, portable(exc))
        conn.send(reply)


def load(shard: list[tuple[int, str]]):
    """Open the shard's traces. (warnings per trace, None), or (warnings so far, (index, error)) at the
    first trace that fails (the parent then ends the pool, and the traces with it)."""
    from . import open_trace

    caught_per_trace = []
    for index, path in shard:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                _OPEN[index] = open_trace(path, backend="sqlite")
            except RblnPerfettoError as exc:
                return caught_per_trace, (index, portable(exc))
        caught_per_trace.append([(w.category, str(w.message)) for w in caught])
    return caught_per_trace, None


def query(sql: str):
    """(frames in index order, None), or (frames so far, (index, error)) at the first failure."""
    frames = []
    for index in sorted(_OPEN):
        try:
            frames.append(_OPEN[index].query(sql))
        except QueryError as exc:
            return frames, (index, exc)
    return frames, None


def query_rows(sql: str):
    """As `query`, each trace's answer as (columns, rows) rather than a DataFrame: the caller joins every
    trace's rows into one DataFrame (a thousand small DataFrames cost more to build, send and join
    than their SQL; see bench/README.md, "trace set")."""
    import sqlite3

    answers = []
    for index in sorted(_OPEN):
        impl = _OPEN[index]._impl
        try:  # as SqliteBackend.query, without the DataFrame
            cursor = impl._sql.query(sql)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            return answers, (index, QueryError(f"SQL error: {exc}"))
        except QueryError as exc:
            return answers, (index, exc)
        answers.append(([d[0] for d in cursor.description] if cursor.description else [], rows))
    return answers, None


def main() -> None:
    """A worker started as a new interpreter: its end of the pipe is the socket whose descriptor is argv[1]."""
    sock = socket.socket(fileno=int(sys.argv[1]))
    serve(Connection(sock.detach()))


__all__ = ["load", "main", "portable", "query", "query_rows", "serve"]
