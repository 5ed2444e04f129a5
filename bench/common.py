"""Timing helpers: interleaved repetitions and medians, so machine noise hits every variant alike."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Row:
    benchmark: str
    variant: str
    value: float
    unit: str
    ratio: float | None = None  # against the benchmark's baseline variant, measured in the same run
    target: str = ""
    note: str = ""


def judged(target: str, value: float, limit: float, *, at_most: bool, fmt: str = "{:,.0f}", unit: str = "") -> str:
    """`target` with its verdict on `value`: `<= 16 (met)`, `>= 1M (missed by 512,000 slices/s)`."""
    met = value <= limit if at_most else value >= limit
    return f"{target} (met)" if met else f"{target} (missed by {fmt.format(abs(value - limit))}{unit})"


def interleaved(variants: dict, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each variant, calling them round-robin `repeats` times."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    samples = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def print_rows(rows: list[Row]) -> None:
    widths = [22, 44, 14, 8, 9]
    print(f"{'benchmark':{widths[0]}} {'variant':{widths[1]}} {'value':>{widths[2]}} {'unit':{widths[3]}} "
          f"{'ratio':>{widths[4]}} target / note")
    for r in rows:
        ratio = f"{r.ratio:.3f}x" if r.ratio is not None else ""
        value = f"{r.value:,.4g}" if abs(r.value) < 1e4 else f"{r.value:,.0f}"
        print(f"{r.benchmark:{widths[0]}} {r.variant:{widths[1]}} {value:>{widths[2]}} {r.unit:{widths[3]}} "
              f"{ratio:>{widths[4]}} {r.target}{' ' + r.note if r.note else ''}")


# Peak RSS of the process that runs it, in MB. VmHWM belongs to the memory map made at exec, so a
# child forked from a big parent reports its own peak (ru_maxrss would include the parent's pages).
PEAK_RSS = """
def peak_rss_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""


def run_child(code: str, *args: str) -> dict:
    """Run `code` (which may call peak_rss_mb() and must print one JSON object) in a fresh Python."""
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS + code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
