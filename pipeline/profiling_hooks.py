"""The hook point through which a profiler sees pipeline calls; the pipeline never imports a profiler.

A profiler (see `pipeline.contract.Profiler`) installs itself with `install_profiler`. Each
pipeline call then runs inside `profiled_call`, which asks the profiler for a `Sink` and makes it
the active call for the runtime modules and host timers of this thread or task
(`active_call()`); with no profiler, or a profiler that declines the call, `active_call()` is None
and profiling costs one context-variable read per seam. A sink may also choose call by call
(`Sink.starts`, told the denoising step of each step-submodule call): a call it declines runs
untimed, as outside a profiled call, and host seams read `records_host` before timing anything.

`RBLN_PROFILER` works without importing a profiler: when that variable is on (or an rbln_config
sets `activate_profiler: True` for a submodule) and no profiler is installed, the first such pipeline
call loads the profilers that installed distributions declare under
the entry-point group `rbln_pipeline.profilers` (rbln-perfetto declares `rbln_perfetto.recorder.activation:install`).
Every pipeline call checks the variable first: a value that is neither on nor off is a `ConfigError`.
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

from .config import ConfigError
from .contract import PipelineInfo, Profiler, RankTransfer, Sink

ENTRY_POINT_GROUP = "rbln_pipeline.profilers"
ENV_ENABLE = "RBLN_PROFILER"
ENV_ON = ("1", "true", "yes", "on")
ENV_OFF = ("0", "false", "no", "off", "")

_lock = threading.Lock()
_profiler: Profiler | None = None
_entry_points_loaded = False


def install_profiler(profiler: Profiler | None) -> Profiler | None:
    """Make `profiler` see every pipeline call from now on; returns the one it replaces (to restore it)."""
    global _profiler
    previous, _profiler = _profiler, profiler
    return previous


def env_profiler_enabled() -> bool:
    """`RBLN_PROFILER` as a switch (unset is off); any other value than on or off is a `ConfigError`."""
    raw = os.environ.get(ENV_ENABLE)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in ENV_ON:
        return True
    if value in ENV_OFF:
        return False
    raise ConfigError(
        f"{ENV_ENABLE}={raw!r} is not valid; valid: {', '.join(ENV_ON)} to enable, "
        f"{', '.join(v for v in ENV_OFF if v)} or unset to disable"
    )


def installed_profiler(info: PipelineInfo | None = None) -> Profiler | None:
    """The installed profiler, once `RBLN_PROFILER` is checked; with none installed and `RBLN_PROFILER`
    on (or `info`'s rbln_config forcing `activate_profiler: True` somewhere), the entry-point profilers
    are loaded first."""
    wanted = env_profiler_enabled() or (info is not None and True in info.activate_profiler.values())
    if wanted and _profiler is None:
        _load_entry_points()
    return _profiler


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        from importlib.metadata import entry_points

        found = entry_points(group=ENTRY_POINT_GROUP)
        for ep in found:
            ep.load()()  # each entry point is an install() that calls install_profiler
        _entry_points_loaded = True  # only once they loaded: a failure is raised again, never silenced
    if not found:
        warnings.warn(f"profiling was asked for ({ENV_ENABLE} or activate_profiler: True) but no profiler is "
                      f"installed (no entry point in group "
                      f"{ENTRY_POINT_GROUP!r}): install rbln-perfetto, or import rbln_perfetto", stacklevel=3)


class ActiveCall:
    """One profiled pipeline call: its sink, the denoising step it is at, whether host work is recorded
    now, and when each submodule's last invocation ended.

    `step_submodule` (the transformer, for SD3) is called once per denoising step: its calls are
    numbered from 0 within the pipeline call, and a sink that selects (`starts`) is told the number.
    """

    __slots__ = ("sink", "step_submodule", "steps_started", "calls_started", "records_host", "_finished_ns",
                 "_selects")

    def __init__(self, sink: Sink, step_submodule: str | None = None):
        self.sink = sink
        self.step_submodule = step_submodule
        self.steps_started = 0
        self.calls_started = 0  # submodule calls of this pipeline call so far, in any process
        self._selects = hasattr(sink, "starts")  # optional: a sink that chooses call by call
        self.records_host = getattr(sink, "records_host", True)
        self._finished_ns: dict[str, int] = {}

    def profiles(self, submodule: str) -> bool:
        return submodule in self.sink.profiled

    def invocation_starts(self, submodule: str) -> bool:
        """A call of `submodule` starts: True when it is to be timed (and reported by `invocation`). One
        that is not is still reported (`Sink.unprofiled`, or `starts` returning False), so that every
        call keeps its place in the run."""
        self.calls_started += 1
        if self._selects:
            step = None
            if submodule == self.step_submodule:
                step = self.steps_started
                self.steps_started += 1
            timed = self.sink.starts(submodule, step)
            self.records_host = self.sink.records_host
            return timed
        if submodule in self.sink.profiled:
            return True
        self.sink.unprofiled(submodule)
        return False

    def ran_elsewhere(self, submodule: str) -> None:
        """The call of `submodule` that `invocation_starts` just timed ran in another process, whose
        capture holds it; its outputs are back on this host now."""
        self._elsewhere(1)
        self._finished_ns[submodule] = time.monotonic_ns()

    def catch_up(self, calls_started: int) -> None:
        """In a process that runs some submodules for another (`pipeline.remote_calls`): the driving
        process had started `calls_started` submodule calls of this pipeline call; those this process
        did not see ran elsewhere."""
        missed = calls_started - self.calls_started
        if missed > 0:
            self.calls_started = calls_started
            self._elsewhere(missed)

    def _elsewhere(self, calls: int) -> None:
        elsewhere = getattr(self.sink, "elsewhere", None)  # optional: a sink that numbers calls
        if elsewhere is not None:
            elsewhere(calls)

    def transfer(self, transfer: RankTransfer) -> None:
        record = getattr(self.sink, "transfer", None)  # optional
        if record is not None:
            record(transfer)

    def invocation(self, submodule: str, ticks: Sequence[int], memory_allocated: Sequence[int] = ()) -> None:
        if memory_allocated:  # CUDA only: a sink that measures nothing need not take the argument
            self.sink.invocation(submodule, ticks, memory_allocated)
        else:
            self.sink.invocation(submodule, ticks)
        self._finished_ns[submodule] = time.monotonic_ns()

    def take_finished(self, submodule: str) -> int | None:
        """When `submodule`'s outputs last reached the host, once: a second call returns None."""
        return self._finished_ns.pop(submodule, None)


_active: ContextVar[ActiveCall | None] = ContextVar("rbln_pipeline_active_call", default=None)


def active_call() -> ActiveCall | None:
    """The profiled pipeline call running in this thread or task, if any."""
    return _active.get()


def host_recording_call() -> ActiveCall | None:
    """The active call if it records host work now (not inside a stretch its sink does not trace)."""
    call = _active.get()
    return call if call is not None and call.records_host else None


@contextmanager
def profiled_call(info: PipelineInfo, step_submodule: str | None = None) -> Iterator[ActiveCall | None]:
    """Run one pipeline call under the installed profiler (if it takes the call); `step_submodule`: the
    submodule called once per denoising step, whose calls a selecting sink is told the step number of."""
    profiler = installed_profiler(info)
    sink = profiler.begin_call(info) if profiler is not None else None
    if sink is None:
        yield None
        return
    call = ActiveCall(sink, step_submodule)
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
