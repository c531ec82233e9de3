"""Synthetic acceptance (vLLM's rejection_sample_method="synthetic", a benchmarking mode of Model
Runner V2): drafts are accepted at configured rates whatever the target and draft
distributions are. SpeculativeConfig.synthetic_acceptance_rates are unconditional (r_i = P(the
first i + 1 drafts accepted), non-increasing); the verifier accepts a reached position i with
c_i = r_i / r_{i-1} (reference/speculative.py unconditional_to_conditional_rates).

Law: at every reachable position the share of requests that accept, among those that reached
it, is Binomial(reached, c_i) (exact two-sided binomial tests; false-positive rate <= 1e-6 per
test over its positions; power >= 0.99 each against an absolute shift of the backend's
detect_shift, 0.12 for the interpreted backends); a position the rates make unreachable
(r_{i-1} = 0) is never reached; every row is its accepted drafts, one token, placeholders;
greedy requests emit the target argmax after the last accepted draft (exact).
"""

from __future__ import annotations

import pytest

from fixtures.seeds import stable_seed
from suites.mtp.v2_method_checks import SyntheticCase, check_synthetic_rates, methods
from suites.stats import FALSE_POSITIVE_RATE

pytestmark = [pytest.mark.mtp, pytest.mark.backend_filter(
    lambda b, params: "synthetic" in methods(b), "drives rejection_sample_method='synthetic'")]

# The rates are far from what the distributions would give (the "random" shape accepts ~0.5
# under the standard method): a verifier that looked at p and q would fail them.
SYNTHETIC_CASES = [
    SyntheticCase("random", (0.9, 0.7, 0.5)),
    SyntheticCase("greedy", (0.8, 0.8, 0.4), temperature=0.0, shape="peaked"),
    SyntheticCase("q-absent-unreachable-tail", (0.6, 0.0), shape="flat",
                  draft_probs_known=False),
]


@pytest.mark.parametrize("case", SYNTHETIC_CASES, ids=[c.name for c in SYNTHETIC_CASES])
def test_synthetic_acceptance_rates(sampler_backend, case, record):
    seed = stable_seed("synthetic rates", case.name)
    pl, results = check_synthetic_rates(sampler_backend, case, seed)
    print(f"{case}: N={pl.n_requests}, {len(results)} binomial tests at alpha {pl.alpha:.3g} "
          f"each (false-positive rate {FALSE_POSITIVE_RATE:g} per test), power >= "
          f"{min(pl.power):.4f}; conditional rates {[round(c, 4) for c in pl.conditional]}")
    record(false_positive_rate=FALSE_POSITIVE_RATE, min_power=round(min(pl.power), 5),
           n_requests=pl.n_requests, min_p_value=min(r.p_value for r in results))
