"""The whole-block property (suites/moe/test_moe_block.py) must catch the wiring bugs a model
file can have even when every kernel is right. Each bug is planted in vLLM's real block of every
family that has the part it breaks (Qwen3NextSparseMoeBlock, Qwen3MoeSparseMoeBlock, MixtralMoE,
DeepseekV2MoE with a V3 config) after its weights are loaded (suites/backends/vllm/layer.py
`tampered`) and, where the bug is about the oracle's own semantics, in the reference block too:

  ungated shared expert     shared_expert.expert_gate left unwired (sigmoid gate skipped)
  norm_topk_prob dropped    the block built with renormalization off while the model says on
  top-k off by one          the experts' top_k one short of num_experts_per_tok
  swapped gate/up halves    the shared expert's gate_proj and up_proj rows exchanged
  router on stale weights   the gate's rows permuted (expert labels shifted by one)
  scaling applied twice     DeepSeek-V3: routed_scaling_factor applied to the weights twice
  correction bias dropped   DeepSeek-V3: e_score_correction_bias not loaded (zeros)
  bias in the weights       DeepSeek-V3 (oracle): the bias added to the routed weights too
  softmax before top-k      gpt-oss: renormalize off (softmax over all experts, then top-k),
                            planted as "norm_topk_prob dropped" in vLLM and in the oracle
  router bias dropped       gpt-oss: the router's bias not loaded
  expert biases dropped     gpt-oss: gate_up_proj_bias not loaded
  gate/up de-interleaved    gpt-oss: interleaved gate/up rows loaded as two halves
  tie-break past the k-th   the router hands on the (K+1)-th expert instead of the K-th when
                            their margin is under the old near-tie band (caught by the
                            admissibility of the observed choice; the old exclusion rule
                            dropped exactly those rows and passed: its own test below)
  gate logits 1.6% off      the gate's weights scaled by 1 + 2^-6 (within the bf16 output
                            tolerance after the softmax; caught on the observed logits)

The clean block passes on the same problems (so the catches are the bugs, not the problems).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fixtures.strategies import BlockProblem
from reference.moe import moe_block
from suites.backends.vllm.layer import FAMILY_BLOCKS
from suites.moe.checks import check_block_matches_oracle

PROBLEMS = [
    BlockProblem(E=8, K=2, H=64, I=32, Is=64, norm_topk_prob=True, T=5, gate_scale=4.0, seed=1),
    BlockProblem(E=64, K=8, H=128, I=64, Is=128, norm_topk_prob=True, T=33, gate_scale=4.0,
                 seed=2),
    BlockProblem(E=512, K=10, H=256, I=64, Is=64, norm_topk_prob=True, T=16, gate_scale=4.0,
                 seed=3),
]


@pytest.fixture(scope="module", params=sorted(FAMILY_BLOCKS))
def vllm_block(request):
    from suites.backends import REGISTRY

    b = REGISTRY.get(FAMILY_BLOCKS[request.param])
    if reason := b.unavailable_reason():
        pytest.skip(reason)
    return b


def _ungate(block):
    block.shared_expert.expert_gate = None


def _swap_shared_halves(block):
    shared = getattr(block, "shared_expert", None) or getattr(block, "shared_experts", None)
    w = shared.gate_up_proj.weight
    with torch.no_grad():
        half = w.shape[0] // 2
        w.copy_(torch.cat([w[half:], w[:half]]))


def _shift_gate_rows(block):
    w = (block.router if hasattr(block, "router") else block.gate).weight
    with torch.no_grad():
        w.copy_(torch.roll(w, 1, 0))


def _router(block):
    router = getattr(block.experts, "router", None)
    if router is None or not hasattr(router, "top_k"):
        pytest.skip("this vLLM's block has no experts.router with top_k/renormalize to plant in")
    return router


def _top_k_minus_one(block):
    _router(block).top_k -= 1  # the router picks one expert fewer than the config says


def _drop_renormalization(block):
    _router(block).renormalize = False  # norm_topk_prob not plumbed to the router


def _scale_twice(block):
    _router(block).routed_scaling_factor *= block.routed_scaling_factor  # applied twice


def _drop_router_bias(block):
    with torch.no_grad():
        block.router.bias.zero_()  # gpt-oss: router bias not loaded


def _drop_expert_biases(block):
    with torch.no_grad():
        block.experts.routed_experts.w13_bias.zero_()  # gpt-oss: gate_up_proj_bias not loaded


def _deinterleave_gate_up(block):
    """gpt-oss: the checkpoint's interleaved gate/up rows loaded as two halves (the layout the
    silu families use), so swigluoai pairs the wrong rows."""
    w = block.experts.routed_experts.w13_weight
    with torch.no_grad():
        w.copy_(torch.cat([w[:, 0::2], w[:, 1::2]], 1).clone())


def _drop_correction_bias(block):
    with torch.no_grad():
        block.gate.e_score_correction_bias.zero_()  # bias not loaded: selection unsteered


def _old_band(logits: torch.Tensor) -> torch.Tensor:
    """The exclusion band of the rule this suite used before (f1b26c6 block_near_ties, softmax
    families): one bf16 unit of the row's LARGEST logit, |l| >= 1."""
    return torch.finfo(torch.bfloat16).eps * logits.double().abs().clamp_min(1.0).amax(1)


def _tie_break_past_kth(block):
    """The router's choice with its K-th expert swapped for the (K+1)-th on tokens whose
    margin between them is under the old band: a tie-breaking bug that lives only where the
    old rule did not look."""
    router = block.experts.router
    original = router.select_experts

    def select_experts(hidden_states, router_logits, *args, **kwargs):
        tw, ids = original(hidden_states, router_logits, *args, **kwargs)
        lg = router_logits.double()
        K = ids.shape[1]
        top = lg.topk(K + 1, dim=-1)
        margin = top.values[:, K - 1] - top.values[:, K]
        flip = (margin > 0) & (margin <= _old_band(lg))
        ids = ids.clone()
        for t in flip.nonzero().flatten().tolist():
            kth = int(top.indices[t, K - 1])
            ids[t][ids[t] == kth] = int(top.indices[t, K])
        return tw, ids

    router.select_experts = select_experts


def _gate_scaled(block):
    w = (block.router if hasattr(block, "router") else block.gate).weight
    with torch.no_grad():
        w.mul_(1 + 2.0 ** -6)


# bug -> the families whose block has the part it breaks
PLANTED = {
    "gate logits 1.6% off": (_gate_scaled, tuple(FAMILY_BLOCKS)),
    "ungated shared expert": (_ungate, ("qwen3_next",)),
    "norm_topk_prob dropped": (_drop_renormalization, tuple(FAMILY_BLOCKS)),
    "top-k off by one": (_top_k_minus_one, tuple(FAMILY_BLOCKS)),
    "swapped shared gate/up halves": (_swap_shared_halves, ("qwen3_next", "deepseek_v3")),
    "router on shifted gate rows": (_shift_gate_rows, tuple(FAMILY_BLOCKS)),
    "routed_scaling_factor applied twice": (_scale_twice, ("deepseek_v3",)),
    "e_score_correction_bias dropped": (_drop_correction_bias, ("deepseek_v3",)),
    "router bias dropped": (_drop_router_bias, ("gpt_oss",)),
    "expert biases dropped": (_drop_expert_biases, ("gpt_oss",)),
    "gate/up de-interleaved": (_deinterleave_gate_up, ("gpt_oss",)),
}


def _as_family(bp, family):
    """bp as the family's block; Mixtral's models all route top-2 (at K=8 the 8th weight of a
    sharp softmax is below bf16 resolution, so dropping it is not an error a block can show)."""
    bp = bp.for_family(family)
    return dataclasses.replace(bp, K=2) if family == "mixtral" else bp


def _problems(family):
    return [_as_family(bp, family) for bp in PROBLEMS]


@pytest.mark.moe
@pytest.mark.parametrize("bp", PROBLEMS, ids=lambda bp: f"E{bp.E}-K{bp.K}-T{bp.T}")
def test_clean_block_passes(vllm_block, bp):
    bp = _as_family(bp, vllm_block.family)
    figures = check_block_matches_oracle(vllm_block, bp)
    assert figures["observed"] and figures["compared"] == figures["drawn"] == bp.T


# Problems with enough tokens that some margins fall between the rounding box and the old band.
TIE_PROBLEMS = [
    BlockProblem(E=64, K=8, H=128, I=64, Is=128, norm_topk_prob=True, T=64, gate_scale=4.0,
                 seed=2),
    BlockProblem(E=512, K=10, H=256, I=64, Is=64, norm_topk_prob=True, T=64, gate_scale=4.0,
                 seed=3),
]


@pytest.mark.moe
@pytest.mark.parametrize("family", ["qwen3_next", "qwen3_moe"])
def test_tie_break_bug_was_missed_by_the_old_exclusion(family):
    """A tie-breaking bug at the selection boundary: the old rule (exclude rows within the
    band, compare the rest with the oracle's own choice) passes it; the observed choice's
    admissibility fails it, on the same problems."""
    from reference.routing import router_logits
    from suites.backends import REGISTRY
    from suites.backends.vllm.layer import tampered
    from suites.closeness import closeness
    from suites.tolerances import tolerance

    b = REGISTRY.get(FAMILY_BLOCKS[family])
    if reason := b.unavailable_reason():
        pytest.skip(reason)
    flipped = 0
    with tampered(b, _tie_break_past_kth):
        for bp in [p.for_family(family) for p in TIE_PROBLEMS]:
            x, w = bp.tensors()
            out = b.forward(bp.cfg, w, x)
            lg = router_logits(x, w.gate).to(bp.torch_dtype)
            ref = moe_block(x, bp.cfg, w, router_logits_dtype=bp.torch_dtype)
            flipped += int((b.observed_routing[0].topk_ids.long().sort(1).values
                            != ref[2].sort(1).values).any(1).sum())
            top = lg.double().topk(bp.K + 1, dim=-1).values
            keep = ~((top[:, bp.K - 1] - top[:, bp.K]) <= _old_band(lg))
            assert closeness(out[keep], ref[0][keep], tolerance(bp.torch_dtype)).ok
            with pytest.raises(AssertionError, match="routing choice"):
                check_block_matches_oracle(b, bp)
    assert flipped > 0


@pytest.mark.moe
@pytest.mark.parametrize(("vllm_block", "bug"),  # each bug in the families that have its part
                         [(f, bug) for bug in sorted(PLANTED) for f in sorted(FAMILY_BLOCKS)
                          if f in PLANTED[bug][1]], indirect=["vllm_block"])
def test_planted_wiring_bug_is_caught(vllm_block, bug):
    from suites.backends.vllm.layer import tampered

    plant, _ = PLANTED[bug]
    caught = 0
    with tampered(vllm_block, plant):
        for bp in _problems(vllm_block.family):
            try:
                check_block_matches_oracle(vllm_block, bp)
            except AssertionError as e:
                # the output, the gate's logits or the routing choice: each names the block
                assert "[block" in str(e) and "BlockProblem(" in str(e), str(e)
                caught += 1
    assert caught == len(PROBLEMS), f"{bug}: caught on {caught} of {len(PROBLEMS)} problems"


class _ReferenceWithBug:
    """The fp64 block with one semantic bug, as a backend (no vLLM needed)."""

    name = "reference.moe_block+bug"

    def __init__(self, mutate):
        self.mutate = mutate

    def forward(self, cfg, w, x):
        cfg2, w2 = self.mutate(cfg, dataclasses.replace(w))
        return moe_block(x, cfg2, w2, router_logits_dtype=x.dtype)[0].to(x.dtype)


def _bias_in_the_weights(x, cfg, w):
    """DeepSeek-V3 block whose routed weights carry the correction bias (it should steer the
    selection only)."""
    from reference.experts import fused_experts, shared_expert
    from reference.routing import route, router_logits

    logits = router_logits(x, w.gate).to(x.dtype).double()
    bias = w.e_score_correction_bias.double()
    tw, ids = route(logits, cfg.router, w.e_score_correction_bias)
    tw = tw + bias[ids] * cfg.routed_scaling_factor
    out = fused_experts(x, w.w13, w.w2, tw, ids, cfg.hidden_act)
    return (out + shared_expert(x, w.shared_w13, w.shared_w2, w.shared_expert_gate)).to(x.dtype)


class _ReferenceForward:
    name = "reference.moe_block+bug"

    def __init__(self, forward):
        self.forward = lambda cfg, w, x: forward(x, cfg, w)


ALL = tuple(FAMILY_BLOCKS)
RENORMALIZING = tuple(f for f in FAMILY_BLOCKS if f != "gpt_oss")  # gpt-oss: softmax over top-k
# bug -> (the backend with it, the families whose block has the part it breaks)
REFERENCE_BUGS = {
    "ungated shared expert": (_ReferenceWithBug(lambda cfg, w: (
        cfg, dataclasses.replace(w, shared_expert_gate=None))), ("qwen3_next",)),
    "norm_topk_prob dropped": (_ReferenceWithBug(lambda cfg, w: (
        dataclasses.replace(cfg, norm_topk_prob=False), w)), RENORMALIZING),
    "router softmax before top-k": (_ReferenceWithBug(lambda cfg, w: (
        dataclasses.replace(cfg, topk_method="greedy", norm_topk_prob=False), w)), ("gpt_oss",)),
    "top-k off by one": (_ReferenceWithBug(lambda cfg, w: (
        dataclasses.replace(cfg, num_experts_per_tok=cfg.num_experts_per_tok - 1), w)), ALL),
    "no shared expert": (_ReferenceWithBug(lambda cfg, w: (
        cfg, dataclasses.replace(w, shared_w13=None))), ("qwen3_next", "deepseek_v3")),
    "routed_scaling_factor applied twice": (_ReferenceWithBug(lambda cfg, w: (
        dataclasses.replace(cfg, routed_scaling_factor=cfg.routed_scaling_factor ** 2), w)),
        ("deepseek_v3",)),
    "correction bias in the weights": (_ReferenceForward(_bias_in_the_weights), ("deepseek_v3",)),
}
REFERENCE_CASES = [(bug, family) for bug, (_, families) in sorted(REFERENCE_BUGS.items())
                   for family in families]


@pytest.mark.parametrize(("bug", "family"), REFERENCE_CASES,
                         ids=[f"{b}-{f}" for b, f in REFERENCE_CASES])
def test_planted_semantic_bug_in_the_oracle_is_caught(bug, family):
    """The same property without vLLM: the oracle with a bug against the clean oracle."""
    backend = REFERENCE_BUGS[bug][0]
    caught = 0
    for bp in _problems(family):
        try:
            check_block_matches_oracle(backend, bp)
        except AssertionError:
            caught += 1
    assert caught == len(PROBLEMS), f"{bug}: caught on {caught} of {len(PROBLEMS)} problems"


@pytest.mark.parametrize("family", sorted(FAMILY_BLOCKS))
def test_clean_oracle_passes(family):
    backend = _ReferenceWithBug(lambda cfg, w: (cfg, w))
    for bp in _problems(family):
        check_block_matches_oracle(backend, bp)
