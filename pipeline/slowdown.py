"""A test-only knob that makes chosen submodules' commands slower, to check predictions against reality.

`RBLN_PIPELINE_SLOWDOWN="transformer=1.25,vae=1.1"` makes every command of `transformer` take 1.25x
its time and every command of `vae` 1.1x: after each command the program spins until the command has
taken `factor` times what its own work took. Only commands slow down; DMA copies and host work keep
their time, so a what-if prediction ("transformer 1.25x slower") can be run for real and compared.

It is a CPU-device knob (a spin on the host thread cannot lengthen a CUDA stream's work); a
submodule placed on another device that the knob names is a `ConfigError`. The factors a run used
are recorded in its provenance (`RuntimeInfo.slowdown`, the Run slice's `slowdown` arg), so a
slowed trace cannot pass as a real one. Unset or empty: no slowdown, and the generated programs
are the plain ones. Torch-free.
"""

from __future__ import annotations

import math
import os
import time

from .config import ConfigError
from .contract import SUBMODULES

ENV_SLOWDOWN = "RBLN_PIPELINE_SLOWDOWN"

_parsed: tuple[str, dict[str, float]] = ("", {})


def parse(raw: str) -> dict[str, float]:
    """`"transformer=1.25,vae=1.1"` -> {"transformer": 1.25, "vae": 1.1}; every bad part is a `ConfigError`
    that names it and what is valid."""
    factors: dict[str, float] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"{ENV_SLOWDOWN} part {part!r} is not valid; valid: SUBMODULE=FACTOR, e.g. transformer=1.25")
        if name not in SUBMODULES:
            raise ConfigError(f"{ENV_SLOWDOWN} submodule {name!r} is not valid; valid: {', '.join(SUBMODULES)}")
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not (math.isfinite(factor) and factor >= 1.0):
            raise ConfigError(f"{ENV_SLOWDOWN} factor {name}={value.strip()!r} is not valid; valid: a number >= 1 "
                              "(1.25 makes each command take 1.25x its time)")
        if name in factors:
            raise ConfigError(f"{ENV_SLOWDOWN} names {name!r} twice; valid: each submodule at most once")
        factors[name] = factor
    return factors


def current() -> dict[str, float]:
    """The factors `RBLN_PIPELINE_SLOWDOWN` asks for now (parsed once per distinct value); {} when unset."""
    global _parsed
    raw = os.environ.get(ENV_SLOWDOWN, "")
    if raw != _parsed[0]:
        _parsed = (raw, parse(raw))
    return _parsed[1]


def factor(submodule: str) -> float:
    """How much slower `submodule`'s commands run now: 1.0 when the knob does not name it."""
    return current().get(submodule, 1.0)


def describe(factors: dict[str, float]) -> str:
    """The canonical text of some factors, in submodule order ("" for none): what provenance records."""
    return ",".join(f"{name}={factors[name]:g}" for name in SUBMODULES if factors.get(name, 1.0) != 1.0)


def spinner(factor: float):
    """`spin(t0)`: called at the end of a command that started at `t0` (monotonic ns), waits until the
    command has taken `factor` times the work it did."""
    extra = factor - 1.0
    now = time.monotonic_ns

    def spin(t0: int) -> None:
        t = now()
        until = t + int((t - t0) * extra)
        while now() < until:
            pass

    return spin
