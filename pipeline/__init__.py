"""Stable Diffusion 3 with its submodules compiled to device commands and split across logical devices.

Imports are lazy (PEP 562): `import pipeline.contract` or `pipeline.profiling_hooks`, the torch-free
modules a profiler uses, loads neither torch nor diffusers; naming any other export loads them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SUBMODULES": "contract",
    "CommandSpec": "contract",
    "DeviceInfo": "contract",
    "DeviceProfile": "contract",
    "PipelineInfo": "contract",
    "ProgramInfo": "contract",
    "RankTransfer": "contract",
    "Profiler": "contract",
    "Sink": "contract",
    "TickLayout": "contract",
    "TransferSpec": "contract",
    "install_profiler": "profiling_hooks",
    "ConfigError": "config",
    "RBLNConfig": "config",
    "DeviceMemoryError": "placement",
    "MemoryPlan": "placement",
    "build_tiny_sd3": "embedded_model",
    "plan_memory": "compiler",
    "RBLNStableDiffusion3Pipeline": "pipeline_sd3",
    "exchange_clocks": "ranks",
    "join_process_group": "ranks",
    "distribute": "remote_calls",
    "serve": "remote_calls",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
