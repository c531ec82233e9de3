"""vLLM's GPU MoE kernels (the CUDA `vllm` wheel): Triton fused_experts, fused_topk, grouped_topk.

Registered everywhere; without CUDA (or with the CPU build of vLLM) they report why and the
suites skip them. Inputs are moved to the GPU here and results returned on the CPU, so suites
stay device-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suites.backends.base import (
    REGISTRY,
    ExpertsBackend,
    RouterBackend,
    UnsupportedShape,
    vllm_build_reason,
)


@dataclass
class TritonFusedExperts(ExpertsBackend):
    device: str = "cuda"
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
    activations: tuple[str, ...] = ("silu", "gelu", "swigluoai")
    supports_expert_map: bool = True

    def unavailable_reason(self):
        return vllm_build_reason("cuda")

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        E, two_i, H = w13.shape
        self.check(H=H, I=two_i // 2, E=E, dtype=w13.dtype, activation=activation,
                   bias=w13_bias is not None)
        return dict(w13=w13.cuda().contiguous(), w2=w2.cuda().contiguous(), activation=activation,
                    E=E)

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        from vllm.model_executor.layers.fused_moe.activation import MoEActivation
        from vllm.model_executor.layers.fused_moe.fused_moe import fused_experts

        n_global = handle["E"] if expert_map is None else expert_map.numel()
        y = fused_experts(
            x.cuda(), handle["w13"], handle["w2"], topk_weights.float().cuda(),
            topk_ids.int().cuda(), activation=MoEActivation(handle["activation"]),
            global_num_experts=n_global,
            expert_map=None if expert_map is None else expert_map.int().cuda(),
        )
        torch.cuda.synchronize()
        if out is None:
            return y.cpu()
        out.copy_(y.cpu())
        return out


@dataclass
class TritonRouter(RouterBackend):
    device: str = "cuda"

    def unavailable_reason(self):
        return vllm_build_reason("cuda")

    def route(self, logits, cfg, e_score_correction_bias=None):
        from vllm.model_executor.layers.fused_moe.router.fused_topk_router import fused_topk
        from vllm.model_executor.layers.fused_moe.router.grouped_topk_router import grouped_topk

        g = logits.float().cuda()
        if cfg.topk_method in ("greedy", "topk_softmax"):
            if cfg.scoring_func != "softmax":
                raise UnsupportedShape("fused_topk here is softmax routing")
            renorm = True if cfg.topk_method == "topk_softmax" else cfg.norm_topk_prob
            w, ids, _ = fused_topk(g, g, cfg.num_experts_per_tok, renorm)
            w = w * cfg.routed_scaling_factor
        else:
            bias = None
            if cfg.topk_method == "noaux_tc":
                if e_score_correction_bias is None:
                    raise UnsupportedShape("noaux_tc needs e_score_correction_bias")
                bias = e_score_correction_bias.float().cuda()
            w, ids = grouped_topk(g, g, cfg.num_experts_per_tok, cfg.norm_topk_prob,
                                  num_expert_group=cfg.n_group, topk_group=cfg.topk_group,
                                  scoring_func=cfg.scoring_func,
                                  routed_scaling_factor=cfg.routed_scaling_factor,
                                  e_score_correction_bias=bias)
        torch.cuda.synchronize()
        return w.float().cpu(), ids.int().cpu()


REGISTRY.register("triton.fused_experts", lambda: TritonFusedExperts(
    name="triton.fused_experts", description="vllm fused_moe.fused_experts (Triton)"))
REGISTRY.register("triton.router", lambda: TritonRouter(
    name="triton.router", description="vllm fused_topk / grouped_topk (CUDA)"))
