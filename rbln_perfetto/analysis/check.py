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
import os
import operator
import re
from dataclasses import dataclass, field

from ..errors import UsageError
from ..query.trace_model import MODEL, in_category, not_untraced, with_ctes
from .sources import opened, trace_path


@dataclass(frozen=True)
class Metric:
    """A trace-summary metric: `value` per row of `sql`, keyed by `dimension` (or one row, none)."""

    id: str  # the trace-summary metric id
    dimension: str | None
    dimension_type: str  # STRING or INT64, as TraceMetricV2Spec types dimensions
    value: str
    sql: str

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

METRICS = (
    Metric("rbln_run_span_ms", None, "", "span_ms", _SPAN),
    *(Metric(f"rbln_submodule_{v}", "submodule", "STRING", v, _SUBMODULES)
      for v in ("calls", "total_ms", "mean_ms", "max_ms")),
    *(Metric(f"rbln_device_{v}", "device", "INT64", v, _DEVICES) for v in ("busy_ms", "compute_ms", "idle_pct")),
)
DEFAULT_REGRESSION_METRICS = ("run.span_ms", "*.mean_ms")
_RULE = re.compile(r"^\s*([^<>=!\s]+)\s*(<=|>=|<|>|==)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")
_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


def metrics(trace, *, backend: str = "auto", tp_bin: str | None = None) -> dict[str, float]:
    """{metric name: value} of `trace` (a trace file, a run directory or an open `Trace`)."""
    out: dict[str, float] = {}
    with opened(trace, backend, tp_bin) as tr:
        results = {}
        for m in METRICS:
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


def metrics_table(cand, baseline=None, *, backend: str = "auto", tp_bin: str | None = None):
    """Every metric of `cand` as a DataFrame (metric, value), with `baseline`'s and the change (baseline,
    change_pct) where one is given: what `check --metrics` lists, with or without rules."""
    base_values = metrics(baseline, backend=backend, tp_bin=tp_bin) if baseline is not None else {}
    return _table(metrics(cand, backend=backend, tp_bin=tp_bin), base_values)


@dataclass
class CheckResult:
    """What `check` found: every metric (with the baseline's, where given) and the broken rules."""

    metrics: object  # DataFrame: metric, value (and baseline, change_pct, given a baseline)
    violations: list[str] = field(default_factory=list)
    rules: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


def check(cand, baseline=None, max_regression: float | str | None = None, rules=(),
          regression_metrics=DEFAULT_REGRESSION_METRICS, *, backend: str = "auto",
          tp_bin: str | None = None) -> CheckResult:
    """Check `cand` against `rules` ("transformer.mean_ms<=120") and, with `baseline` and
    `max_regression` (percent), every metric matching `regression_metrics` (globs) against the
    baseline's: more than `max_regression` percent above it is a violation."""
    if isinstance(max_regression, str):
        max_regression = parse_percent(max_regression)
    if max_regression is not None and baseline is None:
        raise UsageError("--max-regression needs --baseline BASE to compare with")
    parsed = []
    for rule in rules:
        m = _RULE.match(rule)
        if not m:
            raise UsageError(f"rule {rule!r} is not of the form METRIC<=NUMBER (operators: <=, <, >=, >, ==), "
                             "e.g. \"transformer.mean_ms<=120\"")
        parsed.append((rule.strip(), m.group(1), m.group(2), float(m.group(3))))
    for source in (cand, baseline):  # a path that names no trace is the first thing to say
        if isinstance(source, (str, os.PathLike)):
            trace_path(source)
    if not parsed and max_regression is None:
        raise UsageError("check has nothing to check: give a rule (--max \"transformer.mean_ms<=120\") or "
                         "--baseline BASE with --max-regression PERCENT")
    cand_values = metrics(cand, backend=backend, tp_bin=tp_bin)
    base_values = metrics(baseline, backend=backend, tp_bin=tp_bin) if baseline is not None else {}
    for rule, name, _, _ in parsed:
        if name not in cand_values:
            raise UsageError(f"rule {rule!r}: no metric {name!r} in {cand}; valid: {', '.join(cand_values)}")
    table = _table(cand_values, base_values)
    violations = []
    for rule, name, op, limit in parsed:
        value = cand_values[name]
        if not _OPS[op](value, limit):
            violations.append(f"{name} = {value:.6g}, breaks {rule}")
    checked = 0
    if max_regression is not None:
        both = [name for name in cand_values if name in base_values]
        if not regression_metrics:
            raise UsageError(f"--regression-metrics is empty: nothing to compare; valid: globs over {', '.join(both)}")
        for glob in regression_metrics:
            if not any(fnmatch.fnmatchcase(name, glob) for name in both):
                raise UsageError(f"--regression-metrics {glob!r} matches no metric of both runs; valid: "
                                 f"{', '.join(both) or '(none: the runs share no metric)'}")
        for name in both:
            value = cand_values[name]
            if not any(fnmatch.fnmatchcase(name, g) for g in regression_metrics):
                continue
            checked += 1
            base = base_values[name]
            if value > base * (1 + max_regression / 100) and value > base:
                change = f"+{100 * (value - base) / base:.1f}%" if base else "from 0"
                violations.append(f"{name} = {value:.6g} against baseline {base:.6g} ({change}), more than the "
                                  f"{max_regression:g}% allowed")
    return CheckResult(table, violations, len(parsed) + checked)
