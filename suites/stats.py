"""Statistical tests for samplers, each with a stated false-positive rate and power, and the
sample sizes that follow from them.

Error budget: every pytest test that draws random samples may fail a correct sampler with
probability at most FALSE_POSITIVE_RATE (1e-6). A test that makes m comparisons gives each
alpha = FALSE_POSITIVE_RATE / m (Bonferroni). Power: each comparison detects, with
probability >= POWER,
  - a distribution test: a shift of total variation TV_SHIFT (0.02) from the target
    distribution (measured on the categories the test keeps after pooling rare ones);
  - a rate test: an absolute shift RATE_SHIFT (0.02) of an acceptance probability.

Distribution test: Pearson's chi-square goodness of fit, cells with expected count below
MIN_EXPECTED pooled (so the chi-square approximation holds far into the tail), any count in a
zero-probability cell an immediate failure (p-value 0). Power uses the noncentral chi-square with
the smallest noncentrality a TV shift of d can have: by Cauchy-Schwarz,
sum (p1 - p0)^2 / p0 >= (sum |p1 - p0|)^2 = (2 d)^2, so lambda >= 4 n d^2.

Rate test: exact two-sided binomial test with equal tails (reject when P(X <= x) or P(X >= x)
is <= alpha / 2), whose false-positive rate is <= alpha by construction; power computed
exactly from the binomial law at p0 - RATE_SHIFT and p0 + RATE_SHIFT.

Runs are derandomized (seeds from fixtures.seeds.stable_seed): a clean run either always passes
or always fails; the rates above are what a fresh seed would see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

FALSE_POSITIVE_RATE = 1e-6  # per pytest test, all its comparisons together
POWER = 0.99  # per comparison, against the shifts below
TV_SHIFT = 0.02  # total-variation distance a distribution test must detect
RATE_SHIFT = 0.02  # absolute acceptance-probability shift a rate test must detect
MIN_EXPECTED = 20.0  # cells with a smaller expected count are pooled


def bonferroni(m: int, budget: float = FALSE_POSITIVE_RATE) -> float:
    """Per-comparison alpha when a test makes m comparisons."""
    return budget / max(m, 1)


# --------------------------------------------------------------------------- chi-square


def chi2_power(n: int, df: int, alpha: float, tv: float = TV_SHIFT) -> float:
    """Worst-case power of the chi-square test with df degrees of freedom on n samples against
    any alternative at total variation tv (noncentrality 4 n tv^2)."""
    if df < 1:
        return 1.0  # a single cell: only impossible outcomes can fail, and they always do
    crit = stats.chi2.isf(alpha, df)
    return float(stats.ncx2.sf(crit, df, 4.0 * n * tv * tv))


def chi2_sample_size(n_categories: int, alpha: float, power: float = POWER,
                     tv: float = TV_SHIFT) -> int:
    """Smallest n with chi2_power(n, n_categories - 1, alpha, tv) >= power."""
    df = n_categories - 1
    if df < 1:
        return 1
    lo, hi = 1, 1
    while chi2_power(hi, df, alpha, tv) < power:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if chi2_power(mid, df, alpha, tv) >= power:
            hi = mid
        else:
            lo = mid + 1
    return lo


def chi2_plan(probs: np.ndarray, alpha: float, power: float = POWER, tv: float = TV_SHIFT,
              min_expected: float = MIN_EXPECTED) -> int:
    """Samples for chi2_gof on probs to reach `power`: the cell count depends on n through the
    pooling of rare categories, so iterate n -> cells(n) -> n to a fixed point."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    n = chi2_sample_size(int((probs > 0).sum()), alpha, power, tv)
    for _ in range(8):
        cells = len(_pool(probs * n, min_expected))
        n_next = chi2_sample_size(cells, alpha, power, tv)
        if n_next == n:
            break
        n = n_next
    return n


@dataclass
class StatResult:
    what: str
    test: str
    statistic: float
    p_value: float
    alpha: float
    n: int
    power: float
    effect: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.p_value > self.alpha

    def message(self) -> str:
        verdict = "REJECTED" if not self.ok else "accepted"
        return (f"{self.what}: {self.test} {verdict}: statistic {self.statistic:.4g}, p-value "
                f"{self.p_value:.3g} vs alpha {self.alpha:.3g} (false-positive rate), n = {self.n}, "
                f"power {self.power:.4f} to detect {self.effect}"
                + (f"\n    {self.detail}" if self.detail else ""))


def _pool(expected: np.ndarray, min_expected: float) -> list[list[int]]:
    """Cells as lists of category indices: categories with expected >= min_expected alone, the
    rest merged (smallest first) until every pooled cell reaches min_expected; a pool that
    cannot reach it joins the smallest single cell."""
    pos = [i for i in np.argsort(expected, kind="stable") if expected[i] > 0]
    big = [[int(i)] for i in pos if expected[i] >= min_expected]
    small = [int(i) for i in pos if expected[i] < min_expected]
    cells: list[list[int]] = []
    cur: list[int] = []
    for i in small:
        cur.append(i)
        if expected[cur].sum() >= min_expected:
            cells.append(cur)
            cur = []
    if cur:
        if cells:
            cells[-1].extend(cur)
        elif big:
            big[0].extend(cur)
        else:
            cells.append(cur)
    return cells + big


def chi2_gof(counts: np.ndarray, probs: np.ndarray, alpha: float, what: str,
             tv: float = TV_SHIFT, min_expected: float = MIN_EXPECTED) -> StatResult:
    """Pearson chi-square goodness of fit of observed counts [V] to probabilities [V]."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    n = int(counts.sum())
    impossible = counts[probs <= 0].sum()
    if impossible > 0:
        bad = np.nonzero((probs <= 0) & (counts > 0))[0][:8].tolist()
        return StatResult(what, "chi-square", float("inf"), 0.0, alpha, n, 1.0,
                          f"TV shift {tv}", f"{int(impossible)} samples of zero-probability "
                          f"tokens {bad}")
    expected = probs * n
    cells = _pool(expected, min_expected)
    obs = np.array([counts[c].sum() for c in cells])
    exp = np.array([expected[c].sum() for c in cells])
    df = len(cells) - 1
    stat = float(((obs - exp) ** 2 / exp).sum()) if df >= 1 else 0.0
    p = float(stats.chi2.sf(stat, df)) if df >= 1 else 1.0
    worst = int(np.argmax(np.abs(obs - exp) / np.sqrt(exp))) if len(cells) else 0
    emp_tv = 0.5 * float(np.abs(counts / max(n, 1) - probs).sum())
    detail = (f"{len(cells)} cells from {len(probs)} tokens (min expected {min_expected:g}); "
              f"empirical TV {emp_tv:.4f}; worst cell tokens {cells[worst][:6]}: observed "
              f"{int(obs[worst])}, expected {exp[worst]:.1f}") if len(cells) else ""
    return StatResult(what, "chi-square", stat, p, alpha, n, chi2_power(n, df, alpha, tv),
                      f"TV shift {tv}", detail)


# --------------------------------------------------------------------------- binomial


def _binom_critical(n: int, p0: float, alpha: float) -> tuple[int, int]:
    """Equal-tailed rejection region: reject when X <= lo or X >= hi."""
    lo = int(stats.binom.ppf(alpha / 2, n, p0)) - 1  # largest c with P(X <= c) <= alpha/2 (approx)
    while lo >= 0 and stats.binom.cdf(lo, n, p0) > alpha / 2:
        lo -= 1
    while stats.binom.cdf(lo + 1, n, p0) <= alpha / 2:
        lo += 1
    hi = int(stats.binom.isf(alpha / 2, n, p0)) + 1  # smallest c with P(X >= c) <= alpha/2
    while hi <= n and stats.binom.sf(hi - 1, n, p0) > alpha / 2:
        hi += 1
    while hi - 1 >= 0 and stats.binom.sf(hi - 2, n, p0) <= alpha / 2:
        hi -= 1
    return lo, hi


def binom_power(n: int, p0: float, alpha: float, delta: float = RATE_SHIFT) -> float:
    """Exact power of the equal-tailed binomial test against p0 - delta and p0 + delta (the
    smaller of the two; a side outside [0, 1] is not an alternative)."""
    if n <= 0:
        return 0.0
    lo, hi = _binom_critical(n, p0, alpha)
    powers = []
    for p1 in (p0 - delta, p0 + delta):
        if 0.0 <= p1 <= 1.0:
            powers.append(float(stats.binom.cdf(lo, n, p1) + stats.binom.sf(hi - 1, n, p1)))
    return min(powers) if powers else 1.0


def binom_sample_size(p0: float, alpha: float, power: float = POWER,
                      delta: float = RATE_SHIFT) -> int:
    """Smallest n (to within 2%) with binom_power(n, p0, alpha, delta) >= power."""
    za = stats.norm.isf(alpha / 2)
    zb = stats.norm.isf(1 - power)
    sides = [p1 for p1 in (p0 - delta, p0 + delta) if 0.0 <= p1 <= 1.0]
    if not sides:
        return 1
    n = max(math.ceil(((za * math.sqrt(p0 * (1 - p0)) + zb * math.sqrt(p1 * (1 - p1))) / delta) ** 2)
            for p1 in sides)
    n = max(n, 1)
    while binom_power(n, p0, alpha, delta) < power:
        n = math.ceil(n * 1.02) + 1
    return n


def binom_test(successes: int, n: int, p0: float, alpha: float, what: str,
               delta: float = RATE_SHIFT) -> StatResult:
    """Exact equal-tailed two-sided binomial test of successes out of n against p0."""
    if n == 0:
        return StatResult(what, "binomial", 0.0, 1.0, alpha, 0, 0.0, f"rate shift {delta}",
                          "no trials")
    p = min(1.0, 2.0 * min(float(stats.binom.cdf(successes, n, p0)),
                           float(stats.binom.sf(successes - 1, n, p0))))
    rate = successes / n
    return StatResult(what, "binomial", rate, p, alpha, n, binom_power(n, p0, alpha, delta),
                      f"rate shift {delta}",
                      f"observed rate {rate:.5f} ({successes}/{n}) vs expected {p0:.5f}: "
                      f"off by {rate - p0:+.5f}")
