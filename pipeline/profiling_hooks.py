"""The hook point through which a profiler sees pipeline calls; the pipeline never imports a profiler.

A profiler (see `pipeline.contract.Profiler`) installs itself with `install_profiler`. Each
pipeline call then runs inside `profiled_call`, which asks the profiler for a `Sink` and makes it
the active call for the runtime modules and host timers of this thread or task
(`active_call()`); with no profiler, or a profiler that declines the call, `active_call()` is None
and profiling costs one context-variable read per seam.

`RBLN_PROFILER` works without importing a profiler: when that variable is set and no profiler is
installed, the first pipeline call loads the profilers that installed distributions declare under
the entry-point group `rbln_pipeline.profilers` (rbln-perfetto declares `rbln_perfetto.activation:install`).
Torch-free, like `pipeline.contract`.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Sequence

from .contract import PipelineInfo, Profiler, Sink

ENTRY_POINT_GROUP = "rbln_pipeline.profilers"
ENV_ENABLE = "RBLN_PROFILER"

_lock = threading.Lock()
_profiler: Profiler | None = None
_entry_points_loaded = False


def install_profiler(profiler: Profiler | None) -> Profiler | None:
    """Make `profiler` see every pipeline call from now on; returns the one it replaces (to restore it)."""
    global _profiler
    previous, _profiler = _profiler, profiler
    return previous


def installed_profiler() -> Profiler | None:
    """The installed profiler; with none and `RBLN_PROFILER` set, the entry-point profilers are loaded first."""
    if _profiler is None and os.environ.get(ENV_ENABLE, "").strip():
        _load_entry_points()
    return _profiler


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        from importlib.metadata import entry_points

        found = entry_points(group=ENTRY_POINT_GROUP)
        for ep in found:
            ep.load()()  # each entry point is an install() that calls install_profiler
    if not found:
        warnings.warn(f"{ENV_ENABLE} is set but no profiler is installed (no entry point in group "
                      f"{ENTRY_POINT_GROUP!r}): install rbln-perfetto, or import rbln_perfetto", stacklevel=3)


class ActiveCall:
    """One profiled pipeline call: its sink, and when each submodule's last invocation ended."""

    __slots__ = ("sink", "_finished_ns")

    def __init__(self, sink: Sink):
        self.sink = sink
        self._finished_ns: dict[str, int] = {}

    def profiles(self, submodule: str) -> bool:
        return submodule in self.sink.profiled

    def invocation(self, submodule: str, ticks: Sequence[int]) -> None:
        self.sink.invocation(submodule, ticks)
        self._finished_ns[submodule] = time.monotonic_ns()

    def take_finished(self, submodule: str) -> int | None:
        """When `submodule`'s outputs last reached the host, once: a second call returns None."""
        return self._finished_ns.pop(submodule, None)


_active: ContextVar[ActiveCall | None] = ContextVar("rbln_pipeline_active_call", default=None)


def active_call() -> ActiveCall | None:
    """The profiled pipeline call running in this thread or task, if any."""
    return _active.get()


@contextmanager
def profiled_call(info: PipelineInfo) -> Iterator[ActiveCall | None]:
    """Run one pipeline call under the installed profiler (if it takes the call)."""
    profiler = installed_profiler()
    sink = profiler.begin_call(info) if profiler is not None else None
    if sink is None:
        yield None
        return
    call = ActiveCall(sink)
    token = _active.set(call)
    error: BaseException | None = None
    try:
        yield call
    except BaseException as exc:
        error = exc
        raise
    finally:
        _active.reset(token)
        sink.end(error)
