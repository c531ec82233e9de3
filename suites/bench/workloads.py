"""Benchmark inputs and their cost models (FLOPs and bytes moved per call).

Experts (SwiGLU, w13 [E, 2I, H] gate-then-up, w2 [E, H, I]):
  flop  = 2 T K (2 I H + H I) = 6 T K H I       (the two GEMMs; the activation's T K I
                                                  elementwise ops are left out)
  bytes = weights of the experts actually hit + x read + out written + routing read
        = n_active 3 H I s_w + 2 T H s_x + T K (4 + 4)
Quantized experts: the same FLOPs; weight bytes are the checkpoint's per expert (codes at
  their bit width, scales at their stored width, zero points at 4 bits), so the bandwidth
  roofline fraction stays honest: bytes = n_active B_expert + 2 T H s_x + 8 T K; the compute
  roof is the peak of the arithmetic done (quantized_compute_dtype), not the bf16 one
Router (logits [T, E] float32 in, weights float32 + ids int32 out):
  flop  = 0 (a selection kernel: no FLOP model; its roofline fraction is against bandwidth)
  bytes = 4 T E (+ 4 E correction bias) + 8 T K
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

import torch

from fixtures.seeds import generator, stable_seed
from reference.moe import MoEConfig


@dataclass
class ExpertsProblem:
    x: torch.Tensor  # [T, H]
    topk_weights: torch.Tensor  # [T, K] float32
    topk_ids: torch.Tensor  # [T, K] int32
    n_active: int  # distinct experts hit


def expert_weights(cfg: MoEConfig, dtype: torch.dtype, device: str = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """w13 [E, 2I, H], w2 [E, H, I] on `device`, scaled so activations stay O(1) (values do not
    matter for timing, but denormals and infinities would). Drawn one expert at a time, so the
    real shapes (DeepSeek-V3: 11 G parameters) never exist in float32."""
    E, H, I = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
    g = torch.Generator(device=device)
    g.manual_seed(stable_seed("bench-weights", cfg.name, str(dtype)))
    w13 = torch.empty(E, 2 * I, H, dtype=dtype, device=device)
    w2 = torch.empty(E, H, I, dtype=dtype, device=device)
    for e in range(E):
        w13[e] = torch.randn(2 * I, H, generator=g, device=device) * H**-0.5
        w2[e] = torch.randn(H, I, generator=g, device=device) * I**-0.5
    return w13, w2


def experts_problem(cfg: MoEConfig, tokens: int, dtype: torch.dtype) -> ExpertsProblem:
    """Uniform routing: K distinct experts a token, each expert equally likely (the balanced
    load that auxiliary-loss-free / load-balanced routers aim at)."""
    E, K, H = cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size
    g = generator("bench-tokens", cfg.name, tokens, str(dtype))
    x = torch.randn(tokens, H, generator=g).to(dtype)
    topk_ids = torch.rand(tokens, E, generator=g).topk(K, dim=-1).indices.int()  # [T, K]
    w = torch.rand(tokens, K, generator=g) + 0.1
    topk_weights = (w / w.sum(-1, keepdim=True)).float()
    return ExpertsProblem(x=x, topk_weights=topk_weights, topk_ids=topk_ids.contiguous(),
                          n_active=int(topk_ids.unique().numel()))


def quantized_expert_bytes(*weights) -> float:
    """Bytes one expert's quantized weights occupy (reference.quant.QuantizedWeight: codes at
    the scheme's bit width, scales as stored, packed zero points at the code width)."""
    total = 0.0
    for w in weights:
        E = w.shape[0]
        total += w.q.numel() * w.scheme.bits / 8 / E + w.scale.numel() * w.scale.element_size() / E
        if w.zero is not None:
            total += w.zero.numel() * w.scheme.bits / 8 / E
    return total


def quantized_compute_dtype(scheme, activation_dtype: str) -> str:
    """The arithmetic of a kernel running `scheme`, whose peak is its compute roof: the type of
    its quantized activations when it quantizes them (W8A8, W4A8: both GEMM operands are then
    int8 or fp8), else the activation dtype (weight-only: the weights are dequantized to it)."""
    return scheme.activation or activation_dtype


WEIGHT_CACHE_ENV = "SUITE_BENCH_WEIGHT_CACHE"


def quantized_weights(cfg: MoEConfig, scheme, chunk: int = 8):
    """expert_weights quantized under `scheme`, a few experts at a time (the float64 quantizer
    never holds a real shape's 11 G parameters at once): (w13, w2) QuantizedWeight on the host.

    With SUITE_BENCH_WEIGHT_CACHE naming a folder (an A/B run sets one for its processes, and
    removes it after), the codes and scales are kept there as safetensors and read back by the
    later processes: the oracle's quantizer is the same code on both sides and in every pair,
    and it took 14 s of each process of the issue-33 selection (mxfp4 at the Qwen3-Next dims:
    8 s). The backend's own packing (backend.prepare) still runs in every process."""
    from dataclasses import replace as _replace

    from reference.quant import quantize_weight

    folder = os.environ.get(WEIGHT_CACHE_ENV)
    path = None
    if folder:
        path = pathlib.Path(folder) / (f"{cfg.name}-{scheme.name}-{chunk}-"
                                       f"{stable_seed('bench-weights', cfg.name, str(torch.float32))}.safetensors")
        if path.exists():
            return _load_quantized(path, scheme)
    w13, w2 = expert_weights(cfg, torch.float32)
    out = []
    for w in (w13, w2):
        parts = [quantize_weight(w[i : i + chunk], scheme) for i in range(0, w.shape[0], chunk)]
        out.append(_replace(parts[0], q=torch.cat([p.q for p in parts]),
                            scale=torch.cat([p.scale for p in parts]),
                            zero=None if parts[0].zero is None else torch.cat([p.zero for p in parts])))
    if path is not None:
        from safetensors.torch import save_file

        tensors = {f"{w}.{k}": getattr(qw, k).contiguous() for w, qw in zip(("w13", "w2"), out)
                   for k in ("q", "scale", "zero") if getattr(qw, k) is not None}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)  # atomic: the other side of the pair may be reading the folder
        # every process with a cache takes its weights the same way (read back and copied to
        # fresh memory), the one that wrote the file too: no side times other pages than the other
        return _load_quantized(path, scheme)
    return out[0], out[1]


def _load_quantized(path: pathlib.Path, scheme):
    """(w13, w2) QuantizedWeight from the cache file, copied into this process's own memory."""
    from safetensors.torch import load_file

    from reference.quant import QuantizedWeight

    t = {k: v.clone() for k, v in load_file(str(path)).items()}
    return tuple(QuantizedWeight(scheme, t[f"{w}.q"], t[f"{w}.scale"], t.get(f"{w}.zero"))
                 for w in ("w13", "w2"))


def experts_cost(*, tokens: int, H: int, I: int, K: int, n_active: int, act_bytes: int,
                 weight_bytes: int) -> tuple[float, float]:
    flop = 6.0 * tokens * K * H * I
    nbytes = n_active * 3.0 * H * I * weight_bytes + 2.0 * tokens * H * act_bytes + 8.0 * tokens * K
    return flop, nbytes


def router_logits(tokens: int, E: int, name: str) -> torch.Tensor:
    g = generator("bench-router", name, tokens)
    return torch.randn(tokens, E, generator=g).float()


def correction_bias(E: int, name: str) -> torch.Tensor:
    return (torch.rand(E, generator=generator("bench-bias", name)) * 0.1).float()


def router_cost(*, tokens: int, E: int, K: int, bias: bool) -> tuple[float, float]:
    return 0.0, 4.0 * tokens * E + (4.0 * E if bias else 0.0) + 8.0 * tokens * K
