"""`check --json`: a `CheckResult` as one JSON object, schema `JSON_SCHEMA` (docs/regression-gate.md)."""

from __future__ import annotations

import math

from .check import CheckResult, metric_of


JSON_SCHEMA = "rbln-perfetto.check/1"


def _finite(x):
    """JSON has no inf or NaN: null for them."""
    return x if not isinstance(x, float) or math.isfinite(x) else None


def check_json(result: CheckResult, **_unused) -> dict:
    """`check --json`: the verdict as one object, schema `JSON_SCHEMA` (docs/regression-gate.md). Fields
    are only ever added under this schema name; a renamed or removed field gets a new one."""
    table = result.metrics
    has_base = "baseline" in table.columns
    metrics_rows = []
    for row in table.itertuples(index=False):
        metric = metric_of(row.metric)
        metrics_rows.append({
            "metric": row.metric, "unit": metric.unit, "polarity": metric.polarity,
            "value": _finite(float(row.value)),
            "runs": int(getattr(row, "runs", 1)),
            "baseline": _finite(float(row.baseline)) if has_base else None,
            "baseline_runs": (int(getattr(row, "baseline_runs", 1)) if row.baseline == row.baseline else 0)
            if has_base else 0,
            "change_pct": _finite(float(row.change_pct)) if has_base else None,
        })
    return {
        "schema": JSON_SCHEMA,
        "ok": result.ok,
        "verdict": result.verdict(),
        "candidate": {"runs": result.n_cand, "sources": result.cand_sources},
        "baseline": {"runs": result.n_base, "sources": result.base_sources},
        "max_regression_pct": result.max_regression,
        "alpha": result.alpha,
        "judges_noise": result.judges_noise,
        "notes": list(result.notes),
        "violations": list(result.violations),
        "rules": [dict(r, value=_finite(r["value"])) for r in result.rule_rows],
        "regressions": [{k: _finite(v) for k, v in r.items()} for r in result.comparisons],
        "metrics": metrics_rows,
    }
