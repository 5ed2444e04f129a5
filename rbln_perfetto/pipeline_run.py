"""`rbln-perfetto run`: compile (or load from the cache) the SD3 pipeline and profile one call of it.

The one module of rbln_perfetto that imports the pipeline's torch side; the CLI imports it only
when `run` is the command, so every other command starts without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.compile_cache import embedded_model, load_or_compile
from pipeline.config import RBLNConfig
from pipeline.placement import torch_devices

from .activation import default_out_dir, env_enabled, profile
from .errors import UsageError
from .export import ExportResult, check_creatable
from .run_directory import refuse_other_runs
from .selection import Selection

SELECTION_FLAGS = ("--profile-steps", "--profile-calls", "--profile-submodules")


@dataclass
class ProfiledRun:
    result: ExportResult
    image_path: Path
    model: str


def profile_pipeline(config: dict, *, steps: int, height: int | None, width: int | None, model: str | None,
                     scale: str, prompt: str, seed: int, out: str | None, force: bool = False, repeat: int = 1,
                     profile_steps: str | None = None, profile_calls: str | None = None,
                     profile_submodules: str | None = None) -> ProfiledRun:
    """Check everything that can be checked cheaply, then compile or load, run `repeat` times inside
    `profile()`, tracing what `profile_steps` / `_calls` / `_submodules` select (`selection`).

    `force`: remove another run's files from `out` (when the run starts) rather than refuse it."""
    env_enabled()  # a bad RBLN_PROFILER, like a bad config, fails here, before anything is built or written
    Selection.of(profile_steps, profile_calls, profile_submodules, names=SELECTION_FLAGS)  # and a bad selection
    torch_devices(RBLNConfig.from_dict(config))
    check_creatable(Path(out) if out else default_out_dir("run"))
    if out and not force:
        refuse_other_runs(Path(out))
    if model is not None and not (Path(model) / "model_index.json").is_file():
        raise UsageError(f"--model {model} is not a diffusers SD3 directory (no model_index.json)")
    model = model or embedded_model(scale)
    pipe = load_or_compile(model, config)
    pipe.set_progress_bar_config(disable=True)
    with profile(out, overwrite=force, steps=profile_steps, calls=profile_calls, submodules=profile_submodules) as prof:
        for _ in range(repeat):
            image = pipe(prompt, num_inference_steps=steps, height=height, width=width,
                         guidance_scale=pipe.rbln_config.guidance_scale,
                         generator=torch.Generator().manual_seed(seed)).images[0]
    image_path = prof.out_dir / "image.png"
    image.save(image_path)
    return ProfiledRun(prof.result, image_path, model)
