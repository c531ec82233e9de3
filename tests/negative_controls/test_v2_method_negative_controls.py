"""Negative controls for the verification methods of Model Runner V2's rejection sampler: bugs
planted in V2's own Triton programs (vllm/v1/worker/gpu/spec_decode/rejection_sampler_utils.py)
on the block-verification path (rejection_sample_method="block") and the synthetic-rates path
("synthetic"), caught by the suite's laws for those methods (suites/mtp/v2_method_checks.py) run
through the backend the suite uses, vllm.v2.rejection_sample.interp.

Each bug is a one-line mutation of a kernel's source for the duration of one check
(tests/negative_controls/test_triton_negative_controls.py `planted`: a mutation that no longer
applies fails loudly). The clean kernels pass the very same checks at the same sizes, so a
caught mutation is the mutation, not the check.

Sizes: the planted bugs are large, so the law checks are sized for a TV shift of CONTROL_SHIFT
(0.2) instead of the interpreter's 0.12, at the same 1e-6 false-positive rate. What the block
laws cannot see at that shift (measured with the oracle, reference/block_verification.py, over
375 random tables V 2-4, gamma 2-3): the residual after tau accepted drafts left unscaled by
p_tau (max(M_b - M_s, 0) instead of max(p_tau M_b - M_s, 0)) moves the output law by at most
TV 0.026 (0 on the suite's q-given table), and the joint ratio left uncapped (p_i > 1) by 0.016
on that table: both are below what an interpreted run of a few thousand requests can resolve;
a CUDA run sized for TV 0.02 on a table chosen for them is what would.

Also here: the synthetic-rates controls (sized for a shift of 0.3: both bugs move a rate by
>= 0.56), a seed bug (the acceptance draw keyed by the request's row in the batch) caught by
the seeded-independence check of the block and synthetic methods, and a tile bug (greedy
argmax from the first 8192-token tile only) caught by greedy verification at V = 8193
(suites/mtp/test_v2_sampler_paths.py).

interp_ci (CI's interpreter subset) runs the q-absent block control and its clean twin
(~500 requests each, ~6 s each under the interpreter on a 2-core machine), the synthetic, seed
and tile controls (a few seconds each); the q-given block controls run in the full
`nox -s triton_interpret`.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from suites.backends import REGISTRY
from suites.mtp.v2_method_checks import (
    BlockCase,
    SyntheticCase,
    check_block_verification,
    check_synthetic_rates,
)
from tests.negative_controls.test_triton_negative_controls import Mutation, planted

pytestmark = [pytest.mark.triton, pytest.mark.mtp]

V2 = "vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils"
BACKEND = "vllm.v2.rejection_sample.interp"
CONTROL_SHIFT = 0.2

Q_GIVEN = BlockCase("control-q-given", vocab_size=3, num_spec_tokens=2, scale=2.0, seed=22)
Q_ABSENT = BlockCase("control-q-absent", vocab_size=3, num_spec_tokens=2, scale=1.5, seed=22,
                     draft_probs_known=False)

BLOCK_MUTATIONS = [
    pytest.param(Mutation(
        "threshold_is_the_joint_ratio", "_rejection_kernel",
        "h = tl.where(denom > 0.0, residual_mass / denom, 1.0)", "h = prefix_joint_ratio", 1,
        "h_i = p_i at every position instead of r_i / (r_i + 1 - p_i)", V2), Q_GIVEN,
        id="threshold_is_the_joint_ratio"),
    pytest.param(Mutation(
        "residual_mass_of_the_wrong_prefix", "_compute_local_residual_mass_kernel",
        "p = tl.exp(tl.load(cumulative_log_p_ptr + logit_idx - 1).to(tl.float32))",
        "p = tl.exp(tl.load(cumulative_log_p_ptr + logit_idx).to(tl.float32))", 1,
        "r_i is formed with p_{i+1} instead of p_i (the running ratio one position late)", V2),
        Q_GIVEN, id="residual_mass_of_the_wrong_prefix"),
    pytest.param(Mutation(
        "one_hot_residual_mass_inverted", "_compute_global_residual_mass",
        "return prefix_joint_ratio * (1.0 - m_b)", "return prefix_joint_ratio * m_b", 1,
        "with one-hot drafts r_i = p_i M_b(x_{i+1}) instead of p_i (1 - M_b(x_{i+1}))", V2),
        Q_ABSENT, id="one_hot_residual_mass_inverted", marks=pytest.mark.interp_ci),
]


def _sampler():
    b = REGISTRY.get(BACKEND)
    if (why := b.unavailable_reason()) is not None:
        pytest.skip(f"{b.name}: {why}")
    return replace(b, name=f"{b.name}[control]", detect_shift=CONTROL_SHIFT)


@pytest.mark.parametrize("case", [pytest.param(Q_GIVEN, id="q-given"),
                                  pytest.param(Q_ABSENT, id="q-absent",
                                               marks=pytest.mark.interp_ci)])
def test_clean_v2_block_verification_passes_the_controls_checks(case):
    check_block_verification(_sampler(), case, 7)


@pytest.mark.parametrize("mutation,case", BLOCK_MUTATIONS)
def test_planted_block_bug_is_caught(mutation, case, record):
    b = _sampler()
    with planted(mutation), pytest.raises(AssertionError) as e:
        check_block_verification(b, case, 7)
    record(caught=str(e.value)[:300])


# ----------------------------------------------------------------------------- synthetic rates

# c = 0.9, 1/3: both planted bugs move a rate by >= 0.56; sized for a shift of 0.3 (~150
# requests, ~2 s under the interpreter) at the same 1e-6 rate
SYNTHETIC = SyntheticCase("control-synthetic", (0.9, 0.3), vocab_size=4)
SYNTHETIC_CONTROL_SHIFT = 0.3
SYNTHETIC_MUTATIONS = [
    Mutation("every_position_at_the_first_rate", "_rejection_kernel",
             "rate = tl.load(synthetic_conditional_rates_ptr + i)",
             "rate = tl.load(synthetic_conditional_rates_ptr + 0)", 2,
             "every position is accepted at c_0 instead of its own c_i", V2),
    Mutation("acceptance_inverted", "_rejection_kernel",
             "accepted = u < rate", "accepted = u > rate", 2,
             "a draft is accepted with probability 1 - c_i", V2),
]


@pytest.mark.interp_ci
def test_clean_v2_synthetic_rates_pass_the_controls_checks():
    check_synthetic_rates(replace(_sampler(), detect_shift=SYNTHETIC_CONTROL_SHIFT), SYNTHETIC, 7)


@pytest.mark.interp_ci
@pytest.mark.parametrize("mutation", SYNTHETIC_MUTATIONS, ids=[m.name for m in SYNTHETIC_MUTATIONS])
def test_planted_synthetic_bug_is_caught(mutation, record):
    b = replace(_sampler(), detect_shift=SYNTHETIC_CONTROL_SHIFT)
    with planted(mutation), pytest.raises(AssertionError) as e:
        check_synthetic_rates(b, SYNTHETIC, 7)
    record(caught=str(e.value)[:300])


# ----------------------------------------------------------------------------- seeds, tiles

SEED_MUTATION = Mutation(
    "acceptance_draw_keyed_by_batch_row", "_rejection_kernel",
    "u = tl_rand32(seed, pos, includes_zero=False)",
    "u = tl_rand32(seed + req_idx, pos, includes_zero=False)", 1,
    "the acceptance uniform depends on the request's row in the batch, not only on its seed "
    "and position", V2)
TILE_MUTATION = Mutation(
    "target_argmax_from_the_first_tile", "_compute_global_target_argmax",
    "max_block_idx = tl.argmax(local_max, axis=0)", "max_block_idx = 0", 1,
    "greedy verification takes the argmax of the first 8192-token tile only", V2)


@pytest.mark.interp_ci
@pytest.mark.parametrize("method", ["block", "synthetic"])
def test_planted_seed_bug_is_caught(method, record):
    from suites.mtp.test_v2_sampler_paths import _method_batch
    from suites.mtp.v2_method_checks import check_seeded_independence

    b = _sampler()
    batch, rates = _method_batch(method)
    check_seeded_independence(b, method, batch, 11, rates)  # clean: passes
    with planted(SEED_MUTATION), pytest.raises(AssertionError) as e:
        check_seeded_independence(b, method, batch, 11, rates)
    record(caught=str(e.value)[:300])


@pytest.mark.interp_ci
def test_planted_tile_bug_is_caught(record):
    from suites.mtp.sampler_checks import check_greedy_exact
    from suites.mtp.test_v2_sampler_paths import _tile_edge_batch

    b = _sampler()
    check_greedy_exact(b, _tile_edge_batch(8193), 3, "clean tile edges")
    with planted(TILE_MUTATION), pytest.raises(AssertionError) as e:
        check_greedy_exact(b, _tile_edge_batch(8193), 3, "planted tile bug")
    record(caught=str(e.value)[:300])
