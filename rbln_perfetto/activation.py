"""Turning the profiler on: `RBLN_PROFILER`, per-submodule `activate_profiler`, and `profile()`.

- `with rbln_perfetto.profile(out_dir) as prof:` profiles every pipeline call inside the block
  into one capture, exported when the block ends (also when it ends by an exception).
- `RBLN_PROFILER=1` profiles each pipeline call as its own run under
  `$RBLN_PROFILER_DIR/<run-id>/` (default `./rbln_profile/<run-id>/`).
- `rbln_config[submodule]["activate_profiler"]` True/False overrides both for that submodule.

`Profiler` plugs all three into the pipeline's hook point (`pipeline.profiling_hooks`), which
asks it at the start of every pipeline call. A submodule that is not profiled is not timed: it
costs nothing and appears in no file.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from pipeline.contract import PipelineInfo
from pipeline.profiling_hooks import ENV_ENABLE, install_profiler

from .capture import CAPTURE_FILE, CaptureWriter
from .errors import OutputExistsError, ProfilerStateError, UsageError
from .export import ExportResult, check_writable, export

ENV_DIR = "RBLN_PROFILER_DIR"
DEFAULT_DIR = "rbln_profile"
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off", "")

_lock = threading.Lock()
_active: profile | None = None
_run_counter = 0


def env_enabled() -> bool:
    raw = os.environ.get(ENV_ENABLE)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise UsageError(
        f"{ENV_ENABLE}={raw!r} is not valid; valid: {', '.join(_ON)} to enable, "
        f"{', '.join(v for v in _OFF if v)} or unset to disable"
    )


def new_run_id() -> str:
    global _run_counter
    with _lock:
        _run_counter += 1
        n = _run_counter
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{n}"


def default_out_dir(run_id: str) -> Path:
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR) / run_id


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rbln-perfetto")
    except Exception:
        return "unknown"


class Session:
    """One capture file and the traces exported from it."""

    def __init__(self, out_dir: Path, run_id: str):
        check_writable(out_dir)  # before the pipeline runs anything
        self.out_dir = out_dir
        self.run_id = run_id
        self.capture_file = out_dir / CAPTURE_FILE
        if self.capture_file.exists():
            raise OutputExistsError(
                f"{self.capture_file} already exists; profile into an empty directory so that an earlier run is not overwritten"
            )
        self.writer = CaptureWriter(self.capture_file, run_id, _version())
        self.result: ExportResult | None = None

    def close(self, error: BaseException | None) -> ExportResult:
        if isinstance(error, KeyboardInterrupt):
            status = "interrupted"
        else:
            status = "ok" if error is None else "error"
        self.writer.close(status, "" if error is None else f"{type(error).__name__}: {error}")
        self.result = export(self.capture_file, self.out_dir)
        return self.result


class PipelineCall:
    """What one pipeline call profiles, and where it goes: the `pipeline.contract.Sink` of that call."""

    def __init__(self, session: Session, owns_session: bool, profiled: frozenset[str], program_ids: dict[str, int]):
        self.session = session
        self.writer = session.writer
        self.owns_session = owns_session
        self.profiled = profiled
        self.program_ids = program_ids

    def invocation(self, submodule: str, ticks) -> None:
        self.writer.invocation(self.program_ids[submodule], ticks)

    def host(self, name: str, start_ns: int, end_ns: int, detail: str = "") -> None:
        self.writer.host(name, start_ns, end_ns, detail)

    def end(self, error: BaseException | None) -> None:
        if not self.owns_session:
            return
        try:
            result = self.session.close(error)
        except Exception as exc:
            if error is None:
                raise
            error.add_note(f"rbln-perfetto: exporting the traces of {self.session.out_dir} also failed: {exc}")
            return
        print(f"rbln-perfetto: {len(result.invocation_files)} invocation traces and {result.aggregate_file} "
              f"written to {result.out_dir}", file=sys.stderr)


class Profiler:
    """rbln-perfetto as the pipeline's profiler (`pipeline.contract.Profiler`): it takes a pipeline
    call when a `profile()` block is active, when `RBLN_PROFILER` is on, or when the call's
    rbln_config turns `activate_profiler` on for a submodule."""

    def begin_call(self, info: PipelineInfo) -> PipelineCall | None:
        active = _active
        default = active is not None or env_enabled()
        profiled = frozenset(name for name, flag in info.activate_profiler.items() if (default if flag is None else flag))
        if not profiled and active is None:
            return None
        if active is not None:
            session, owns = active.session, False
        else:
            run_id = new_run_id()
            session, owns = Session(default_out_dir(run_id), run_id), True
        pipeline_id = session.writer.pipeline(info, profiled)
        program_ids = {p.submodule: session.writer.program(p, pipeline_id) for p in info.programs if p.submodule in profiled}
        return PipelineCall(session, owns, profiled, program_ids)


PROFILER = Profiler()


def install() -> None:
    """Make rbln-perfetto the pipeline's profiler (done on `import rbln_perfetto`; also the
    `rbln_pipeline.profilers` entry point, which the pipeline loads when RBLN_PROFILER is set)."""
    install_profiler(PROFILER)


class profile:
    """Profile every pipeline call in a `with` block; traces are exported when the block ends.

        with rbln_perfetto.profile("profile-out") as prof:
            image = pipe(prompt, num_inference_steps=2).images[0]
        prof.invocation_files, prof.aggregate_file, prof.summary()
    """

    def __init__(self, out_dir: str | os.PathLike | None = None):
        self.run_id = new_run_id()
        self.out_dir = Path(out_dir) if out_dir is not None else default_out_dir(self.run_id)
        self.session: Session | None = None

    def __enter__(self) -> profile:
        global _active
        with _lock:
            if _active is not None:
                raise ProfilerStateError(
                    f"rbln_perfetto.profile() is already active (writing to {_active.out_dir}); "
                    "profile() blocks cannot be nested: end the outer block first"
                )
            self.session = Session(self.out_dir, self.run_id)
            _active = self
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        global _active
        with _lock:
            _active = None
        try:
            self.session.close(exc)
        except Exception as export_error:
            if exc is None:
                raise
            exc.add_note(f"rbln-perfetto: exporting the traces of {self.out_dir} also failed: {export_error}")
        return False

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
