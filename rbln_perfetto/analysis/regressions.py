"""The regression half of `check` over samples: per metric, the significance test (`significance`),
the verdict (a regression larger than `max_regression` and significant after Holm), its `FAIL` line,
and the notes on what could not be judged. One run a side (or too few runs to ever be significant):
the plain threshold on the medians, said in a note."""

from __future__ import annotations

import math

import numpy as np

from . import significance


def median(values) -> float:
    return float(np.median(values))


def _pct(x: float) -> str:
    return "n/a" if x != x else ("+inf%" if x == math.inf else "-inf%" if x == -math.inf else f"{x:+.1f}%")


def effect_text(c: dict) -> str:
    level = 100 * (1 - 2 * c["alpha"])
    return (f"{c['metric']} {_pct(c['effect_pct'])} [{level:g}% CI {_pct(c['ci_low_pct'])}, "
            f"{_pct(c['ci_high_pct'])}], p = {c['p']:.3g}")


def judge_regressions(cand_samples, base_samples, metrics: dict, *, n_cand: int, n_base: int, max_regression: float,
                      alpha: float):
    """(a row per metric of `metrics` ({check's name: its `check.Metric`}), the violations, the notes,
    whether noise was judged)."""
    names = list(metrics)
    out, violations, notes = [], [], []
    several = n_cand > 1 or n_base > 1
    rows = []
    for name in names:
        c, b = cand_samples[name], base_samples[name]
        if metrics[name].polarity == "HIGHER_IS_BETTER":  # worse is smaller: compare the other way round
            c, b = b, c
        rows.append((name, significance.compare(b, c, alpha=alpha)))
    # The smallest p-value the samples can give must pass Holm's first step for any verdict to be possible.
    smallest = min((significance.min_p(cmp.n_cand, cmp.n_base) for _, cmp in rows), default=1.0)
    judges_noise = several and smallest <= alpha / max(len(rows), 1)
    significant = significance.holm([cmp.p for _, cmp in rows], alpha) if judges_noise else [False] * len(rows)
    for (name, cmp), sig in zip(rows, significant):
        base_value, value = median(base_samples[name]), median(cand_samples[name])
        worse = value > base_value if metrics[name].polarity != "HIGHER_IS_BETTER" else value < base_value
        row = {"metric": name, "unit": metrics[name].unit, "polarity": metrics[name].polarity,
               "candidate": value, "baseline": base_value, "candidate_runs": len(cand_samples[name]),
               "baseline_runs": len(base_samples[name]),
               "change_pct": _change_pct(value, base_value),
               "effect_pct": 100 * cmp.effect, "ci_low_pct": 100 * cmp.low, "ci_high_pct": 100 * cmp.high,
               "p": cmp.p, "alpha": alpha, "significant": bool(sig)}
        if judges_noise:
            regressed = sig and 100 * cmp.effect > max_regression
        else:
            regressed = worse and abs(value - base_value) > abs(base_value) * max_regression / 100
        row["regressed"] = bool(regressed)
        out.append(row)
        if not regressed:
            continue
        if not judges_noise and not several:  # one run a side: the plain threshold, as before
            change = f"{_pct(row['change_pct'])}" if base_value else "from 0"
            violations.append(f"{name} = {value:.6g} against baseline {base_value:.6g} ({change}), more than the "
                              f"{max_regression:g}% allowed")
        elif not judges_noise:
            violations.append(f"{name} = {value:.6g} against baseline {base_value:.6g} (medians of {row['candidate_runs']} "
                              f"and {row['baseline_runs']} runs, {_pct(row['change_pct'])}), more than the "
                              f"{max_regression:g}% allowed (noise not judged)")
        else:
            violations.append(f"{name} = {value:.6g} against baseline {base_value:.6g} (medians of "
                              f"{row['candidate_runs']} and {row['baseline_runs']} runs): {effect_text(row)[len(name) + 1:]}"
                              f" (Holm over {len(rows)}), more than the {max_regression:g}% allowed")
    if not several:
        notes.append("1 candidate run against 1 baseline run cannot judge noise: a regression is the plain "
                            f"{max_regression:g}% threshold on one value each; give several runs a side "
                            "(`run --runs 5`) for a significance test")
    elif not judges_noise:
        notes.append(f"{n_cand} candidate vs {n_base} baseline runs cannot judge noise: the smallest p-value "
                            f"they can give, {smallest:.3g}, is above alpha {alpha:g} / {len(rows)} metrics (Holm); "
                            "the medians were held to the plain threshold: give more runs a side or fewer "
                            "--regression-metrics")
    return out, violations, notes, judges_noise


def _change_pct(value: float, base: float) -> float:
    return 100.0 * (value - base) / base if base else (0.0 if value == base else math.copysign(math.inf, value - base))

