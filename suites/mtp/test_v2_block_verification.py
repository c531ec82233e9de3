"""Block verification (vLLM Model Runner V2's rejection_sample_method="block"; Sun et al. 2024,
reference/block_verification.py): the law of what the verifier emits.

Each case is one autoregressive target and drafter over a small vocabulary whose conditionals
depend on the whole prefix; N requests draft from the drafter, and each request's rows are
M_b(. | X^i), M_s(. | X^i) along its own drafts, as the engine computes them. Laws, held with
false-positive rate <= 1e-6 per test (Bonferroni over three subset tests) and power >= 0.99 per
comparison against a TV shift of the backend's detect_shift (0.12 for the interpreted
backends), N following from those (suites/mtp/v2_method_checks.py block_plan):
  - the output (X_1 .. X_tau, Y) follows the oracle's exact law (enumerated);
  - the output continued by target sampling follows the target's sequence law (validity: the
    emitted tokens are target samples);
  - the accepted length tau follows the closed form P(tau >= i) = E[p_i(X^i)], whose mean is at
    least token-wise verification's (both recorded; the oracle's proof and checks in
    tests/oracles/test_block_verification_oracle.py).
Greedy requests under block verification are greedy verification, exactly.
"""

from __future__ import annotations

import pytest

from fixtures.seeds import stable_seed
from suites.mtp.v2_method_checks import (
    BlockCase,
    block_greedy_batch,
    check_block_greedy_exact,
    check_block_verification,
    methods,
)
from suites.stats import FALSE_POSITIVE_RATE

pytestmark = [pytest.mark.mtp, pytest.mark.backend_filter(
    lambda b, params: "block" in methods(b), "drives rejection_sample_method='block'")]

# Tables chosen (by seed) where block verification gains over token-wise verification:
# E[tau] 1.382 vs 1.229 (given), 1.22 vs 0.91 at T = 1 (deep, here at T = 0.8); with the
# drafter's probabilities absent the two methods accept equally (p_i = prod M_b) but the
# thresholds and the one-hot residual-mass branch of the kernels differ.
BLOCK_CASES = [
    BlockCase("q-given", vocab_size=3, num_spec_tokens=2, scale=2.0, seed=22),
    BlockCase("deep-temperature", vocab_size=3, num_spec_tokens=3, scale=1.0, seed=35,
              temperature=0.8),
    BlockCase("q-absent", vocab_size=3, num_spec_tokens=2, scale=1.5, seed=22,
              draft_probs_known=False),
]


@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c.name for c in BLOCK_CASES])
def test_block_verification_law(sampler_backend, case, record):
    seed = stable_seed("block verification", case.name)
    pl, results, mean_tau = check_block_verification(sampler_backend, case, seed)
    print(f"{case}: N={pl.n_requests}, 3 subset tests at alpha {pl.alpha:.3g} each "
          f"(false-positive rate {FALSE_POSITIVE_RATE:g} per test), power >= "
          f"{min(pl.power):.4f}; E[tau] block {pl.expected_block:.4f} (observed {mean_tau:.4f}) "
          f"vs token-wise {pl.expected_token:.4f}")
    record(false_positive_rate=FALSE_POSITIVE_RATE, min_power=round(min(pl.power), 5),
           n_requests=pl.n_requests, expected_accepted_block=round(pl.expected_block, 5),
           expected_accepted_token_wise=round(pl.expected_token, 5),
           observed_mean_accepted=round(mean_tau, 5),
           min_p_value=min(r.p_value for r in results))


@pytest.mark.interp_ci
@pytest.mark.parametrize("case", BLOCK_CASES[:1] + BLOCK_CASES[2:], ids=["q-given", "q-absent"])
def test_block_verification_of_greedy_requests_is_greedy(sampler_backend, case):
    """Temperature 0 under block verification: exactly the oracle's greedy rows (the argmax
    prefix, the target argmax at the first mismatch, the bonus token iff every draft matched)."""
    seed = stable_seed("block greedy", case.name)
    check_block_greedy_exact(sampler_backend, block_greedy_batch(case, 24, seed), seed,
                             f"{sampler_backend.name} block verification, greedy, {case}")
