"""How far each family's vLLM MoE block is from the fp64 oracle, next to how far transformers'
own bf16 block of that family is, on the same problems: the error a bf16 implementation of the
model is known to make, as the yardstick for vLLM's.

    python -m tools.error_budget [--problems N] [--out FILE.md]

Both sides get the problem's bf16 weights and input; the oracle is reference/moe.py in fp64 with
the router logits rounded to bf16 (as both models' gates emit them, see check_block_matches_oracle).
Rows whose routing is a near-tie at bf16 logits are left out of both. Figures: the worst and the
median over the problems of the normalized max error (max|out - ref| / max|ref|) and the worst
normalized RMS error; ratio = vLLM's worst / transformers' worst. One line per family; a family
whose vLLM block is unavailable here says why.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from fixtures.strategies import BlockProblem
from suites.backends.vllm.layer import FAMILY_BLOCKS


def transformers_block(family: str, cfg, w) -> torch.nn.Module:
    """transformers' MoE module of the family with w's weights, in bf16."""
    E, K, H, I = cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size, cfg.moe_intermediate_size
    params = {"gate.weight": w.gate, "experts.gate_up_proj": w.w13, "experts.down_proj": w.w2}
    if family == "qwen3_next":
        from transformers import Qwen3NextConfig
        from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextSparseMoeBlock

        Is = cfg.shared_expert_intermediate_size
        m = Qwen3NextSparseMoeBlock(Qwen3NextConfig(
            hidden_size=H, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=K,
            shared_expert_intermediate_size=Is, norm_topk_prob=cfg.norm_topk_prob))
        params.update({"shared_expert.gate_proj.weight": w.shared_w13[:Is],
                       "shared_expert.up_proj.weight": w.shared_w13[Is:],
                       "shared_expert.down_proj.weight": w.shared_w2,
                       "shared_expert_gate.weight": w.shared_expert_gate})
    elif family == "qwen3_moe":
        from transformers import Qwen3MoeConfig
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

        m = Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(
            hidden_size=H, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=K,
            norm_topk_prob=cfg.norm_topk_prob))
    elif family == "mixtral":
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

        m = MixtralSparseMoeBlock(MixtralConfig(hidden_size=H, intermediate_size=I,
                                                num_local_experts=E, num_experts_per_tok=K))
    elif family == "deepseek_v3":
        from transformers import DeepseekV3Config
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

        m = DeepseekV3MoE(DeepseekV3Config(
            hidden_size=H, moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=K,
            n_group=cfg.n_group, topk_group=cfg.topk_group, n_shared_experts=1,
            routed_scaling_factor=cfg.routed_scaling_factor, norm_topk_prob=cfg.norm_topk_prob))
        params.update({"shared_experts.gate_proj.weight": w.shared_w13[:I],
                       "shared_experts.up_proj.weight": w.shared_w13[I:],
                       "shared_experts.down_proj.weight": w.shared_w2})
    elif family == "gpt_oss":
        from transformers import GptOssConfig
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

        m = GptOssMLP(GptOssConfig(hidden_size=H, intermediate_size=I, num_local_experts=E,
                                   num_experts_per_tok=K))
        params = {"router.weight": w.gate, "router.bias": w.gate_bias,
                  "experts.gate_up_proj": w.w13.transpose(1, 2),
                  "experts.gate_up_proj_bias": w.w13_bias,
                  "experts.down_proj": w.w2.transpose(1, 2), "experts.down_proj_bias": w.w2_bias}
    else:
        raise ValueError(f"unknown family {family!r}")
    m = m.to(torch.bfloat16).eval()
    own = dict(m.named_parameters())
    if set(own) != set(params):
        raise RuntimeError(f"{type(m).__name__}: parameters {sorted(own)}, mapped {sorted(params)}")
    with torch.no_grad():
        for name, value in params.items():
            own[name].copy_(value)
        if family == "deepseek_v3":
            m.gate.e_score_correction_bias.copy_(w.e_score_correction_bias)
    return m


def problems(n: int) -> list[BlockProblem]:
    """n fixed problems spanning the drawn range (E 8..512, K 1..10, H/I 64..256 / 32..128)."""
    grid = [(8, 2, 64, 32), (16, 4, 128, 64), (64, 8, 256, 128), (128, 8, 128, 64),
            (512, 10, 256, 64), (32, 4, 64, 128)]
    return [BlockProblem(E=E, K=K, H=H, I=I, Is=I, norm_topk_prob=True, T=33, gate_scale=4.0,
                         seed=i) for i, (E, K, H, I) in enumerate(grid * (n // len(grid) + 1))][:n]


def errors(family: str, bp: BlockProblem, vllm_backend) -> tuple[dict, dict | None]:
    from reference.moe import moe_block
    from suites.closeness import closeness
    from suites.moe.routing_choice import ambiguous, gate_logit_box
    from suites.tolerances import TOLERANCES

    bp = bp.for_family(family)
    x, w = bp.tensors()
    cfg = bp.cfg
    ref = moe_block(x, cfg, w, router_logits_dtype=torch.bfloat16)[0]
    # transformers' block's choice is not observed: compare the rows no bf16 rounding can flip
    keep = ~ambiguous(*gate_logit_box(x, w.gate, w.gate_bias, torch.bfloat16), cfg.router,
                      w.e_score_correction_bias)
    tol = TOLERANCES[torch.bfloat16]
    with torch.no_grad():
        hf = transformers_block(family, cfg, w)(x[None])
    hf = (hf[0] if isinstance(hf, tuple) else hf).reshape(ref.shape)
    c = closeness(hf[keep], ref[keep], tol)
    hf_err, vllm_err = {"max": c.max_norm, "rms": c.rms_norm}, None
    if vllm_backend is not None:
        c = closeness(vllm_backend.forward(cfg, w, x)[keep], ref[keep], tol)
        vllm_err = {"max": c.max_norm, "rms": c.rms_norm}
    return hf_err, vllm_err


def table(n: int) -> str:
    from suites.backends import REGISTRY

    lines = ["| family | vLLM block | vLLM max (worst / median) | vLLM rms (worst) | "
             "transformers bf16 max (worst / median) | transformers rms (worst) | ratio |",
             "|---|---|---|---|---|---|---|"]
    for family, name in FAMILY_BLOCKS.items():
        b = REGISTRY.get(name)
        reason = b.unavailable_reason()
        hf, vl = [], []
        for bp in problems(n):
            h, v = errors(family, bp, None if reason else b)
            hf.append(h)
            if v:
                vl.append(v)
        hmax = [e["max"] for e in hf]
        hcol = (f"{max(hmax):.2e} / {statistics.median(hmax):.2e} | "
                f"{max(e['rms'] for e in hf):.2e}")
        if reason:
            lines.append(f"| {family} | {name}: {reason} | - | - | {hcol} | - |")
            continue
        vmax = [e["max"] for e in vl]
        lines.append(f"| {family} | {name} | {max(vmax):.2e} / {statistics.median(vmax):.2e} | "
                     f"{max(e['rms'] for e in vl):.2e} | {hcol} | {max(vmax) / max(hmax):.2f} |")
    return "\n".join(lines) + f"\n\n{n} problems per family (T=33, gate_scale 4, bf16).\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=6)
    ap.add_argument("--out", help="also write the table to this Markdown file")
    a = ap.parse_args(argv)
    if a.problems < 1:
        ap.error("--problems must be at least 1")
    t = table(a.problems)
    print(t)
    if a.out:
        with open(a.out, "x") as f:  # never overwrite an earlier table
            f.write(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
