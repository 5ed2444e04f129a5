"""Is a candidate's metric worse than the baseline's beyond noise? Two samples (one value per run),
numpy only.

The test is Mann-Whitney's rank-sum test, one-sided (the candidate larger), and the effect its
Hodges-Lehmann estimate: the median of every candidate/baseline ratio c_i / b_j, less 1 (computed on
logs, so a ratio; on differences relative to the baseline's median when a value is <= 0). Its
confidence interval is the matching one: the order statistics of those pairwise ratios that the
rank-sum distribution picks, so "the interval's lower end is above 0" and "p < alpha" say the same.
Neither assumes normal noise: one slow run among five moves the median of 25 ratios by little.

The rank-sum distribution is exact (counted, no ties) for small samples and normal (tie-corrected,
with a continuity correction) otherwise. At n = m = 5 the smallest one-sided p-value is 1/252 (every
candidate run slower than every baseline run); at n = m = 3 it is 1/20: three runs a side can
never be significant at 0.05 after a correction for several metrics (`holm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

EXACT_LIMIT = 2500  # n * m up to which the rank-sum distribution is counted exactly (no ties)


@dataclass(frozen=True)
class Comparison:
    """One metric, candidate sample against baseline sample."""

    n_base: int
    n_cand: int
    base_median: float
    cand_median: float
    effect: float  # Hodges-Lehmann: the typical candidate/baseline ratio, less 1 (0.1 = 10% larger)
    low: float  # its two-sided (1 - 2 alpha) interval: the one-sided (1 - alpha) bounds
    high: float
    p: float  # one-sided: how likely a rank sum this large is when candidate and baseline are alike
    alpha: float

    @property
    def judges_noise(self) -> bool:
        """Whether the samples are large enough for any p-value to reach alpha."""
        return min_p(self.n_cand, self.n_base) <= self.alpha


def _counts(n: int, m: int) -> np.ndarray:
    """How many of the C(n+m, n) orderings give U = 0..n*m (U: candidate-above-baseline pairs)."""
    # f[i][j] over u: f(i, j) = f(i-1, j) shifted by j (the largest value is a candidate's) + f(i, j-1)
    prev = [np.ones(1, dtype=np.float64) for _ in range(m + 1)]  # i = 0: U = 0 only
    for i in range(1, n + 1):
        row = [np.ones(1, dtype=np.float64)]  # j = 0: U = 0 only
        for j in range(1, m + 1):
            out = np.zeros(i * j + 1)
            a = prev[j]  # candidate i is the largest: it is above all j baseline values
            out[j:j + len(a)] += a
            b = row[j - 1]
            out[:len(b)] += b
            row.append(out)
        prev = row
    return prev[m]


def min_p(n_cand: int, n_base: int) -> float:
    """The smallest one-sided p-value samples this size can give: 1 / C(n+m, n)."""
    if n_cand < 1 or n_base < 1:
        return 1.0
    return 1.0 / math.comb(n_cand + n_base, n_cand)


def _rank_sum_u(cand: np.ndarray, base: np.ndarray) -> tuple[float, bool]:
    """U (candidate-above-baseline pairs, ties count half) and whether there are ties at all."""
    both = np.concatenate([cand, base])
    order = both.argsort(kind="stable")
    ranks = np.empty(len(both))
    sorted_values = both[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    n = len(cand)
    u = ranks[:n].sum() - n * (n + 1) / 2.0
    return float(u), bool((counts > 1).any())


def _p_greater(u: float, n: int, m: int, ties: bool, all_values: np.ndarray) -> float:
    """One-sided P(U >= u) under no difference."""
    if not ties and n * m <= EXACT_LIMIT:
        counts = _counts(n, m)
        k = int(round(u))
        return float(counts[k:].sum() / counts.sum())
    mean = n * m / 2.0
    _, t = np.unique(all_values, return_counts=True)
    N = n + m
    var = n * m / 12.0 * ((N + 1) - (t ** 3 - t).sum() / (N * (N - 1)))
    if var <= 0:  # every value equal: nothing points anywhere
        return 1.0
    z = (u - mean - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _critical_rank(n: int, m: int, alpha: float, ties: bool) -> int | None:
    """k (1-based): the k-th smallest pairwise difference is the one-sided (1 - alpha) lower bound;
    None when no bound exists at this alpha (samples too small)."""
    if n * m <= EXACT_LIMIT:
        counts = _counts(n, m)
        cdf = np.cumsum(counts) / counts.sum()  # P(U <= c)
        ok = np.nonzero(cdf <= alpha)[0]
        return int(ok[-1]) + 1 if len(ok) else None
    z = _z_quantile(1 - alpha)
    k = int(math.floor(n * m / 2.0 - z * math.sqrt(n * m * (n + m + 1) / 12.0)))
    return k if k >= 1 else None


def _z_quantile(p: float) -> float:
    """The standard normal quantile (bisection on erfc; no scipy)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def compare(base, cand, alpha: float = 0.05) -> Comparison:
    """Candidate sample `cand` against baseline sample `base` (sequences of floats, one per run)."""
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if len(b) < 1 or len(c) < 1:
        raise UsageError(f"a sample of no run cannot be compared ({len(b)} baseline, {len(c)} candidate runs); valid: at least one run a side")
    n, m = len(c), len(b)
    base_median = float(np.median(b))
    ratios = (b > 0).all() and (c > 0).all()
    if ratios:
        diffs = np.sort((np.log(c)[:, None] - np.log(b)[None, :]).ravel())
        to_effect = np.expm1
    else:  # a shift, relative to the baseline's median (infinite when that is 0)
        diffs = np.sort((c[:, None] - b[None, :]).ravel())
        scale = abs(base_median)

        def to_effect(x):
            if scale == 0:
                return 0.0 if x == 0 else math.copysign(math.inf, x)
            return x / scale
    effect = float(to_effect(float(np.median(diffs))))
    u, ties = _rank_sum_u(c, b)
    p = _p_greater(u, n, m, ties, np.concatenate([c, b]))
    k = _critical_rank(n, m, alpha, ties)
    if k is None:
        low, high = -math.inf, math.inf
    else:
        low, high = float(to_effect(diffs[k - 1])), float(to_effect(diffs[n * m - k]))
    return Comparison(m, n, base_median, float(np.median(c)), effect, low, high, p, alpha)


def holm(p_values, alpha: float) -> list[bool]:
    """Holm's step-down: which of the p-values are significant with the chance of any false alarm
    among them all at most `alpha`."""
    p = np.asarray(p_values, dtype=np.float64)
    out = [False] * len(p)
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (len(p) - rank):
            break
        out[i] = True
    return out
