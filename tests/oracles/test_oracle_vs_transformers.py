"""reference/moe.py against transformers' own MoE blocks with identical weights, in float64.

transformers is an independent implementation (its own routing and expert loops); agreement to
fp64 rounding checks routers, experts, shared expert and biases at once.
"""

from __future__ import annotations

import pytest
import torch

from fixtures.seeds import generator
from reference.moe import MoEConfig, MoEWeights, moe_block
from suites.closeness import assert_close
from suites.tolerances import Tolerance

transformers = pytest.importorskip("transformers", reason="transformers not installed")

TOL = Tolerance(rtol=1e-9, atol=1e-12, max_norm=1e-11, rms_norm=1e-12, reason="fp64 vs fp64")
# transformers' Qwen/Mixtral/DeepSeek routers compute their softmax/sigmoid in float32 by
# design (softmax(..., dtype=torch.float)); the whole-block comparison inherits fp32 routing
# weights. The experts alone are compared at fp64 (test_experts_fp64_exact).
TOL_FP32_ROUTER = Tolerance(rtol=1e-5, atol=1e-7, max_norm=1e-6, rms_norm=1e-7,
                            reason="transformers computes router probabilities in float32")
T = 37


def _init(module: torch.nn.Module, seed: str) -> torch.nn.Module:
    g = generator("hf", seed)
    module = module.double()
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * p.shape[-1] ** -0.5)
        for name, b in module.named_buffers():
            if "bias" in name:
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64) * 0.05)
    return module.eval()


def _x(H: int, seed: str) -> torch.Tensor:
    return torch.randn(1, T, H, generator=generator("x", seed), dtype=torch.float64)


def test_qwen3_next_sparse_moe_block():
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextSparseMoeBlock

    hf_cfg = Qwen3NextConfig(hidden_size=64, moe_intermediate_size=32, num_experts=16,
                             num_experts_per_tok=4, shared_expert_intermediate_size=48,
                             norm_topk_prob=True)
    m = _init(Qwen3NextSparseMoeBlock(hf_cfg), "qwen3-next")
    cfg = MoEConfig(name="qwen3-next-tiny", hidden_size=64, moe_intermediate_size=32,
                    num_experts=16, num_experts_per_tok=4, norm_topk_prob=True,
                    shared_expert_intermediate_size=48, shared_expert_gated=True)
    se = m.shared_expert
    w = MoEWeights(gate=m.gate.weight, w13=m.experts.gate_up_proj, w2=m.experts.down_proj,
                   shared_w13=torch.cat([se.gate_proj.weight, se.up_proj.weight]),
                   shared_w2=se.down_proj.weight, shared_expert_gate=m.shared_expert_gate.weight)
    x = _x(64, "qwen3-next")
    with torch.no_grad():
        hf = m(x)[0] if isinstance(m(x), tuple) else m(x)
        ref, _, _ = moe_block(x[0], cfg, w)
    assert_close(ref, hf.reshape(T, 64), TOL_FP32_ROUTER,
                 "reference.moe_block vs Qwen3NextSparseMoeBlock")


def test_experts_fp64_exact():
    """The routed experts alone, fed the very same routing, agree to fp64 rounding."""
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextExperts

    from reference.experts import fused_experts

    hf_cfg = Qwen3NextConfig(hidden_size=64, moe_intermediate_size=32, num_experts=16,
                             num_experts_per_tok=4)
    m = _init(Qwen3NextExperts(hf_cfg), "experts")
    x = _x(64, "experts")[0]
    logits = torch.randn(T, 16, generator=generator("logits"), dtype=torch.float64)
    weights, ids = torch.topk(torch.softmax(logits, -1), 4)
    with torch.no_grad():
        hf = m(x, ids, weights)
    ref = fused_experts(x, m.gate_up_proj, m.down_proj, weights, ids)
    assert_close(ref, hf, TOL, "reference.fused_experts vs Qwen3NextExperts")


def test_mixtral_sparse_moe_block():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    hf_cfg = MixtralConfig(hidden_size=64, intermediate_size=96, num_local_experts=8,
                           num_experts_per_tok=2)
    m = _init(MixtralSparseMoeBlock(hf_cfg), "mixtral")
    cfg = MoEConfig(name="mixtral-tiny", hidden_size=64, moe_intermediate_size=96, num_experts=8,
                    num_experts_per_tok=2, norm_topk_prob=True)
    w = MoEWeights(gate=m.gate.weight, w13=m.experts.gate_up_proj, w2=m.experts.down_proj)
    x = _x(64, "mixtral")
    with torch.no_grad():
        out = m(x)
        hf = out[0] if isinstance(out, tuple) else out
        ref, _, _ = moe_block(x[0], cfg, w)
    assert_close(ref, hf.reshape(T, 64), TOL_FP32_ROUTER,
                 "reference.moe_block vs MixtralSparseMoeBlock")


def test_deepseek_v3_moe():
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    hf_cfg = DeepseekV3Config(hidden_size=64, moe_intermediate_size=32, n_routed_experts=32,
                              num_experts_per_tok=4, n_group=8, topk_group=3, n_shared_experts=1,
                              routed_scaling_factor=2.5, norm_topk_prob=True)
    m = _init(DeepseekV3MoE(hf_cfg), "deepseek-v3")
    cfg = MoEConfig(name="deepseek-v3-tiny", hidden_size=64, moe_intermediate_size=32,
                    num_experts=32, num_experts_per_tok=4, norm_topk_prob=True,
                    topk_method="noaux_tc", scoring_func="sigmoid", n_group=8, topk_group=3,
                    routed_scaling_factor=2.5, shared_expert_intermediate_size=32)
    se = m.shared_experts
    w = MoEWeights(gate=m.gate.weight, w13=m.experts.gate_up_proj, w2=m.experts.down_proj,
                   e_score_correction_bias=m.gate.e_score_correction_bias,
                   shared_w13=torch.cat([se.gate_proj.weight, se.up_proj.weight]),
                   shared_w2=se.down_proj.weight)
    x = _x(64, "deepseek-v3")
    with torch.no_grad():
        out = m(x)
        hf = out[0] if isinstance(out, tuple) else out
        ref, _, _ = moe_block(x[0], cfg, w)
    assert_close(ref, hf.reshape(T, 64), TOL_FP32_ROUTER, "reference.moe_block vs DeepseekV3MoE")


def test_gpt_oss_mlp():
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    hf_cfg = GptOssConfig(hidden_size=64, intermediate_size=32, num_local_experts=8,
                          num_experts_per_tok=2)
    m = _init(GptOssMLP(hf_cfg), "gpt-oss")
    with torch.no_grad():  # larger router bias and expert scale so the clamps engage
        m.router.bias.mul_(20)
        m.experts.gate_up_proj.mul_(8)
    cfg = MoEConfig(name="gpt-oss-tiny", hidden_size=64, moe_intermediate_size=32, num_experts=8,
                    num_experts_per_tok=2, topk_method="topk_softmax", hidden_act="swigluoai",
                    router_bias=True, expert_bias=True)
    ex = m.experts
    w = MoEWeights(gate=m.router.weight, gate_bias=m.router.bias,
                   w13=ex.gate_up_proj.transpose(1, 2), w2=ex.down_proj.transpose(1, 2),
                   w13_bias=ex.gate_up_proj_bias, w2_bias=ex.down_proj_bias)
    x = _x(64, "gpt-oss")
    with torch.no_grad():
        out = m(x)
        hf = out[0] if isinstance(out, tuple) else out
        ref, _, _ = moe_block(x[0], cfg, w)
        gate_up = x[0] @ w.w13[0].T + w.w13_bias[0]
    assert float(gate_up.abs().max()) > 7.0, "test weights too small to reach swiglu_limit=7"
    assert_close(ref, hf.reshape(T, 64), TOL, "reference.moe_block vs GptOssMLP")
