"""The oracles registered as backends, so every suite can run oracle-vs-oracle without vLLM."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference.experts import fused_experts
from reference.moe import moe_block, quantized_moe_block
from reference.quant import SCHEME_KINDS, quantized_fused_experts
from reference.routing import route
from suites.backends.base import (
    REGISTRY,
    ExpertsBackend,
    MoEBlockBackend,
    MTPModuleBackend,
    MTPStepOutput,
    QuantExpertsBackend,
    QuantMoEBlockBackend,
    RouterBackend,
)


@dataclass
class ReferenceExperts(ExpertsBackend):
    activations: tuple[str, ...] = ("silu", "gelu", "swigluoai")
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
    supports_bias: bool = True
    supports_expert_map: bool = True

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        return (w13, w2, w13_bias, w2_bias, activation)

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        w13, w2, b13, b2, act = handle
        y = fused_experts(x, w13, w2, topk_weights, topk_ids, act, b13, b2, expert_map)
        if out is None:
            return y.to(x.dtype)
        out.copy_(y)
        return out


@dataclass
class ReferenceRouter(RouterBackend):
    def route(self, logits, cfg, e_score_correction_bias=None):
        w, ids = route(logits, cfg, e_score_correction_bias)
        return w.float(), ids.int()


REGISTRY.register("reference.experts", lambda: ReferenceExperts(
    name="reference.experts", description="fp64 oracle (reference/experts.py)", is_reference=True))
REGISTRY.register("reference.router", lambda: ReferenceRouter(
    name="reference.router", description="fp64 oracle (reference/routing.py)", is_reference=True))


@dataclass
class ReferenceQuantExperts(QuantExpertsBackend):
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32, torch.float64)

    activations: tuple[str, ...] = ("silu", "swigluoai")
    supports_bias: bool = True

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        return dict(w13=w13, w2=w2, w13_bias=w13_bias, w2_bias=w2_bias, activation=activation)

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        y = quantized_fused_experts(x, handle["w13"], handle["w2"], topk_weights, topk_ids,
                                    handle["activation"], expert_map=expert_map,
                                    w13_bias=handle["w13_bias"], w2_bias=handle["w2_bias"])
        if out is None:
            return y.to(x.dtype)
        out.copy_(y)
        return out


for _kind in SCHEME_KINDS:
    REGISTRY.register(f"reference.quant_experts.{_kind}", lambda k=_kind: ReferenceQuantExperts(
        name=f"reference.quant_experts.{k}", scheme_kind=k, is_reference=True,
        description="fp64 dequantizing oracle (reference/quant.py)"))


@dataclass
class ReferenceMoEBlock(MoEBlockBackend):
    def forward(self, cfg, w, x):
        return moe_block(x, cfg, w)[0].to(x.dtype)


REGISTRY.register("reference.moe_block", lambda: ReferenceMoEBlock(
    name="reference.moe_block", description="fp64 oracle (reference/moe.py)", is_reference=True))


@dataclass
class ReferenceQuantMoEBlock(QuantMoEBlockBackend):
    def forward(self, cfg, w, w13, w2, x):
        self.selected = "reference.moe.quantized_moe_block"
        return quantized_moe_block(x, cfg, w, w13, w2, router_logits_dtype=x.dtype,
                                   activation_dtype=x.dtype)[0].to(x.dtype)


for _kind in SCHEME_KINDS:
    REGISTRY.register(f"reference.quant_moe_block.{_kind}", lambda k=_kind: ReferenceQuantMoEBlock(
        name=f"reference.quant_moe_block.{k}", scheme_kind=k, is_reference=True,
        description="fp64 oracle (reference/moe.py quantized_moe_block)"))


@dataclass
class ReferenceMTPModule(MTPModuleBackend):
    def prepare(self, problem, inputs):
        return inputs

    def step(self, handle, input_ids, hidden_states, positions):
        fed, logits, pre = handle.oracle_step(input_ids, hidden_states.double(), positions)
        dt = hidden_states.dtype
        return MTPStepOutput(fed.to(dt), logits.to(dt), None if pre is None else pre.to(dt))


for _family in ("qwen3_next", "deepseek_v3"):
    REGISTRY.register(f"reference.mtp_module.{_family}", lambda f=_family: ReferenceMTPModule(
        name=f"reference.mtp_module.{f}", family=f, is_reference=True,
        description="fp64 oracle (reference/mtp.py)"))
