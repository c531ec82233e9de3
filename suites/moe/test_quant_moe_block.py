"""vLLM's MoE layers of quantized releases (suites/backends/vllm/quant_layer.py): the family's
block built under the checkpoint's quantization config, its routed experts loaded from
checkpoint tensors by their checkpoint names through vLLM's own loader and packed by its
quantization method, held to reference/moe.py quantized_moe_block in fp64.

  fp8 [128, 128] blocks  Qwen3.5-397B-A17B-FP8 / Qwen3-Next (Qwen3NextSparseMoeBlock),
                         DeepSeek-V3 (DeepseekV2MoE)
  int8 W8A8, GPTQ / AWQ int4 groups   Qwen3-MoE (Qwen3MoeSparseMoeBlock)
  mxfp4                  gpt-oss (MLPBlock)

The kernel suite (suites/properties/test_experts.py) pins the experts op with its properties; this one
catches what only the layer gets wrong: a scale loaded into another expert's or projection's
slot, gate and up shards swapped, a checkpoint tensor read in the wrong orientation or packing,
a scale stored as its inverse (tests/negative_controls/test_quant_block_negative_controls.py plants each).
Drawn problems: every expert's scales distinct, block scales far from uniform, H ragged against
the fp8 block, group sizes 32 / 64 / 128, E up to 128. Every row is compared: the layer's own
routing is observed, judged admissible at bf16 router logits, and the oracle evaluated with it
(suites/moe/checks.py observed_choice).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.catalogue import get as get_shape
from fixtures.strategies import BlockProblem, QuantBlockProblem, quant_block_problems
from suites.backends import UnsupportedShape
from suites.moe.checks import COMPARED_FLOOR
from suites.moe.quant_checks import check_quant_block_matches_oracle

pytestmark = pytest.mark.moe


def problems_for(b, **kw):
    return quant_block_problems(b.family, b.scheme_kind, alignment=b.alignment,
                                fp8_blocks=b.fp8_blocks, zero_points=b.zero_points,
                                hidden_multiple=b.hidden_multiple, **kw)


def _run(b, p, record):
    try:
        b.check(p.cfg)
    except UnsupportedShape as e:
        pytest.skip(str(e))
    figures = check_quant_block_matches_oracle(b, p)
    record(family=b.family, experts_class=b.selected)
    record.rows(figures["compared"], figures["drawn"], COMPARED_FLOOR)
    if "max_norm" in figures:
        record.max(max_norm=figures["max_norm"], rms_norm=figures["rms_norm"])


@given(data=st.data())
def test_quant_block_matches_oracle(quant_block_backend, data, record):
    _run(quant_block_backend, data.draw(problems_for(quant_block_backend)), record)


# The quantized releases at their real hidden / intermediate sizes with CPU-sized expert counts
# (8 experts, top-2: DeepSeek-V3's 4 groups need two each): family -> catalogue shapes
RELEASES = {
    "qwen3_next": ("qwen3.5-397b-a17b",),  # Qwen3.5-397B-A17B-FP8: H 4096, I 1024, shared 1024
    "deepseek_v3": ("deepseek-v3",),  # H 7168, I 2048
    "qwen3_moe": ("qwen3-30b-a3b",),  # GPTQ/AWQ int4 g128 and W8A8 int8: H 2048, I 768
    "gpt_oss": ("gpt-oss-20b",),  # mxfp4: H 2880, I 2880
}


def release_scheme(kind: str, zero_point: bool):
    """The recipe the releases ship for a scheme kind: fp8 [128, 128] blocks, int8 per
    channel, int4 groups of 128, mxfp4."""
    from reference import quant as Q

    return {"fp8_block": lambda: Q.fp8_block(128, 128),
            "fp8_block_w8a16": lambda: Q.fp8_block(128, 128, quantize_activations=False),
            "int8_channel": lambda: Q.INT8_W8A8_CHANNEL,
            "int4_w4a8": lambda: Q.int4_w4a8(128, zero_point),
            "int_weight_only": lambda: Q.int_weight_only(4, 128, zero_point),
            "mxfp4": lambda: Q.MXFP4}[kind]()


def release_problem(b, shape: str, tokens: int) -> QuantBlockProblem:
    c = get_shape(shape)
    block = BlockProblem(E=8, K=2, H=c.hidden_size, I=c.moe_intermediate_size,
                         Is=c.shared_expert_intermediate_size or c.moe_intermediate_size,
                         norm_topk_prob=c.norm_topk_prob, T=tokens, gate_scale=4.0, seed=0,
                         family=b.family)
    return QuantBlockProblem(block=block, scheme=release_scheme(b.scheme_kind, b.zero_points[-1]),
                             spread=1.5)


@pytest.mark.slow
@pytest.mark.parametrize("tokens", [1, 33])
def test_release_block_matches_oracle(quant_block_backend, tokens, record):
    """Each quantized release of the backend's family at its real H and I."""
    b = quant_block_backend
    for shape in RELEASES[b.family]:
        _run(b, release_problem(b, shape, tokens), record)
