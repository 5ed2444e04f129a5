"""Device profiles: what each logical device can do at best (peak FLOP/s at the run's dtype, memory
bandwidth, capacity), the roofs that `rbln-perfetto report roofline` measures commands against.

A torch device is measured by a short calibration (`calibrate`): the best rate of repeated square
matmuls at the run's dtype (FLOP/s: 2 n^3 per matmul) and of repeated copies of a buffer larger than
the CPU's caches (bytes/s: read + write, 2 x the buffer, as `op_costs` counts a command's bytes).
It runs once per machine and is kept on disk (`$RBLN_PERFETTO_CACHE/device_profiles.json`), keyed by
the torch device's kind and name, the dtype, torch's intra-op threads, torch's version and the CPU
model. A user may give a target profile instead (`rbln_config['device_profile']`, e.g. an NPU's
datasheet figures): nothing here invents a vendor's figure. The profile a run used, measured or
given, is recorded with its devices in the capture and shown in the trace's Run slice args.

    rbln_config["device_profile"] = {"peak_flops": 1.0e14, "mem_bandwidth": "256GB/s", "name": "target"}
    rbln_config["device_profile"] = {1: {"peak_flops": {"float16": 1.0e14}, "mem_bandwidth": 2.56e11}}
    rbln_config["device_profile"] = [None, {...}]   # per logical device; None: measured

Keys of one profile: `peak_flops` (FLOP/s: a number, or {dtype: number} holding the run's dtype),
`mem_bandwidth` (bytes/s: a number, or a size per second such as "256GB/s"), `capacity` (optional,
a size; default `rbln_config['device_memory']` of that device), `name` (optional label).
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .config import DTYPES, ConfigError, parse_size
from .contract import DeviceProfile

PROFILE_KEYS = ("peak_flops", "mem_bandwidth", "capacity", "name")
REQUIRED_KEYS = ("peak_flops", "mem_bandwidth")
MEASURED = "measured"
GIVEN = "given"
CACHE_FILE = "device_profiles.json"
CALIBRATION_VERSION = 1  # part of the cache key: a changed calibration measures again

# Calibration sizes: matmuls grow until one takes MATMUL_MIN_S (or the side reaches the cap), then the
# best of repeats within a time budget counts; the copied buffer is larger than a CPU's last-level cache.
MATMUL_MIN_S = 0.02
MATMUL_MAX_SIDE = {"cpu": 2048, "cuda": 8192}
COPY_BYTES = {"cpu": 64 * 2**20, "cuda": 512 * 2**20}
BUDGET_S = 0.25  # per measurement, after warm-up

_memo: dict[str, DeviceProfile] = {}


class DeviceProfileError(ConfigError):
    """A bad `rbln_config['device_profile']`."""


# ---------------------------------------------------------------------------------------------- given


def _rate(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DeviceProfileError(f"{key}={value!r} is not valid; valid: a positive finite number")
    return float(value)


def _bandwidth(value: Any, key: str) -> float:
    """Bytes/s from a number or a size per second such as '256GB/s' (the units of `config.parse_size`)."""
    if isinstance(value, str):
        try:
            return float(parse_size(value.strip().removesuffix("/s"), key))
        except ConfigError as e:
            raise DeviceProfileError(f"{key}={value!r} is not a bandwidth; valid: bytes/s as a number or a string "
                                     "like '256GB/s'") from e
    return _rate(value, key)


def parse_profile(value: Any, key: str, dtype: str) -> dict:
    """One given profile, checked: {peak_flops: float (at `dtype`), mem_bandwidth: float, capacity: int | None,
    name: str}. Every error names the bad key or value and the valid choices."""
    if not isinstance(value, dict):
        raise DeviceProfileError(f"{key}={value!r} must be a dict with keys {', '.join(PROFILE_KEYS)}")
    for k in value:
        if k not in PROFILE_KEYS:
            raise DeviceProfileError(f"{key} key {k!r} is not valid; valid keys: {', '.join(PROFILE_KEYS)}")
    for k in REQUIRED_KEYS:
        if k not in value:
            raise DeviceProfileError(f"{key} has no {k!r}; a given profile needs {' and '.join(REQUIRED_KEYS)}")
    peak = value["peak_flops"]
    if isinstance(peak, dict):
        for d in peak:
            if d not in DTYPES:
                raise DeviceProfileError(f"{key}['peak_flops'] key {d!r} is not a dtype; valid: {', '.join(DTYPES)}")
        if dtype not in peak:
            raise DeviceProfileError(f"{key}['peak_flops'] has no figure for the run's dtype {dtype!r}; "
                                     f"given: {', '.join(peak) or 'none'}")
        peak = peak[dtype]
    out = {"peak_flops": _rate(peak, f"{key}['peak_flops']"),
           "mem_bandwidth": _bandwidth(value["mem_bandwidth"], f"{key}['mem_bandwidth']"),
           "capacity": None, "name": ""}
    if value.get("capacity") is not None:
        out["capacity"] = parse_size(value["capacity"], f"{key}['capacity']")
    name = value.get("name", "")
    if not isinstance(name, str):
        raise DeviceProfileError(f"{key}['name']={name!r} is not valid; valid: a string")
    out["name"] = name
    return out


def parse_device_profiles(value: Any, n_logical: int, dtype: str) -> tuple[dict | None, ...]:
    """`rbln_config['device_profile']` as one checked profile (or None: measured) per logical device.

    One dict with profile keys applies to every device; a dict keyed by logical device (ints, or
    their decimal strings as JSON writes them) or a list indexed by it gives one per device."""
    key = "rbln_config['device_profile']"
    devices = f"0..{n_logical - 1}"
    if isinstance(value, dict) and (not value or any(k in PROFILE_KEYS for k in value)):
        one = parse_profile(value, key, dtype)
        return tuple(one for _ in range(n_logical))
    if isinstance(value, (list, tuple)):
        if len(value) != n_logical:
            raise DeviceProfileError(f"{key} lists {len(value)} profiles for {n_logical} logical devices; give one "
                                     "profile for all, or one (or None: measured) per logical device")
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise DeviceProfileError(f"{key}={value!r} is not valid; valid: a profile dict with keys "
                                 f"{', '.join(PROFILE_KEYS)}, or one per logical device ({devices}) as a dict or list")
    out: list[dict | None] = [None] * n_logical
    for k, v in value.items():
        device = int(k) if isinstance(k, str) and k.isascii() and k.isdigit() else k
        if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < n_logical:
            raise DeviceProfileError(f"{key} key {k!r} is not valid; valid keys: {', '.join(PROFILE_KEYS)} "
                                     f"(one profile for all devices) or logical devices {devices}")
        out[device] = None if v is None else parse_profile(v, f"{key}[{device}]", dtype)
    return tuple(out)


def given_profile(spec: dict, dtype: str, capacity_bytes: int) -> DeviceProfile:
    """The DeviceProfile of a checked given profile (`parse_profile`); `capacity_bytes` where it has none."""
    return DeviceProfile(spec["peak_flops"], spec["mem_bandwidth"], spec["capacity"] or capacity_bytes, dtype, GIVEN,
                         spec["name"] or "rbln_config['device_profile']")


def from_config(cfg, device: int, torch_device: str) -> Callable[[], DeviceProfile]:
    """Logical `device`'s profile for `cfg` (an `RBLNConfig`), as `DeviceInfo.profile` asks for it: the given
    one, or one measured on `torch_device` (calibrated when first asked, then cached)."""
    spec = cfg.device_profile[device] if cfg.device_profile and device < len(cfg.device_profile) else None
    if spec is not None:
        profile = given_profile(spec, cfg.dtype, cfg.capacity(device))
        return lambda: profile
    return lambda: calibrate(torch_device, cfg.dtype)


# ------------------------------------------------------------------------------------------- measured


def _cpu_model() -> str:
    """As `rbln_perfetto.recorder.host_info` reads it for the capture (the pipeline imports no rbln_perfetto)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip() in ("model name", "Processor", "cpu model") and v.strip():
                    return v.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return _cpu_model()


def _capacity(dev) -> int:
    """The torch device's memory: the GPU's total, or the host's physical memory; 0 where unknown."""
    import torch

    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    if dev.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return 0
    return 0


def calibration_key(torch_device: str, dtype: str) -> str:
    """What a measured profile depends on: the cache key."""
    import torch

    dev = torch.device(torch_device)
    return json.dumps({"device": dev.type, "name": _device_name(dev), "dtype": dtype,
                       "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": _cpu_model(),
                       "version": CALIBRATION_VERSION}, sort_keys=True)


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def _best_seconds(fn, dev, budget_s: float = BUDGET_S, min_repeats: int = 3) -> float:
    """The shortest of repeated timed calls of `fn` (after one warm-up), within about `budget_s`."""
    fn()
    _sync(dev)
    best = math.inf
    spent, repeats = 0.0, 0
    while repeats < min_repeats or spent < budget_s:
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        dt = time.perf_counter() - t0
        best, spent, repeats = min(best, dt), spent + dt, repeats + 1
        if repeats >= 50:
            break
    return best


def measure(torch_device: str, dtype: str) -> DeviceProfile:
    """Calibrate `torch_device` now (no cache): matmul FLOP/s at `dtype` and copy bandwidth."""
    import torch

    from .dtypes import torch_dtype

    dev = torch.device(torch_device)
    td = torch_dtype(dtype)
    cap = MATMUL_MAX_SIDE.get(dev.type, 2048)
    n = 128
    with torch.inference_mode():
        while True:
            a = torch.randn(n, n, device=dev).to(td)
            b = torch.randn(n, n, device=dev).to(td)
            seconds = _best_seconds(lambda: torch.mm(a, b), dev, budget_s=0.0, min_repeats=1)
            if seconds >= MATMUL_MIN_S or n >= cap:
                break
            n *= 2
        seconds = _best_seconds(lambda: torch.mm(a, b), dev)
        peak = 2 * n**3 / seconds
        del a, b
        size = COPY_BYTES.get(dev.type, COPY_BYTES["cpu"])
        src = torch.ones(size // 4, dtype=torch.float32, device=dev)
        dst = torch.empty_like(src)
        copy_s = _best_seconds(lambda: dst.copy_(src), dev)
        bandwidth = 2 * size / copy_s
        del src, dst
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    label = (f"measured on {dev.type} ({_device_name(dev)}), {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}: {n}x{n} {dtype} matmul, {size // 2**20} MiB copy{load}")
    return DeviceProfile(peak, bandwidth, _capacity(dev), dtype, MEASURED, label)


def _cache_path() -> Path:
    return Path(os.environ.get("RBLN_PERFETTO_CACHE") or Path.home() / ".cache" / "rbln-perfetto") / CACHE_FILE


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def calibrate(torch_device: str, dtype: str) -> DeviceProfile:
    """`torch_device`'s measured profile at `dtype`: from this process's memo or the disk cache, else
    measured now (about a second) and cached for the next runs on this machine."""
    key = calibration_key(torch_device, dtype)
    if key in _memo:
        return _memo[key]
    path = _cache_path()
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict):
        try:
            profile = DeviceProfile(**entry)
        except TypeError:
            profile = None
        if profile is not None:
            _memo[key] = profile
            return profile
    profile = _memo[key] = measure(torch_device, dtype)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)  # (another process may have added its own since)
        data[key] = {k: getattr(profile, k) for k in ("peak_flops_per_s", "mem_bandwidth_bytes_per_s",
                                                      "capacity_bytes", "dtype", "source", "label")}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".device_profiles.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a calibration next time
    return profile


__all__ = ["DeviceProfile", "DeviceProfileError", "PROFILE_KEYS", "calibrate", "calibration_key", "from_config",
           "given_profile", "measure", "parse_device_profiles", "parse_profile"]
