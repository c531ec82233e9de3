"""Negative controls for Model Runner V2's rejection sampler: bugs planted in V2's own Triton
programs (vllm/v1/worker/gpu/spec_decode/rejection_sampler_utils.py), caught by the suite's
rejection-sampler checks (suites/mtp/sampler_checks.py) run through the backend the suite uses,
vllm.v2.rejection_sample.interp (suites/backends/vllm/v2_rejection_sampler.py).

Each bug is a one-line mutation of a kernel's source, re-jitted in place for the duration of one
check (tests/negative_controls/test_triton_negative_controls.py `planted`); a mutation that no
longer applies (vLLM's source changed) fails loudly instead of passing silently. The clean
kernels pass the very same checks (test_clean_v2_sampler_passes_the_controls_checks), so a
caught mutation is the mutation, not the check.

Runs under Triton's interpreter (`nox -s triton_interpret`, TRITON_INTERPRET=1 with vLLM's CUDA
wheel); elsewhere the tests are deselected (marker `triton`) or skip with the backend's reason
(no interpreter, or a vLLM without Model Runner V2's rejection sampler). The greedy controls are
deterministic and take well under a second: interp_ci (CI's interpreter subset); the statistical
ones (1300 requests, a shift of CONTROL_SHIFT) take ~17 s each under the interpreter on a
2-core machine: the full `nox -s triton_interpret` only, like the statistical laws.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from reference.speculative import SamplingParams, SpecBatch
from suites.backends import REGISTRY
from suites.mtp.sampler_checks import RandomCase, check_greedy_exact, check_random_verification
from tests.negative_controls.test_triton_negative_controls import Mutation, planted

pytestmark = [pytest.mark.triton, pytest.mark.mtp]

V2 = "vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils"
BACKEND = "vllm.v2.rejection_sample.interp"

GREEDY_MUTATIONS = [
    Mutation("draft_read_from_the_wrong_row", "_rejection_kernel",
             "draft_sampled = tl.load(draft_sampled_ptr + logit_idx + 1).to(tl.int64)",
             "draft_sampled = tl.load(draft_sampled_ptr + logit_idx).to(tl.int64)", 1,
             "the draft at row i is verified instead of row i + 1 (row 0 holds the last "
             "sampled token, not a draft)", V2),
    Mutation("bonus_token_not_counted", "_insert_resampled_kernel",
             "tl.store(num_sampled_ptr + req_idx, num_sampled + 1)",
             "tl.store(num_sampled_ptr + req_idx, num_sampled + (resample_token_idx != end_idx - 1))",
             1, "num_sampled leaves out the bonus token of a request whose drafts all matched", V2),
]
RANDOM_MUTATIONS = [
    Mutation("acceptance_biased_upwards", "_rejection_kernel",
             "accepted = target_logprob > tl.log(u) + draft_logprob",
             "accepted = target_logprob + 0.25 > tl.log(u) + draft_logprob", 1,
             "a draft is accepted when u < 1.28 p/q instead of u < p/q", V2),
    Mutation("recovered_from_target_not_residual", "_resample_kernel",
             "ratio < 1.0,\n            target_log_probs + tldevice.log1p(-ratio),",
             "ratio == ratio,\n            target_log_probs,", 1,
             "the token after a rejection is drawn from p instead of max(0, p - q)", V2),
]
# The planted bugs are large: the law checks are sized for a shift of 0.2 (fewer requests than
# the interpreter's 0.12) to keep this file fast; still caught, at the same 1e-6 rate.
CONTROL_SHIFT = 0.2
CASE = RandomCase("v2-control", num_spec_tokens=2)


def _sampler():
    b = REGISTRY.get(BACKEND)
    if (why := b.unavailable_reason()) is not None:
        pytest.skip(f"{b.name}: {why}")
    return replace(b, name=f"{b.name}[control]", detect_shift=CONTROL_SHIFT)


def _greedy_batch() -> SpecBatch:
    """8 greedy requests, k = 3, V = 16; even rows: every draft matches (a bonus token follows),
    odd rows: the second draft is wrong."""
    V, k = 16, 3
    logits = torch.randn(8 * (k + 1), V, generator=torch.Generator().manual_seed(1))
    amax = logits.argmax(-1).view(8, k + 1)
    drafts = [amax[r, :k].tolist() if r % 2 == 0 else
              [int(amax[r, 0]), (int(amax[r, 1]) + 1) % V, 0] for r in range(8)]
    return SpecBatch(drafts, logits, [SamplingParams(temperature=0.0)] * 8, None)


@pytest.mark.interp_ci
def test_clean_v2_sampler_passes_the_greedy_control():
    check_greedy_exact(_sampler(), _greedy_batch(), 3, "clean V2 greedy")


def test_clean_v2_sampler_passes_the_random_control():
    check_random_verification(_sampler(), CASE, 7)


@pytest.mark.interp_ci
@pytest.mark.parametrize("mutation", GREEDY_MUTATIONS, ids=[m.name for m in GREEDY_MUTATIONS])
def test_planted_greedy_bug_is_caught(mutation, record):
    b = _sampler()
    with planted(mutation), pytest.raises(AssertionError) as e:
        check_greedy_exact(b, _greedy_batch(), 3, f"planted {mutation.name}")
    record(caught=str(e.value)[:200])


@pytest.mark.parametrize("mutation", RANDOM_MUTATIONS, ids=[m.name for m in RANDOM_MUTATIONS])
def test_planted_random_bug_is_caught(mutation, record):
    b = _sampler()
    with planted(mutation), pytest.raises(AssertionError) as e:
        check_random_verification(b, CASE, 7)
    record(caught=str(e.value)[:200])
