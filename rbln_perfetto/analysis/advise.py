"""Where to put each submodule: every placement of SD3's five submodules onto N logical devices, those
whose memory plan fits, ranked by predicted span.

Device 0 is the root (the host work runs there, `rbln_config['ranks']` gives it to rank 0), the
other devices are alike, so placements that differ only in how devices 1.. are numbered are one
(devices are numbered in the order the submodules first use them). A placement's memory is the
pipeline's memory plan (`plan_for`: placement -> an object with `used(device)`, `capacities` and
`fits`, as `pipeline.placement.MemoryPlan`); its span comes from `span_of` (placement -> ns):
a what-if replay of a profiled trace (`span_from_trace`), or a cost model. Ranking: the shortest
predicted span first (spans within `TIE` of each other are a tie), then the fewest devices, then
the most headroom on the fullest device.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Callable

from pipeline.contract import SUBMODULES

from ..errors import UsageError

TIE = 0.001  # relative: predicted spans closer than this are a tie (the what-if replay rounds to ns)


@dataclass(frozen=True)
class Candidate:
    placement: dict  # submodule -> logical device
    used: tuple  # bytes per device, as planned
    capacities: tuple
    span_ns: float | None  # predicted; None where it could not be predicted
    note: str = ""  # why there is no span

    @property
    def devices(self) -> int:
        return len(self.capacities)

    @property
    def fullest(self) -> float:
        return max(u / c for u, c in zip(self.used, self.capacities))

    def rbln_config(self, base: dict | None = None) -> dict:
        return placed_config(base or {}, self.placement)


def placed_config(base: dict, placement: dict) -> dict:
    """`base` (an rbln_config) with the submodules on the devices of `placement` ({submodule: device});
    its per-device lists ('devices', 'device_memory', 'ranks') cut or grown (by their last entry) to the
    devices it then has."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for name, device in placement.items():
        out[name] = {**(out.get(name) or {}), "device": device}
    n = 1 + max(int((out.get(name) or {}).get("device", 0)) for name in SUBMODULES)
    for key in ("devices", "device_memory", "ranks"):
        value = out.get(key)
        if isinstance(value, list) and value:
            out[key] = (value + [value[-1]] * n)[:max(n, len(value) if key == "devices" else n)]
    return out


def placements(n_devices: int) -> list[dict]:
    """Every placement of the submodules on at most `n_devices` logical devices, once each: devices
    1.. numbered in the order of first use (so no two differ only by naming), device 0 always there."""
    if n_devices < 1:
        raise UsageError(f"--devices {n_devices} is not valid; valid: 1 or more")
    out = []
    for devices in product(range(n_devices), repeat=len(SUBMODULES)):
        seen = 0
        ok = True
        for d in devices:
            if d > seen + 1:
                ok = False
                break
            seen = max(seen, d)
        if ok:
            out.append(dict(zip(SUBMODULES, devices)))
    return out


def candidates(n_devices: int, plan_for: Callable, span_of: Callable | None = None) -> tuple[list, list]:
    """(the fitting placements, ranked, as `Candidate`s; the others, least over capacity first)."""
    fitting, over = [], []
    for placement in placements(n_devices):
        plan = plan_for(placement)
        n = len(plan.capacities)
        used = tuple(plan.used(d) for d in range(n))
        if not plan.fits:
            over.append(Candidate(placement, used, tuple(plan.capacities), None))
            continue
        span, note = None, ""
        if span_of is not None:
            try:
                span = span_of(placement)
            except UsageError as exc:  # a move the model cannot time
                note = str(exc)
        fitting.append(Candidate(placement, used, tuple(plan.capacities), span, note))
    return rank(fitting), sorted(over, key=overflow)


def rank(fitting: list[Candidate]) -> list[Candidate]:
    """Shortest predicted span first, in tiers: from the shortest span up, a tier holds the spans within
    `TIE` x the best span of its own shortest (so a tier's spans are within that of each other; a
    rounding of span / step would split two spans a hair apart that straddle a step). Within a tier:
    fewest devices, then most headroom on the fullest device, then the placement itself. Untimed last."""
    timed = sorted({c.span_ns for c in fitting if c.span_ns is not None})
    step = max((timed[0] if timed else 0.0) * TIE, 1.0)
    tier: dict[float, int] = {}
    head, k = None, -1
    for span in timed:
        if head is None or span - head > step:
            head, k = span, k + 1
        tier[span] = k

    def key(c: Candidate):
        return (c.span_ns is None, tier.get(c.span_ns, 0), c.devices, c.fullest,
                tuple(c.placement[s] for s in SUBMODULES))

    return sorted(fitting, key=key)


def overflow(c: Candidate) -> int:
    """Bytes over capacity, summed over the devices that overflow."""
    return sum(max(0, u - cap) for u, cap in zip(c.used, c.capacities))


def span_from_trace(trace, *, backend: str = "auto", tp_bin: str | None = None) -> Callable:
    """placement -> the predicted span (ns) of the run `trace` holds with its submodules so placed."""
    from .whatif import measure, predict

    measured = measure(trace, backend=backend, tp_bin=tp_bin)

    def span_of(placement: dict) -> float:
        return float(predict(measured, moves=placement, max_device=max(placement.values())).predicted_span_ns)

    return span_of
