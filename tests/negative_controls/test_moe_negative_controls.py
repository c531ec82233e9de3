"""Negative controls: deliberately broken backends that the MoE checks must catch.

Each bug is planted in a wrapper around a real backend: the reference always, and vLLM's
cpu_fused_moe when it is installed (the same kinds of bugs inside vLLM's functions). A check
that no planted bug can violate is not a test yet; this file proves each one can fail.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace

import pytest
import torch

from fixtures.strategies import ExpertsProblem, RouterProblem
from reference.routing import RouterConfig, route
from suites.backends import REGISTRY
from suites.backends.base import ExpertsBackend, RouterBackend
from suites.moe import checks
from suites.properties import experts as experts_properties

BASES = [pytest.param("reference.experts", id="on-reference"),
         pytest.param("cpu_fused_moe.vec", id="on-vllm-cpu_fused_moe")]


def base_backend(name: str) -> ExpertsBackend:
    b = REGISTRY.get(name)
    if (why := b.unavailable_reason()) is not None:
        pytest.skip(f"{name}: {why}")
    return b


@dataclass
class Broken(ExpertsBackend):
    """Wraps a backend; `bug` rewrites the inputs or the output of one call."""

    inner: ExpertsBackend = field(default=None)  # type: ignore[assignment]
    bug: str = ""

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        return (self.inner.prepare(w13, w2, w13_bias, w2_bias, activation), w13.shape[0])

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        inner, E = handle
        tw, ti = topk_weights.clone(), topk_ids.clone()
        if self.bug == "dropped_expert":  # expert 0's slots are silently skipped
            tw[ti == 0] = 0.0
        if self.bug == "weight_slot_swap" and tw.shape[1] >= 2:  # slot weights misaligned
            tw[:, [0, 1]] = tw[:, [1, 0]]
        if self.bug == "zero_slot_leaks":  # a weight-0 slot still adds 1e-3 of its expert
            tw = torch.where(tw == 0, torch.full_like(tw, 1e-3), tw)
        if self.bug == "ignores_expert_map":
            expert_map = None
            ti = ti.clamp(max=E - 1)
        y = self.inner.run(inner, x, tw.contiguous(), ti.contiguous(), out=out, expert_map=expert_map)
        if self.bug == "batch_dependent":  # output leaks the batch mean
            y += (0.05 * x.double().mean(0, keepdim=True)).to(y.dtype)
        if self.bug == "position_dependent":  # row 0 handled by a different (wrong) path
            y[0] *= 1.05
        if self.bug == "decode_drift" and x.shape[0] <= 16:  # decode path 3% off
            y.mul_(1.03)
        if self.bug == "forgets_last_row" and x.shape[0] > 1:
            y[-1] = float("nan") if out is not None else y[-1]
        return y


def broken(name: str, bug: str) -> Broken:
    inner = base_backend(name)
    return Broken(name=f"broken[{bug}]({name})", inner=inner, bug=bug, dtypes=inner.dtypes,
                  activations=inner.activations, supports_bias=inner.supports_bias,
                  supports_expert_map=inner.supports_expert_map, alignment=inner.alignment)


P = ExpertsProblem(T=40, H=64, I=64, E=8, K=2, dtype="bfloat16", routing="uniform", seed=3)
P_DECODE = dc_replace(P, T=5)


def must_fail(check, *args) -> str:
    with pytest.raises(AssertionError) as e:
        check(*args)
    return str(e.value)


EXPERT_BUGS = [  # (bug, check, problem)
    ("dropped_expert", functools.partial(experts_properties.matches_oracle, checks.FLOAT_EXPERTS), P),
    ("weight_slot_swap", functools.partial(experts_properties.matches_oracle, checks.FLOAT_EXPERTS), P),
    ("decode_drift", functools.partial(experts_properties.matches_oracle, checks.FLOAT_EXPERTS), P_DECODE),
    ("decode_drift", functools.partial(experts_properties.batch_invariance, checks.FLOAT_EXPERTS), P),
    ("batch_dependent", functools.partial(experts_properties.batch_invariance, checks.FLOAT_EXPERTS), P),
    ("position_dependent", functools.partial(experts_properties.token_permutation, checks.FLOAT_EXPERTS), P),
    ("forgets_last_row", functools.partial(experts_properties.matches_oracle, checks.FLOAT_EXPERTS), P),
    ("forgets_last_row", functools.partial(experts_properties.finite_output, checks.FLOAT_EXPERTS), P),
    ("ignores_expert_map", lambda b, p: experts_properties.ep_sharding(checks.FLOAT_EXPERTS, b, p, 2), P),
    ("dropped_expert", checks.check_topk_equals_dense, P),
    # the problems on which the zero-weight check used to return a pass without comparing
    ("zero_slot_leaks", functools.partial(experts_properties.zero_weight_slots, checks.FLOAT_EXPERTS), P),
    ("zero_slot_leaks", functools.partial(experts_properties.zero_weight_slots, checks.FLOAT_EXPERTS), dc_replace(P, K=1)),
    ("zero_slot_leaks", functools.partial(experts_properties.zero_weight_slots, checks.FLOAT_EXPERTS), dc_replace(P, E=1, K=1)),
    ("zero_slot_leaks", functools.partial(experts_properties.zero_weight_slots, checks.FLOAT_EXPERTS), dc_replace(P, routing="all_to_one")),
]
# A bug in the EP path is planted only in a base that takes an expert_map (an op with no EP
# mode has nothing to break: not collected rather than skipped)
EXPERT_CASES = [pytest.param(base.values[0], bug, check, problem, id=f"{base.id}-{bug}-{i}")
                for base in BASES for i, (bug, check, problem) in enumerate(EXPERT_BUGS)
                if bug != "ignores_expert_map" or REGISTRY.get(base.values[0]).supports_expert_map]


@pytest.mark.parametrize(("base", "bug", "check", "problem"), EXPERT_CASES)
def test_planted_expert_bug_is_caught(base, bug, check, problem):
    msg = must_fail(check, broken(base, bug), problem)
    assert "backend=broken[" in msg or "broken[" in msg, msg  # the failure names the backend


@pytest.mark.parametrize("base", BASES)
def test_clean_wrapper_passes_every_check(base):
    """The wrapper with no bug passes: the controls fail because of the bug, not the wrapper."""
    b = broken(base, "")
    experts_properties.invariants(checks.FLOAT_EXPERTS, b, P, n_shards=2)
    experts_properties.matches_oracle(checks.FLOAT_EXPERTS, b, P_DECODE)
    checks.check_topk_equals_dense(b, P)


# ------------------------------------------------------------------ routers


@dataclass
class BrokenRouter(RouterBackend):
    bug: str = ""

    def route(self, logits, cfg, e_score_correction_bias=None):
        if self.bug == "no_renormalization":
            cfg = dc_replace(cfg, norm_topk_prob=False)
        if self.bug == "bias_in_weights" and e_score_correction_bias is not None:
            # weights taken from the biased scores (bias must steer selection only)
            w, ids = route(logits, cfg, e_score_correction_bias)
            s = torch.sigmoid(logits.double()) + e_score_correction_bias.double()
            w = s.gather(1, ids)
            w = w / w.sum(-1, keepdim=True) * cfg.routed_scaling_factor
            return w.float(), ids.int()
        if self.bug == "group_max_not_top2" and cfg.topk_method == "noaux_tc":
            # V2-style group score (max) where V3 sums the top two
            w, ids = route(logits, dc_replace(cfg, topk_method="group_limited_greedy"), None)
            s = torch.sigmoid(logits.double())
            return (s.gather(1, ids) / s.gather(1, ids).sum(-1, keepdim=True)
                    * cfg.routed_scaling_factor).float(), ids.int()
        if self.bug == "off_by_one_rank":
            # takes ranks 1..K instead of 0..K-1 (an off-by-one in a top-k loop)
            probs = torch.softmax(logits.double(), -1)
            top = torch.topk(probs, cfg.num_experts_per_tok + 1, dim=-1)
            ids = top.indices[:, 1:]
            w = top.values[:, 1:]
            return (w / w.sum(-1, keepdim=True)).float(), ids.int()
        if self.bug in ("fp32_plain_sum", "fp32_sum_plus_1e-20", "half_weight_when_dead"):
            # vLLM's fp32 renormalization (0/0 when every selected score underflows), the
            # transformers guard (a clean alternative: 0), or a finite but wrong weight there
            _, ids = route(logits, cfg, e_score_correction_bias)
            s = torch.sigmoid(logits.float()).gather(1, ids)
            if self.bug == "fp32_plain_sum":
                w = s / s.sum(-1, keepdim=True)
            elif self.bug == "fp32_sum_plus_1e-20":
                w = s / (s.sum(-1, keepdim=True) + 1e-20)
            else:
                w = torch.where(s == 0, 0.5, s / s.sum(-1, keepdim=True).clamp_min(1e-30))
            return (w * cfg.routed_scaling_factor).float(), ids.int()
        w, ids = route(logits, cfg, e_score_correction_bias)
        return w.float(), ids.int()


RP_GREEDY = RouterProblem(T=33, cfg=RouterConfig(num_experts=16, num_experts_per_tok=4),
                          logits_dtype="float32", routing="uniform", seed=5)
RP_V3 = RouterProblem(T=64, cfg=RouterConfig(num_experts=64, num_experts_per_tok=8,
                                             topk_method="noaux_tc", scoring_func="sigmoid",
                                             n_group=8, topk_group=4, routed_scaling_factor=2.5),
                      logits_dtype="float32", routing="uniform", seed=6)


# The nightly case (issue 14): biased selection of experts whose logits are ~-100, so their
# fp32 sigmoid scores are exactly 0 (suites/moe/checks.py renorm_underflow).
RP_DEAD = RouterProblem(T=255, cfg=RouterConfig(num_experts=2, num_experts_per_tok=1,
                                                topk_method="noaux_tc", scoring_func="sigmoid",
                                                n_group=1, topk_group=1),
                        logits_dtype="float32", routing="idle_experts", seed=1)


def test_router_dead_expert_case_is_in_the_underflow_region():
    logits, bias = RP_DEAD.tensors()
    _, ids = route(logits.double(), RP_DEAD.cfg, bias)
    assert checks.renorm_underflow(logits, RP_DEAD.cfg, ids).any()


def test_router_transformers_guard_is_accepted_in_the_underflow_region():
    checks.check_router(BrokenRouter(name="guarded-router", bug="fp32_sum_plus_1e-20"), RP_DEAD)


@pytest.mark.parametrize(("bug", "rp"), [
    ("fp32_plain_sum", RP_DEAD),
    ("half_weight_when_dead", RP_DEAD),
    ("no_renormalization", RP_GREEDY),
    ("off_by_one_rank", RP_GREEDY),
    ("bias_in_weights", RP_V3),
    ("group_max_not_top2", RP_V3),
])
def test_planted_router_bug_is_caught(bug, rp):
    must_fail(checks.check_router, BrokenRouter(name=f"broken-router[{bug}]", bug=bug), rp)
    checks.check_router(BrokenRouter(name="clean-router"), rp)  # and the clean one passes
