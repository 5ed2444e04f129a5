"""Logical devices -> torch devices, and the device memory plan that must fit before anything runs.

Memory model (stated, as on RBLN where each compiled model reserves its buffers when it is
loaded): a device holds, for every submodule placed on it, the submodule's weights plus its peak
activation bytes. The peak comes from the compiled command program: the largest sum of live
intermediate tensors (inputs included) while any one command runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations, product

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


def _unit(nbytes: int) -> tuple[int, str, int]:
    """(unit, its name, decimals) that sizes are shown in."""
    if nbytes >= 2**28:
        return 2**30, "GiB", 2
    return (2**20, "MiB", 1) if nbytes >= 2**20 else (2**10, "KiB", 1)


def _fmt(nbytes: int) -> str:
    unit, name, decimals = _unit(nbytes)
    return f"{nbytes / unit:.{decimals}f} {name}"


def _fmt_at_least(nbytes: int) -> str:
    """A size as shown, rounded up, so that a capacity of that size does hold `nbytes`."""
    unit, name, decimals = _unit(nbytes)
    scale = 10**decimals
    return f"{math.ceil(nbytes * scale / unit) / scale:.{decimals}f} {name}"


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
    # The rbln_config keys given as one entry per logical device ('devices', 'device_memory'):
    # a new logical device needs an entry in each.
    per_device_keys: tuple[str, ...] = ()

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

    def fitting_moves(self) -> dict[str, int] | None:
        """The fewest submodule moves that make the plan fit, as {submodule: logical device}: each to a
        device other than its own, an existing one or a new one (numbered on from the last, with the
        largest capacity). Among as many moves, fewer new devices and then the most even use win.
        {} when the plan fits; None when no placement can (a submodule alone exceeds every device)."""
        if self.fits:
            return {}
        n = len(self.capacities)
        new_capacity = max(self.capacities)
        if any(s.total_bytes > new_capacity for s in self.submodules):
            return None
        for count in range(1, len(self.submodules) + 1):
            best: tuple[tuple[int, float], dict[str, int]] | None = None
            for moved in combinations(self.submodules, count):
                for targets in product(*[[d for d in range(n + count) if d != s.device] for s in moved]):
                    new = sorted({t for t in targets if t >= n})
                    if new != list(range(n, n + len(new))):  # new devices are numbered in order, no gaps
                        continue
                    used = [self.used(d) for d in range(n)] + [0] * len(new)
                    for s, t in zip(moved, targets):
                        used[s.device] -= s.total_bytes
                        used[t] += s.total_bytes
                    capacities = [*self.capacities, *[new_capacity] * len(new)]
                    if any(u > c for u, c in zip(used, capacities)):
                        continue
                    score = (len(new), max(u / c for u, c in zip(used, capacities)))
                    if best is None or score < best[0]:
                        best = (score, {s.submodule: t for s, t in zip(moved, targets)})
            if best is not None:
                return best[1]
        return None

    def advice(self) -> str:
        """What would make an overflowing plan fit: a move of submodules (never to where they already
        are), and the capacity that would hold the placement as it is."""
        n = len(self.capacities)
        moves = self.fitting_moves()
        if moves:
            tip = "set " + " and ".join(f"rbln_config[{name!r}]['device'] = {d}" for name, d in moves.items())
            placed = {s.submodule: s.device for s in self.submodules} | moves
            # Without rbln_config['devices'], the highest device in use sets how many logical devices there are.
            n_after = max(1 + max(placed.values()), n if "devices" in self.per_device_keys else 0)
            new = sorted({d for d in moves.values() if d >= n})
            if self.per_device_keys and n_after != n:
                lists = " and ".join(f"rbln_config[{key!r}]" for key in self.per_device_keys)
                tip += f" (then give {lists} {n_after} {'entry' if n_after == 1 else 'entries'}, one per logical device)"
            elif new:
                tip += f" (new logical device {', '.join(map(str, new))})"
        else:
            largest = max(self.submodules, key=lambda s: s.total_bytes)
            tip = f"no placement fits these capacities ({largest.submodule} alone needs {_fmt(largest.total_bytes)})"
        if "device_memory" in self.per_device_keys:
            raise_to = " and ".join(f"rbln_config['device_memory'][{d}] to at least {_fmt_at_least(self.used(d))}"
                                    for d in self.overflowing)
        else:
            raise_to = f"rbln_config['device_memory'] to at least {_fmt_at_least(max(map(self.used, self.overflowing)))}"
        return f"{tip}; or raise {raise_to}"

    def check(self) -> None:
        if not self.fits:
            lines = [f"{self.describe(d)} exceeds its capacity" for d in self.overflowing]
            raise DeviceMemoryError("; ".join(lines) + f". To fit: {self.advice()}.")

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
    per_device_keys = tuple(key for key, listed in (("devices", cfg.devices is not None),
                                                    ("device_memory", isinstance(cfg.device_memory, tuple))) if listed)
    return MemoryPlan(subs, tuple(cfg.capacity(d) for d in range(cfg.num_logical_devices)), cfg.dtype, per_device_keys)
