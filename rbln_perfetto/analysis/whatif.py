"""What a change would buy: a profiled run replayed with some submodules' commands faster or slower
and some submodules on other logical devices, from its trace alone.

    rbln_perfetto.whatif("run/", speedup={"transformer": 1.25}, moves={"vae": 1})

The model, every number of it read from the trace:

- the elements are the critical path's (host work, DMAs, ops, untraced stretches) with the
  dependencies the trace records (`critical_path.dependencies`: program order per device, host
  order per rank, flows from a DMA or a send to what consumed it);
- each element starts when the last of its predecessors has ended, plus the lag the run showed
  after the one it waited for (the host's own time between two items: Python, the scheduler);
- a sped-up submodule's commands take their measured time divided by its factor (a factor below 1
  slows it down: `slowdown` f is a speedup of 1/f); everything else keeps its measured time;
- a moved submodule's invocations run on the other logical device: their elements follow that
  device's program order, and their copies take the time their bytes take at the bandwidth the
  run measured on the target's torch device kind (the same as measured where both devices are of
  one kind, as every logical device of a CPU run is). A move to a device of another rank (a merged
  trace) would add or remove transfers that the trace cannot time, so it is refused;
- in a merged trace with a killed rank (its capture has no RunEnd), the transfers back from its last
  call were never recorded, so a speedup of a submodule that ran there is refused too.

The per-device memory of a placement is the pipeline's memory plan (`rbln-perfetto whatif` computes
it from the model the trace names); this module predicts times, and `whatif_trace` writes the
predicted run as a trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from pipeline.contract import SUBMODULES

from ..errors import UsageError
from ..query.trace_model import (DEVICE_TRACKS, INVOCATIONS, RANK_STRIDE, RUN_SPAN_ROW, in_category, unit_device,
                                 unit_rank, with_ctes)
from .critical_path import KINDS, Dependencies, dependencies, program_order
from .sources import opened

HOST, DMA, OP, UNTRACED = (KINDS.index(k) for k in ("host", "dma", "op", "untraced"))

_RUN_ARGS = """
SELECT extract_arg(s.arg_set_id, 'debug.rbln_config') AS rbln_config,
       extract_arg(s.arg_set_id, 'debug.slowdown') AS slowdown,
       extract_arg(s.arg_set_id, 'debug.model_dir') AS model_dir,
       extract_arg(s.arg_set_id, 'debug.status') AS status, t.name AS track
FROM slice s JOIN track t ON s.track_id = t.id
WHERE (t.name = 'Run' OR t.name GLOB 'Rank [0-9]* / Run') AND s.depth = 0 ORDER BY t.name"""
_DMA_BYTES = with_ctes(DEVICE_TRACKS) + f"""
SELECT s.id, extract_arg(s.arg_set_id, 'debug.bytes') AS bytes FROM slice s
WHERE {in_category('DMA')} AND s.depth = 0"""
_OP_ARGS = with_ctes(DEVICE_TRACKS) + f"""
SELECT s.id, extract_arg(s.arg_set_id, 'debug.op') AS op, extract_arg(s.arg_set_id, 'debug.command_index') AS ci,
       extract_arg(s.arg_set_id, 'debug.command_count') AS cc
FROM slice s WHERE {in_category('Compute')} AND s.depth = 0"""
_TORCH_DEVICES = with_ctes(DEVICE_TRACKS) + f"""
SELECT DISTINCT d.unit, extract_arg(s.arg_set_id, 'debug.torch_device') AS torch_device
FROM slice s JOIN device_tracks d ON s.track_id = d.track_id
WHERE {in_category('Workload')} AND s.depth = 0"""


def parse_factors(items, what: str = "--speedup") -> dict[str, float]:
    """`["transformer=1.25", "vae=2"]` -> {submodule: factor}; each factor a positive number."""
    out: dict[str, float] = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if name not in SUBMODULES:
            raise UsageError(f"{what} {item!r}: {name!r} is not a submodule; valid: {', '.join(SUBMODULES)}")
        try:
            factor = float(value)
        except ValueError:
            factor = float("nan")
        if not sep or not np.isfinite(factor) or factor <= 0:
            raise UsageError(f"{what} {item!r}: give SUBMODULE=FACTOR with a positive number, e.g. {name}=1.25")
        out[name] = out.get(name, 1.0) * factor
    return out


def parse_moves(items) -> dict[str, int]:
    """`["vae=1"]` -> {submodule: logical device} (whether the device is valid is the trace's to say)."""
    out: dict[str, int] = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if name not in SUBMODULES:
            raise UsageError(f"--move {item!r}: {name!r} is not a submodule; valid: {', '.join(SUBMODULES)}")
        if not sep or not value.strip().isdigit():
            raise UsageError(f"--move {item!r}: give SUBMODULE=DEVICE with a logical device number, e.g. {name}=1")
        out[name] = int(value)
    return out


@dataclass
class RunFacts:
    """What the trace says about the run beyond its slices: the rbln_config it was compiled with (rank
    0's), the slowdown it ran under (test-only; '' for none), the model directory, and where each
    profiled submodule ran (its invocations' device; the rbln_config says it for the others)."""

    rbln_config: dict
    slowdown: str
    model_dir: str
    ran_on: dict = field(default_factory=dict)
    device_ranks: dict = field(default_factory=dict)  # logical device -> the rank whose units show it
    incomplete: tuple = ()  # ranks whose capture has no RunEnd (`recorder.capture` status incomplete, truncated)

    @property
    def placement(self) -> dict[str, int]:
        configured = {name: int((self.rbln_config.get(name) or {}).get("device", 0)) for name in SUBMODULES}
        return configured | self.ran_on

    @property
    def ranks(self) -> list[int] | None:
        ranks = self.rbln_config.get("ranks")
        if ranks is None:
            return None
        if isinstance(ranks, dict):
            return [int(ranks[k]) for k in sorted(ranks, key=int)]
        return [int(r) for r in ranks]

    @property
    def num_devices(self) -> int:
        devices = self.rbln_config.get("devices")
        return max(len(devices) if devices else 0, 1 + max(self.placement.values()))

    def rank_of(self, device: int) -> int:
        ranks = self.ranks
        if ranks is not None and device < len(ranks):
            return ranks[device]
        return self.device_ranks.get(device, 0)


def run_facts(tr) -> RunFacts:
    rows = tr.query(_RUN_ARGS)
    configs = [c for c in rows.rbln_config if isinstance(c, str)] if len(rows) else []
    if not configs:
        raise UsageError(f"{tr.path} has no Run slice with an rbln_config: what-if needs a trace that rbln-perfetto "
                         "wrote (export, run or merge)")
    slowdown = next((s for s in rows.slowdown if isinstance(s, str) and s), "")
    model_dir = next((m for m in rows.model_dir if isinstance(m, str) and m), "")
    ran = tr.query(with_ctes(DEVICE_TRACKS, INVOCATIONS) + "\nSELECT DISTINCT submodule, rank, device FROM invocations")
    ran_on = {str(s): int(d) for s, d in zip(ran.submodule, ran.device) if s in SUBMODULES}
    device_ranks = {int(d): int(r) for r, d in zip(ran["rank"], ran.device)}
    incomplete = tuple(sorted(int(t.split()[1]) if t.startswith("Rank ") else 0
                              for t, st in zip(rows.track, rows.status) if st in ("incomplete", "truncated")))
    return RunFacts(json.loads(configs[0]), slowdown, model_dir, ran_on, device_ranks, incomplete)


@dataclass
class Prediction:
    """A run as measured and as predicted. Per element (the trace's, in time order): measured and
    predicted start and end, and the unit it runs on after the change."""

    trace: str
    speedup: dict[str, float]
    moves: dict[str, int]
    facts: RunFacts
    deps: Dependencies
    unit: np.ndarray  # per element, after the moves (-1: host work, untraced stretches)
    ts: np.ndarray  # predicted
    end: np.ndarray
    measured_span_ns: int
    predicted_span_ns: int
    merged: bool
    placement: dict[str, int] = field(default_factory=dict)  # after the moves
    op_args: dict = field(default_factory=dict)  # op id -> (op, command_index, command_count), None where absent
    dma_bytes: np.ndarray | None = None  # per element: a DMA's bytes, else 0

    @property
    def change_pct(self) -> float:
        return 100.0 * (self.predicted_span_ns - self.measured_span_ns) / self.measured_span_ns \
            if self.measured_span_ns else 0.0

    def describe(self) -> str:
        parts = [f"{name} {f:g}x faster" if f >= 1 else f"{name} {1 / f:g}x slower" for name, f in self.speedup.items()]
        parts += [f"{name} on device {d}" for name, d in self.moves.items()]
        return "; ".join(parts) or "no change"

    def invocations(self):
        """Per invocation: submodule, its unit as measured and as predicted, measured and predicted start
        (ns from the run's start) and duration."""
        import pandas as pd

        d = self.deps
        inv = d.invocations
        rows = []
        start = int(d.ts.min()) if len(d.ts) else 0
        new_start = int(self.ts.min()) if len(self.ts) else 0
        for k in range(len(inv)):
            mine = np.flatnonzero(d.item == k)
            if not len(mine):
                continue
            rows.append((inv.name.iloc[k], inv.submodule.iloc[k], int(inv.unit.iloc[k]), int(self.unit[mine[0]]),
                         int(inv.ts.iloc[k]) - start, int(inv.dur.iloc[k]),
                         int(self.ts[mine].min()) - new_start, int(self.end[mine].max() - self.ts[mine].min())))
        return pd.DataFrame(rows, columns=["name", "submodule", "unit", "predicted_unit", "start_ns", "dur_ns",
                                           "predicted_start_ns", "predicted_dur_ns"])

    def submodules(self):
        """Per submodule: calls, measured and predicted time in its invocations (ms), and where it runs."""
        inv = self.invocations()
        out = inv.groupby("submodule", sort=False).agg(calls=("dur_ns", "size"), measured_ms=("dur_ns", "sum"),
                                                       predicted_ms=("predicted_dur_ns", "sum")).reset_index()
        out["measured_ms"] /= 1e6
        out["predicted_ms"] /= 1e6
        out["device"] = [self.facts.placement[s] for s in out.submodule]
        out["predicted_device"] = [self.placement[s] for s in out.submodule]
        order = {s: i for i, s in enumerate(SUBMODULES)}
        return out.sort_values("submodule", key=lambda c: c.map(order)).reset_index(drop=True)

    def devices(self):
        """Per unit: busy time (its DMAs and ops) as measured and as predicted, in ms."""
        import pandas as pd

        d = self.deps
        busy = (d.kind == DMA) | (d.kind == OP)
        units = sorted({int(u) for u in d.device[busy]} | {int(u) for u in self.unit[busy]})
        rows = []
        for u in units:
            was, now = busy & (d.device == u), busy & (self.unit == u)
            rows.append((unit_rank(u), unit_device(u), float((d.end[was] - d.ts[was]).sum()) / 1e6,
                         float((self.end[now] - self.ts[now]).sum()) / 1e6))
        return pd.DataFrame(rows, columns=["rank", "device", "measured_busy_ms", "predicted_busy_ms"])


def _bandwidths(tr, deps: Dependencies, torch_of: dict[int, str]):
    """(bytes per DMA element, {torch device kind: bytes per ns}) over the copies inside invocations."""
    rows = tr.query(_DMA_BYTES)
    by_id = dict(zip(rows.id.astype(np.int64), rows.bytes))
    nbytes = np.array([float(by_id.get(int(i), 0) or 0) if k == DMA else 0.0 for i, k in zip(deps.ids, deps.kind)])
    totals: dict[str, list[float]] = {}
    copies = np.flatnonzero((deps.kind == DMA) & (deps.item >= 0))
    for i in copies:
        kind = torch_of.get(int(deps.device[i]), "cpu").split(":")[0]
        t = totals.setdefault(kind, [0.0, 0.0])
        t[0] += nbytes[i]
        t[1] += float(deps.end[i] - deps.ts[i])
    return nbytes, {k: b / ns for k, (b, ns) in totals.items() if b > 0 and ns > 0}


def _check_moves(moves: dict[str, int], facts: RunFacts, merged: bool, max_device: int | None) -> None:
    n = facts.num_devices
    top = n if max_device is None else max(max_device, n - 1)
    for name, device in moves.items():
        here = facts.placement[name]
        if merged:
            rank = facts.rank_of(here)
            valid = [d for d in range(n) if facts.rank_of(d) == rank]
            if device not in valid:
                raise UsageError(f"--move {name}={device}: {name} runs on rank {rank} (device {here}) and moving it "
                                 f"to another rank would add transfers the trace cannot time; valid devices for "
                                 f"{name}: {', '.join(map(str, valid))}")
        elif device > top:
            raise UsageError(f"--move {name}={device}: this run has logical devices 0..{n - 1}; valid: 0..{top}"
                             + (f" ({n}: a new logical device)" if top == n else ""))


@dataclass
class Measured:
    """What a prediction reads from a trace, read once (a placement search replays it many times)."""

    path: str
    facts: RunFacts
    deps: Dependencies
    torch_of: dict  # unit -> torch device
    merged: bool
    nbytes: np.ndarray  # per element: a DMA's bytes, else 0
    bandwidth: dict  # torch device kind -> bytes per ns of the copies inside invocations
    span_ns: int
    op_args: dict


def measure(trace, *, backend: str = "auto", tp_bin: str | None = None) -> Measured:
    """Read what `predict` needs from `trace` (a trace file, a run directory or an open `Trace`)."""
    with opened(trace, backend, tp_bin) as tr:
        facts = run_facts(tr)
        deps = dependencies(tr, names=True)
        torch_of = {int(u): str(t) for u, t in tr.query(_TORCH_DEVICES).itertuples(index=False) if isinstance(t, str)}
        merged = bool(tr.query("SELECT count(*) AS n FROM track WHERE name GLOB 'Rank [0-9]* / Device [0-9]*'").n[0])
        nbytes, bandwidth = _bandwidths(tr, deps, torch_of)
        span = tr.query(RUN_SPAN_ROW)
        measured_span = int(span.ns[0]) if len(span) and span.ns[0] == span.ns[0] else 0
        op_args = {int(i): (op if isinstance(op, str) else None, _int_or_none(ci), _int_or_none(cc))
                   for i, op, ci, cc in tr.query(_OP_ARGS).itertuples(index=False)}
        return Measured(str(getattr(tr, "path", trace)), facts, deps, torch_of, merged, nbytes, bandwidth,
                        measured_span, op_args)


def predict(trace, speedup: dict[str, float] | None = None, moves: dict[str, int] | None = None, *,
            max_device: int | None = None, backend: str = "auto", tp_bin: str | None = None) -> Prediction:
    """The run of `trace` (a trace file, a run directory, an open `Trace` or what `measure` read from
    one) predicted with `speedup` ({submodule: factor}: its commands take measured time / factor) and
    `moves` ({submodule: logical device}; up to `max_device`, by default one new device beyond the
    run's)."""
    speedup = dict(speedup or {})
    moves = dict(moves or {})
    for name in [*speedup, *moves]:
        if name not in SUBMODULES:
            raise UsageError(f"{name!r} is not a submodule; valid: {', '.join(SUBMODULES)}")
    for name, f in speedup.items():
        if isinstance(f, bool) or not (isinstance(f, (int, float)) and np.isfinite(f) and f > 0):
            raise UsageError(f"speedup {name}={f!r} is not valid; valid: a positive number")
    m = trace if isinstance(trace, Measured) else measure(trace, backend=backend, tp_bin=tp_bin)
    facts, deps, torch_of, merged, nbytes, bandwidth = m.facts, m.deps, m.torch_of, m.merged, m.nbytes, m.bandwidth
    on = {str(s): unit_rank(int(u)) for s, u in zip(deps.invocations.submodule, deps.invocations.unit)}
    killed = {s for s, r in on.items() if merged and r in facts.incomplete}
    for name in speedup:
        why = (f"the trace has no invocation of {name} (not profiled)" if name not in on else
               f"it ran on rank {on[name]}, whose trace is incomplete (the process ended early, before the transfers "
               "back from its last call were recorded), so the waits on it cannot be timed" if name in killed else "")
        if why:
            raise UsageError(f"--speedup {name}: {why}; valid: "
                             f"{', '.join(s for s in SUBMODULES if s in on and s not in killed) or 'none'}")
    _check_moves(moves, facts, merged, max_device)
    moves = {name: d for name, d in moves.items() if d != facts.placement[name]}

    n = len(deps.ts)
    sub_of = np.asarray(list(deps.invocations.submodule) + [None], dtype=object)[deps.item]
    dur = (deps.end - deps.ts).astype(np.float64)
    unit = deps.device.copy()
    for name, factor in speedup.items():
        dur = np.where((deps.kind == OP) & (sub_of == name), dur / factor, dur)
    for name, device in moves.items():
        mine = (sub_of == name) & (unit >= 0)
        old = unit[mine]
        unit[mine] = (old // RANK_STRIDE) * RANK_STRIDE + device
        target = {int(u): torch_of.get(int(u), torch_of.get(int(u) - unit_device(u), "cpu")) for u in set(unit[mine])}
        for i in np.flatnonzero(mine & (deps.kind == DMA)):
            was = torch_of.get(int(deps.device[i]), "cpu").split(":")[0]
            now = target[int(unit[i])].split(":")[0]
            if now != was and now in bandwidth and nbytes[i] > 0:
                dur[i] = nbytes[i] / bandwidth[now]
    dev_prev = program_order(unit) if moves else deps.dev_prev

    ts_new, end_new = replay(deps.ts, deps.end, dur, np.stack([dev_prev, deps.flow_prev, deps.host_prev]))
    # The run span may hold more than the elements (an invocation's bounds): that margin is kept.
    predicted = m.span_ns
    if n:
        predicted += int(end_new.max() - ts_new.min()) - int(deps.end.max() - deps.ts.min())
    return Prediction(m.path, speedup, moves, facts, deps, unit, ts_new, end_new, m.span_ns, predicted, merged,
                      facts.placement | moves, m.op_args, nbytes)


def _int_or_none(value):
    import pandas as pd

    return None if pd.isna(value) else int(value)


def replay(ts: np.ndarray, end: np.ndarray, dur: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New (start, end) per element (in time order) that now takes `dur`, as measured from `ts` to `end`
    before; `preds`: rows of predecessor indices (-1: none). Each element waits for its latest-ending
    predecessor, as measured, after the lag it showed then; the others only bound its start (they may
    end later once changed). An element that started before a predecessor ended (a recv while its send
    is still sending) keeps that overlap."""
    n = len(ts)
    valid = (preds >= 0) & (preds < np.arange(n))
    ends = np.where(valid, end[np.maximum(preds, 0)], np.iinfo(np.int64).min)
    binding = np.where(valid.any(axis=0), preds[np.argmax(ends, axis=0), np.arange(n)], -1)
    lag = np.where(binding >= 0, ts - end[np.maximum(binding, 0)], 0).tolist()
    overlap = np.minimum(ts - ends, 0)
    pred_lists = [[(int(p), float(o)) for p, o in zip(preds[:, i], overlap[:, i]) if 0 <= p < i] for i in range(n)]
    new_ts = [0.0] * n
    new_end = [0.0] * n
    ts_list, dur_list, bind_list = ts.tolist(), dur.tolist(), binding.tolist()
    for i in range(n):
        b = bind_list[i]
        start = ts_list[i] if b < 0 else new_end[b] + lag[i]
        for p, o in pred_lists[i]:
            if new_end[p] + o > start:
                start = new_end[p] + o
        new_ts[i] = start
        new_end[i] = start + dur_list[i]
    return np.rint(np.asarray(new_ts)).astype(np.int64), np.rint(np.asarray(new_end)).astype(np.int64)


def totals(p: Prediction):
    """The predicted run's totals beside the measured ones: the span, then each submodule's time in its
    invocations and its device, as measured and as predicted."""
    import pandas as pd

    subs = p.submodules()
    rows = [("span", None, None, p.measured_span_ns / 1e6, p.predicted_span_ns / 1e6)]
    rows += [(s.submodule, int(s.device), int(s.predicted_device), s.measured_ms, s.predicted_ms)
             for s in subs.itertuples(index=False)]
    table = pd.DataFrame(rows, columns=["what", "device", "predicted_device", "measured_ms", "predicted_ms"])
    table["device"] = table.device.astype("Int64")
    table["predicted_device"] = table.predicted_device.astype("Int64")
    # (rounded so that a change of a few ns of float error shows as none, not as -0.000)
    table["change_pct"] = (100.0 * (table.predicted_ms - table.measured_ms) / table.measured_ms).round(6) + 0.0
    return table


def whatif(trace, speedup: dict[str, float] | None = None, moves: dict[str, int] | None = None, *,
           backend: str = "auto", tp_bin: str | None = None):
    """`totals` of the run of `trace` predicted with `speedup` and `moves` (see `predict`)."""
    return totals(predict(trace, speedup, moves, backend=backend, tp_bin=tp_bin))
