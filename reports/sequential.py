"""Sequential A/B: look after every pair, let a benchmark go as soon as its verdict is known,
and hold the error rates over the whole sequence of looks.

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
              at each end
  leaves      at the first look whose interval lies above 1 + t (regression), below 1 / (1 + t)
              (faster) or inside [1 / (1 + t), 1 + t] (same); the verdict is that look's
  undecided   still open after look N, or when the run stopped early (its --ab-budget spent):
              "inconclusive", shown with the last look's interval

Why the error rates hold: a false regression (true ratio at most 1 + t) needs some look's lower
end above the true ratio; at look n that has probability at most a_n (the t interval's
one-sided level, exact for normal d, and not exceeded at small levels for symmetric d: reports/ab.py
says why the balanced order makes d symmetric under "no change"), so over all looks at most
sum a_n = alpha (a union bound: whether the benchmark would have left earlier only removes
chances). The same holds for a false "faster" and, end by end, for a false "same" (TOST). The
looks are correlated, so the union bound is conservative: the simulation below spends 0.66-0.77%
of the 1% at a slowdown exactly at the threshold.

What it costs and buys (`python -m reports ab calibrate --sequential`: d normal with standard
deviation sigma per pair, N = 8, alpha = 1%, t = 5%, 20,000 benchmarks a cell):

  sigma | A vs A: same, mean pairs | B +10%: regression, mean pairs | B +5%: regression
    1%  |        100%, 4.6         |          100%, 4.6             |      0.75%
    1.5%|        100%, 5.4         |          100%, 5.2             |      0.67%
    2%  |         98%, 6.2         |           98%, 6.0             |      0.77%
    3%  |         58%, 7.4         |           72%, 7.0             |      0.66%
  (a 2x slowdown leaves at the first look, 3 pairs, at every sigma)

(the window-interleaved pairs of this repo's machine have sigma ~1.5% for half of the moe and
router benchmarks, reports/ab.py). RHO = 1 (Pocock-like) and an equal split over the looks
were tried: within 0.2 pairs of RHO = 3 at sigma 1%, and 5-15 points less power at sigma 2-3%.

A benchmark's verdict depends only on its own pair ratios in run order: replay() gives the same
verdict whether it runs while the pairs come in (harness/ab.py asks after each pair which
benchmarks are still open) or afterwards on the folder (`python -m reports ab judge`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_PAIRS = 3
RHO = 3.0


@dataclass(frozen=True)
class Look:
    """One benchmark's state after n pairs."""

    n: int  # pairs behind the interval
    level: float  # a_n: the one-sided level of this look's interval at each end
    ratio: float  # exp(mean d)
    lo: float
    hi: float
    verdict: str | None  # regression / faster / same, or None: still open


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


def look(ratios, level: float, threshold: float) -> Look:
    """The interval of the mean log ratio at one-sided level `level` a side, and its verdict."""
    import numpy as np
    from scipy.stats import t as student_t

    d = np.log(np.asarray(ratios, dtype=np.float64))
    n = int(d.size)
    m = float(d.mean()) if n else math.nan
    if n < 2 or not level > 0:
        return Look(n, level, math.exp(m), math.nan, math.nan, None)
    half = float(student_t.ppf(1.0 - level, n - 1) * d.std(ddof=1) / math.sqrt(n))
    lo, hi = math.exp(m - half), math.exp(m + half)
    return Look(n, level, math.exp(m), lo, hi, classify(lo, hi, threshold))


def replay(ratios, *, max_pairs: int, alpha: float, threshold: float,
           rho: float = RHO) -> Look:
    """The sequential verdict of one benchmark from its pair ratios B/A in run order: the first
    look (n = MIN_PAIRS .. max_pairs) that decides, else the last look, undecided. Ratios
    beyond max_pairs are not looked at."""
    ratios = list(ratios)[:max_pairs]
    last = Look(len(ratios), 0.0, math.nan, math.nan, math.nan, None)
    for n in range(MIN_PAIRS, len(ratios) + 1):
        last = look(ratios[:n], level_at(n, max_pairs, alpha, rho), threshold)
        if last.verdict is not None:
            return last
    if len(ratios) < MIN_PAIRS and ratios:
        r = look(ratios, 0.0, threshold)
        return Look(r.n, 0.0, r.ratio, math.nan, math.nan, None)
    return last


def simulate(sigmas=(0.01, 0.015, 0.02, 0.03), ratios=(1.0, 1.05, 1.10, 2.0), *,
             max_pairs: int = 8, alpha: float = 0.01, threshold: float = 0.05,
             rho: float = RHO, n: int = 20000, seed: int = 0) -> list[dict]:
    """Verdict shares and mean pairs used per (sigma of d, true ratio) for normal d: the
    sequential rule's operating characteristics, vectorised (the same looks as replay)."""
    import numpy as np
    from scipy.stats import t as student_t

    rng = np.random.default_rng(seed)
    up = math.log1p(threshold)
    out = []
    for sigma in sigmas:
        for ratio in ratios:
            d = rng.normal(math.log(ratio), sigma, (n, max_pairs))
            verdict = np.zeros(n, dtype=np.int8)  # 0 open, 1 regression, 2 faster, 3 same
            used = np.full(n, max_pairs)
            for k in range(MIN_PAIRS, max_pairs + 1):
                x = d[:, :k]
                m, s = x.mean(axis=1), x.std(axis=1, ddof=1)
                half = student_t.ppf(1.0 - level_at(k, max_pairs, alpha, rho), k - 1) * s / \
                    math.sqrt(k)
                lo, hi = m - half, m + half
                v = np.where(lo > up, 1, np.where(hi < -up, 2,
                                                  np.where((lo >= -up) & (hi <= up), 3, 0)))
                new = (verdict == 0) & (v > 0)
                verdict[new], used[new] = v[new], k
            out.append({"sigma": sigma, "ratio": ratio,
                        **{name: float((verdict == code).mean()) for code, name in
                           ((1, "regression"), (2, "faster"), (3, "same"), (0, "inconclusive"))},
                        "mean_pairs": float(used.mean())})
    return out
