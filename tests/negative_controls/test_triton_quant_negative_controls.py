"""Negative controls for vLLM's quantized Triton MoE paths: scale-plumbing bugs planted in vLLM's
own kernels and launch code (and in our adapter's packing), each caught by the quantized
properties of suites/moe/quant_checks.py.

The kernel mutations re-jit vLLM's mutated source (tests/negative_controls/test_triton_negative_controls.py
`planted`): the interpreter (or a GPU) runs the broken program. Runs wherever
triton.quant_experts.*(.interp) runs; elsewhere it skips with the backend's reason.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from unittest import mock

import pytest
import torch

from fixtures.strategies import QuantExpertsProblem
from reference import quant as Q
from suites.backends import REGISTRY
from suites.moe import quant_checks
from suites.properties import experts as experts_properties
from tests.negative_controls.test_triton_negative_controls import Mutation, planted

pytestmark = [pytest.mark.triton, pytest.mark.interp_ci]


def _backend(kind: str):
    b = REGISTRY.get(f"triton.quant_experts.{kind}.interp")
    if b.unavailable_reason() is not None:
        cuda = REGISTRY.get(f"triton.quant_experts.{kind}")
        if cuda.unavailable_reason() is None:
            return cuda
        pytest.skip(f"{b.name}: {b.unavailable_reason()}")
    return b


# Small problems that still cross every boundary a scale bug needs: several experts with their
# own scales, two K blocks / groups, ragged N against the fp8 block (N = H = 96 vs bn = 64),
# decode-sized T (the fp8 SWAP_AB branch an H200 takes, BLOCK_SIZE_M 16 < 64 <= BLOCK_SIZE_N).
FP8 = QuantExpertsProblem(T=5, H=96, I=64, E=4, K=2, dtype="float32", routing="uniform",
                          scheme=Q.fp8_block(64, 32), seed=3)
# BLOCK_SIZE_N = bn = 32 < 64: the block-scale branch without the swap
FP8_PREFILL = replace(FP8, T=33, scheme=Q.fp8_block(32, 32))
INT8 = QuantExpertsProblem(T=9, H=33, I=40, E=4, K=2, dtype="float32", routing="uniform",
                           scheme=Q.INT8_W8A8_CHANNEL, seed=3)
INT4_ZP = QuantExpertsProblem(T=9, H=64, I=64, E=4, K=2, dtype="float16", routing="uniform",
                              scheme=Q.int_weight_only(4, 32, True), seed=3)
INT4 = replace(INT4_ZP, scheme=Q.int_weight_only(4, 32, False))
INT8_ZP = replace(INT4_ZP, scheme=Q.int_weight_only(8, 32, True))

KERNEL = "fused_moe_kernel"
GPTQ = "fused_moe_kernel_gptq_awq"
MUTATIONS = [
    (Mutation("fp8_every_expert_reads_expert0_block_scale", KERNEL,
              "b_scale_ptr + off_experts * stride_bse + offs_bsn * stride_bsn",
              "b_scale_ptr + 0 * stride_bse + offs_bsn * stride_bsn", 1,
              "every expert's weights dequantized with expert 0's block scales"), "fp8_block", FP8),
    (Mutation("fp8_block_scale_shifted_one_k_block", KERNEL,
              "offs_ks = k_start // group_k",
              "offs_ks = (k_start // group_k + 1) % tl.cdiv(K, group_k)", 1,
              "each K block multiplied by the next K block's scales"), "fp8_block", FP8_PREFILL),
    (Mutation("fp8_swap_ab_branch_drops_weight_scale", KERNEL,
              "accumulator += tl.dot(b, a) * b_scale[:, None] * a_scale[None, :]",
              "accumulator += tl.dot(b, a) * a_scale[None, :]", 1,
              "the swapped (Hopper decode) branch forgets the weight's block scale"), "fp8_block", FP8),
    (Mutation("fp8_activation_scale_of_the_wrong_token", KERNEL,
              "a_scale_ptrs = a_scale_ptr + (offs_token // top_k) * stride_asm\n"
              "            offs_bsn",
              "a_scale_ptrs = a_scale_ptr + (offs_token // top_k // 2) * stride_asm\n"
              "            offs_bsn", 1,
              "token t's activations rescaled with token t/2's group scales"), "fp8_block", FP8_PREFILL),
    (Mutation("int8_channel_scale_of_expert0", KERNEL,
              "b_scale_ptr + off_experts * stride_bse + offs_bn[None, :] * stride_bsn\n"
              "            )\n            b_scale = tl.load(b_scale_ptrs)\n"
              "            # Load per-token scale",
              "b_scale_ptr + 0 * stride_bse + offs_bn[None, :] * stride_bsn\n"
              "            )\n            b_scale = tl.load(b_scale_ptrs)\n"
              "            # Load per-token scale", 1,
              "int8 per-channel scales of expert 0 for every expert"), "int8_channel", INT8),
    (Mutation("weight_only_zero_point_sign_flipped", GPTQ,
              "b = ((b.to(tl.float32) - b_zp) * b_scale).to(compute_type)",
              "b = ((b.to(tl.float32) + b_zp) * b_scale).to(compute_type)", 1,
              "(q + z) * s instead of (q - z) * s"), "int_weight_only", INT4_ZP),
    (Mutation("int8_weight_only_zero_point_sign_flipped", GPTQ,
              "b = ((b.to(tl.float32) - b_zp) * b_scale).to(compute_type)",
              "b = ((b.to(tl.float32) + b_zp) * b_scale).to(compute_type)", 1,
              "(q + z) * s instead of (q - z) * s, int8 codes"), "int_weight_only", INT8_ZP),
    (Mutation("int4_nibbles_swapped", GPTQ,
              "b_shifter = (offs_k[:, None] % 2) * 4",
              "b_shifter = ((offs_k[:, None] + 1) % 2) * 4", 1,
              "odd K read from the low nibble, even K from the high one"), "int_weight_only", INT4),
    (Mutation("int4_symmetric_zero_off_by_one", GPTQ,
              "b_zp_num = 8", "b_zp_num = 7", 1,
              "symmetric int4 codes centred on 7 instead of 8"), "int_weight_only", INT4),
    (Mutation("weight_only_group_index_ignores_k_block", GPTQ,
              "b_scale_ptrs = (\n            b_scale_ptr\n            + off_experts * stride_bse\n"
              "            + offs_bn[None, :] * stride_bsn\n"
              "            + ((offs_k[:, None] + BLOCK_SIZE_K * k) // group_size) * stride_bsk",
              "b_scale_ptrs = (\n            b_scale_ptr\n            + off_experts * stride_bse\n"
              "            + offs_bn[None, :] * stride_bsn\n"
              "            + ((offs_k[:, None]) // group_size) * stride_bsk", 1,
              "every K block reads the first block's group scales"), "int_weight_only", INT4_ZP),
]


@pytest.mark.parametrize("problem", [FP8, FP8_PREFILL, INT8, INT4_ZP, INT4, INT8_ZP],
                         ids=lambda p: p.scheme.name)
def test_clean_kernels_pass(problem):
    experts_properties.matches_oracle(quant_checks.QUANT_EXPERTS, _backend(_kind(problem)), problem)


def _kind(p: QuantExpertsProblem) -> str:
    s = p.scheme
    return "fp8_block" if s.weight_block else "int8_channel" if s.weight == "int8" else "int_weight_only"


@pytest.mark.parametrize("mutation,kind,problem", MUTATIONS, ids=[m[0].name for m in MUTATIONS])
def test_planted_kernel_bug_is_caught(mutation, kind, problem, record):
    b = _backend(kind)
    with planted(mutation), pytest.raises(AssertionError) as e:
        experts_properties.matches_oracle(quant_checks.QUANT_EXPERTS, b, problem)
    record(caught=str(e.value).splitlines()[1][:160])


# ----------------------------------------------------------------------------- launch code


def _batch_wide_int8(x):
    """per_token_quant_int8 with one scale for the whole batch (a per-tensor activation scale
    where the scheme says per token)."""
    amax = x.float().abs().max().clamp(min=1e-10)
    q = torch.round(x.float() * (127 / amax)).clamp(-128, 127).to(torch.int8)
    return q, (amax / 127).expand(x.shape[0], 1).contiguous()


def test_per_tensor_activation_scale_is_caught_by_batch_invariance():
    import vllm.model_executor.layers.fused_moe.utils as mu

    b = _backend("int8_channel")
    p = replace(INT8, zero_rows=0)
    with mock.patch.object(mu, "per_token_quant_int8", _batch_wide_int8), \
            pytest.raises(AssertionError, match="batch_invariance"):
        experts_properties.batch_invariance(quant_checks.QUANT_EXPERTS, b, p)


@contextlib.contextmanager
def _adapter_transposes_block_scales(b):
    """Our adapter's packing step with the classic bug: block scales [E, N/bn, K/bk] handed
    over transposed (square block grid, so every shape assertion still holds)."""
    orig = type(b).prepare

    def prepare(self, w13, w2, *args, **kwargs):
        h = orig(self, w13, w2, *args, **kwargs)
        h["w13_scale"] = h["w13_scale"].transpose(1, 2).contiguous()
        h["w2_scale"] = h["w2_scale"].transpose(1, 2).contiguous()
        return h

    with mock.patch.object(type(b), "prepare", prepare):
        yield


def test_transposed_block_scales_are_caught():
    b = _backend("fp8_block")
    p = replace(FP8_PREFILL, H=64, I=32, scheme=Q.fp8_block(32, 32))  # 2x2 and 2x2 block grids
    experts_properties.matches_oracle(quant_checks.QUANT_EXPERTS, b, p)
    with _adapter_transposes_block_scales(b), pytest.raises(AssertionError):
        experts_properties.matches_oracle(quant_checks.QUANT_EXPERTS, b, p)


def test_planted_scale_bug_also_breaks_ep_sharding():
    """Expert 0's scales for everyone also shows in the EP property (scales must travel with
    their experts into the shard), not only in the plain comparison."""
    b = _backend("fp8_block")
    with planted(MUTATIONS[0][0]), pytest.raises(AssertionError, match="ep_sharding"):
        experts_properties.ep_sharding(quant_checks.QUANT_EXPERTS, b, FP8, 2)
