"""Statistical tests for samplers, each with a stated false-positive rate and power, and the
sample sizes that follow from them.

Error budget: every pytest test that draws random samples may fail a correct sampler with
probability at most FALSE_POSITIVE_RATE (1e-6). A test that makes m comparisons gives each
alpha = FALSE_POSITIVE_RATE / m (Bonferroni). Power: each comparison detects, with
probability >= POWER,
  - a distribution test: a shift of total variation TV_SHIFT (0.02) from the target
    distribution (measured on the cells the test keeps after pooling rare tokens);
  - a rate test: an absolute shift RATE_SHIFT (0.02) of an acceptance probability.
The plans that size the sampler suites (suites/mtp/sampler_checks.py) assert that power at the sizes they
choose (require_power); tests/machinery/test_stats*.py check the rates below at those sizes.

Distribution test: the subset test (tv_gof). Counts of n samples over V tokens are grouped into
k cells (tv_cells: a token with expected count >= MIN_EXPECTED is a cell of its own; rarer tokens
are merged, smallest first, into pools of expected count >= MIN_EXPECTED, a remainder joining
the last pool or standing alone; pooling only sets the resolution of the TV claim, no
approximation needs it). A count in a zero-probability token is an immediate failure (p-value
0). For a set A of cells let pi(A) = P0(A), X(A) its count, t = X(A) / n, and
KL(t || pi) = t log(t / pi) + (1 - t) log((1 - t) / (1 - pi)) (Bernoulli relative entropy).
The test rejects when

    S = max over non-empty proper A with t > pi(A) of  n KL(t || pi(A))  >=  c,
    c = log((2^k - 2) / alpha),

and reports the p-value (2^k - 2) exp(-S) (capped at 1; it is itself a valid p-value).

  False-positive rate <= alpha, a proof (no approximation): for one fixed A, X(A) ~
  Binomial(n, pi) and Chernoff's bound gives P(X >= n t) <= exp(-n KL(t || pi)) for t >= pi, so
  P(n KL >= c and t > pi) <= exp(-c). A lower deviation of A is an upper deviation of its
  complement (same KL), so the 2^k - 2 non-empty proper sets cover both tails, and the union
  bound gives P(S >= c) <= (2^k - 2) exp(-c) = alpha. This is Weissman et al.'s L1 inequality
  ("Inequalities for the L1 deviation of the empirical distribution", HP Labs HPL-2003-97,
  2003) with the binomial Chernoff bound kept instead of its quadratic relaxation.
  Computing S exactly from k - 1 candidate sets: the points (P0(A), X(A) / n) of all sets A
  lie in the zonotope sum_i [0, (p_i, x_i / n)], whose vertices are points of prefix sets of
  the cells sorted by x_i / (n p_i), descending or ascending. The acceptance region
  {t <= pi or n KL(t || pi) < c} is convex (KL is jointly convex, so its sublevel set is convex;
  with t <= pi added it is the region under the concave upper edge of that set), so if every
  vertex is accepted every A is. Ascending prefixes have t <= pi, so S is the max over the
  k - 1 proper prefixes of the descending order (checked against brute force over all sets in
  tests/machinery/test_stats.py).

  Power >= tv_power(n, k, alpha, tv), a proof given the binomial law: under an alternative p1
  at TV d >= tv from p0 on the cells, A* = {p1 > p0} has P1(A*) = P0(A*) + d; the test rejects
  whenever X(A*) >= x_crit(pi), the smallest count with n KL(x / n || pi) >= c, pi = P0(A*)
  (A* itself is one of the sets; a zero-probability cell in A* fails at once, pi = 0 covers
  it). So power >= min over pi in [0, 1 - d] of P(Binomial(n, pi + d) >= x_crit(pi)). x_crit is
  non-decreasing in pi and the binomial tail increasing in its probability, so on [a, b] the
  power is >= P(Binomial(n, a + d) >= x_crit(b)); tv_power takes the minimum of these interval
  bounds over a grid refined where it binds: a certified lower bound, within ~1e-4 of the
  exact minimum (checked against the exact minimum, from the breakpoints of x_crit, in
  tests/machinery/test_stats.py). Sample sizes (tv_sample_size, tv_plan) are the smallest n, to within
  ~0.5%, whose certified bound reaches POWER.

  What the proof costs: the union bound is conservative; at the suites' sizes the rate is
  0.01-0.12 alpha (computed exactly or as the union of exact tails in
  tests/machinery/test_stats_calibration.py), and at alpha 2e-7, TV 0.02 the test needs 5-13% more
  samples than the old rule's (asymptotic) sizing for 2-16 cells, 37% more for 64.

  The old rule, Pearson chi-square with its asymptotic critical value over cells of expected
  count >= 20, had no such guarantee: at df = 1, alpha 2e-7 its exact rate is 12x nominal (18x
  at expected count 21), and at the sizes it planned for the interpreted backends 9-17x
  (tests/machinery/test_stats_calibration.py). Its pooling also merged a rare remainder into a frequent
  token's cell, leaving single-cell "tests" that recorded power 1.0 and could only catch
  impossible tokens. chi2_* below are that rule, kept for the calibration analysis and for
  callers outside the sampler suites; a new distribution test uses tv_gof.

Rate test: exact two-sided binomial test with equal tails (reject when P(X <= x) or P(X >= x)
is <= alpha / 2), whose false-positive rate is <= alpha by construction; power computed
exactly from the binomial law at p0 - RATE_SHIFT and p0 + RATE_SHIFT.

Runs are derandomized (seeds from fixtures.seeds.stable_seed): a clean run either always passes
or always fails; the rates above are what a fresh seed would see.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

FALSE_POSITIVE_RATE = 1e-6  # per pytest test, all its comparisons together
POWER = 0.99  # per comparison, against the shifts below
TV_SHIFT = 0.02  # total-variation distance a distribution test must detect
RATE_SHIFT = 0.02  # absolute acceptance-probability shift a rate test must detect
MIN_EXPECTED = 20.0  # tokens with a smaller expected count are pooled into cells


def bonferroni(m: int, budget: float = FALSE_POSITIVE_RATE) -> float:
    """Per-comparison alpha when a test makes m comparisons."""
    return budget / max(m, 1)


def require_power(power: float, what: str, target: float = POWER) -> float:
    """A plan's power is part of its contract: below `target` the plan is wrong, not the
    sampler (AssertionError)."""
    if not power >= target:
        raise AssertionError(f"{what}: power {power:.4f} < {target} at the planned sample size "
                             "(the sizing is wrong; a pass would not have been earned)")
    return power


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


# --------------------------------------------------------------------------- subset (TV) test


def kl_bernoulli(t, pi):
    """KL(Bernoulli(t) || Bernoulli(pi)) in nats, elementwise (inf where t > 0 = pi)."""
    t = np.asarray(t, dtype=np.float64)
    pi = np.asarray(pi, dtype=np.float64)
    return special.rel_entr(t, pi) + special.rel_entr(1.0 - t, 1.0 - pi)


def log_subsets(k: int) -> float:
    """log(2^k - 2): the number of non-empty proper sets of k cells (k >= 2)."""
    return k * math.log(2.0) + math.log1p(-(2.0 ** (1 - k)))


def tv_critical(k: int, alpha: float) -> float:
    """c = log((2^k - 2) / alpha): reject when the largest n KL over sets reaches it."""
    return log_subsets(k) - math.log(alpha)


def x_crit(n: int, pi, c: float) -> np.ndarray:
    """Smallest integer x > n pi with n KL(x / n || pi) >= c (n + 1 where there is none),
    elementwise over pi: an upper count the test rejects for a set of probability pi."""
    pi = np.atleast_1d(np.asarray(pi, dtype=np.float64))
    lo = np.floor(n * pi).astype(np.int64)  # x <= n pi: never rejects
    hi = np.full_like(lo, n + 1)  # rejects, or the sentinel
    while True:
        open_ = hi - lo > 1
        if not open_.any():
            return hi
        mid = (lo + hi) // 2
        rej = n * kl_bernoulli(mid / n, pi) >= c
        hi = np.where(open_ & rej, mid, hi)
        lo = np.where(open_ & ~rej, mid, lo)


def tv_cells(probs: np.ndarray, n: float, min_expected: float = MIN_EXPECTED) -> list[list[int]]:
    """Cells as lists of token indices (positive-probability tokens only): a token with
    expected count n p >= min_expected alone, rarer ones merged smallest first into pools of
    expected count >= min_expected; a remainder joins the last pool, or is a cell of its own
    when there is none (never a frequent token's cell: shifts into rare tokens stay visible)."""
    expected = np.asarray(probs, dtype=np.float64) * n
    pos = [int(i) for i in np.argsort(expected, kind="stable") if expected[i] > 0]
    big = [[i] for i in pos if expected[i] >= min_expected]
    cells: list[list[int]] = []
    cur: list[int] = []
    for i in (i for i in pos if expected[i] < min_expected):
        cur.append(i)
        if expected[cur].sum() >= min_expected:
            cells.append(cur)
            cur = []
    if cur:
        if cells:
            cells[-1].extend(cur)
        else:
            cells.append(cur)
    return cells + big


def subset_statistic(obs: np.ndarray, cell_probs: np.ndarray) -> tuple[float, list[int]]:
    """(S, the cells of the set attaining it): S = max over non-empty proper sets A with
    X(A) / n > P0(A) of n KL(X(A) / n || P0(A)), over the prefix sets of the cells sorted by
    obs / (n p) descending (the zonotope's vertices; see the module docstring)."""
    obs = np.asarray(obs, dtype=np.float64)
    e = np.asarray(cell_probs, dtype=np.float64)
    n = obs.sum()
    k = len(obs)
    if k < 2 or n <= 0:
        return 0.0, []
    order = np.argsort(-(obs / e), kind="stable")
    t = np.cumsum(obs[order])[:-1] / n
    pi = np.cumsum(e[order])[:-1]
    # 1 - t and 1 - pi summed from the other end: a prefix holding all but a tiny cell must not
    # round to pi = 1
    t_rest = np.cumsum(obs[order][::-1])[::-1][1:] / n
    pi_rest = np.cumsum(e[order][::-1])[::-1][1:]
    kl = special.rel_entr(t, pi) + special.rel_entr(t_rest, pi_rest)
    s = np.where(t > pi, n * kl, 0.0)
    m = int(np.argmax(s))
    return float(s[m]), order[: m + 1].tolist()


def _interval_bounds(n: int, c: float, tv: float, a: np.ndarray, b: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(exact power at pi = a, lower bound of the power over [a, b]) for each interval."""
    theta = np.minimum(a + tv, 1.0)
    point = special.bdtrc(x_crit(n, a, c) - 1, n, theta)  # P(Binomial(n, theta) >= x_crit)
    low = special.bdtrc(x_crit(n, b, c) - 1, n, theta)
    return point, low


def _branch_and_bound(n: int, k: int, alpha: float, tv: float) -> float:
    """Minimum over pi in [0, 1 - tv] of the interval lower bounds, refined (16-way) where
    they are more than 1e-4 below the smallest exact value seen: a certified lower bound on
    the power within ~1e-4 of the exact minimum."""
    c = tv_critical(k, alpha)
    grid = np.linspace(0.0, 1.0 - tv, 257)
    a, b = grid[:-1], grid[1:]
    best_point = math.inf  # exact power at some pi: the minimum is at most this
    bound = math.inf  # certified over the intervals already settled
    for depth in range(10):
        point, low = _interval_bounds(n, c, tv, a, b)
        best_point = min(best_point, float(point.min()))
        refine = low < best_point - 1e-4
        if depth == 9 or not refine.any():
            return float(min(bound, low.min()))
        if (~refine).any():
            bound = min(bound, float(low[~refine].min()))
        edges = a[refine, None] + (b - a)[refine, None] * np.linspace(0.0, 1.0, 17)[None, :]
        a, b = edges[:, :-1].ravel(), edges[:, 1:].ravel()
    raise AssertionError("unreachable")


@functools.lru_cache(maxsize=8192)
def tv_power(n: int, k: int, alpha: float, tv: float = TV_SHIFT) -> float:
    """Certified lower bound (within ~1e-4 of the exact minimum) on the power of tv_gof with k
    cells on n samples against any alternative at total variation tv on the cells (module
    docstring)."""
    n = int(n)
    if n <= 0:
        return 0.0
    if k < 2:  # one cell: a shift can only move mass into zero-probability tokens
        return float(1.0 - (1.0 - tv) ** n)
    return _branch_and_bound(n, k, alpha, tv)


def _power_estimate(n: int, k: int, alpha: float, tv: float) -> float:
    """Exact power at the worst of 1025 values of pi: at least the minimum (cheap; sizing
    searches with it, then tv_power certifies)."""
    pi = np.linspace(0.0, 1.0 - tv, 1025)
    point, _ = _interval_bounds(n, tv_critical(k, alpha), tv, pi, pi)
    return float(point.min())


@functools.lru_cache(maxsize=1024)
def tv_sample_size(k: int, alpha: float, power: float = POWER, tv: float = TV_SHIFT) -> int:
    """Smallest n (to within ~0.5%) whose certified power tv_power reaches `power`."""
    if k < 2:
        return max(1, math.ceil(math.log(1.0 - power) / math.log(1.0 - tv)))
    aim = power + 0.015 * (1.0 - power)  # the estimate's margin over the certified bound
    z = math.sqrt(2.0 * tv_critical(k, alpha)) + stats.norm.isf(1.0 - power)
    lo = hi = max(2, int(0.25 * z * z / (tv * tv)))
    while lo > 1 and _power_estimate(lo, k, alpha, tv) >= aim:
        lo //= 2
    while _power_estimate(hi, k, alpha, tv) < aim:
        hi = int(hi * 1.1) + 1
    while lo + 1 < hi:  # the estimate is below aim at lo, reaches it at hi
        mid = (lo + hi) // 2
        if _power_estimate(mid, k, alpha, tv) >= aim:
            hi = mid
        else:
            lo = mid
    while tv_power(hi, k, alpha, tv) < power:
        hi = math.ceil(hi * 1.002) + 1
    return hi


def tv_plan(probs: np.ndarray, alpha: float, power: float = POWER, tv: float = TV_SHIFT,
            min_expected: float = MIN_EXPECTED) -> int:
    """Samples for tv_gof on probs to reach `power`: the cell count depends on n through the
    pooling, so iterate n -> cells(n) -> n from the all-tokens size down, then make sure."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    n = tv_sample_size(int((probs > 0).sum()), alpha, power, tv)
    for _ in range(12):
        n_next = tv_sample_size(len(tv_cells(probs, n, min_expected)), alpha, power, tv)
        if n_next == n:
            break
        n = n_next
    while tv_power(n, len(tv_cells(probs, n, min_expected)), alpha, tv) < power:
        n = math.ceil(n * 1.01) + 1
    return n


def tv_plan_power(probs: np.ndarray, n: int, alpha: float, tv: float = TV_SHIFT,
                  min_expected: float = MIN_EXPECTED) -> float:
    """tv_power of tv_gof on probs with n samples (the cells pooled as tv_gof pools them)."""
    probs = np.asarray(probs, dtype=np.float64)
    return tv_power(int(n), len(tv_cells(probs / probs.sum(), n, min_expected)), alpha, tv)


def tv_gof(counts: np.ndarray, probs: np.ndarray, alpha: float, what: str,
           tv: float = TV_SHIFT, min_expected: float = MIN_EXPECTED) -> StatResult:
    """The subset test of observed counts [V] against probabilities [V] (module docstring)."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum()
    n = int(counts.sum())
    effect = f"TV shift {tv}"
    impossible = counts[probs <= 0].sum()
    if impossible > 0:
        bad = np.nonzero((probs <= 0) & (counts > 0))[0][:8].tolist()
        return StatResult(what, "subset test", float("inf"), 0.0, alpha, n, 1.0, effect,
                          f"{int(impossible)} samples of zero-probability tokens {bad}")
    cells = tv_cells(probs, n, min_expected)
    obs = np.array([counts[c].sum() for c in cells])
    cell_p = np.array([probs[c].sum() for c in cells])
    k = len(cells)
    if n == 0:
        return StatResult(what, "subset test", 0.0, 1.0, alpha, 0, 0.0, effect, "no samples")
    s, worst = subset_statistic(obs, cell_p)
    p = 1.0 if k < 2 else math.exp(min(0.0, log_subsets(k) - s))
    emp_tv = 0.5 * float(np.abs(obs / n - cell_p).sum())
    tokens = sorted(t for i in worst for t in cells[i])
    detail = (f"{k} cells from {len(probs)} tokens (min expected {min_expected:g}); empirical "
              f"TV on the cells {emp_tv:.4f}; critical n KL {tv_critical(k, alpha):.2f}" if k >= 2
              else f"{k} cell from {len(probs)} tokens")
    if worst:
        detail += (f"; most deviant set: tokens {tokens[:8]}{'...' if len(tokens) > 8 else ''} "
                   f"observed {int(obs[worst].sum())}, expected {n * cell_p[worst].sum():.1f}")
    return StatResult(what, "subset test", s, p, alpha, n, tv_power(n, k, alpha, tv), effect,
                      detail)


# --------------------------------------------------------------------------- the old rule
# Pearson chi-square with its asymptotic critical value, cells of expected count >= MIN_EXPECTED.
# Not used by the sampler suites: at their sizes its false-positive rate exceeds the nominal
# one (tests/machinery/test_stats_calibration.py measures by how much). Kept for that analysis and for
# callers outside the sampler suites; a new distribution test uses tv_gof.


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
