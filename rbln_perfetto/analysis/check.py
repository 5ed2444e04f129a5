"""A gate for CI: a run's metrics, rules over them, and which rules it breaks.

    rbln-perfetto check cand/ --baseline base/ --max-regression 5% --max "transformer.mean_ms<=120"

Metrics (named as rules name them): `run.span_ms` (from the first invocation or host work to
the last, over every rank); per submodule `<submodule>.calls`, `.total_ms`, `.mean_ms`, `.max_ms` (its invocations);
per device `device<d>.busy_ms` (its invocations), `.compute_ms` (its commands) and `.idle_pct` (the
share of the traced run span it computes nothing). A logical device runs on one rank, so a merged
trace's devices are named as a single process's are.

A check that checks nothing is refused (`UsageError`): no rule and no `max_regression`, or a
`regression_metrics` glob that matches no metric of both runs. Each comes from one SQL query (`METRICS`), the same
that `trace_summary_spec` ships as a trace-summary spec for trace_processor's own `--summary`.
"""

from __future__ import annotations

import fnmatch
import math
import os
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..naming import AGGREGATE_FILE_NAME
from ..query.trace_model import MODEL, in_category, not_untraced, own_name, with_ctes
from .regressions import effect_text, judge_regressions
from .sources import opened, trace_path


@dataclass(frozen=True)
class Metric:
    """A trace-summary metric: `value` per row of `sql`, keyed by `dimension` (or one row, none)."""

    id: str  # the trace-summary metric id
    dimension: str | None
    dimension_type: str  # STRING or INT64, as TraceMetricV2Spec types dimensions
    value: str
    sql: str
    unit: str = "TIME_MILLIS"  # TraceMetricV2Spec.MetricUnit
    polarity: str = "LOWER_IS_BETTER"  # TraceMetricV2Spec.MetricPolarity: which way is a regression

    def name(self, key) -> str:
        """The name a rule uses for this metric's value at dimension value `key`."""
        if self.dimension is None:
            return f"run.{self.value}"
        return f"device{key}.{self.value}" if self.dimension == "device" else f"{key}.{self.value}"


# Every metric reads `trace_model`'s definitions: a merged trace's ranks count as one run, an
# untraced stretch is neither work nor idle time (idle_pct is of the traced part of the span).
_SPAN = with_ctes(*MODEL) + "\nSELECT ns / 1e6 AS span_ms FROM run_span"
_SUBMODULES = with_ctes(*MODEL) + """
SELECT submodule, count(*) AS calls, sum(dur) / 1e6 AS total_ms, avg(dur) / 1e6 AS mean_ms, max(dur) / 1e6 AS max_ms
FROM invocations GROUP BY submodule"""
_DEVICES = with_ctes(*MODEL, f"""per_track AS (
  SELECT s.track_id, sum(s.dur) AS ns FROM slice s
  WHERE {in_category('Workload', 'Compute')} AND s.depth = 0 AND s.dur >= 0 AND {not_untraced()}
  GROUP BY s.track_id)""") + """
SELECT d.device AS device,
       sum(CASE WHEN d.category = 'Workload' THEN t.ns ELSE 0 END) / 1e6 AS busy_ms,
       sum(CASE WHEN d.category = 'Compute' THEN t.ns ELSE 0 END) / 1e6 AS compute_ms,
       100.0 * (max(run_span.traced_ns) - sum(CASE WHEN d.category = 'Compute' THEN t.ns ELSE 0 END))
         / max(run_span.traced_ns) AS idle_pct
FROM per_track t JOIN device_tracks d ON d.track_id = t.track_id JOIN run_span
GROUP BY d.device"""

# Units and polarities as TraceMetricV2Spec names them: times in ms, lower is better; a call count
# is neither better nor worse (a change is a different run, not a slower one) but grows as a regression
# would; idle_pct is a share of the span (0-100), lower is better.
_UNITS = {"calls": ("COUNT", "NOT_APPLICABLE"), "idle_pct": ("BOUNDED_PERCENTAGE", "LOWER_IS_BETTER")}
METRICS = (
    Metric("rbln_run_span_ms", None, "", "span_ms", _SPAN),
    *(Metric(f"rbln_submodule_{v}", "submodule", "STRING", v, _SUBMODULES, *_UNITS.get(v, ()))
      for v in ("calls", "total_ms", "mean_ms", "max_ms")),
    *(Metric(f"rbln_device_{v}", "device", "INT64", v, _DEVICES, *_UNITS.get(v, ()))
      for v in ("busy_ms", "compute_ms", "idle_pct")),
)


# Per layer (opt-in: `layers=True`, `check --layers`): the time of all its commands in the run, per
# submodule and layer ("transformer/transformer_blocks.0.attn.layer_ms"). A command's layer is read
# from its name, `{sequence_index}_{layer}_{command_index}`, as the rbln.commands SQL module reads it.
_LAYERS = with_ctes(*MODEL) + f"""
SELECT submodule || '/' || substr(name, instr(name, '_') + 1,
         length(name) - instr(name, '_') - length(CAST(command_index AS TEXT)) - 1) AS layer,
       sum(dur) / 1e6 AS layer_ms
FROM (SELECT s.dur, {own_name()} AS name, extract_arg(s.arg_set_id, 'debug.submodule') AS submodule,
             extract_arg(s.arg_set_id, 'debug.command_index') AS command_index
      FROM slice s JOIN device_tracks d ON s.track_id = d.track_id
      WHERE {in_category('Compute')} AND s.dur >= 0)
WHERE command_index IS NOT NULL AND submodule IS NOT NULL
GROUP BY 1"""
LAYER_METRIC = Metric("rbln_layer_ms", "layer", "STRING", "layer_ms", _LAYERS)
ALL_METRICS = (*METRICS, LAYER_METRIC)  # what the trace-summary spec ships


def metric_of(name: str) -> Metric:
    """The `Metric` that `check`'s metric `name` ("transformer.mean_ms", "device0.idle_pct") is a row of."""
    value = name.rsplit(".", 1)[-1]
    if name.startswith("run."):
        return METRICS[0]
    device = re.fullmatch(r"device-?[0-9]+", name.rsplit(".", 1)[0]) is not None
    return next(m for m in ALL_METRICS if m.value == value and (m.dimension == "device") == device
                and m.dimension is not None)


DEFAULT_REGRESSION_METRICS = ("run.span_ms", "*.mean_ms")
DEFAULT_ALPHA = 0.05
_RULE = re.compile(r"^\s*([^<>=!\s]+)\s*(<=|>=|<|>|==)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


def metrics(trace, *, backend: str = "auto", tp_bin: str | None = None, layers: bool = False) -> dict[str, float]:
    """{metric name: value} of `trace` (a trace file, a run directory or an open `Trace`); `layers`:
    per layer too (`LAYER_METRIC`)."""
    out: dict[str, float] = {}
    with opened(trace, backend, tp_bin) as tr:
        results = {}
        for m in (ALL_METRICS if layers else METRICS):
            df = results.get(m.sql)
            if df is None:
                df = results[m.sql] = tr.query(m.sql)
            for row in df.itertuples(index=False):
                value = getattr(row, m.value)
                if value is not None and value == value:  # NULL rows are not emitted, as in a summary
                    out[m.name(getattr(row, m.dimension) if m.dimension else None)] = float(value)
    return dict(sorted(out.items()))


def parse_percent(text: str) -> float:
    """`5%` or `5` -> 5.0 (percent); UsageError for anything else."""
    number = text.strip().removesuffix("%")
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"--max-regression {text!r} is not a percentage like 5% or 2.5") from None
    if not value >= 0:
        raise UsageError(f"--max-regression {text!r} must be >= 0%")
    return value


def _table(cand_values: dict[str, float], base_values: dict[str, float]):
    import pandas as pd

    table = pd.DataFrame({"metric": list(cand_values), "value": list(cand_values.values())})
    if not base_values:  # no baseline: no columns of NaN
        return table
    table["baseline"] = [base_values.get(k, float("nan")) for k in cand_values]
    table["change_pct"] = 100.0 * (table.value - table.baseline) / table.baseline.where(table.baseline != 0)
    return table


def metrics_table(cand, baseline=None, *, backend: str = "auto", tp_bin: str | None = None, layers: bool = False):
    """Every metric of `cand` as a DataFrame (metric, value), with `baseline`'s and the change (baseline,
    change_pct) where one is given: what `check --metrics` lists, with or without rules. Several runs a
    side (`sample_sources`): medians, and each side's number of runs (runs, baseline_runs)."""
    cand_runs, base_runs = sample_sources(cand), sample_sources(baseline)
    if len(cand_runs) > 1 or len(base_runs) > 1:
        return _samples_table(metric_samples(cand_runs, backend=backend, tp_bin=tp_bin, layers=layers),
                              metric_samples(base_runs, backend=backend, tp_bin=tp_bin, layers=layers)
                              if base_runs else {})
    base_values = metrics(base_runs[0], backend=backend, tp_bin=tp_bin, layers=layers) if base_runs else {}
    return _table(metrics(cand_runs[0], backend=backend, tp_bin=tp_bin, layers=layers), base_values)


@dataclass
class CheckResult:
    """What `check` found: every metric (with the baseline's, where given) and the broken rules.

    With samples (several runs a side) `metrics` holds medians, and `comparisons` one row per metric
    that `max_regression` checked: the effect, its interval, the p-value and the verdict
    (`significance`); `notes` says what the gate could not judge (one run a side: no noise)."""

    metrics: object  # DataFrame: metric, value (and baseline, change_pct, given a baseline)
    violations: list[str] = field(default_factory=list)
    rules: int = 0
    comparisons: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n_cand: int = 1
    n_base: int = 0
    judges_noise: bool = False  # whether the regressions were tested against the runs' noise
    alpha: float = DEFAULT_ALPHA
    max_regression: float | None = None
    rule_rows: list[dict] = field(default_factory=list)
    cand_sources: list[str] = field(default_factory=list)
    base_sources: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def verdict(self) -> str:
        """The one line that ends `check`'s output."""
        head = (f"check: {len(self.violations)} of {self.rules} rules broken" if self.violations
                else f"check: ok, {self.rules} rules hold")
        if not self.comparisons or self.n_cand == self.n_base == 1:  # (one run a side: a note says so)
            return head
        runs = f"{self.n_cand} candidate vs {self.n_base} baseline runs"
        if not self.judges_noise:
            return f"{head} ({runs}: plain threshold, noise not judged)"
        worst = max(self.comparisons, key=lambda c: (c["effect_pct"] if c["effect_pct"] == c["effect_pct"] else -1e300))
        return (f"{head} ({runs}, alpha {self.alpha:g}, Holm over {len(self.comparisons)} metrics); largest: "
                f"{effect_text(worst)}")


def sample_sources(sources) -> list:
    """The runs of `sources` (a source or a list of them): each trace file or run directory is one run,
    and a directory without a trace that holds run directories (what `run --runs N` writes) is each of them."""
    if sources is None:
        return []
    if isinstance(sources, (str, os.PathLike)) or not isinstance(sources, (list, tuple)):
        sources = [sources]
    out = []
    for source in sources:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.is_dir() and not (path / AGGREGATE_FILE_NAME).is_file():
                # (not the rank{r}/ directories of an unmerged run across processes: those are one run)
                runs = sorted(p for p in path.iterdir() if (p / AGGREGATE_FILE_NAME).is_file()
                              and not re.fullmatch(r"rank[0-9]+", p.name))
                if runs:
                    out.extend(runs)
                    continue
            trace_path(source)  # a path that names no trace is the first thing to say
        out.append(source)
    return out


# The slowdown knob's record (pipeline.slowdown): a run made with it is slowed on purpose, not a real one.
SLOWDOWN_SQL = ("SELECT a.string_value AS slowdown FROM slice s JOIN track t ON s.track_id = t.id "
                "JOIN args a ON a.arg_set_id = s.arg_set_id WHERE t.name = 'Run' AND a.key GLOB 'debug.slowdown*'")


def metric_samples(sources, *, backend: str = "auto", tp_bin: str | None = None,
                   slowed: dict | None = None, layers: bool = False) -> dict[str, list[float]]:
    """{metric name: one value per run} over the runs of `sources` (`sample_sources`); a metric that
    some run lacks (a submodule it did not trace) keeps the runs that have it. `slowed`, a dict, gets
    {run: its recorded RBLN_PIPELINE_SLOWDOWN} for each run made with that test knob."""
    out: dict[str, list[float]] = {}
    for source in sample_sources(sources):
        with opened(source, backend, tp_bin) as tr:
            for name, value in metrics(tr, layers=layers).items():
                out.setdefault(name, []).append(value)
            if slowed is not None:
                knob = ",".join(sorted({v for v in tr.query(SLOWDOWN_SQL).slowdown.tolist() if v}))
                if knob:
                    slowed[_source_name(source)] = knob
    return dict(sorted(out.items()))


def _median(values) -> float:
    from .regressions import median

    return median(values)


def _samples_table(cand: dict[str, list[float]], base: dict[str, list[float]]):
    """Like `_table`, of medians, with each side's number of runs."""
    table = _table({k: _median(v) for k, v in cand.items()}, {k: _median(v) for k, v in base.items()})
    table["runs"] = [len(cand[k]) for k in cand]
    if base:
        table["baseline_runs"] = [len(base.get(k, ())) for k in cand]
    return table


def _rule_rows(parsed, cand_samples) -> tuple[list[str], list[dict]]:
    violations, rows = [], []
    for rule, name, op, limit in parsed:
        values = cand_samples[name]
        value = _median(values)
        ok = bool(_OPS[op](value, limit))
        rows.append({"rule": rule, "metric": name, "value": value, "runs": len(values), "ok": ok})
        if not ok:
            of = f" (median of {len(values)} runs)" if len(values) > 1 else ""
            violations.append(f"{name} = {value:.6g}{of}, breaks {rule}")
    return violations, rows


def _parse_rules(rules) -> list[tuple[str, str, str, float]]:
    parsed = []
    for rule in rules:
        m = _RULE.match(rule)
        if not m:
            raise UsageError(f"rule {rule!r} is not of the form METRIC<=NUMBER (operators: <=, <, >=, >, ==), "
                             "e.g. \"transformer.mean_ms<=120\"")
        parsed.append((rule.strip(), m.group(1), m.group(2), float(m.group(3))))
    return parsed


def check(cand, baseline=None, max_regression: float | str | None = None, rules=(),
          regression_metrics=DEFAULT_REGRESSION_METRICS, *, alpha: float = DEFAULT_ALPHA, backend: str = "auto",
          tp_bin: str | None = None, layers: bool = False) -> CheckResult:
    """Check `cand` against `rules` ("transformer.mean_ms<=120") and, with `baseline` and
    `max_regression` (percent), every metric matching `regression_metrics` (globs) against the
    baseline's.

    `cand` and `baseline` are each a run or several (`sample_sources`: a list, or a directory of run
    directories). One run a side: a metric more than `max_regression` percent worse than the
    baseline's is a violation, whatever the noise (`notes` says so). Several: a metric is a violation
    when its effect (`significance.compare`: Hodges-Lehmann ratio of candidate to baseline) is worse
    by more than `max_regression` and significant at `alpha` (one-sided Mann-Whitney, Holm over the
    metrics checked); samples too small to ever reach that fall back to the threshold on medians, said
    in `notes`. Rules (`--max`) hold for the candidate's median."""

    if isinstance(max_regression, str):
        max_regression = parse_percent(max_regression)
    if not (0 < alpha < 1):
        raise UsageError(f"--alpha {alpha!r} is not valid; valid: a probability between 0 and 1, e.g. 0.05")
    if max_regression is not None and baseline is None:
        raise UsageError("--max-regression needs --baseline BASE to compare with")
    parsed = _parse_rules(rules)
    cand_runs = sample_sources(cand)
    base_runs = sample_sources(baseline)
    if not cand_runs:
        raise UsageError("give the candidate run: a trace file, a run directory or several")
    if not parsed and max_regression is None:
        raise UsageError("check has nothing to check: give a rule (--max \"transformer.mean_ms<=120\") or "
                         "--baseline BASE with --max-regression PERCENT")
    slowed = {"candidate": {}, "baseline": {}}
    cand_samples = metric_samples(cand_runs, backend=backend, tp_bin=tp_bin, slowed=slowed["candidate"],
                                  layers=layers)
    base_samples = (metric_samples(base_runs, backend=backend, tp_bin=tp_bin, slowed=slowed["baseline"],
                                   layers=layers)
                    if base_runs else {})
    for rule, name, _, _ in parsed:
        if name not in cand_samples:
            shown = cand if len(cand_runs) == 1 else f"the {len(cand_runs)} candidate runs"
            raise UsageError(f"rule {rule!r}: no metric {name!r} in {shown}; valid: {', '.join(cand_samples)}")
    result = check_samples(cand_samples, base_samples, n_cand=len(cand_runs), n_base=len(base_runs),
                           rules=[p[0] for p in parsed], max_regression=max_regression,
                           regression_metrics=regression_metrics, alpha=alpha)
    result.cand_sources = [_source_name(x) for x in cand_runs]
    result.base_sources = [_source_name(x) for x in base_runs]
    for side, runs in slowed.items():
        if runs:
            result.notes.append(f"{len(runs)} {side} run(s) were made with RBLN_PIPELINE_SLOWDOWN "
                                f"({', '.join(sorted(set(runs.values())))}): slowed on purpose by a test knob, "
                                "not real runs")
    return result


def check_samples(cand_samples: dict[str, list[float]], base_samples: dict[str, list[float]], *, n_cand: int,
                  n_base: int, rules=(), max_regression: float | None = None,
                  regression_metrics=DEFAULT_REGRESSION_METRICS, alpha: float = DEFAULT_ALPHA) -> CheckResult:
    """`check` of samples already read (`metric_samples`): {metric: one value per run} a side, of
    `n_cand` and `n_base` runs (the bench judges many pairs of runs it read once)."""
    parsed = _parse_rules(rules)
    several = n_cand > 1 or n_base > 1
    table = _samples_table(cand_samples, base_samples) if several else _table(
        {k: v[0] for k, v in cand_samples.items()}, {k: v[0] for k, v in base_samples.items()})
    violations, rule_rows = _rule_rows(parsed, cand_samples)
    result = CheckResult(table, violations, len(parsed), n_cand=n_cand, n_base=n_base, alpha=alpha,
                         max_regression=max_regression, rule_rows=rule_rows)
    if max_regression is None:
        return result
    both = [name for name in cand_samples if name in base_samples]
    if not regression_metrics:
        raise UsageError(f"--regression-metrics is empty: nothing to compare; valid: globs over {', '.join(both)}")
    for glob in regression_metrics:
        if not any(fnmatch.fnmatchcase(name, glob) for name in both):
            raise UsageError(f"--regression-metrics {glob!r} matches no metric of both runs; valid: "
                             f"{', '.join(both) or '(none: the runs share no metric)'}")
    names = [name for name in both if any(fnmatch.fnmatchcase(name, g) for g in regression_metrics)]
    result.rules += len(names)
    result.comparisons, found, result.notes, result.judges_noise = judge_regressions(
        cand_samples, base_samples, {name: metric_of(name) for name in names}, n_cand=n_cand, n_base=n_base, max_regression=max_regression, alpha=alpha)
    result.violations.extend(found)
    return result


def _source_name(source) -> str:
    return str(trace_path(source)) if isinstance(source, (str, os.PathLike)) else str(getattr(source, "path", source))

