"""Turning the profiler on: `RBLN_PROFILER`, per-submodule `activate_profiler`, and `profile()`.

- `with rbln_perfetto.profile(out_dir) as prof:` profiles every pipeline call inside the block
  into one capture, exported when the block ends (also when it ends by an exception).
- `RBLN_PROFILER=1` profiles each pipeline call as its own run under
  `$RBLN_PROFILER_DIR/<run-id>/` (default `./rbln_profile/<run-id>/`).
- `rbln_config[submodule]["activate_profiler"]` True/False overrides both for that submodule.
- `profile(steps=, calls=, submodules=)` and `RBLN_PROFILER_STEPS` / `_CALLS` / `_SUBMODULES` choose
  what is traced (`selection`); what is not runs as unprofiled, and a stretch of steps or calls left
  out is recorded as such (drawn as one "not traced: steps 0-9" slice).

`Profiler` plugs all three into the pipeline's hook point (`pipeline.profiling_hooks`), which
asks it at the start of every pipeline call. A submodule that is not profiled is not timed and
appears in no file, but each of its calls still takes its sequence index (and its call index), so
that the others' names and file numbers are those of a fully profiled run.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from pipeline.contract import PipelineInfo
from pipeline.profiling_hooks import active_call, env_profiler_enabled, install_profiler

from ..naming import CAPTURE_FILE
from .capture import CaptureWriter
from ..errors import ProfilerStateError, UsageError
from ..exporter.export import ExportResult, check_writable, export
from .run_directory import claim_run_directory
from .selection import Selection

ENV_DIR = "RBLN_PROFILER_DIR"
DEFAULT_DIR = "rbln_profile"

_lock = threading.Lock()
_active: profile | None = None
_run_counter = 0
_env_calls = 0  # pipeline calls profiled through RBLN_PROFILER so far (what `calls` counts there)


def env_enabled() -> bool:
    """`RBLN_PROFILER`, read as the pipeline reads it; a bad value is a `UsageError` naming the valid ones."""
    try:
        return env_profiler_enabled()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def new_run_id() -> str:
    global _run_counter
    with _lock:
        _run_counter += 1
        n = _run_counter
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{n}"


def default_out_dir(run_id: str) -> Path:
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR) / run_id


def package_version() -> str:
    """The installed rbln-perfetto's version ("unknown" when it runs from a source tree it was not installed from)."""
    try:
        from importlib.metadata import version

        return version("rbln-perfetto")
    except Exception:
        return "unknown"


class _Stretch:
    """Steps or calls that ran untraced, one after another: where they start, and where they end so far."""

    def __init__(self, unit: str, first: int, device: int, first_sequence_index: int):
        self.unit, self.first, self.last, self.device = unit, first, first, device
        self.first_sequence_index = self.end_sequence_index = first_sequence_index
        self.start_ns = self.end_ns = time.monotonic_ns()

    def extend(self, last: int, end_sequence_index: int) -> None:
        self.last, self.end_sequence_index = last, end_sequence_index

    def record(self, writer: CaptureWriter) -> None:
        writer.untraced(self.unit, self.first, self.last, self.device, self.start_ns, self.end_ns,
                        self.first_sequence_index, self.end_sequence_index)


class Session:
    """One capture file and the traces exported from it; the pipeline calls it has seen, and the
    stretch of untraced calls running now (written as one record when it ends)."""

    def __init__(self, out_dir: Path, run_id: str, overwrite: bool = False):
        check_writable(out_dir)  # before the pipeline runs anything
        claim_run_directory(out_dir, None, overwrite=overwrite)  # a new run: another run's files are refused
        self.out_dir = out_dir
        self.run_id = run_id
        self.capture_file = out_dir / CAPTURE_FILE
        self.writer = CaptureWriter(self.capture_file, run_id, package_version())
        self.result: ExportResult | None = None
        self.calls_begun = 0
        self._untraced_calls: _Stretch | None = None

    def untraced_call_begins(self, call_index: int) -> None:
        if self._untraced_calls is None:
            self._untraced_calls = _Stretch("calls", call_index, 0, self.writer.next_sequence_index)

    def untraced_call_ends(self, call_index: int) -> None:
        self._untraced_calls.extend(call_index, self.writer.next_sequence_index)
        self._untraced_calls.end_ns = time.monotonic_ns()

    def traced_call_begins(self) -> None:
        """Records the stretch of untraced calls before it, if any (it ended when the last of them did)."""
        stretch, self._untraced_calls = self._untraced_calls, None
        if stretch is not None:
            stretch.record(self.writer)

    def close(self, error: BaseException | None) -> ExportResult:
        self.traced_call_begins()  # the untraced calls at the end, if any, are a stretch too
        if isinstance(error, KeyboardInterrupt):
            status = "interrupted"
        else:
            status = "ok" if error is None else "error"
        self.writer.close(status, "" if error is None else f"{type(error).__name__}: {error}")
        self.result = export(self.capture_file, self.out_dir)
        return self.result

    def close_after(self, error: BaseException | None) -> ExportResult | None:
        """`close(error)`; when the export fails while `error` is on its way up, the failure becomes a note
        on `error` (the caller's error stays the one raised) and None comes back."""
        try:
            return self.close(error)
        except Exception as exc:
            if error is None:
                raise
            error.add_note(f"rbln-perfetto: exporting the traces of {self.out_dir} also failed: {exc}")
            return None


class PipelineCall:
    """What one pipeline call traces, and where it goes: the `pipeline.contract.Sink` of that call.

    It chooses call by call (`starts`): a submodule call is traced when its submodule is profiled,
    the pipeline call is selected (`traced_call`) and, for a denoising step, the step is selected.
    Consecutive steps left out are one stretch, written when the next traced step or another
    submodule's call starts, or the pipeline call ends.
    """

    def __init__(self, session: Session, owns_session: bool, profiled: frozenset[str], program_ids: dict[str, int],
                 *, selection: Selection = Selection(), call_index: int = 0, traced_call: bool = True,
                 devices: dict[str, int] | None = None):
        self.session = session
        self.writer = session.writer
        self.owns_session = owns_session
        self.profiled = profiled
        self.program_ids = program_ids
        self.selection = selection
        self.call_index = call_index
        self.traced_call = traced_call
        self.devices = devices or {}
        self.records_host = traced_call  # read by the pipeline's host seams after each `starts`
        self._step: int | None = None  # of the call being traced
        self._untraced_steps: _Stretch | None = None

    def starts(self, submodule: str, step: int | None) -> bool:
        """A submodule call starts (`step`: its denoising step, for the transformer): True to time it."""
        if step is None:
            self._end_untraced_steps()
            traced = self.traced_call and submodule in self.profiled
        else:
            self.records_host = self.traced_call and self.selection.wants_step(step)
            traced = self.records_host and submodule in self.profiled
            if traced:
                self._end_untraced_steps()
            elif self.traced_call and submodule in self.profiled:
                if self._untraced_steps is None:
                    self._untraced_steps = _Stretch("steps", step, self.devices.get(submodule, 0),
                                                    self.writer.next_sequence_index)
                self._untraced_steps.extend(step, self.writer.next_sequence_index + 1)
        if traced:
            self._step = step
            return True
        self.writer.skip(submodule)
        return False

    def _end_untraced_steps(self) -> None:
        self.records_host = self.traced_call
        if self._untraced_steps is not None:
            self._untraced_steps.end_ns = time.monotonic_ns()  # it ends as the next call starts
            self._untraced_steps.record(self.writer)
            self._untraced_steps = None

    def invocation(self, submodule: str, ticks, memory_allocated=()) -> None:
        self.writer.invocation(self.program_ids[submodule], ticks, memory_allocated, self._step)

    def host(self, name: str, start_ns: int, end_ns: int, detail: str = "") -> None:
        self.writer.host(name, start_ns, end_ns, detail)

    def elsewhere(self, calls: int) -> None:
        self.writer.elsewhere(calls)

    def transfer(self, transfer) -> None:
        self.writer.transfer(transfer)

    def end(self, error: BaseException | None) -> None:
        if self.traced_call:
            self._end_untraced_steps()
        else:
            self.session.untraced_call_ends(self.call_index)
        if not self.owns_session:
            return
        result = self.session.close_after(error)
        if result is None:
            return
        print(f"rbln-perfetto: {len(result.invocation_files)} invocation traces and {result.aggregate_file} "
              f"written to {result.out_dir}", file=sys.stderr)


class Profiler:
    """rbln-perfetto as the pipeline's profiler (`pipeline.contract.Profiler`): it takes a pipeline
    call when a `profile()` block is active, when `RBLN_PROFILER` is on, or when the call's
    rbln_config turns `activate_profiler` on for a submodule."""

    def begin_call(self, info: PipelineInfo) -> PipelineCall | None:
        global _env_calls
        active = _active
        default = active is not None or env_enabled()
        if not default and True not in info.activate_profiler.values():
            return None  # nothing profiled: costs what it cost before selections existed
        # A profile() block parsed its selection when it was made; RBLN_PROFILER's is read per call.
        selection = active.selection if active is not None else env_selection()
        profiled = frozenset(name for name, flag in info.activate_profiler.items()
                             if (default and selection.wants_submodule(name) if flag is None else flag))
        if not profiled and active is None:
            return None
        if active is not None:
            session, owns = active.session, False
            call_index = session.calls_begun
            session.calls_begun += 1
        else:
            with _lock:
                call_index, _env_calls = _env_calls, _env_calls + 1
            if not selection.wants_call(call_index):
                return None  # each RBLN_PROFILER call is a run of its own: one not selected writes nothing
            run_id = new_run_id()
            session, owns = Session(default_out_dir(run_id), run_id), True
        traced_call = selection.wants_call(call_index)
        if traced_call:
            session.traced_call_begins()
        else:
            session.untraced_call_begins(call_index)
        pipeline_id = session.writer.pipeline(info, profiled)
        program_ids = {p.submodule: session.writer.program(p, pipeline_id) for p in info.programs if p.submodule in profiled}
        return PipelineCall(session, owns, profiled, program_ids, selection=selection, call_index=call_index,
                            traced_call=traced_call, devices={p.submodule: p.device for p in info.programs})


def env_selection() -> Selection:
    """What `RBLN_PROFILER_STEPS`, `_CALLS` and `_SUBMODULES` select; a bad value is a `UsageError`."""
    return Selection.of()


PROFILER = Profiler()


def install() -> None:
    """Make rbln-perfetto the pipeline's profiler (done on `import rbln_perfetto`; also the
    `rbln_pipeline.profilers` entry point, which the pipeline loads when RBLN_PROFILER is set)."""
    install_profiler(PROFILER)


def current_writer() -> CaptureWriter | None:
    """The capture a user range opened here goes to (`ranges.range`): the active `profile()` block's,
    else that of the profiled pipeline call running in this thread (`RBLN_PROFILER`); None when
    nothing is profiled, which costs a global and a context-variable read."""
    active = _active
    if active is not None and active.session is not None:
        return active.session.writer
    call = active_call()
    return call.sink.writer if call is not None and isinstance(call.sink, PipelineCall) else None


class profile:
    """Profile every pipeline call in a `with` block; traces are exported when the block ends.

        with rbln_perfetto.profile("profile-out") as prof:
            image = pipe(prompt, num_inference_steps=2).images[0]
        prof.invocation_files, prof.aggregate_file, prof.summary()

    A directory that holds another run's files is refused (`OutputExistsError`) before the block
    starts; `overwrite=True` removes that run's files instead.

    `steps`, `calls`, `submodules` choose what is traced (`rbln_perfetto.recorder.selection`: "10:12", "2:",
    "0,5,9:", python-slice style, end exclusive; submodule names); one not given follows its
    `RBLN_PROFILER_*` variable, else everything. A bad value is a `UsageError` here, before the block.
    """

    def __init__(self, out_dir: str | os.PathLike | None = None, *, overwrite: bool = False,
                 steps: str | int | None = None, calls: str | int | None = None, submodules=None):
        self.selection = Selection.of(steps, calls, submodules)
        self.run_id = new_run_id()
        self.out_dir = Path(out_dir) if out_dir is not None else default_out_dir(self.run_id)
        self.overwrite = overwrite  # remove another run's files from out_dir rather than refuse it
        self.session: Session | None = None

    def __enter__(self) -> profile:
        global _active
        with _lock:
            if _active is not None:
                raise ProfilerStateError(
                    f"rbln_perfetto.profile() is already active (writing to {_active.out_dir}); "
                    "profile() blocks cannot be nested: end the outer block first"
                )
            env_enabled()  # a bad RBLN_PROFILER is an error here too, before anything is written
            self.session = Session(self.out_dir, self.run_id, self.overwrite)
            _active = self
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        global _active
        with _lock:
            _active = None
        result = self.session.close_after(exc)
        if result is None:
            return False
        if exc is not None:  # (a Ctrl-C or an error: what the block profiled until then is kept, and where)
            aggregate = f" and {result.aggregate_file.name}" if result.aggregate_file else ""
            exc.add_note(f"rbln-perfetto: {len(result.invocation_files)} invocation traces{aggregate} saved to "
                         f"{result.out_dir}")
        return False

    def clock_sync(self, label: str, rank: int, offset_ns: int, uncertainty_ns: int, round_trip_ns: int) -> None:
        """Record this process's measured clock offset from rank 0 in the capture (a run split across
        processes: `rbln-perfetto merge` aligns the ranks' captures by it)."""
        if self.session is None:
            raise ProfilerStateError("clock_sync() records into an active profile() block; enter it first")
        self.session.writer.clock_sync(label, rank, offset_ns, uncertainty_ns, round_trip_ns)

    @property
    def result(self) -> ExportResult:
        if self.session is None or self.session.result is None:
            raise ProfilerStateError("the profile() block has not ended yet: its traces are written when it exits")
        return self.session.result

    @property
    def capture_file(self) -> Path:
        return self.out_dir / CAPTURE_FILE

    @property
    def invocation_files(self) -> list[Path]:
        return self.result.invocation_files

    @property
    def aggregate_file(self) -> Path | None:
        return self.result.aggregate_file

    def summary(self):
        return self.result.summary()
