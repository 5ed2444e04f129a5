"""The commands of `rbln-perfetto` that run the pipeline: `run` (one process, or one rank of a run split
across processes under torchrun) and `merge` (the ranks' traces on one timeline); registered by main.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import PipelineConfigError, UsageError
from ..recorder.activation import env_enabled
from ..recorder.selection import Selection
from .common import SELECTION_FLAGS, print_export_result

PROMPT = "a photo of a cat holding a sign that says hello world"
DEFAULT_SPLIT = {"text_encoder_3": {"device": 1}}


def _rbln_config(text: str | None) -> dict:
    """`--config`: JSON text or a JSON file; None gives the default split."""
    if text is None:
        return json.loads(json.dumps(DEFAULT_SPLIT))
    path = Path(text)
    source = path.read_text() if path.is_file() else text
    try:
        config = json.loads(source)
    except json.JSONDecodeError as exc:
        what = f"file {path}" if path.is_file() else "--config"
        raise UsageError(f"{what} is neither a JSON object nor a readable JSON file: {exc.msg} at position {exc.pos}") from None
    if not isinstance(config, dict):
        raise UsageError(f"--config must be a JSON object like {json.dumps(DEFAULT_SPLIT)}, got {type(config).__name__}")
    return config


def _merge_flag(config: dict, key: str, value, flag: str) -> None:
    """A flag that sets an rbln_config key must not contradict the config."""
    if value is None:
        return
    if key in config and config[key] != value:
        raise UsageError(f"{flag} {value} contradicts rbln_config[{key!r}]={config[key]!r}; give one of them")
    config[key] = value


def cmd_run(args) -> int:
    # What the flags alone decide is checked here, before the pipeline and torch (seconds to import) load.
    config = _rbln_config(args.config)
    if args.steps < 1:
        raise UsageError(f"--steps {args.steps} must be >= 1")
    if args.repeat < 1:
        raise UsageError(f"--repeat {args.repeat} must be >= 1")
    if args.runs < 1:
        raise UsageError(f"--runs {args.runs} must be >= 1")
    if (args.height is None) != (args.width is None):
        raise UsageError("give --height and --width together")
    _merge_flag(config, "img_height", args.height, "--height")
    _merge_flag(config, "img_width", args.width, "--width")
    _merge_flag(config, "guidance_scale", args.guidance, "--guidance")
    env_enabled()  # a bad RBLN_PROFILER
    Selection.of(args.profile_steps, args.profile_calls, args.profile_submodules, names=SELECTION_FLAGS)
    from .pipeline_run import ConfigError, DeviceMemoryError, profile_pipeline

    try:
        run = profile_pipeline(config, steps=args.steps, height=args.height, width=args.width, model=args.model,
                               scale=args.scale, prompt=args.prompt, seed=args.seed, out=args.out, force=args.force,
                               repeat=args.repeat, profile_steps=args.profile_steps, profile_calls=args.profile_calls,
                               profile_submodules=args.profile_submodules, runs=args.runs)
    except (ConfigError, DeviceMemoryError) as exc:  # the pipeline's verdict on the rbln_config: the user's to fix
        raise PipelineConfigError(str(exc)) from exc
    if run.image_path is None:  # a serving rank of a run split across processes: rank 0 reports the run
        print(f"rbln-perfetto: rank {run.rank} profiled {run.result.command_slices} commands in "
              f"{len(run.result.invocation_files)} submodule invocations into {run.result.out_dir}")
        return 0
    print(f"rbln-perfetto: profiled {run.result.command_slices} commands in {len(run.result.invocation_files)} "
          f"submodule invocations of {run.model} ({args.steps} steps); image saved to {run.image_path}")
    if run.merged is not None:
        return _print_merged(run.merged)
    if run.samples:
        first, last = run.samples[0].out_dir, run.samples[-1].out_dir
        print(f"{len(run.samples)} runs (after one unprofiled warm-up call) in {first} .. {last.name}: one sample "
              f"for check: rbln-perfetto check {first.parent} --baseline BASE_RUNS_DIR --max-regression 5%")
        return 0
    print_export_result(run.result)
    return 0


def _print_merged(merged) -> int:
    """The merged traces of a run split across processes; 1 when a rank is missing or cut short."""
    print(f"merged {merged.world_size} ranks into {merged.out_dir}/: {len(merged.invocation_files)} invocation "
          f"traces and {merged.aggregate_file.name} ({merged.flows} send -> recv flows)")
    if merged.archive_file is not None:
        print(f"  {merged.archive_file.name}: the same run as a Perfetto merge archive (a trace per rank, its clock "
              "tied to rank 0's by a perfetto_manifest), for trace_processor and ui.perfetto.dev")
    for rank, clock in sorted(merged.clocks.items()):
        if rank:
            drift = "" if clock.drift_ns is None else f", drift {clock.drift_ns / 1e3:+.1f} us start -> end"
            state = ((f" (exchanges alone: {clock.exchange_offset_ns / 1e3:+.1f} us +- "
                      f"{clock.exchange_uncertainty_ns / 1e3:.1f} us; narrowed by the transfers)")
                     if clock.transfers_bound else "" if clock.measured else " (not measured: left unaligned)")
            print(f"  rank {rank}: clock offset {clock.offset_ns / 1e3:+.1f} us +- {clock.uncertainty_ns / 1e3:.1f} us "
                  f"from rank 0{drift}{state}")
    for line in merged.problems:
        print(f"rbln-perfetto merge: {line}", file=sys.stderr)
    return 1 if merged.problems else 0


def cmd_merge(args) -> int:
    from ..exporter.merge import merge

    return _print_merged(merge(args.run_dir, overwrite=args.force))


def add_run_command(sub) -> None:
    """Add `run` to the `rbln-perfetto` subcommands `sub`."""
    run = sub.add_parser("run", help="profile one SD3 pipeline call and write Perfetto traces")
    run.add_argument("--steps", type=int, default=2, help="denoising steps (default 2)")
    run.add_argument("--height", type=int, help="image height (default: the model's sample size)")
    run.add_argument("--width", type=int, help="image width")
    run.add_argument("--guidance", type=float, help="guidance scale (default 7.0; <= 1 disables CFG)")
    run.add_argument("--config", help=f"rbln_config as JSON or a JSON file (default {json.dumps(DEFAULT_SPLIT)})")
    run.add_argument("--model", help="a local diffusers SD3 directory (default: the embedded model)")
    run.add_argument("--scale", choices=("tiny", "medium"), default="tiny", help="embedded model scale (default tiny)")
    run.add_argument("--prompt", default=PROMPT, help=f"the text prompt (default {PROMPT!r})")
    run.add_argument("--seed", type=int, default=0, help="seed of the initial latent noise (default 0)")
    run.add_argument("--out", help="output directory (default ./rbln_profile/<run-id>/)")
    run.add_argument("--force", action="store_true",
                     help="if --out holds another run's traces or capture, remove them (refused otherwise)")
    run.add_argument("--repeat", type=int, default=1, help="pipeline calls to run (default 1), all in one capture")
    run.add_argument("--runs", type=int, default=1, metavar="N",
                     help="N profiled runs of --repeat calls each, into OUT/run-000 ... (the pipeline loaded once, "
                          "one unprofiled warm-up call first): a sample for `check` (default 1: one run into OUT)")
    run.add_argument("--profile-steps", metavar="SEL",
                     help="trace only these denoising steps: 3, 10:12 (end exclusive), 2:, 0,5,9: (default all; "
                          "$RBLN_PROFILER_STEPS)")
    run.add_argument("--profile-calls", metavar="SEL",
                     help="trace only these pipeline calls of --repeat, e.g. 1: to skip a warm-up call (default all; "
                          "$RBLN_PROFILER_CALLS)")
    run.add_argument("--profile-submodules", metavar="NAMES",
                     help="trace only these submodules, comma-separated, e.g. transformer,vae (default all; "
                          "$RBLN_PROFILER_SUBMODULES); activate_profiler in --config still decides for its submodule")
    run.set_defaults(func=cmd_run)


def add_merge_command(sub) -> None:
    """Add `merge` to the `rbln-perfetto` subcommands `sub`."""
    mrg = sub.add_parser("merge", help="merge the ranks of a run split across processes (torchrun) into one timeline")
    mrg.add_argument("run_dir", help="the run's --out directory (holds rank0/, rank1/, ...)")
    mrg.add_argument("--force", action="store_true", help="replace another run's merged files in RUN_DIR")
    mrg.set_defaults(func=cmd_merge)
