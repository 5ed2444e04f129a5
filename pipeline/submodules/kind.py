"""`SubmoduleKind`: what the pipeline knows about one kind of SD3 submodule (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import RBLNConfig
from ..graph_capture import InputSpec


@dataclass(frozen=True)
class SubmoduleKind:
    # Wraps the diffusers/transformers model: flat tensor inputs in, a flat tuple of tensors out.
    adapter: type[torch.nn.Module]
    # (submodule name, rbln_config, every submodule's config, dtype) -> the fixed input buffers.
    input_specs: Callable[[str, RBLNConfig, dict, torch.dtype], list[InputSpec]]
    # Stands in for the model inside the pipeline (a `pipeline.runtime.RBLNRuntimeModule`).
    runtime_class: type[torch.nn.Module]
    # The config dict saved with a compiled artifact -> the config object the runtime module exposes.
    config_from_dict: Callable[[dict], object]
    # A config directory (diffusers layout, one submodule) -> the model on the meta device, no weights.
    meta_model: Callable[[Path], torch.nn.Module]
