"""`rbln-perfetto run`: compile (or load from the cache) the SD3 pipeline and profile one call of it.

Under torchrun (`RANK`/`WORLD_SIZE` set) it is one rank of a run split across processes
(`rbln_config['ranks']`, `pipeline.remote_calls`): each rank profiles into `OUT/rank{r}/`, the
ranks exchange clock readings at the start and the end (recorded in each capture), and rank 0
merges them into OUT (`rbln_perfetto.exporter.merge`), also after a rank died.

The one module of rbln_perfetto that imports the pipeline's torch side; the CLI imports it only
when `run` is the command, so every other command starts without torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.compile_cache import embedded_model, load_or_compile
# ConfigError and DeviceMemoryError are here for `run`, which reports them by class (it may not import pipeline).
from pipeline.config import ConfigError, RBLNConfig
from pipeline.placement import DeviceMemoryError, torch_devices
from pipeline.ranks import (check_ranks, exchange_clocks, join_process_group, launched_world,
                            leave_process_group)
from pipeline.remote_calls import distribute, serve

from ..recorder.activation import default_out_dir, env_enabled, profile
from ..errors import UsageError
from ..exporter.export import ExportResult, check_creatable
from ..exporter.merge import MergeResult, merge, rank_dir
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


def profile_pipeline(config: dict, *, steps: int, height: int | None, width: int | None, model: str | None,
                     scale: str, prompt: str, seed: int, out: str | None, force: bool = False, repeat: int = 1,
                     profile_steps: str | None = None, profile_calls: str | None = None,
                     profile_submodules: str | None = None) -> ProfiledRun:
    """Check everything that can be checked cheaply, then compile or load, run `repeat` times inside
    `profile()`, tracing what `profile_steps` / `_calls` / `_submodules` select (`selection`).

    `force`: remove another run's files from `out` (when the run starts) rather than refuse it."""
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
        return profile_ranks(model, config, Path(out), call, force=force, profile_steps=profile_steps,
                             profile_calls=profile_calls, profile_submodules=profile_submodules)
    pipe = load_or_compile(model, config)
    pipe.set_progress_bar_config(disable=True)
    with profile(out, overwrite=force, steps=profile_steps, calls=profile_calls, submodules=profile_submodules) as prof:
        image = run_calls(pipe, **call)
    image_path = prof.out_dir / "image.png"
    image.save(image_path)
    return ProfiledRun(prof.result, image_path, model)


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
        with profile(rank_dir(out, group.rank), overwrite=force, steps=profile_steps, calls=profile_calls,
                     submodules=profile_submodules) as prof:
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
    except BaseException:
        failed = True
        if group.rank == 0:  # what every rank captured stays mergeable: say so, with the missing rank
            _merge_after_failure(out, force)
        raise
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


def _merge_after_failure(out: Path, force: bool) -> None:
    try:
        merged = merge(out, overwrite=force)
    except Exception as exc:  # the run's own error is what the caller sees
        print(f"rbln-perfetto: merging {out} after the failure failed too: {exc}", file=sys.stderr)
        return
    for line in merged.problems:
        print(f"rbln-perfetto: {line}", file=sys.stderr)
    print(f"rbln-perfetto: merged what the ranks captured into {merged.aggregate_file}", file=sys.stderr)
