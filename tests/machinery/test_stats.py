"""The subset test of suites/stats.py against independent computations: brute force over every
set of cells for the statistic, the exact power minimum (the breakpoints of the critical count)
for the certified power bound, simulation at exactly the claimed shift for the power claim, and
the pooling and sizing contracts. The false-positive rate at the suites' sizes is
tests/machinery/test_stats_calibration.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import special
from scipy import stats as sps

from fixtures.seeds import stable_seed
from suites.mtp.sampler_checks import requests_for
from suites.stats import (
    MIN_EXPECTED,
    POWER,
    TV_SHIFT,
    _pool,
    kl_bernoulli,
    log_subsets,
    require_power,
    subset_statistic,
    tv_cells,
    tv_critical,
    tv_gof,
    tv_plan,
    tv_plan_power,
    tv_power,
    tv_sample_size,
    x_crit,
)


def brute_force_statistic(obs: np.ndarray, cell_p: np.ndarray) -> float:
    """max over every non-empty proper set A with X(A) / n > P0(A) of n KL(X(A) / n || P0(A))."""
    n, k = obs.sum(), len(obs)
    best = 0.0
    for r in range(1, k):
        for a in itertools.combinations(range(k), r):
            t, pi = obs[list(a)].sum() / n, cell_p[list(a)].sum()
            if t > pi:
                best = max(best, float(n * kl_bernoulli(min(t, 1.0), pi)))
    return best


def exact_min_power(n: int, k: int, alpha: float, tv: float) -> float:
    """The exact minimum over pi in [0, 1 - tv] of P(Binomial(n, pi + tv) >= x_crit(pi)):
    x_crit(pi) = y + 1 on (pi*(y), pi*(y + 1)], pi*(y) the root below y / n of
    n KL(y / n || pi) = c, where the power is smallest at the left end."""
    c = tv_critical(k, alpha)
    y = np.arange(1, n + 1)
    t = y / n
    lo, hi = np.zeros(n), t.copy()  # n KL(t || lo) >= c > n KL(t || hi) = 0
    for _ in range(64):
        mid = 0.5 * (lo + hi)
        above = n * kl_bernoulli(t, mid) >= c
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    root = lo  # the largest pi at which y still rejects (to 2^-64)
    use = root <= 1.0 - tv
    first = special.bdtrc(0, n, tv)  # x_crit = 1 on [0, pi*(1)]: infimum at pi = 0
    return float(min(first, special.bdtrc(y[use], n, np.minimum(root[use] + tv, 1.0)).min()))


# --------------------------------------------------------------------------- the statistic


@given(st.data())
def test_prefix_sets_attain_the_max_over_all_sets(data):
    """The zonotope argument: the max of n KL over all 2^k - 2 sets is attained by a prefix of
    the cells sorted by observed / expected."""
    k = data.draw(st.integers(2, 8), label="k")
    w = np.array(data.draw(st.lists(st.integers(1, 50), min_size=k, max_size=k), label="weights"))
    obs = np.array(data.draw(st.lists(st.integers(0, 60), min_size=k, max_size=k), label="obs"),
                   dtype=np.float64)
    if obs.sum() == 0:
        obs[0] = 1
    cell_p = w / w.sum()
    s, worst = subset_statistic(obs, cell_p)
    assert s == pytest.approx(brute_force_statistic(obs, cell_p), rel=1e-9, abs=1e-12)
    if s > 0:  # the reported set attains it
        n, a = obs.sum(), worst
        assert n * kl_bernoulli(obs[a].sum() / n, cell_p[a].sum()) == pytest.approx(s, rel=1e-9)


def test_x_crit_is_the_smallest_rejecting_count():
    for n in (7, 1000, 58_000):
        c = tv_critical(16, 2e-7)
        pi = np.linspace(0.0, 0.999, 301)
        xc = x_crit(n, pi, c)
        for p, x in zip(pi, xc):
            if x <= n:
                assert x / n > p and n * kl_bernoulli(x / n, p) >= c
            if x - 1 > n * p:
                assert n * kl_bernoulli((x - 1) / n, p) < c


def test_p_value_and_decision():
    """p = (2^k - 2) exp(-S); rejected iff S >= c = log((2^k - 2) / alpha); a zero-probability
    token with a count fails at once."""
    p = np.array([0.25, 0.25, 0.5])
    counts = np.array([330, 250, 420])
    r = tv_gof(counts, p, 1e-6, "three cells")
    s, _ = subset_statistic(counts.astype(float), p)
    assert r.p_value == pytest.approx(min(1.0, 6 * np.exp(-s)))
    assert r.ok == (s < tv_critical(3, 1e-6))
    assert not r.ok  # 330 of 1000 against 0.25: n KL = 16.05 > log(6e6) = 15.61
    assert tv_gof(np.array([255, 250, 495]), p, 1e-6, "close").ok
    zero = tv_gof(np.array([5, 0, 1]), np.array([0.5, 0.5, 0.0]), 1e-6, "impossible")
    assert not zero.ok and "zero-probability" in zero.detail
    assert np.exp(log_subsets(3)) == pytest.approx(6)


# --------------------------------------------------------------------------- pooling


def test_cells_pool_rare_tokens_apart_from_frequent_ones():
    """Frequent tokens are cells of their own; rare ones pool smallest first into pools of
    expected count >= MIN_EXPECTED; a remainder with no pool to join is a cell of its own. The
    old pooling merged it into a frequent token's cell: one cell, a power of 1.0 recorded for a
    test that could detect nothing but impossible tokens."""
    p = np.array([0.99, 0.0025, 0.0025, 0.0025, 0.0025, 0.0])
    n = 1000
    assert sorted(map(sorted, tv_cells(p, n))) == [[0], [1, 2, 3, 4]]
    assert len(_pool(p * n, MIN_EXPECTED)) == 1  # the old rule's vacuous single cell
    rng = np.random.default_rng(stable_seed("pooling"))
    for _ in range(50):
        q = rng.dirichlet(np.full(40, 0.3))
        q[rng.random(40) < 0.1] = 0.0
        q /= q.sum()
        m = int(rng.integers(100, 100_000))
        cells = tv_cells(q, m)
        flat = sorted(i for c in cells for i in c)
        assert flat == sorted(np.nonzero(q > 0)[0].tolist())
        for c in cells:
            if len(c) > 1:
                assert (q[c] * m < MIN_EXPECTED).all()
        small = [c for c in cells if q[c].sum() * m < MIN_EXPECTED]
        assert len(small) <= 1


# --------------------------------------------------------------------------- power


@pytest.mark.parametrize("n,k,alpha,tv", [
    (1327, 2, 2e-7, 0.12), (1494, 4, 2e-7, 0.12), (2701, 14, 2e-7, 0.12),
    (40_133, 2, 2e-7, 0.02), (58_511, 16, 2e-7, 0.02), (110_944, 64, 2e-7, 0.02),
    (30_000, 16, 1e-7, 0.02),
])
def test_power_bound_is_certified_and_tight(n, k, alpha, tv):
    """tv_power never exceeds the exact minimum power (it is a lower bound) and is within
    1.5e-4 of it."""
    exact = exact_min_power(n, k, alpha, tv)
    bound = tv_power(n, k, alpha, tv)
    assert bound <= exact + 1e-12
    assert bound >= exact - 1.5e-4


@pytest.mark.parametrize("k", [2, 3, 16, 64])
@pytest.mark.parametrize("tv", [TV_SHIFT, 0.12])
def test_sample_sizes_reach_the_power_and_no_fewer_would(k, tv):
    """tv_sample_size reaches POWER (certified); 1% fewer samples do not (exact)."""
    n = tv_sample_size(k, 2e-7, tv=tv)
    assert tv_power(n, k, 2e-7, tv) >= POWER
    assert exact_min_power(int(0.99 * n), k, 2e-7, tv) < POWER


def test_plan_asserts_its_power():
    """tv_plan's size reaches POWER on the cells it will pool; half of it does not, and
    require_power says so."""
    rng = np.random.default_rng(stable_seed("plan power"))
    p = rng.dirichlet(np.ones(16))
    n = tv_plan(p, 2e-7)
    require_power(tv_plan_power(p, n, 2e-7), "planned")
    with pytest.raises(AssertionError, match=r"power .* < 0\.99"):
        require_power(tv_plan_power(p, n // 2, 2e-7), "half the planned size")


@pytest.mark.parametrize("sizer", ["tv_plan", "binom_sample_size"])
def test_suite_plan_fails_when_its_sizing_falls_short(monkeypatch, sizer):
    """The plan of the sampler suites asserts the power of every comparison: with a sizing
    that halves the rows (distribution or acceptance), plan() raises instead of running an
    underpowered test."""
    import suites.mtp.sampler_checks as checks

    real = getattr(checks, sizer)
    monkeypatch.setattr(checks, sizer, lambda *a, **kw: real(*a, **kw) // 2)
    with pytest.raises(AssertionError, match=r"power 0\.\d+ < 0\.99"):
        checks.plan(checks.RandomCase("short", num_spec_tokens=1), 0)


def _worst_case_alternative(p: np.ndarray, n: int, alpha: float, tv: float) -> np.ndarray:
    """The alternative at TV exactly tv on the cells that moves mass into the set A of cells
    whose probability makes the exact power smallest."""
    k = len(p)
    c = tv_critical(k, alpha)
    best = None
    for r in range(1, k):
        for a in itertools.combinations(range(k), r):
            pi = p[list(a)].sum()
            if pi > 1 - tv:
                continue
            power = special.bdtrc(x_crit(n, pi, c)[0] - 1, n, pi + tv)
            if best is None or power < best[0]:
                best = (power, list(a))
    mask = np.zeros(k, dtype=bool)
    mask[best[1]] = True
    pa = p[mask].sum()
    return np.where(mask, p * (1 + tv / pa), p * (1 - tv / (1 - pa)))


def test_power_at_exactly_the_claimed_shift_by_simulation():
    """2000 samples of n = tv_sample_size(12 cells) from an alternative at TV exactly 0.02,
    mass moved into the set where the power is lowest: the misses are consistent with power
    >= POWER (at most binom.isf(1e-6, 2000, 0.01) = 44 misses: a correct claim fails this with
    probability <= 1e-6); derandomized (stable seed)."""
    alpha, tv, k = 2e-7, TV_SHIFT, 12
    rng = np.random.default_rng(stable_seed("power simulation"))
    p = rng.dirichlet(np.full(k, 5.0))
    n = tv_sample_size(k, alpha)
    alt = _worst_case_alternative(p, n, alpha, tv)
    assert 0.5 * np.abs(alt - p).sum() == pytest.approx(tv, abs=1e-12)
    draws = 2000
    misses = sum(tv_gof(rng.multinomial(n, alt), p, alpha, "shifted", min_expected=0.0).ok
                 for _ in range(draws))
    assert misses <= sps.binom.isf(1e-6, draws, 1 - POWER), misses


# --------------------------------------------------------------------------- requests


@pytest.mark.parametrize("need,reach", [(1114, 1.0), (1114, 0.4), (57_798, 0.435), (30, 0.97)])
def test_requests_cover_the_rows_a_position_needs(need, reach):
    """N identical requests reach a position with probability `reach`: P(fewer than `need`
    rows) <= 1e-6 at N, not at N - 1."""
    n = requests_for(need, reach)
    assert sps.binom.cdf(need - 1, n, reach) <= 1e-6
    if reach < 1.0:
        assert sps.binom.cdf(need - 1, n - 1, reach) > 1e-6
    else:
        assert n == need
