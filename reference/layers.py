"""Transformer building blocks of the MTP modules, in float64: RMSNorm (plain and Qwen3-Next's
zero-centred one), partial rotary embeddings (neox layout), Qwen3-Next gated full attention, the
Qwen3-Next decoder layer with the sparse MoE block of reference/moe.py, and DeepSeek-V2/V3's
decoder layer with its attention as a parameter (MLA has no oracle here yet).

Names follow Qwen3-Next's config.json / checkpoint (q_proj, k_proj, v_proj, o_proj, q_norm,
k_norm, input_layernorm, post_attention_layernorm, partial_rotary_factor, rope_theta).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from reference.moe import MoEConfig, MoEWeights, moe_block


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # [..., H]
    """x / rms(x) * weight (Llama, DeepSeek enorm/hnorm/shared_head.norm)."""
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def zero_centred_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3-Next / Qwen3.5 RMSNorm: the weight is stored centred on 0, applied as (1 + weight)."""
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + weight.double())


def rope_cos_sin(
    positions: torch.Tensor,  # [T] int
    rotary_dim: int,  # dimensions rotated (head_dim * partial_rotary_factor), even
    rope_theta: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # cos, sin [T, rotary_dim] float64
    inv_freq = 1.0 / (rope_theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    freqs = positions.double()[:, None] * inv_freq[None, :]  # [T, rotary_dim / 2]
    emb = torch.cat([freqs, freqs], dim=-1)  # neox layout: halves, not interleaved pairs
    return emb.cos(), emb.sin()


def apply_partial_rotary(
    x: torch.Tensor,  # [T, heads, head_dim]
    cos: torch.Tensor,  # [T, rotary_dim]
    sin: torch.Tensor,  # [T, rotary_dim]
) -> torch.Tensor:  # [T, heads, head_dim]
    """Rotate the first rotary_dim dimensions of every head (rotate_half), pass the rest."""
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half1, half2 = rot[..., : r // 2], rot[..., r // 2:]
    rotated = torch.cat([-half2, half1], dim=-1)
    out = rot * cos[:, None, :] + rotated * sin[:, None, :]
    return torch.cat([out, rest], dim=-1)


@dataclass(frozen=True)
class AttentionConfig:
    hidden_size: int  # H
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    partial_rotary_factor: float = 0.25  # Qwen3-Next: a quarter of each head is rotated
    rope_theta: float = 10_000_000.0
    rms_norm_eps: float = 1e-6

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


@dataclass
class GatedAttentionWeights:
    q_proj: torch.Tensor  # [heads * head_dim * 2, H]: per head its query rows, then its gate rows
    k_proj: torch.Tensor  # [kv_heads * head_dim, H]
    v_proj: torch.Tensor  # [kv_heads * head_dim, H]
    o_proj: torch.Tensor  # [H, heads * head_dim]
    q_norm: torch.Tensor  # [head_dim] zero-centred RMSNorm per head
    k_norm: torch.Tensor  # [head_dim]


def gated_attention(
    x: torch.Tensor,  # [T, H], one sequence
    positions: torch.Tensor,  # [T]
    cfg: AttentionConfig,
    w: GatedAttentionWeights,
) -> torch.Tensor:  # [T, H]
    """Qwen3-Next full attention: per-head q/k RMSNorm, partial rotary, causal softmax
    attention with grouped KV heads, output scaled by sigmoid(gate) before o_proj."""
    T = x.shape[0]
    nh, nkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    x = x.double()
    qg = (x @ w.q_proj.double().T).view(T, nh, 2 * D)  # [T, nh, 2D]
    q, gate = qg[..., :D], qg[..., D:].reshape(T, nh * D)
    k = (x @ w.k_proj.double().T).view(T, nkv, D)
    v = (x @ w.v_proj.double().T).view(T, nkv, D)
    q = zero_centred_rms_norm(q, w.q_norm, cfg.rms_norm_eps)
    k = zero_centred_rms_norm(k, w.k_norm, cfg.rms_norm_eps)
    cos, sin = rope_cos_sin(positions, cfg.rotary_dim, cfg.rope_theta)
    q, k = apply_partial_rotary(q, cos, sin), apply_partial_rotary(k, cos, sin)
    k = k.repeat_interleave(nh // nkv, dim=1)  # [T, nh, D]
    v = v.repeat_interleave(nh // nkv, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / D ** 0.5  # [nh, T, T]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    attn = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v).reshape(T, nh * D)
    return (attn * torch.sigmoid(gate)) @ w.o_proj.double().T


@dataclass
class DecoderLayerWeights:
    input_layernorm: torch.Tensor  # [H] zero-centred
    post_attention_layernorm: torch.Tensor  # [H] zero-centred
    self_attn: GatedAttentionWeights
    mlp: MoEWeights


def _forced(trace: dict | None) -> torch.Tensor | None:
    return None if trace is None else trace.get("topk_ids")


def qwen3_next_decoder_layer(
    x: torch.Tensor,  # [T, H]
    positions: torch.Tensor,  # [T]
    attn_cfg: AttentionConfig,
    moe_cfg: MoEConfig,
    w: DecoderLayerWeights,
    trace: dict | None = None,
) -> torch.Tensor:  # [T, H] (residual stream after the layer)
    """Pre-norm full-attention layer: x + attn(norm(x)), then h + moe(norm(h)). trace, if
    given, receives the MoE block's input ("moe_input" [T, H]) and its routing ("moe_routing":
    weights, ids [T, K]); a "topk_ids" [T, K] entry in it forces the MoE block's expert choice
    (reference.moe.moe_block topk_ids)."""
    eps = attn_cfg.rms_norm_eps
    h = x.double() + gated_attention(zero_centred_rms_norm(x, w.input_layernorm, eps), positions,
                                     attn_cfg, w.self_attn)
    moe_in = zero_centred_rms_norm(h, w.post_attention_layernorm, eps)
    if trace is not None:
        trace["moe_input"] = moe_in
    moe_out, weights, ids = moe_block(moe_in, moe_cfg, w.mlp, topk_ids=_forced(trace))
    if trace is not None:
        trace["moe_routing"] = (weights, ids)
    return h + moe_out


def deepseek_v2_decoder_layer(
    x: torch.Tensor,  # [T, H]
    positions: torch.Tensor,  # [T]
    attention: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],  # (x [T, H], positions) -> [T, H]
    moe_cfg: MoEConfig,
    input_layernorm: torch.Tensor,  # [H] plain RMSNorm
    post_attention_layernorm: torch.Tensor,  # [H]
    mlp: MoEWeights,
    eps: float,
    trace: dict | None = None,
) -> torch.Tensor:  # [T, H] (residual stream after the layer)
    """DeepseekV2DecoderLayer (DeepSeek-V2/V3 and their MTP block): x + attn(rms(x)), then
    h + moe(rms(h)) with plain RMSNorm. DeepSeek-V3's attention is MLA; it is a parameter here
    (the MTP suites substitute the same attention on both sides). trace: as above."""
    h = x.double() + attention(rms_norm(x, input_layernorm, eps), positions).double()
    moe_in = rms_norm(h, post_attention_layernorm, eps)
    if trace is not None:
        trace["moe_input"] = moe_in
    moe_out, weights, ids = moe_block(moe_in, moe_cfg, mlp, topk_ids=_forced(trace))
    if trace is not None:
        trace["moe_routing"] = (weights, ids)
    return h + moe_out
