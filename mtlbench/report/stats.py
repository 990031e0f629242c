"""Statistics of a leaderboard: paired tests against a baseline, Friedman + Nemenyi over mean ranks.

- Paired comparison over the repetitions (seed, fold) both rows have: the two-sided Wilcoxon
  signed-rank test (scipy, exact distribution for small samples) or a 95 % percentile bootstrap CI of
  the mean difference (scipy, 10 000 resamples, fixed seed). With 3 repetitions the smallest
  two-sided Wilcoxon p is 0.25: three folds cannot show significance, and the table says so by its
  numbers rather than by stars.
- Critical difference (Demšar 2006): Friedman's test over the blocks (data sets × metrics) on which
  every compared row has a value, ranks per block (1 = best, ties averaged), and the Nemenyi critical
  difference CD = q_α √(k(k+1)/(6N)) with q_α the studentized-range quantile / √2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

TESTS = ("wilcoxon", "bootstrap")
BOOTSTRAP_RESAMPLES = 10_000


@dataclass
class PairedResult:
    test: str
    n: int
    mean_difference: float
    p_value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan

    def text(self) -> str:
        if self.n == 0:
            return "–"
        if self.test == "wilcoxon":
            return f"p={self.p_value:.3g} (n={self.n})"
        return f"{self.mean_difference:+.4g} [{self.ci_low:+.4g}, {self.ci_high:+.4g}] (n={self.n})"


def paired_test(candidate: np.ndarray, baseline: np.ndarray, test: str) -> PairedResult:
    """Compare paired samples (same seed and fold); the difference is candidate − baseline."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r} (use one of: {', '.join(TESTS)})")
    diff = np.asarray(candidate, float) - np.asarray(baseline, float)
    diff = diff[~np.isnan(diff)]
    n = len(diff)
    if n == 0:
        return PairedResult(test, 0, math.nan)
    mean = float(diff.mean())
    if test == "wilcoxon":
        if np.all(diff == 0):
            return PairedResult(test, n, mean, p_value=1.0)
        return PairedResult(test, n, mean, p_value=float(stats.wilcoxon(diff).pvalue))
    if n < 2 or np.all(diff == diff[0]):
        return PairedResult(test, n, mean, ci_low=mean, ci_high=mean)
    ci = stats.bootstrap(
        (diff,),
        np.mean,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        confidence_level=0.95,
        rng=np.random.default_rng(0),
    ).confidence_interval
    return PairedResult(test, n, mean, ci_low=float(ci.low), ci_high=float(ci.high))


@dataclass
class CriticalDifference:
    mean_ranks: dict[str, float]  # row label -> mean rank (1 = best)
    n_blocks: int
    friedman_statistic: float
    friedman_p: float
    cd: float
    alpha: float = 0.05

    def groups(self) -> list[tuple[str, ...]]:
        """Maximal sets of rows whose mean ranks differ by less than CD (not significantly)."""
        names = sorted(self.mean_ranks, key=self.mean_ranks.get)
        cliques: list[tuple[str, ...]] = []
        for i in range(len(names)):
            j = i
            while j + 1 < len(names) and self.mean_ranks[names[j + 1]] - self.mean_ranks[names[i]] < self.cd:
                j += 1
            clique = tuple(names[i : j + 1])
            if len(clique) > 1 and not any(set(clique) <= set(c) for c in cliques):
                cliques.append(clique)
        return cliques


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    q_alpha = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q_alpha * math.sqrt(k * (k + 1) / (6 * n_blocks)))


def critical_difference(ranks: np.ndarray, labels: list[str], alpha: float = 0.05) -> CriticalDifference:
    """``ranks``: blocks × rows (1 = best in each block). Needs ≥ 3 rows and ≥ 2 blocks."""
    n_blocks, k = ranks.shape
    if k < 3 or n_blocks < 2:
        raise ValueError(
            f"a critical-difference diagram needs ≥ 3 rows and ≥ 2 blocks, got {k} and {n_blocks}"
        )
    statistic, p = stats.friedmanchisquare(*ranks.T)
    mean_ranks = dict(zip(labels, ranks.mean(axis=0).tolist()))
    return CriticalDifference(
        mean_ranks, n_blocks, float(statistic), float(p), nemenyi_cd(k, n_blocks, alpha), alpha
    )
