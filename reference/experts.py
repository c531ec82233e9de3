"""Routed experts in float64: gated activations and the grouped expert computation.

Weight layout follows vLLM's fused MoE:
  w13 [E, 2I, H]   gate rows first, then up rows (Qwen, DeepSeek, Mixtral: "gate-then-up");
                   gpt-oss ("swigluoai"): gate and up rows interleaved, gate0, up0, gate1, ...
  w2  [E, H, I]
  w13_bias [E, 2I], w2_bias [E, H]   (gpt-oss only)
  topk_weights [T, K] float32, topk_ids [T, K] int32 global expert ids
  expert_map [E_global] int32: local index of each global expert, -1 where the expert lives on
             another rank (expert parallelism); w13/w2 then hold only the local experts.

out[t] = sum_k topk_weights[t, k] * (act(x[t] @ w13[e].T + b13[e]) @ w2[e].T + b2[e]),  e = topk_ids[t, k]
         over the slots whose expert is local.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

Activation = Literal["silu", "swigluoai", "gelu"]

# gpt-oss SwiGLU constants (config.json: swiglu_limit; alpha is fixed in the model code).
SWIGLU_OAI_ALPHA = 1.702
SWIGLU_OAI_LIMIT = 7.0


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:  # [n, 2I] -> [n, I]
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def gelu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:  # [n, 2I] -> [n, I]
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.gelu(gate) * up


def swiglu_oai(
    gate_up: torch.Tensor,  # [n, 2I] interleaved gate/up
    alpha: float = SWIGLU_OAI_ALPHA,
    limit: float = SWIGLU_OAI_LIMIT,
) -> torch.Tensor:  # [n, I]
    """gpt-oss: clamp gate from above and up both ways, gate * sigmoid(alpha * gate) * (up + 1)."""
    gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(gate * alpha) * (up + 1)


ACTIVATIONS = {"silu": silu_and_mul, "gelu": gelu_and_mul, "swigluoai": swiglu_oai}


def expert_mlp(
    x: torch.Tensor,  # [n, H]
    w13: torch.Tensor,  # [2I, H]
    w2: torch.Tensor,  # [H, I]
    activation: Activation = "silu",
    b13: torch.Tensor | None = None,  # [2I]
    b2: torch.Tensor | None = None,  # [H]
    quantize_intermediate: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:  # [n, H] float64
    """One expert (or a shared expert) on the rows routed to it, in float64. A quantized
    checkpoint's kernel quantizes the activated intermediate [n, I] before the second GEMM:
    `quantize_intermediate` is that step (reference/quant.py), row by row."""
    gate_up = x.double() @ w13.double().T  # [n, 2I]
    if b13 is not None:
        gate_up = gate_up + b13.double()
    h = ACTIVATIONS[activation](gate_up)  # [n, I]
    if quantize_intermediate is not None:
        h = quantize_intermediate(h)
    y = h @ w2.double().T  # [n, H]
    if b2 is not None:
        y = y + b2.double()
    return y


def fused_experts(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E_local, 2I, H]
    w2: torch.Tensor,  # [E_local, H, I]
    topk_weights: torch.Tensor,  # [T, K]
    topk_ids: torch.Tensor,  # [T, K] global ids
    activation: Activation = "silu",
    w13_bias: torch.Tensor | None = None,  # [E_local, 2I]
    w2_bias: torch.Tensor | None = None,  # [E_local, H]
    expert_map: torch.Tensor | None = None,  # [E_global] -> local id or -1
    quantize_intermediate: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:  # [T, H] float64
    """The routed experts, grouping tokens by expert so that only routed experts are upcast."""
    T, H = hidden_states.shape
    K = topk_ids.shape[1]
    ids = topk_ids.reshape(-1).long()  # [T*K]
    if expert_map is not None:
        ids = expert_map.to(ids.device).long()[ids]  # -1 where not local
    weights = topk_weights.reshape(-1).double()  # [T*K]
    dev = hidden_states.device  # the oracle runs where its inputs are (cpu, or cuda in fp64)
    token_of_slot = torch.arange(T * K, device=dev) // K  # [T*K]
    local = ids >= 0
    ids, weights, token_of_slot = ids[local], weights[local], token_of_slot[local]
    order = torch.argsort(ids, stable=True)
    ids, weights, token_of_slot = ids[order], weights[order], token_of_slot[order]
    counts = torch.bincount(ids, minlength=w13.shape[0]).tolist()

    x = hidden_states.double()  # [T, H]
    out = torch.zeros(T, H, dtype=torch.float64, device=dev)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        rows = token_of_slot[start : start + n]  # tokens routed to e
        y = expert_mlp(
            x[rows], w13[e], w2[e], activation,
            None if w13_bias is None else w13_bias[e],
            None if w2_bias is None else w2_bias[e],
            quantize_intermediate,
        )  # [n, H]
        out.index_add_(0, rows, y * weights[start : start + n, None])
        start += n
    return out


def fused_experts_magnitude(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H] (dequantized where the checkpoint is quantized)
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, K]
    topk_ids: torch.Tensor,  # [T, K]
    activation: Activation = "silu",
    w13_bias: torch.Tensor | None = None,  # [E, 2I]
    w2_bias: torch.Tensor | None = None,  # [E, H]
) -> torch.Tensor:  # [T] float64
    """The accumulated magnitude of each token's routed-experts output, max over h of
    sum_k |w_k| (|W2_e| |a_k| + |b2_e|)_h with a_k the activated intermediate: the scale the
    roundings of the terms carry (an intermediate rounded in the model dtype moves y_h by up to
    u sum_i |W2_hi a_i|; each expert's partial rounded in it, by u |w_k y_k|), which exceeds
    max_h |y_h| where the terms cancel (inside the second GEMM, or between experts)."""
    x = hidden_states.double()
    T = x.shape[0]
    mag = torch.zeros(T, w2.shape[1], dtype=torch.float64, device=x.device)  # [T, H]
    for k in range(topk_ids.shape[1]):
        for e in topk_ids[:, k].long().unique().tolist():
            rows = (topk_ids[:, k].long() == e).nonzero().squeeze(1)
            gate_up = x[rows] @ w13[e].double().T
            if w13_bias is not None:
                gate_up = gate_up + w13_bias[e].double()
            a = ACTIVATIONS[activation](gate_up).abs()  # [n, I]
            m = a @ w2[e].double().abs().T  # [n, H]
            if w2_bias is not None:
                m = m + w2_bias[e].double().abs()
            mag[rows] += topk_weights[rows, k].double().abs()[:, None] * m
    return mag.amax(1)


def shared_expert(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [2Is, H] gate_proj rows then up_proj rows
    w2: torch.Tensor,  # [H, Is] down_proj
    shared_expert_gate: torch.Tensor | None = None,  # [1, H] (Qwen: sigmoid gate)
) -> torch.Tensor:  # [T, H] float64
    """Always-on expert; Qwen2-MoE/Qwen3-Next/Qwen3.5 scale it by sigmoid(x @ gate.T)."""
    y = expert_mlp(hidden_states, w13, w2, "silu")
    if shared_expert_gate is not None:
        y = torch.sigmoid(hidden_states.double() @ shared_expert_gate.double().T) * y  # [T, 1] * [T, H]
    return y
