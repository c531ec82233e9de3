"""Negative controls for the experts properties written once (suites/properties/experts.py): each
property catches a bug planted in a backend of *every* experts kind, float and quantized, so a
property written once is proven once per kind it runs on. The bugs are planted in a wrapper
around the reference backend of the kind (always) and around one vLLM kernel of the kind when
it runs here (the same bug inside vLLM's call)."""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import replace as dc_replace

import pytest
import torch

from fixtures.strategies import ExpertsProblem, QuantExpertsProblem
from reference import quant as Q
from suites.backends import REGISTRY
from suites.backends.base import ExpertsBackend, QuantExpertsBackend
from suites.moe.checks import FLOAT_EXPERTS
from suites.moe.quant_checks import QUANT_EXPERTS
from suites.properties import experts as P

FLOAT_P = ExpertsProblem(T=40, H=64, I=64, E=8, K=2, dtype="bfloat16", routing="uniform", seed=3)
QUANT_P = QuantExpertsProblem(T=40, H=64, I=64, E=8, K=2, dtype="bfloat16", routing="uniform",
                              scheme=Q.INT8_W8A8_CHANNEL, seed=3)

# (case, base backend, problem); the vLLM bases skip where they do not run (a hardware reason)
BASES = [
    pytest.param(FLOAT_EXPERTS, "reference.experts", FLOAT_P, id="experts-on-reference"),
    pytest.param(FLOAT_EXPERTS, "cpu_fused_moe.vec", FLOAT_P, id="experts-on-vllm"),
    pytest.param(QUANT_EXPERTS, "reference.quant_experts.int8_channel", QUANT_P,
                 id="quant_experts-on-reference"),
    pytest.param(QUANT_EXPERTS, "fused_experts_cpu.int8_w8a8", QUANT_P, id="quant_experts-on-vllm"),
]


def _plant(bug: str, x, tw, ti, E):
    """The inputs as the buggy kernel reads them."""
    tw, ti = tw.clone(), ti.clone()
    if bug == "zero_slot_leaks":  # a weight-0 slot still adds 1e-3 of its expert
        tw = torch.where(tw == 0, torch.full_like(tw, 1e-3), tw)
    if bug == "expert_id_tied":  # the expert with id 0 counted twice, wherever it moved
        tw = torch.where(ti == 0, tw * 2, tw)
    if bug == "reads_neighbour_row" and x.shape[0] > 1:  # row 0 computed from row 1's input
        x = x.clone()
        x[0] = x[1]
    return x, tw.contiguous(), ti.contiguous()


def _finish(bug: str, x, y):
    if bug == "batch_dependent":  # output leaks the batch mean (5% of the output's scale)
        leak = torch.tanh(x.double().mean(0, keepdim=True)) * y.double().abs().amax() * 0.05
        y += leak.to(y.dtype)
    if bug == "forgets_last_row" and x.shape[0] > 1:
        y[-1] = float("nan")
    return y


class _Planted:
    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        return (self.inner.prepare(w13, w2, w13_bias, w2_bias, activation), w13.shape[0])

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        inner, E = handle
        x2, tw, ti = _plant(self.bug, x, topk_weights, topk_ids, E)
        y = self.inner.run(inner, x2, tw, ti, out=out, expert_map=expert_map)
        return _finish(self.bug, x, y)


@dataclass
class BrokenExperts(_Planted, ExpertsBackend):
    inner: ExpertsBackend = field(default=None)  # type: ignore[assignment]
    bug: str = ""


@dataclass
class BrokenQuantExperts(_Planted, QuantExpertsBackend):
    inner: QuantExpertsBackend = field(default=None)  # type: ignore[assignment]
    bug: str = ""

    def tile_config(self, config):
        return self.inner.tile_config(config)

    def kernel_scheme(self, scheme):  # the oracle follows the wrapped kernel's arithmetic
        fix = getattr(self.inner, "kernel_scheme", None)
        return scheme if fix is None else fix(scheme)


def broken(base: str, bug: str):
    inner = REGISTRY.get(base)
    if (why := inner.unavailable_reason()) is not None:
        pytest.skip(f"{base}: {why}")
    common = dict(name=f"broken[{bug}]({base})", inner=inner, bug=bug, dtypes=inner.dtypes,
                  activations=inner.activations, supports_bias=inner.supports_bias,
                  supports_expert_map=inner.supports_expert_map, alignment=inner.alignment)
    if inner.kind == "quant_experts":
        return BrokenQuantExperts(scheme_kind=inner.scheme_kind, **common)
    return BrokenExperts(**common)


PLANTED = [  # (bug, property, problem change)
    ("zero_slot_leaks", P.zero_weight_slots, {}),
    ("zero_slot_leaks", P.zero_weight_slots, {"K": 1}),  # the token's only slot is the zero one
    ("zero_slot_leaks", P.zero_weight_slots, {"E": 1, "K": 1}),
    ("expert_id_tied", P.expert_relabeling, {}),
    ("reads_neighbour_row", P.token_permutation, {}),
    ("reads_neighbour_row", P.matches_oracle, {}),
    ("batch_dependent", P.batch_invariance, {}),
    ("forgets_last_row", P.finite_output, {}),
    ("forgets_last_row", P.matches_oracle, {}),
]


@pytest.mark.parametrize(("case", "base", "problem"), BASES)
@pytest.mark.parametrize(("bug", "prop", "change"), PLANTED,
                         ids=[f"{b}-{p.__name__}{'-' + str(c) if c else ''}" for b, p, c in PLANTED])
def test_planted_bug_is_caught_in_every_kind(case, base, problem, bug, prop, change):
    b = broken(base, bug)
    with pytest.raises(AssertionError) as e:
        prop(case, b, dc_replace(problem, **change))
    msg = str(e.value)
    assert f"[{prop.__name__}" in msg and b.name in msg and "problem:" in msg, msg


@pytest.mark.parametrize(("case", "base", "problem"), BASES)
def test_the_wrapper_without_a_bug_passes_every_property(case, base, problem):
    """What fails above is the bug, not the wrapper or the problem."""
    b = broken(base, "")
    for _, prop, change in PLANTED:
        prop(case, b, dc_replace(problem, **change))
    P.expert_relabeling(case, b, problem)
