"""`rbln-perfetto run`: compile (or load from the cache) the SD3 pipeline and profile one call of it.

Under torchrun (`RANK`/`WORLD_SIZE` set) it is one rank of a run split across processes
(`rbln_config['ranks']`, `pipeline.remote_calls`): each rank profiles into `OUT/rank{r}/`, the
ranks exchange clock readings at the start and the end (recorded in each capture), and rank 0
merges them into OUT (`rbln_perfetto.exporter.merge`).

When a rank dies, torchrun stops the others with SIGTERM, which would end them where they are (an
export half-written). A rank turns SIGTERM into an interrupt (KeyboardInterrupt), so its export discards
its temporary files as on Ctrl-C; it then fails with one line (`RankFailure`): which rank died,
what was kept (every rank's capture and the traces committed), and that `rbln-perfetto merge OUT`
merges them. Rank 0 does not merge after a failure itself: torchrun would stop that too.

The one module of rbln_perfetto that imports the pipeline's torch side; the CLI imports it only
when `run` is the command, so every other command starts without torch.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.compile_cache import embedded_model, load_or_compile
# ConfigError and DeviceMemoryError are here for `run`, which reports them by class (it may not import pipeline).
from pipeline.config import ConfigError, RBLNConfig
from pipeline.placement import DeviceMemoryError, torch_devices
from pipeline.ranks import (RankLost, check_ranks, exchange_clocks, join_process_group, launched_world,
                            leave_process_group)
from pipeline.remote_calls import distribute, serve

from ..recorder.activation import default_out_dir, env_enabled, new_run_id, profile
from ..recorder.capture import read_info
from ..errors import CaptureError, RankFailure, UsageError
from ..exporter.export import ExportResult, check_creatable
from ..exporter.merge import MergeResult, merge, rank_dir
from ..naming import CAPTURE_FILE
from ..recorder.run_directory import refuse_other_runs
from ..recorder.selection import Selection
from .common import SELECTION_FLAGS


@dataclass
class ProfiledRun:
    result: ExportResult
    image_path: Path | None  # None on a rank other than 0 (rank 0 runs the pipeline)
    model: str
    rank: int = 0
    merged: MergeResult | None = None  # a run split across processes, on rank 0
    samples: list[ExportResult] | None = None  # `runs` > 1: each run's export (OUT/run-000, ...), in order


def profile_pipeline(config: dict, *, steps: int, height: int | None, width: int | None, model: str | None,
                     scale: str, prompt: str, seed: int, out: str | None, force: bool = False, repeat: int = 1,
                     profile_steps: str | None = None, profile_calls: str | None = None,
                     profile_submodules: str | None = None, runs: int = 1) -> ProfiledRun:
    """Check everything that can be checked cheaply, then compile or load, run `repeat` times inside
    `profile()`, tracing what `profile_steps` / `_calls` / `_submodules` select (`selection`).

    `force`: remove another run's files from `out` (when the run starts) rather than refuse it.
    `runs` > 1: after one unprofiled warm-up call, `runs` profiled runs of `repeat` calls each, run
    `i` into `out/run-{i:03d}/` (`sample_dir`), the pipeline loaded once: the samples of `check`."""
    env_enabled()  # a bad RBLN_PROFILER, like a bad config, fails here, before anything is built or written
    Selection.of(profile_steps, profile_calls, profile_submodules, names=SELECTION_FLAGS)  # and a bad selection
    cfg = RBLNConfig.from_dict(config)
    torch_devices(cfg)
    world = launched_world()
    check_ranks(cfg, world[1] if world else 1)
    if world is not None and not out:
        raise UsageError("a run split across processes (torchrun) needs --out DIR: every rank writes under it")
    check_creatable(Path(out) if out else default_out_dir("run"))
    if out and not force:
        refuse_other_runs(Path(out))
    if model is not None and not (Path(model) / "model_index.json").is_file():
        raise UsageError(f"--model {model} is not a diffusers SD3 directory (no model_index.json)")
    model = model or embedded_model(scale)
    call = dict(prompt=prompt, num_inference_steps=steps, height=height, width=width, seed=seed, repeat=repeat)
    if world is not None:
        if runs > 1:
            raise UsageError("--runs N > 1 is for one process; under torchrun run the command N times")
        return profile_ranks(model, config, Path(out), call, force=force, profile_steps=profile_steps,
                             profile_calls=profile_calls, profile_submodules=profile_submodules)
    pipe = load_or_compile(model, config)
    pipe.set_progress_bar_config(disable=True)
    if runs > 1:
        return _profile_samples(pipe, model, Path(out) if out else default_out_dir("runs-" + new_run_id()), call,
                                runs, force=force, steps=profile_steps, calls=profile_calls,
                                submodules=profile_submodules)
    with profile(out, overwrite=force, steps=profile_steps, calls=profile_calls, submodules=profile_submodules) as prof:
        image = run_calls(pipe, **call)
    image_path = prof.out_dir / "image.png"
    image.save(image_path)
    return ProfiledRun(prof.result, image_path, model)


def sample_dir(out: Path, index: int) -> Path:
    """Where run `index` of `run --runs N` writes."""
    return out / f"run-{index:03d}"


def _profile_samples(pipe, model: str, out: Path, call: dict, runs: int, *, force: bool, **selection) -> ProfiledRun:
    run_calls(pipe, **dict(call, repeat=1))  # warm-up, not profiled: every sample is a warm process's run
    samples = []
    for index in range(runs):
        with profile(sample_dir(out, index), overwrite=force, **selection) as prof:
            image = run_calls(pipe, **call)
        samples.append(prof.result)
    image_path = out / "image.png"
    image.save(image_path)
    return ProfiledRun(samples[-1], image_path, model, samples=samples)


def run_calls(pipe, *, prompt: str, num_inference_steps: int, height, width, seed: int, repeat: int):
    """`repeat` pipeline calls; the last one's image."""
    for _ in range(repeat):
        image = pipe(prompt, num_inference_steps=num_inference_steps, height=height, width=width,
                     guidance_scale=pipe.rbln_config.guidance_scale,
                     generator=torch.Generator().manual_seed(seed)).images[0]
    return image


def profile_ranks(model: str, config: dict, out: Path, call: dict, *, force: bool, profile_steps: str | None,
                  profile_calls: str | None, profile_submodules: str | None) -> ProfiledRun:
    """This process's rank of a run split across processes: rank 0 drives the pipeline, the others serve."""
    cfg = RBLNConfig.from_dict(config)
    # First: a test clock skew (RBLN_TEST_CLOCK_SKEW_NS) must precede every clock the pipeline binds.
    group = join_process_group(cfg, torch_devices(cfg))
    pipe = load_or_compile(model, config)
    pipe.set_progress_bar_config(disable=True)
    link = distribute(pipe, group)
    image = None
    failed = False
    try:
        with _sigterm_interrupts() as stopped_by, profile(rank_dir(out, group.rank), overwrite=force, steps=profile_steps,
                                            calls=profile_calls, submodules=profile_submodules) as prof:
            offset = exchange_clocks(group)
            prof.clock_sync("start", group.rank, offset.offset_ns, offset.uncertainty_ns, offset.round_trip_ns)
            if link is None:
                serve(pipe, group)
            else:
                try:
                    image = run_calls(pipe, **call)
                finally:
                    link.stop()
            offset = exchange_clocks(group)
            prof.clock_sync("end", group.rank, offset.offset_ns, offset.uncertainty_ns, offset.round_trip_ns)
    except BaseException as exc:
        failed = True
        failure = _failure(out, group, exc, stopped_by)
        if failure is None:
            raise
        raise failure from exc
    finally:
        try:
            if not failed:
                torch.distributed.barrier()  # every rank's export is written
        finally:
            leave_process_group()
    if link is None:
        return ProfiledRun(prof.result, None, model, group.rank)
    merged = merge(out, overwrite=force)  # first: with --force it removes the previous run's files, image too
    image_path = out / "image.png"
    image.save(image_path)
    return ProfiledRun(prof.result, image_path, model, 0, merged)


@contextmanager
def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt in the main thread while the block runs, once, and is named in the
    list the block gets: a second one, while the first is being handled (temporary files removed, the
    failure said), is ignored, and so is one after the block failed (`_failure`: the process ends
    saying why)."""
    stopped_by: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield stopped_by  # (signal handlers belong to the main thread)
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped_by.append(signal.Signals(signum).name)
        raise KeyboardInterrupt  # (an interrupt, as Ctrl-C is: the export discards its temporaries)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield stopped_by
    finally:
        if signal.getsignal(signal.SIGTERM) is interrupt:  # (not when the first SIGTERM set it to ignore)
            signal.signal(signal.SIGTERM, previous)


def _lost_peer(exc: BaseException | None) -> RankLost | None:
    """The `RankLost` that `exc` is, or that it was raised while handling."""
    while exc is not None and not isinstance(exc, RankLost):
        exc = exc.__cause__ or exc.__context__
    return exc


def _cut_short(out: Path, world_size: int, me: int) -> list[str]:
    """The other ranks whose capture says they did not end (killed), one phrase each."""
    said = []
    for rank in range(world_size):
        capture = rank_dir(out, rank) / CAPTURE_FILE
        if rank == me or not capture.is_file():
            continue
        try:
            info = read_info(capture)
        except CaptureError:
            continue
        if info.end is None:
            said.append(f"rank {rank}'s capture ends early ({info.status}; the process was killed?)")
    return said


def _failure(out: Path, group, exc: BaseException, stopped_by: list[str]) -> RankFailure | None:
    """The one line a rank ends with when another rank died or SIGTERM stopped this one (None: the
    failure is this rank's own, or Ctrl-C, and its own error says it)."""
    lost = _lost_peer(exc)
    terminated = bool(stopped_by)
    if lost is None and not terminated:
        return None
    if threading.current_thread() is threading.main_thread():  # torchrun's SIGTERM may come now: say the line first
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    said = [f"rank {lost.rank} stopped answering"] if lost is not None else []
    if group.rank == 0:
        said += _cut_short(out, group.world_size, group.rank)
    if terminated:
        said.append(f"rank {group.rank} stopped by {stopped_by[0]} (torchrun stops every rank once one fails)")
    return RankFailure(f"{'; '.join(said)}; kept what every rank captured and exported under {out}/rank*/ "
                       f"(no partial files): `rbln-perfetto merge {out}` merges it")
