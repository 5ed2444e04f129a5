"""Stable Diffusion 3 with its submodules compiled to device commands and split across logical devices."""

from .library_logging import import_diffusers_quietly

import_diffusers_quietly()

from .compiler import plan_memory  # noqa: E402
from .config import SUBMODULES, ConfigError, RBLNConfig  # noqa: E402
from .embedded_model import build_tiny_sd3  # noqa: E402
from .events import CommandEvent, CommandSpec, Invocation, PipelineInfo, ProgramInfo, Sink, TransferSpec  # noqa: E402
from .pipeline_sd3 import RBLNStableDiffusion3Pipeline  # noqa: E402
from .placement import DeviceMemoryError, MemoryPlan  # noqa: E402

__all__ = [
    "SUBMODULES",
    "CommandEvent",
    "CommandSpec",
    "ConfigError",
    "DeviceMemoryError",
    "Invocation",
    "MemoryPlan",
    "PipelineInfo",
    "ProgramInfo",
    "RBLNConfig",
    "RBLNStableDiffusion3Pipeline",
    "Sink",
    "TransferSpec",
    "build_tiny_sd3",
    "plan_memory",
]
