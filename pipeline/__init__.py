"""Stable Diffusion 3 with its submodules compiled to device commands and split across logical devices."""

from .compiler import plan_memory
from .config import SUBMODULES, ConfigError, RBLNConfig
from .embedded_model import build_tiny_sd3
from .events import CommandEvent, CommandSpec, Invocation, PipelineInfo, ProgramInfo, Sink, TransferSpec
from .pipeline_sd3 import RBLNStableDiffusion3Pipeline
from .placement import DeviceMemoryError, MemoryPlan

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
