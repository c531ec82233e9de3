"""The whole-block property (suites/moe/test_moe_block.py) must catch the wiring bugs a model
file can have even when every kernel is right. Each bug is planted in vLLM's real
Qwen3NextSparseMoeBlock after its weights are loaded (suites/backends/vllm_layer.py `tampered`)
and, where the bug is about the oracle's own semantics, in the reference block too:

  ungated shared expert     shared_expert.expert_gate left unwired (sigmoid gate skipped)
  norm_topk_prob dropped    the block built with renormalization off while the model says on
  top-k off by one          the experts' top_k one short of num_experts_per_tok
  swapped gate/up halves    the shared expert's gate_proj and up_proj rows exchanged
  router on stale weights   the gate's rows permuted (expert labels shifted by one)

The clean block passes on the same problems (so the catches are the bugs, not the problems).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fixtures.strategies import BlockProblem
from reference.moe import moe_block
from suites.moe.checks import check_block_matches_oracle

PROBLEMS = [
    BlockProblem(E=8, K=2, H=64, I=32, Is=64, norm_topk_prob=True, T=5, gate_scale=4.0, seed=1),
    BlockProblem(E=64, K=8, H=128, I=64, Is=128, norm_topk_prob=True, T=33, gate_scale=4.0,
                 seed=2),
    BlockProblem(E=512, K=10, H=256, I=64, Is=64, norm_topk_prob=True, T=16, gate_scale=4.0,
                 seed=3),
]


@pytest.fixture(scope="module")
def vllm_block():
    from suites.backends import REGISTRY

    b = REGISTRY.get("vllm.qwen3_next_moe_block")
    if reason := b.unavailable_reason():
        pytest.skip(reason)
    return b


def _ungate(block):
    block.shared_expert.expert_gate = None


def _swap_shared_halves(block):
    w = block.shared_expert.gate_up_proj.weight
    with torch.no_grad():
        half = w.shape[0] // 2
        w.copy_(torch.cat([w[half:], w[:half]]))


def _shift_gate_rows(block):
    w = block.gate.weight
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


PLANTED = {
    "ungated shared expert": _ungate,
    "norm_topk_prob dropped": _drop_renormalization,
    "top-k off by one": _top_k_minus_one,
    "swapped shared gate/up halves": _swap_shared_halves,
    "router on shifted gate rows": _shift_gate_rows,
}


@pytest.mark.moe
@pytest.mark.parametrize("bp", PROBLEMS, ids=lambda bp: f"E{bp.E}-K{bp.K}-T{bp.T}")
def test_clean_block_passes(vllm_block, bp):
    figures = check_block_matches_oracle(vllm_block, bp)
    assert figures["compared"] > 0


@pytest.mark.moe
@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_wiring_bug_is_caught(vllm_block, bug):
    from suites.backends.vllm_layer import tampered

    caught = 0
    with tampered(vllm_block, PLANTED[bug]):
        for bp in PROBLEMS:
            try:
                check_block_matches_oracle(vllm_block, bp)
            except AssertionError as e:
                assert "block matches oracle" in str(e) and "BlockProblem(" in str(e)
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


REFERENCE_BUGS = {
    "ungated shared expert": lambda cfg, w: (cfg, dataclasses.replace(w, shared_expert_gate=None)),
    "norm_topk_prob dropped": lambda cfg, w: (dataclasses.replace(cfg, norm_topk_prob=False), w),
    "top-k off by one": lambda cfg, w: (
        dataclasses.replace(cfg, num_experts_per_tok=cfg.num_experts_per_tok - 1), w),
    "no shared expert": lambda cfg, w: (cfg, dataclasses.replace(w, shared_w13=None)),
}


@pytest.mark.parametrize("bug", sorted(REFERENCE_BUGS))
def test_planted_semantic_bug_in_the_oracle_is_caught(bug):
    """The same property without vLLM: the oracle with a bug against the clean oracle."""
    backend = _ReferenceWithBug(REFERENCE_BUGS[bug])
    caught = 0
    for bp in PROBLEMS:
        try:
            check_block_matches_oracle(backend, bp)
        except AssertionError:
            caught += 1
    assert caught == len(PROBLEMS), f"{bug}: caught on {caught} of {len(PROBLEMS)} problems"


def test_clean_oracle_passes():
    backend = _ReferenceWithBug(lambda cfg, w: (cfg, w))
    for bp in PROBLEMS:
        check_block_matches_oracle(backend, bp)
