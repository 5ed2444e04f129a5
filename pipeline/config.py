"""`rbln_config`: the optimum-rbln-shaped dict that places SD3's submodules on logical devices.

    {"text_encoder_3": {"device": 1, "activate_profiler": True}, "transformer": {"device": 0},
     "img_height": 1024, "img_width": 1024, "guidance_scale": 7.0, "devices": ["cuda:0", "cuda:1"]}

Every error names the bad key, the bad value and what would be valid.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .contract import SUBMODULES

SUBMODULE_KEYS = ("device", "activate_profiler")
DTYPES = ("float32", "float16", "bfloat16")
PIPELINE_KEYS = (
    "img_height",
    "img_width",
    "batch_size",
    "guidance_scale",
    "max_seq_len",
    "devices",
    "device_memory",
    "command_budget",
    "dtype",
    "ranks",
    "device_profile",
)
_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_TORCH_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu)(:\d+)?$")

# One RBLN ATOM card holds 16 GiB.
DEFAULT_DEVICE_MEMORY = 16 * 2**30
# Small enough that the embedded tiny model shows split commands, large enough that only the big
# matmuls, convolutions and attentions of the real model are split.
DEFAULT_COMMAND_BUDGET = 2**20


class ConfigError(ValueError):
    """A bad `rbln_config` key or value."""


def parse_size(value: Any, key: str) -> int:
    """Bytes from an int or a string such as '16GiB' or '512 KiB'."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is not a size; give bytes as an int or a string like '16GiB'")
    if isinstance(value, int):
        number, unit = value, ""
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        number, unit = float(m.group(1)), m.group(2).lower()
    else:
        raise ConfigError(f"{key}={value!r} is not a size; give bytes as an int or a string like '16GiB'")
    if unit not in _UNITS:
        raise ConfigError(f"{key}={value!r} has unknown unit {unit!r}; valid units: B, KiB, MiB, GiB, KB, MB, GB")
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"{key}={value!r} must be a positive size")
    return size


def _int(value: Any, key: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}={value!r} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(f"{key}={value!r} is out of range; valid: an int {bound}")
    return value


def _ranks(value: Any, n_logical: int, submodules: dict) -> tuple[int, ...]:
    """`ranks`: {logical device: rank} (keys ints, or their decimal strings as JSON writes them) or a
    list indexed by logical device; every logical device needs one, and device 0 (the root, where the
    host work runs) is rank 0's. Whether each rank exists is known only at run time (`pipeline.ranks`)."""
    devices = f"0..{n_logical - 1}"
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise ConfigError(f"rbln_config['ranks']={value!r} must map each logical device ({devices}) to a rank, "
                          "as a dict like {0: 0, 1: 1} or a list like [0, 1]")
    ranks: dict[int, int] = {}
    for key, rank in value.items():
        device = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() else key
        if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < n_logical:
            raise ConfigError(f"rbln_config['ranks'] key {key!r} is not a logical device; valid: {devices}")
        ranks[device] = _int(rank, f"rbln_config['ranks'][{device}]", 0)
    for device in range(n_logical):
        if device not in ranks:
            users = [name for name, sub in submodules.items() if sub.device == device]
            raise ConfigError(f"rbln_config['ranks'] has no rank for logical device {device}"
                              f"{' (' + ', '.join(users) + ')' if users else ''}; valid: a rank for every "
                              f"logical device {devices}")
    if ranks[0] != 0:
        raise ConfigError(f"rbln_config['ranks'][0]={ranks[0]} is not valid: logical device 0 is the root device, "
                          "where the host work (tokenize, scheduler, postprocess) runs, and rank 0 drives the "
                          "pipeline; valid: 0")
    return tuple(ranks[d] for d in range(n_logical))


@dataclass(frozen=True)
class SubmoduleConfig:
    device: int = 0
    # None: follow RBLN_PROFILER / rbln_perfetto.profile(); True/False overrides them.
    activate_profiler: bool | None = None


@dataclass(frozen=True)
class RBLNConfig:
    submodules: dict[str, SubmoduleConfig] = field(default_factory=lambda: {n: SubmoduleConfig() for n in SUBMODULES})
    img_height: int | None = None  # None: the transformer's sample_size x the VAE scale factor
    img_width: int | None = None
    batch_size: int = 1
    guidance_scale: float = 7.0  # > 1 compiles the transformer for the doubled CFG batch
    max_seq_len: int = 256
    devices: tuple[str, ...] | None = None  # logical device i -> torch device string
    device_memory: tuple[int, ...] | int = DEFAULT_DEVICE_MEMORY
    command_budget: int = DEFAULT_COMMAND_BUDGET
    dtype: str = "float32"
    # logical device i -> the torch.distributed rank (process) that runs it; None: all in this process
    ranks: tuple[int, ...] | None = None
    # logical device i -> its given profile (`pipeline.device_profiles.parse_profile`), None: measured
    device_profile: tuple[dict | None, ...] | None = None

    @classmethod
    def from_dict(cls, rbln_config: dict | RBLNConfig | None) -> RBLNConfig:
        if rbln_config is None:
            return cls()
        if isinstance(rbln_config, RBLNConfig):
            return rbln_config
        if not isinstance(rbln_config, dict):
            raise ConfigError(f"rbln_config must be a dict, got {type(rbln_config).__name__}: {rbln_config!r}")
        valid = SUBMODULES + PIPELINE_KEYS
        for key in rbln_config:
            if key not in valid:
                raise ConfigError(f"rbln_config key {key!r} is not valid; valid keys: {', '.join(valid)}")

        submodules = {}
        for name in SUBMODULES:
            sub = rbln_config.get(name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"rbln_config[{name!r}]={sub!r} must be a dict with keys {', '.join(SUBMODULE_KEYS)}")
            for key in sub:
                if key not in SUBMODULE_KEYS:
                    raise ConfigError(
                        f"rbln_config[{name!r}] key {key!r} is not valid; valid keys: {', '.join(SUBMODULE_KEYS)}"
                    )
            device = _int(sub.get("device", 0), f"rbln_config[{name!r}]['device']", 0)
            profiler = sub.get("activate_profiler")
            if profiler is not None and not isinstance(profiler, bool):
                raise ConfigError(
                    f"rbln_config[{name!r}]['activate_profiler']={profiler!r} is not valid; valid: True, False, None"
                )
            submodules[name] = SubmoduleConfig(device=device, activate_profiler=profiler)

        kw: dict[str, Any] = {"submodules": submodules}
        for key in ("img_height", "img_width"):
            if rbln_config.get(key) is not None:
                kw[key] = _int(rbln_config[key], f"rbln_config[{key!r}]", 8)
        if ("img_height" in kw) != ("img_width" in kw):
            raise ConfigError("rbln_config needs both 'img_height' and 'img_width', or neither")
        if "batch_size" in rbln_config:
            kw["batch_size"] = _int(rbln_config["batch_size"], "rbln_config['batch_size']", 1)
        if "max_seq_len" in rbln_config:
            kw["max_seq_len"] = _int(rbln_config["max_seq_len"], "rbln_config['max_seq_len']", 1, 512)
        if "guidance_scale" in rbln_config:
            g = rbln_config["guidance_scale"]
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
                raise ConfigError(f"rbln_config['guidance_scale']={g!r} must be a finite number")
            kw["guidance_scale"] = float(g)
        if "dtype" in rbln_config:
            if rbln_config["dtype"] not in DTYPES:
                raise ConfigError(f"rbln_config['dtype']={rbln_config['dtype']!r} is not valid; valid: {', '.join(DTYPES)}")
            kw["dtype"] = rbln_config["dtype"]
        if "command_budget" in rbln_config:
            kw["command_budget"] = parse_size(rbln_config["command_budget"], "rbln_config['command_budget']")

        n_logical = 1 + max(s.device for s in submodules.values())
        if rbln_config.get("devices") is not None:
            devices = rbln_config["devices"]
            if not isinstance(devices, (list, tuple)) or not devices:
                raise ConfigError(
                    f"rbln_config['devices']={devices!r} must be a non-empty list of torch device strings "
                    "such as ['cpu', 'cuda:1']"
                )
            for i, d in enumerate(devices):
                if not isinstance(d, str) or not _TORCH_DEVICE.match(d):
                    raise ConfigError(
                        f"rbln_config['devices'][{i}]={d!r} is not a torch device; valid: 'cpu', 'cuda', 'cuda:N', 'mps', 'xpu'"
                    )
            for name, sub in submodules.items():
                if sub.device >= len(devices):
                    raise ConfigError(
                        f"rbln_config[{name!r}]['device']={sub.device} has no entry in rbln_config['devices'] "
                        f"({list(devices)}); valid devices: 0..{len(devices) - 1}"
                    )
            kw["devices"] = tuple(devices)
            n_logical = len(devices)
        if "device_memory" in rbln_config:
            mem = rbln_config["device_memory"]
            if isinstance(mem, (list, tuple)):
                if len(mem) != n_logical:
                    raise ConfigError(
                        f"rbln_config['device_memory'] lists {len(mem)} capacities for {n_logical} logical devices; "
                        "give one size for all devices or one per device"
                    )
                kw["device_memory"] = tuple(parse_size(m, f"rbln_config['device_memory'][{i}]") for i, m in enumerate(mem))
            else:
                kw["device_memory"] = parse_size(mem, "rbln_config['device_memory']")
        if rbln_config.get("ranks") is not None:
            kw["ranks"] = _ranks(rbln_config["ranks"], n_logical, submodules)
        if rbln_config.get("device_profile") is not None:
            from .device_profiles import parse_device_profiles  # (it imports this module)

            kw["device_profile"] = parse_device_profiles(rbln_config["device_profile"], n_logical,
                                                         kw.get("dtype", "float32"))
        return cls(**kw)

    def to_dict(self) -> dict:
        """The plain-dict form, which `from_dict` reads back to an equal config."""
        out: dict[str, Any] = {name: asdict(sub) for name, sub in self.submodules.items()}
        for key in PIPELINE_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def num_logical_devices(self) -> int:
        if self.devices is not None:
            return len(self.devices)
        return 1 + max(s.device for s in self.submodules.values())

    def capacity(self, device: int) -> int:
        if isinstance(self.device_memory, tuple):
            return self.device_memory[device]
        return self.device_memory

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    def with_overrides(self, **changes: Any) -> RBLNConfig:
        return replace(self, **changes)
