"""Random verification: the law of what the sampler emits.

For each case, N identical requests (drafts drawn from q with a stable seed) go through the
sampler in one batch. Per position j the emitted token among requests that reached j must follow
the processed target distribution p_j (subset test, suites.stats.tv_gof), and acceptance at j among them must be
Binomial(reached, beta_j) with beta_j = sum min(p_j, q_j) (sum q_j p_j when the sampler is not
given q). False-positive rate <= 1e-6 per test (Bonferroni over its 2k + 1 comparisons); power
>= suites.stats.POWER per comparison to detect a TV shift / an acceptance shift of the backend's
detect_shift (0.02; 0.12 for the interpreted Triton backends, see suites/backends/vllm/rejection_sampler.py);
N follows from those (suites.mtp.sampler_checks.plan) and is recorded with the achieved power.
"""

from __future__ import annotations

import pytest

from fixtures.seeds import stable_seed
from suites.mtp.sampler_checks import (
    RandomCase,
    check_random_verification,
    check_target_processing,
    detect_shift,
    require_law_share,
)
from suites.stats import FALSE_POSITIVE_RATE

pytestmark = pytest.mark.mtp

RANDOM_CASES = [
    RandomCase("q-given", num_spec_tokens=2),
    RandomCase("q-absent", shape="peaked", num_spec_tokens=2, draft_probs_known=False),
    RandomCase("top-k", top_k=5, num_spec_tokens=2),
    RandomCase("top-p", top_p=0.9, num_spec_tokens=1),
    RandomCase("temperature-top-k-top-p", temperature=1.4, top_k=9, top_p=0.9, num_spec_tokens=2),
    RandomCase("peaked", shape="peaked", num_spec_tokens=3),
    RandomCase("flat", shape="flat", num_spec_tokens=3),
    RandomCase("vocab-edges", shape="edges", vocab_size=64, num_spec_tokens=2),
]


@pytest.mark.parametrize("case", RANDOM_CASES, ids=[c.name for c in RANDOM_CASES])
def test_random_verification_law(sampler_backend, case, record):
    constrained = case.temperature != 1.0 or case.top_k or case.top_p < 1.0
    require_law_share(sampler_backend, "constraints" if constrained else "verification", str(case))
    seed = stable_seed("random verification", case.name)
    pl, results = check_random_verification(sampler_backend, case, seed)
    powers = [r.power for r in results]
    summary = (f"{case}: N={pl.n_requests}, {len(results)} comparisons at alpha "
               f"{pl.alpha:.3g} each (false-positive rate {FALSE_POSITIVE_RATE:g} per test), "
               f"power >= {min(powers):.4f} (TV and acceptance shift {detect_shift(sampler_backend)}); "
               f"beta={[round(float(b), 4) for b in pl.beta]}")
    print(summary)
    record(false_positive_rate=FALSE_POSITIVE_RATE, min_power=round(min(powers), 5),
           n_requests=pl.n_requests, beta=[round(float(b), 5) for b in pl.beta],
           min_p_value=min(r.p_value for r in results))


PROCESSING_CASES = [c for c in RANDOM_CASES if c.temperature != 1.0 or c.top_k or c.top_p < 1.0]


@pytest.mark.interp_ci
@pytest.mark.parametrize("case", PROCESSING_CASES, ids=[c.name for c in PROCESSING_CASES])
def test_target_processing(sampler_backend, case, record):
    """Deterministic localization of a law failure: the distributions the sampler verifies
    drafts against equal softmax(top_p(top_k(logits / T))) to float32 accuracy."""
    worst = check_target_processing(sampler_backend, case, stable_seed("processing", case.name))
    record(max_abs_prob_error=worst)
