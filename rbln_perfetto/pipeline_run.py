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

from .activation import default_out_dir, profile
from .errors import UsageError
from .export import ExportResult, check_creatable


@dataclass
class ProfiledRun:
    result: ExportResult
    image_path: Path
    model: str


def profile_pipeline(config: dict, *, steps: int, height: int | None, width: int | None, model: str | None,
                     scale: str, prompt: str, seed: int, out: str | None) -> ProfiledRun:
    """Check everything that can be checked cheaply, then compile or load, run once inside `profile()`."""
    torch_devices(RBLNConfig.from_dict(config))  # a bad config fails here, before anything is built or written
    check_creatable(Path(out) if out else default_out_dir("run"))
    if model is not None and not (Path(model) / "model_index.json").is_file():
        raise UsageError(f"--model {model} is not a diffusers SD3 directory (no model_index.json)")
    model = model or embedded_model(scale)
    pipe = load_or_compile(model, config)
    pipe.set_progress_bar_config(disable=True)
    with profile(out) as prof:
        image = pipe(prompt, num_inference_steps=steps, height=height, width=width,
                     guidance_scale=pipe.rbln_config.guidance_scale,
                     generator=torch.Generator().manual_seed(seed)).images[0]
    image_path = prof.out_dir / "image.png"
    image.save(image_path)
    return ProfiledRun(prof.result, image_path, model)
