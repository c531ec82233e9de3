"""Sequential A/B: look after every pair, let a benchmark go as soon as its verdict is known (or
as soon as no verdict is in sight), and hold the error rates over the whole sequence of looks.

The fixed A/B rule (reports/ab.py) builds one Student t interval for the mean paired log-ratio
d = log(B / A) after all pairs have run. Re-reading that interval after every pair and stopping
at the first clear one would inflate its error rate (each look is another chance of a false
claim). A group-sequential rule spends the error budget over the looks instead:

  looks       after pair n = MIN_PAIRS, ..., N (N = --ab-pairs, the most pairs any benchmark
              gets; fewer than MIN_PAIRS pairs give no interval worth the name)
  spending    alpha(n) = alpha x (n / N)^RHO, the cumulative error allowed by look n (Kim &
              DeMets 1987's power family; RHO = 3 spends little on the early looks, where a t
              quantile with 2-3 degrees of freedom is huge anyway, much like O'Brien-Fleming);
              look n gets the increment a_n = alpha(n) - alpha(n - 1) (a_MIN = alpha(MIN))
  interval    at look n: exp(mean d -+ t_{1 - a_n, n - 1} x sd(d) / sqrt(n)), one-sided level a_n
              at each end; from the look where TRIM x n >= 1 (n >= 5) the intersection of that
              interval and the Tukey-McLaughlin trimmed t interval (trimmed mean of d, g =
              floor(TRIM n) pairs off each end, winsorized sd, n - 2g - 1 degrees of freedom),
              each at a_n / 2 a side (Bonferroni: both hold at once with a_n a side)
  leaves      at the first look whose interval lies above 1 + t (regression), below 1 / (1 + t)
              (faster) or inside [1 / (1 + t), 1 + t] (same); the verdict is that look's
  futility    from look FUTILITY_FROM (2) to N - 1, a benchmark with no verdict leaves,
              inconclusive, when a change beyond the band is out of sight: the z interval
              mean d -+ z_{1 - BETA} x s / sqrt(n) lies inside the band, with s the larger of its
              own sd and its backend's pooled sd at that look (pooled_sd), and no single pair's
              ratio lies outside the band ("band"); or, from look MIN_PAIRS, when no verdict is
              reachable by look N even on an optimistic reading of its pairs (unreachable:
              median and MAD, the narrowest interval look N could give; "reach")
  undecided   still open after look N, or when the run stopped early (its --ab-budget spent):
              "inconclusive", shown with the last look's interval

Why the error rates hold: a false regression (true ratio at most 1 + t) needs some look's lower
end above the true ratio; at look n that has probability at most a_n (each interval's one-sided
level, exact for normal d for the t interval and close to it for the trimmed one, and not
exceeded at small levels for symmetric d: reports/ab.py says why the balanced order makes d
symmetric under "no change"), so over all looks at most sum a_n = alpha (a union bound: whether
the benchmark would have left earlier, at a verdict or for futility, only removes chances). The
same holds for a false "faster" and, end by end, for a false "same" (TOST). Futility claims
nothing, so it spends nothing (a non-binding futility boundary, Jennison & Turnbull 2000 ch. 5):
it costs power only, at most BETA at each look for a change exactly at the threshold, and far
less for a larger one, whose pairs would all have to fall inside the band.

Why the trimmed interval: the pair-to-pair spread on a shared machine is heavy-tailed. On the
2-core AVX-512 machine (2026-12-07, 1274 pair log-ratios of A vs A, one thread a process) half
the pairs are within 1.5% but 10% are more than 9% off and 1% more than 40% (one process of a
pair slow for one case, minutes-long episodes). One such pair among eight stretches the t
interval of a 10% slowdown over the threshold for good; the trimmed interval drops it.

Why futility: the first pairs time the whole selection, and most benchmarks of a change that
touches one kernel are unchanged. A benchmark 80%-sure to be inside the band has nothing to
gain from more pairs that a user would wait for; it leaves after 2 pairs, and the later pairs
time the few that a verdict needs (the issue-33 run: 363 benchmarks, 44 slowed). A benchmark
whose own spread is too wide for any verdict within N pairs (a 5% sd against a 5% band) leaves
too, instead of holding every later pair open for an "inconclusive" known in advance.

Operating characteristics: `python -m reports ab calibrate --sequential` (normal d per sigma,
and d resampled from a real A vs A run with --from FOLDER); the table in reports/README.md.

A benchmark's verdict depends only on its own pair ratios in run order and, for futility, on
its backend's pooled sd at each look, which judge() computes from the pairs of the benchmarks
that reached that look: replay() gives the same verdict whether it runs while the pairs come in
(harness/ab.py asks after each pair which benchmarks are still open) or afterwards on the folder
(`python -m reports ab judge`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_PAIRS = 3
MAX_PAIRS = 10  # N when none is given (harness/options.py --ab-pairs' default)
RHO = 3.0
TRIM = 0.2  # the trimmed interval's proportion off each end (g = floor(TRIM n) >= 1: n >= 5)
FUTILITY_BETA = 0.10  # futility interval: one-sided 1 - BETA a side (80% two-sided)
FUTILITY_FROM = 2  # the first look that may let a benchmark go for futility
POOL_MIN = 3  # benchmarks of a backend at a look for a pooled sd
REACH_FROM = 5  # the first look that may find no verdict reachable (a MAD of fewer pairs is
# too rough: from 3 pairs it let two more 10% slowdowns of the issue-33 run go; from 5 it costs
# a 10% slowdown about 1 point of power in this machine's heavy-tailed pairs, calibrate
# --sequential --from, for ~40% fewer benchmarks timed in pairs 6-10)


@dataclass(frozen=True)
class Look:
    """One benchmark's state after n pairs."""

    n: int  # pairs behind the interval
    level: float  # a_n: the one-sided level of this look's interval at each end
    ratio: float  # exp(mean d)
    lo: float
    hi: float
    verdict: str | None  # regression / faster / same, or None: still open
    futile: str = ""  # left at this look without a verdict: "band" (no change beyond the band
    # in sight) or "reach" (no verdict reachable by the last look)


def spent(n: int, max_pairs: int, alpha: float, rho: float = RHO) -> float:
    """alpha(n): the error spent by look n (0 before MIN_PAIRS, alpha at max_pairs)."""
    if n < MIN_PAIRS:
        return 0.0
    return alpha * min(1.0, n / max_pairs) ** rho


def level_at(n: int, max_pairs: int, alpha: float, rho: float = RHO) -> float:
    """a_n: the share of alpha that look n may spend (0 outside MIN_PAIRS..max_pairs)."""
    if n < MIN_PAIRS or n > max_pairs:
        return 0.0
    return spent(n, max_pairs, alpha, rho) - spent(n - 1, max_pairs, alpha, rho)


_VERDICT = {"regression": "regression", "improvement": "faster", "unchanged": "same"}


def classify(lo: float, hi: float, threshold: float) -> str | None:
    """The verdict an interval gives against the equivalence band (reports/compare.py's
    classify, the A/B names), or None (straddles it)."""
    from reports.compare import classify as band

    return _VERDICT.get(band(lo, hi, threshold))


def trimmed(n: int, trim: float) -> int:
    """g: the pairs a trimmed interval drops off each end at n pairs (0: no trimmed interval)."""
    g = math.floor(trim * n + 1e-9) if trim else 0
    return g if n - 2 * g >= 2 else 0


def half_widths(d, level: float, trim: float):
    """Log-scale intervals of the centre of d at one-sided level `level` a side, as
    (centre, half-width) pairs: the t interval of the mean, and from g = trimmed(n) >= 1 also
    the Tukey-McLaughlin trimmed t interval (trimmed mean, winsorized sd / ((1 - 2g/n) sqrt n),
    n - 2g - 1 degrees of freedom), the level then split between the two."""
    import numpy as np
    from scipy.stats import t as student_t

    d = np.asarray(d, dtype=np.float64)
    n = int(d.size)
    g = trimmed(n, trim)
    each = level / 2 if g else level
    out = [(float(d.mean()),
            float(student_t.ppf(1.0 - each, n - 1) * d.std(ddof=1) / math.sqrt(n)))]
    if g:
        x = np.sort(d)
        w = np.clip(x, x[g], x[n - g - 1])
        se = float(w.std(ddof=1)) / ((1.0 - 2.0 * g / n) * math.sqrt(n))
        out.append((float(x[g:n - g].mean()), float(student_t.ppf(1.0 - each, n - 2 * g - 1) * se)))
    return out


def look(ratios, level: float, threshold: float, trim: float = TRIM) -> Look:
    """The interval at one-sided level `level` a side (half_widths: the t interval, intersected
    with the trimmed one from n >= 5), and its verdict. Disjoint intervals (one of them wrong)
    give no verdict."""
    import numpy as np

    d = np.log(np.asarray(ratios, dtype=np.float64))
    n = int(d.size)
    m = float(d.mean()) if n else math.nan
    if n < 2 or not level > 0:
        return Look(n, level, math.exp(m), math.nan, math.nan, None)
    parts = half_widths(d, level, trim)
    lo = max(c - h for c, h in parts)
    hi = min(c + h for c, h in parts)
    lo_r, hi_r = math.exp(lo), math.exp(hi)
    verdict = classify(lo_r, hi_r, threshold) if lo <= hi else None
    return Look(n, level, math.exp(m), lo_r, hi_r, verdict)


def futile(ratios, pooled: float | None, threshold: float, beta: float = FUTILITY_BETA) -> bool:
    """No change beyond the band in sight after these pairs: the z interval of the mean log
    ratio at 1 - beta a side, with the larger of the benchmark's own sd and `pooled` (its
    backend's, pooled_sd), lies inside the band, and so does every pair's ratio. False without
    a pooled sd."""
    import numpy as np
    from scipy.stats import norm

    if pooled is None or not math.isfinite(pooled) or not beta > 0:
        return False
    d = np.log(np.asarray(ratios, dtype=np.float64))
    n = int(d.size)
    if n < 1:
        return False
    up = math.log1p(threshold)
    s = max(float(pooled), float(d.std(ddof=1)) if n > 1 else 0.0)
    half = float(norm.ppf(1.0 - beta)) * s / math.sqrt(n)
    m = float(d.mean())
    return bool(-up <= m - half and m + half <= up and np.all(np.abs(d) <= up))


def last_half_width(max_pairs: int, alpha: float, rho: float = RHO, trim: float = TRIM
                    ) -> float:
    """The narrowest half-width look N = max_pairs can give, per unit sd of d: the smaller of
    the t and the trimmed t interval's at a_N (each at a_N / 2 when both apply), with no wild
    pair to widen them (unreachable's projection)."""
    from scipy.stats import t as student_t

    a_n = level_at(max_pairs, max_pairs, alpha, rho)
    g = trimmed(max_pairs, trim)
    each = a_n / 2 if g else a_n
    h = float(student_t.ppf(1.0 - each, max_pairs - 1)) / math.sqrt(max_pairs)
    if g:
        h = min(h, float(student_t.ppf(1.0 - each, max_pairs - 2 * g - 1)) /
                ((1.0 - 2.0 * g / max_pairs) * math.sqrt(max_pairs)))
    return h


def unreachable(ratios, *, max_pairs: int, alpha: float, threshold: float, rho: float = RHO,
                trim: float = TRIM, beta: float = FUTILITY_BETA) -> bool:
    """No verdict reachable by look N = max_pairs even on an optimistic reading of the pairs so
    far (stochastic curtailment; like futility it claims nothing and spends nothing): with the
    robust centre c = median d and spread s = 1.4826 MAD(d) of its own pairs (not the backend's
    pooled sd: the benchmarks still open at a later look are the noisier ones, and their pooled
    sd made 'same' look out of reach for the quiet; replayed on the issue-33 run), the narrowest
    interval look N could give (the t or the trimmed t half-width at a_N with sd s, no wild
    pair to come) is h; "same" needs h < log(1 + t), "regression" c + z_{1-beta} s / sqrt(n) - h
    above it, "faster" c - z s / sqrt(n) + h below -log(1 + t). Median and MAD: one wild pair
    so far must not make a 10% slowdown look hopeless (the trimmed interval would rescue it)."""
    import numpy as np
    from scipy.stats import norm

    d = np.log(np.asarray(ratios, dtype=np.float64))
    n = int(d.size)
    if n < REACH_FROM or n >= max_pairs or not beta > 0:
        return False
    c = float(np.median(d))
    s = 1.4826 * float(np.median(np.abs(d - c)))
    if not s > 0:
        return False
    h = last_half_width(max_pairs, alpha, rho, trim) * s
    up = math.log1p(threshold)
    opt = float(norm.ppf(1.0 - beta)) * s / math.sqrt(n)
    return not (h < up or c + opt - h > up or c - opt + h < -up)


def pooled_sd(series: Sequence[Sequence[float]], n: int) -> float | None:
    """A backend's pair-to-pair sd at look n, from the log ratios of its benchmarks that have
    at least n pairs (their first n): the median of their own sds over the median of
    sqrt(chi2_{n-1} / (n-1)), so normal d gives the sd; the median, so that the few benchmarks
    an episode hit do not set it. None below POOL_MIN such benchmarks or n < 2."""
    import numpy as np
    from scipy.stats import chi2

    if n < 2:
        return None
    sds = [float(np.std(np.log(np.asarray(r[:n], dtype=np.float64)), ddof=1))
           for r in series if len(r) >= n]
    if len(sds) < POOL_MIN:
        return None
    return float(np.median(sds)) / math.sqrt(chi2.ppf(0.5, n - 1) / (n - 1))


def replay(ratios, *, max_pairs: int, alpha: float, threshold: float, rho: float = RHO,
           trim: float = TRIM, pooled: Sequence[float | None] | None = None,
           beta: float = FUTILITY_BETA) -> Look:
    """The sequential verdict of one benchmark from its pair ratios B/A in run order: the first
    look (n = MIN_PAIRS .. max_pairs) that decides, or the first look (FUTILITY_FROM ..
    max_pairs - 1) at which it is futile (`pooled[n - 1]`: its backend's pooled sd at look n;
    None or a missing entry: no futility), else the last look, undecided. Ratios beyond
    max_pairs are not looked at."""
    ratios = list(ratios)[:max_pairs]
    pooled = list(pooled or [])
    last = Look(len(ratios), 0.0, math.nan, math.nan, math.nan, None)
    for n in range(1, len(ratios) + 1):
        if n >= MIN_PAIRS:
            last = look(ratios[:n], level_at(n, max_pairs, alpha, rho), threshold, trim)
            if last.verdict is not None:
                return last
        if FUTILITY_FROM <= n < max_pairs and n <= len(pooled):
            why = ("band" if futile(ratios[:n], pooled[n - 1], threshold, beta) else
                   "reach" if unreachable(ratios[:n], max_pairs=max_pairs, alpha=alpha,
                                          threshold=threshold, rho=rho, trim=trim,
                                          beta=beta) else "")
            if why:
                r = last if n >= MIN_PAIRS else look(ratios[:n], 0.0, threshold, trim)
                return Look(n, r.level, r.ratio, r.lo, r.hi, None, futile=why)
    if len(ratios) < MIN_PAIRS and ratios:
        r = look(ratios, 0.0, threshold)
        return Look(r.n, 0.0, r.ratio, math.nan, math.nan, None)
    return last


# ------------------------------------------------------------------- operating characteristics

def _intervals(x, level: float, trim: float):
    """Vectorised half_widths over the rows of x (benchmarks x n pairs): (lo, hi) arrays of the
    intersected interval on the log scale."""
    import numpy as np
    from scipy.stats import t as student_t

    k = x.shape[1]
    g = trimmed(k, trim)
    each = level / 2 if g else level
    m, s = x.mean(axis=1), x.std(axis=1, ddof=1)
    half = student_t.ppf(1.0 - each, k - 1) * s / math.sqrt(k)
    lo, hi = m - half, m + half
    if g:
        xs = np.sort(x, axis=1)
        w = np.clip(xs, xs[:, [g]], xs[:, [k - g - 1]])
        se = w.std(axis=1, ddof=1) / ((1.0 - 2.0 * g / k) * math.sqrt(k))
        c = xs[:, g:k - g].mean(axis=1)
        h = student_t.ppf(1.0 - each, k - 2 * g - 1) * se
        lo, hi = np.maximum(lo, c - h), np.minimum(hi, c + h)
    return lo, hi


def simulate_noise(noise, ratios=(1.0, 1.05, 1.10, 2.0), *, max_pairs: int = 8,
                   alpha: float = 0.01, threshold: float = 0.05, rho: float = RHO,
                   trim: float = TRIM, beta: float | None = FUTILITY_BETA, n: int = 20000,
                   seed: int = 0) -> list[dict]:
    """Verdict shares, futility share and mean pairs per true ratio for paired log-ratios
    d = log(ratio) + noise(rng, (n, max_pairs)), vectorised (the same looks as replay; the
    pooled sd of a look from the benchmarks of the cell that reached it, as judge() pools a
    backend's). beta None: no futility."""
    import numpy as np
    from scipy.stats import chi2, norm
    rng = np.random.default_rng(seed)
    up = math.log1p(threshold)
    zb = float(norm.ppf(1.0 - beta)) if beta else None
    reach = last_half_width(max_pairs, alpha, rho, trim)  # per unit sd (unreachable())
    out = []
    for ratio in ratios:
        d = math.log(ratio) + noise(rng, (n, max_pairs))
        verdict = np.zeros(n, dtype=np.int8)  # 0 open, 1 regression, 2 faster, 3 same, 4 futile
        used = np.full(n, max_pairs)
        for k in range(1, max_pairs + 1):
            x = d[:, :k]
            reached = verdict == 0  # the benchmarks with k pairs: judge() pools these
            if k >= MIN_PAIRS:
                lo, hi = _intervals(x, level_at(k, max_pairs, alpha, rho), trim)
                ok = lo <= hi
                v = np.where(lo > up, 1, np.where(hi < -up, 2,
                                                  np.where((lo >= -up) & (hi <= up), 3, 0)))
                v = np.where(ok, v, 0)
                new = (verdict == 0) & (v > 0)
                verdict[new], used[new] = v[new], k
            if zb is not None and FUTILITY_FROM <= k < max_pairs:
                alive = verdict == 0
                if reached.sum() >= POOL_MIN:
                    own = x.std(axis=1, ddof=1) if k > 1 else np.zeros(n)
                    pool = float(np.median(own[reached])) / math.sqrt(chi2.ppf(0.5, k - 1) /
                                                                    (k - 1))
                    half = zb * np.maximum(pool, own) / math.sqrt(k)
                    m = x.mean(axis=1)
                    f = alive & (m - half >= -up) & (m + half <= up) & \
                        np.all(np.abs(x) <= up, axis=1)
                    if k >= REACH_FROM:  # unreachable(), vectorised
                        c = np.median(x, axis=1)
                        sr = 1.4826 * np.median(np.abs(x - c[:, None]), axis=1)
                        opt = zb * sr / math.sqrt(k)
                        h = reach * sr
                        f |= alive & (sr > 0) & ~((h < up) | (c + opt - h > up) |
                                                  (c - opt + h < -up))
                    verdict[f], used[f] = 4, k
        out.append({"ratio": ratio,
                    **{name: float((verdict == code).mean()) for code, name in
                       ((1, "regression"), (2, "faster"), (3, "same"), (4, "futile"),
                        (0, "inconclusive"))},
                    "mean_pairs": float(used.mean())})
    return out


def normal_noise(sigma: float):
    """Normal pair log-ratios with standard deviation sigma (simulate_noise's noise)."""
    return lambda rng, shape: rng.normal(0.0, sigma, shape)


def resampled_noise(pool):
    """Pair log-ratios drawn with replacement from `pool` (a real A vs A run's, sign-symmetrised:
    under "no change" the balanced order makes d symmetric) (simulate_noise's noise)."""
    import numpy as np

    p = np.asarray(pool, dtype=np.float64)
    p = np.concatenate([p, -p])
    return lambda rng, shape: rng.choice(p, size=shape, replace=True)


def simulate(sigmas=(0.01, 0.015, 0.02, 0.03), ratios=(1.0, 1.05, 1.10, 2.0), *,
             max_pairs: int = 8, alpha: float = 0.01, threshold: float = 0.05,
             rho: float = RHO, trim: float = TRIM, beta: float | None = FUTILITY_BETA,
             n: int = 20000, seed: int = 0) -> list[dict]:
    """simulate_noise for normal d at each sigma; each cell also says its sigma."""
    out = []
    for sigma in sigmas:
        for c in simulate_noise(normal_noise(sigma), ratios, max_pairs=max_pairs, alpha=alpha,
                                threshold=threshold, rho=rho, trim=trim, beta=beta, n=n,
                                seed=seed):
            out.append({"sigma": sigma, **c})
    return out
