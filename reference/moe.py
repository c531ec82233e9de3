"""The sparse MoE block: router + routed experts + (gated) shared expert, in float64.

Reads like the model files: Qwen3-Next / Qwen3.5 `SparseMoeBlock` (softmax top-k, renormalize,
shared expert scaled by sigmoid(shared_expert_gate(x))), DeepSeek-V3 `DeepseekV3MoE` (grouped
sigmoid routing with e_score_correction_bias, routed_scaling_factor, ungated shared experts),
Mixtral `MixtralSparseMoeBlock` (softmax top-2, renormalized), gpt-oss `MLPBlock` (router bias,
softmax over the top-k logits, clamped interleaved SwiGLU with biases).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference.experts import Activation, fused_experts, shared_expert
from reference.quant import QuantizedWeight, quantized_fused_experts
from reference.routing import RouterConfig, TopkMethod, route, router_logits, routing_weights


@dataclass(frozen=True)
class MoEConfig:
    name: str
    hidden_size: int  # H
    moe_intermediate_size: int  # I, per routed expert
    num_experts: int  # E
    num_experts_per_tok: int  # K
    norm_topk_prob: bool = True
    topk_method: TopkMethod = "greedy"
    scoring_func: str = "softmax"
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    shared_expert_intermediate_size: int = 0  # 0: no shared expert
    shared_expert_gated: bool = False  # Qwen: sigmoid(x @ shared_expert_gate.T) scales it
    hidden_act: Activation = "silu"
    router_bias: bool = False  # gpt-oss
    expert_bias: bool = False  # gpt-oss: w13_bias, w2_bias
    source: str = ""  # where the numbers come from (model card / config.json)
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def router(self) -> RouterConfig:
        return RouterConfig(
            num_experts=self.num_experts,
            num_experts_per_tok=self.num_experts_per_tok,
            topk_method=self.topk_method,
            scoring_func=self.scoring_func,  # type: ignore[arg-type]
            norm_topk_prob=self.norm_topk_prob,
            n_group=self.n_group,
            topk_group=self.topk_group,
            routed_scaling_factor=self.routed_scaling_factor,
        )

    @property
    def uses_correction_bias(self) -> bool:
        return self.topk_method == "noaux_tc"


@dataclass
class MoEWeights:
    gate: torch.Tensor  # [E, H] router
    w13: torch.Tensor  # [E, 2I, H]
    w2: torch.Tensor  # [E, H, I]
    gate_bias: torch.Tensor | None = None  # [E] gpt-oss router bias
    e_score_correction_bias: torch.Tensor | None = None  # [E] DeepSeek-V3
    w13_bias: torch.Tensor | None = None  # [E, 2I]
    w2_bias: torch.Tensor | None = None  # [E, H]
    shared_w13: torch.Tensor | None = None  # [2Is, H]
    shared_w2: torch.Tensor | None = None  # [H, Is]
    shared_expert_gate: torch.Tensor | None = None  # [1, H]


def moe_block(
    hidden_states: torch.Tensor,  # [T, H]
    cfg: MoEConfig,
    w: MoEWeights,
    router_logits_dtype: torch.dtype | None = None,
    topk_ids: torch.Tensor | None = None,  # [T, K] force this expert choice
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # out [T, H], weights [T, K], ids [T, K]
    """The MoE block in fp64. router_logits_dtype: the dtype a model's gate emits its logits in
    (the gate of a bf16 model is a bf16 linear layer, in transformers as in vLLM: each logit is
    rounded to bf16 before the softmax); None keeps the exact fp64 logits. topk_ids: the
    block evaluated with this expert choice instead of its own (the weights are the router's
    formula at that choice, reference.routing.routing_weights): how an implementation's own
    choice at a rounding-ambiguous token is held to the oracle."""
    return _block(hidden_states, cfg, w, router_logits_dtype, lambda tw, ti: fused_experts(
        hidden_states, w.w13, w.w2, tw, ti, cfg.hidden_act, w.w13_bias, w.w2_bias), topk_ids)


def quantized_moe_block(
    hidden_states: torch.Tensor,  # [T, H]
    cfg: MoEConfig,
    w: MoEWeights,  # router, expert biases and shared expert (w.w13 / w.w2 are not read)
    w13: QuantizedWeight,  # [E, 2I, H] the checkpoint's routed experts, gate rows then up rows
    w2: QuantizedWeight,  # [E, H, I]
    router_logits_dtype: torch.dtype | None = None,
    activation_dtype: torch.dtype | None = None,
    topk_ids: torch.Tensor | None = None,  # [T, K] force this expert choice (as moe_block)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # out [T, H], weights [T, K], ids [T, K]
    """The MoE block of a quantized release (Qwen3.5-397B-A17B-FP8, DeepSeek-V3, GPTQ/AWQ
    Qwen3-MoE, gpt-oss mxfp4): the routed experts quantized (reference/quant.py: codes
    dequantized exactly, activations quantized as the scheme says), the router and the shared
    expert left unquantized, as those releases keep them. activation_dtype: the model dtype a
    dynamic activation quantizer sees its input in (quantized_fused_experts)."""
    return _block(hidden_states, cfg, w, router_logits_dtype, lambda tw, ti: quantized_fused_experts(
        hidden_states, w13, w2, tw, ti, cfg.hidden_act, activation_dtype=activation_dtype,
        w13_bias=w.w13_bias, w2_bias=w.w2_bias), topk_ids)


def _block(hidden_states, cfg, w, router_logits_dtype, routed_experts, topk_ids=None):
    """gate -> routing (or the given choice) -> routed_experts(topk_weights, topk_ids)
    [+ shared expert], fp64."""
    logits = router_logits(hidden_states, w.gate, w.gate_bias)  # [T, E]
    if router_logits_dtype is not None:
        logits = logits.to(router_logits_dtype).double()
    if topk_ids is None:
        topk_weights, topk_ids = route(logits, cfg.router, w.e_score_correction_bias)  # [T, K]
    else:
        topk_ids = topk_ids.long()
        topk_weights = routing_weights(logits, cfg.router, topk_ids)  # [T, K]
    out = routed_experts(topk_weights, topk_ids)  # [T, H]
    if w.shared_w13 is not None:
        out = out + shared_expert(hidden_states, w.shared_w13, w.shared_w2, w.shared_expert_gate)
    return out, topk_weights, topk_ids
