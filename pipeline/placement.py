"""Logical devices -> torch devices, and the device memory plan that must fit before anything runs.

Memory model (stated, as on RBLN where each compiled model reserves its buffers when it is
loaded): a device holds, for every submodule placed on it, the submodule's weights plus its peak
activation bytes. The peak comes from the compiled command program: the largest sum of live
intermediate tensors (inputs included) while any one command runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ConfigError, RBLNConfig


def torch_devices(cfg: RBLNConfig) -> list[torch.device]:
    """Logical device i -> `cuda:i` when that GPU exists, else `cpu`; `rbln_config['devices']` overrides."""
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.devices is None:
        return [torch.device(f"cuda:{i}") if i < n_gpus else torch.device("cpu") for i in range(cfg.num_logical_devices)]
    out = []
    for i, name in enumerate(cfg.devices):
        dev = torch.device(name)
        if dev.type == "cuda" and (dev.index or 0) >= n_gpus:
            raise ConfigError(
                f"rbln_config['devices'][{i}]={name!r} is not available: this machine has {n_gpus} CUDA device(s); "
                f"valid: 'cpu'{''.join(f', {chr(39)}cuda:{g}{chr(39)}' for g in range(n_gpus))}"
            )
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"rbln_config['devices'][{i}]={name!r} is not available on this machine; valid: 'cpu'")
        out.append(dev)
    return out


def _fmt(nbytes: int) -> str:
    if nbytes >= 2**28:
        return f"{nbytes / 2**30:.2f} GiB"
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


@dataclass(frozen=True)
class SubmoduleMemory:
    submodule: str
    device: int
    weight_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes


class DeviceMemoryError(ValueError):
    """A logical device cannot hold the submodules placed on it."""


@dataclass(frozen=True)
class MemoryPlan:
    submodules: tuple[SubmoduleMemory, ...]
    capacities: tuple[int, ...]  # bytes, per logical device
    dtype: str

    def used(self, device: int) -> int:
        return sum(s.total_bytes for s in self.submodules if s.device == device)

    @property
    def overflowing(self) -> list[int]:
        return [d for d, cap in enumerate(self.capacities) if self.used(d) > cap]

    @property
    def fits(self) -> bool:
        return not self.overflowing

    def describe(self, device: int) -> str:
        parts = ", ".join(
            f"{s.submodule} {_fmt(s.total_bytes)} (weights {_fmt(s.weight_bytes)} + activations {_fmt(s.activation_bytes)})"
            for s in self.submodules
            if s.device == device
        )
        return f"device {device}: {_fmt(self.used(device))} of {_fmt(self.capacities[device])}: {parts or 'nothing placed'}"

    def check(self) -> None:
        if not self.fits:
            lines = [f"{self.describe(d)} exceeds its capacity" for d in self.overflowing]
            raise DeviceMemoryError(
                "; ".join(lines)
                + ". Move a submodule to another logical device (e.g. rbln_config['text_encoder_3']['device'] = 1) "
                "or raise rbln_config['device_memory']."
            )

    def __str__(self) -> str:
        rows = [f"memory plan ({self.dtype}; weights + peak activations per submodule):"]
        rows += ["  " + self.describe(d) + ("  OVERFLOW" if d in self.overflowing else "") for d in range(len(self.capacities))]
        return "\n".join(rows)


def memory_plan(cfg: RBLNConfig, usage: dict[str, tuple[int, int]]) -> MemoryPlan:
    """`usage`: submodule -> (weight bytes, peak activation bytes)."""
    subs = tuple(
        SubmoduleMemory(name, cfg.submodules[name].device, weights, activations)
        for name, (weights, activations) in usage.items()
    )
    return MemoryPlan(subs, tuple(cfg.capacity(d) for d in range(cfg.num_logical_devices)), cfg.dtype)
