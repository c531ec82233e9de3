"""reference/quant.py on hand-made cases and against independent implementations.

- e4m3fn rounding vs torch's float8_e4m3fn cast (an independent implementation of the OCP
  format): every representable value, every midpoint (ties to even), random values of every
  binade, subnormals; saturation is the quantizer's job (clamp to 448 first).
- Weight quantizers: round trip within half a quantum per element, scales from each block's,
  row's or group's range, zero scale units, codes in range.
- Activation quantizers: codes and scales of hand-made rows, zero rows, per token (group)
  independence.
- The quantized experts oracle equals the float oracle on the dequantized weights and
  fake-quantized activations, computed independently here.
"""

from __future__ import annotations

import pytest
import torch

from reference import quant as Q
from reference.experts import ACTIVATIONS

E4M3_ALL = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).double()
E4M3_FINITE = torch.sort(E4M3_ALL[torch.isfinite(E4M3_ALL)].unique()).values


def test_e4m3_grid_is_the_format():
    pos = E4M3_FINITE[E4M3_FINITE > 0]
    assert float(pos.max()) == 448.0
    assert float(pos.min()) == 2.0**-9  # smallest subnormal
    assert len(E4M3_FINITE) == 253  # 126 positive, 126 negative, one zero (-0 == 0 in unique)


def test_representable_values_are_fixed_points():
    assert torch.equal(Q.round_e4m3fn(E4M3_FINITE), E4M3_FINITE)


def test_midpoints_round_to_even_like_torch():
    mids = (E4M3_FINITE[1:] + E4M3_FINITE[:-1]) / 2
    ours = Q.round_e4m3fn(mids)
    theirs = mids.to(torch.float8_e4m3fn).double()
    assert torch.equal(ours, theirs)
    # a hand-made tie: 1.0625 is halfway between 1.0 (mantissa 000) and 1.125 (001) -> 1.0
    assert float(Q.round_e4m3fn(torch.tensor(1.0625))) == 1.0
    assert float(Q.round_e4m3fn(torch.tensor(1.1875))) == 1.25  # between 1.125 and 1.25 -> even


@pytest.mark.parametrize("scale", [1e-4, 1e-2, 1.0, 30.0, 200.0])
def test_random_values_match_torch(scale):
    """float32 inputs: torch casts float64 through float32 (two roundings: -107.99999708
    becomes the tie -108.0 and then -112, where one rounding gives -104), so the independent
    comparison is on values float32 holds exactly, which is what the kernels quantize."""
    x = (torch.randn(200_000, generator=torch.Generator().manual_seed(7)) * scale).clamp(-448, 448)
    assert torch.equal(Q.round_e4m3fn(x.double()), x.to(torch.float8_e4m3fn).double())


def test_subnormals_and_underflow():
    q = 2.0**-9
    cases = torch.tensor([q, 2 * q, 0.4 * q, 0.5 * q, 0.6 * q, 1.5 * q, 7 * q, 7.5 * q, -3 * q])
    want = torch.tensor([q, 2 * q, 0.0, 0.0, q, 2 * q, 7 * q, 8 * q, -3 * q])
    assert torch.equal(Q.round_e4m3fn(cases), want)


def test_overflow_is_nan_and_saturating_quantizers_clamp():
    assert float(Q.round_e4m3fn(torch.tensor(464.0))) == 448.0  # tie to even (448 = 1.110b x 2^8)
    assert torch.isnan(Q.round_e4m3fn(torch.tensor(465.0)))  # rounds past the largest value
    w = torch.full((1, 4, 4), 3.0, dtype=torch.float64)
    w[0, 0, 0] = 1e6
    qw = Q.quantize_weight(w, Q.fp8_block(4, 4))
    assert torch.isfinite(qw.q.double()).all() and float(qw.q.double().abs().max()) == 448.0


def test_round_half_away():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 2.4999, -0.49])
    assert Q.round_half_away(x).tolist() == [1.0, 2.0, 3.0, -1.0, -3.0, 2.0, -0.0]


def _weights(E=3, N=40, K=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(E, N, K, generator=g, dtype=torch.float64)
    return w * torch.exp2(torch.randint(-3, 4, (E, N, 1), generator=g).double())


SCHEMES = [Q.fp8_block(16, 32), Q.fp8_block(128, 128), Q.INT8_W8A8_CHANNEL,
           Q.int_weight_only(4, 32, False), Q.int_weight_only(4, 32, True),
           Q.int_weight_only(8, 32, False), Q.int_weight_only(8, 32, True)]


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_weight_round_trip_within_half_a_quantum(scheme):
    w = _weights()
    qw = Q.quantize_weight(w, scheme)
    err = (qw.dequantize() - w).abs()
    _, N, K = w.shape
    un, uk = Q.scale_unit(scheme, N, K)
    scale = qw.scale.double()
    if scheme.weight_block is None and scheme.group_size == 0:
        scale = scale[:, :, None]
    full = scale.repeat_interleave(un, 1)[:, :N].repeat_interleave(uk, 2)[:, :, :K]
    if scheme.weight == "float8_e4m3fn":
        # relative: half a quantum of the value's binade (2^-4), or the subnormal spacing
        bound = torch.maximum(w.abs() * 2.0**-4, full * 2.0**-10) * (1 + 1e-9)
    else:
        bound = full * (0.5 + 1e-9)
    assert (err <= bound).all(), float((err / bound).max())


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_weight_codes_in_range_and_scales_from_each_unit(scheme):
    w = _weights()
    qw = Q.quantize_weight(w, scheme)
    q = qw.q.double()
    if scheme.weight == "float8_e4m3fn":
        # each block's largest magnitude maps onto 448 exactly
        E, N, K = w.shape
        bn, bk = scheme.weight_block
        nb, kb = -(-N // bn), -(-K // bk)
        pad = torch.zeros(E, nb * bn, kb * bk, dtype=torch.float64)
        pad[:, :N, :K] = q.abs()
        assert torch.equal(pad.view(E, nb, bn, kb, bk).amax((2, 4)), torch.full((E, nb, kb), 448.0))
    elif scheme.weight == "int8":
        assert q.abs().max() <= 127 and torch.equal(q.abs().amax(-1), torch.full(q.shape[:2], 127.0))
    else:
        assert q.min() >= 0 and q.max() <= 2**scheme.bits - 1
        assert (qw.zero is not None) == scheme.zero_point


def test_block_scales_follow_their_block():
    """A block scaled by 2^5 gets a scale 2^5 larger; its neighbours do not move."""
    w = _weights(E=2, N=32, K=64)
    s0 = Q.quantize_weight(w, Q.fp8_block(16, 32)).scale
    w2 = w.clone()
    w2[1, 16:32, 0:32] *= 32
    s1 = Q.quantize_weight(w2, Q.fp8_block(16, 32)).scale
    ratio = s1.double() / s0.double()
    want = torch.ones_like(ratio)
    want[1, 1, 0] = 32
    assert torch.allclose(ratio, want, rtol=1e-6)


def test_zero_scale_unit_dequantizes_to_zero():
    w = _weights()
    w[0, :16, :32] = 0
    for scheme in (Q.fp8_block(16, 32), Q.int_weight_only(4, 32, True), Q.int_weight_only(8, 32, False)):
        qw = Q.quantize_weight(w, scheme)
        qw.scale.view(w.shape[0], -1)[0, 0] = 0.0
        d = qw.dequantize()
        assert torch.isfinite(d).all() and float(d[0, :1, :32].abs().max()) == 0.0


def test_fp8_activation_per_token_group_hand_made():
    x = torch.tensor([[448.0, 1.0, -2.0, 0.5, 8.0, 4.0, 2.0, 1.0]])
    q, s = Q.quantize_activation(x, Q.fp8_block(4, 4))
    assert s.shape == (1, 2)
    assert s[0, 0].item() == pytest.approx(1.0) and s[0, 1].item() == pytest.approx(8 / 448)
    assert q[0, :4].tolist() == [448.0, 1.0, -2.0, 0.5]  # scale 1: the values themselves
    assert q[0, 4:].tolist() == [448.0, 224.0, 112.0, 56.0]


def test_int8_activation_per_token_hand_made():
    x = torch.tensor([[127.0, -63.5, 0.2, 1.0], [0.0, 0.0, 0.0, 0.0]])
    q, s = Q.quantize_activation(x, Q.INT8_W8A8_CHANNEL)
    assert s.shape == (2, 1) and s[0, 0].item() == pytest.approx(1.0)
    assert q[0].tolist() == [127.0, -64.0, 0.0, 1.0]  # -63.5 rounds away from zero
    assert q[1].tolist() == [0.0] * 4 and s[1, 0].item() == pytest.approx(Q.ACT_EPS / 127)



def test_int8_activation_ratio_is_one_fp32_division():
    """The kernels compute x * (127 / amax) with 127 / amax one fp32 division (vec.h
    quantize_row_int8, Triton's _per_token_quant_int8). Found by the nightly (int4 W4A8, T = 1,
    x_scale 1e3, seed 0): amax = 2576, x = -1288 = -amax / 2. The kernel's ratio is -63.499996
    (-> -63); a reciprocal-then-multiply (PyTorch's `127 / tensor`) gives -63.500004 (-> -64),
    one code on a large element: an RMS error of 4.9e-3 of max|out| the oracle had caused."""
    import numpy as np

    x = torch.tensor([[2576.0, -1288.0, 1288.0, 3.0]])
    inv = np.float32(127) / np.float32(2576)  # one IEEE fp32 division
    expected = [float(np.rint(np.float32(v) * inv)) for v in x[0].tolist()]
    assert expected[1:3] == [-63.0, 63.0]
    for scheme in (Q.INT8_W8A8_CHANNEL, Q.int4_w4a8(32, False)):
        q, _ = Q.quantize_activation(x, scheme)
        assert q[0].tolist() == expected, scheme.name

@pytest.mark.parametrize("scheme", [Q.fp8_block(32, 32), Q.INT8_W8A8_CHANNEL], ids=lambda s: s.name)
def test_activation_quantization_is_per_token(scheme):
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(3))
    alone = torch.cat([Q.fake_quantize_activation(x[i : i + 1], scheme) for i in range(5)])
    assert torch.equal(Q.fake_quantize_activation(x, scheme), alone)
    y = x.clone()
    y[0] *= 1000  # a loud companion changes nobody else's codes
    assert torch.equal(Q.fake_quantize_activation(y, scheme)[1:], alone[1:])


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s.weight_block != (128, 128)],
                         ids=lambda s: s.name)
def test_quantized_experts_equal_an_independent_loop(scheme):
    """Token by token, slot by slot: fake-quantize the input, dequantized weights, silu, fake-
    quantize the intermediate, second GEMM, weighted sum (no grouping, no index_add)."""
    g = torch.Generator().manual_seed(11)
    T, H, I, E, K = 7, 64, 32, 4, 2
    w13 = Q.quantize_weight(torch.randn(E, 2 * I, H, generator=g, dtype=torch.float64) / 8, scheme)
    w2 = Q.quantize_weight(torch.randn(E, H, I, generator=g, dtype=torch.float64) / 6, scheme)
    x = torch.randn(T, H, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)]).int()
    wts = torch.rand(T, K, generator=g)
    out = Q.quantized_fused_experts(x, w13, w2, wts, ids)
    d13, d2 = w13.dequantize(), w2.dequantize()
    want = torch.zeros(T, H, dtype=torch.float64)
    for t in range(T):
        xt = Q.fake_quantize_activation(x[t : t + 1], scheme)
        for k in range(K):
            e = int(ids[t, k])
            h = ACTIVATIONS["silu"](xt @ d13[e].T)
            h = Q.fake_quantize_activation(h, scheme)
            want[t] += float(wts[t, k]) * (h @ d2[e].T)[0]
    assert torch.allclose(out, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["qwen3_next", "deepseek_v3", "gpt_oss"])
@pytest.mark.parametrize("scheme", [Q.fp8_block(128, 128), Q.INT8_W8A8_CHANNEL, Q.MXFP4],
                         ids=lambda s: s.name)
def test_quantized_moe_block_is_the_block_with_quantized_experts(family, scheme):
    """reference.moe.quantized_moe_block = moe_block's router and shared expert + the quantized
    experts: against the unquantized block on the dequantized weights (exact where the scheme
    leaves activations alone) plus, token by token, the activation quantization's share."""
    from fixtures.strategies import BlockProblem, QuantBlockProblem
    from reference.moe import moe_block, quantized_moe_block

    p = QuantBlockProblem(BlockProblem(E=8, K=2, H=128, I=128, Is=64, norm_topk_prob=True, T=6,
                                       gate_scale=4.0, seed=2, family=family), scheme)
    x, w, w13, w2 = p.tensors()
    out, tw, ti = quantized_moe_block(x, p.cfg, w, w13, w2)
    w.w13, w.w2 = w13.dequantize(), w2.dequantize()
    dense, tw_ref, ti_ref = moe_block(x, p.cfg, w)
    assert torch.equal(ti, ti_ref) and torch.equal(tw, tw_ref)
    # the routed part computed independently: per token, per slot, activations fake-quantized
    routed = torch.zeros_like(dense)
    act = ACTIVATIONS[p.cfg.hidden_act]
    for t in range(p.T):
        xt = Q.fake_quantize_activation(x[t : t + 1].double(), scheme) if scheme.activation \
            else x[t : t + 1].double()
        for k in range(tw.shape[1]):
            e = int(ti[t, k])
            h = xt @ w.w13[e].T + (0 if w.w13_bias is None else w.w13_bias[e].double())
            h = act(h)
            if scheme.activation:
                h = Q.fake_quantize_activation(h, scheme)
            y = h @ w.w2[e].T + (0 if w.w2_bias is None else w.w2_bias[e].double())
            routed[t] += float(tw[t, k]) * y[0]
    shared = dense - moe_block(x, p.cfg, type(w)(**{**vars(w), "shared_w13": None}))[0]
    assert torch.allclose(out, routed + shared, rtol=1e-10, atol=1e-10)
    if not scheme.activation:
        assert torch.allclose(out, dense, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- mxfp4 (OCP MX v1.0)

E2M1_CODES = torch.arange(16, dtype=torch.uint8)


def test_e2m1_grid_is_the_format():
    """Code s.ee.m: exponent bias 1, e = 0 subnormal (m * 0.5), else 2^(e-1) * (1 + m / 2)."""
    want = []
    for c in range(16):
        s, e, m = c >> 3, (c >> 1) & 3, c & 1
        v = m * 0.5 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2)
        want.append(-v if s else v)
    assert Q.e2m1_decode(E2M1_CODES).tolist() == want
    assert max(want) == 6.0 and sorted({abs(v) for v in want}) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


def test_e2m1_representable_values_are_fixed_points():
    assert torch.equal(Q.round_e2m1(Q.e2m1_decode(E2M1_CODES)), E2M1_CODES)


def test_e2m1_ties_to_even_and_saturation():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.26, 5.01, 7.0, 1e9, -0.75, -5.0])
    want = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.5, 6.0, 6.0, 6.0, -1.0, -4.0]
    assert Q.e2m1_decode(Q.round_e2m1(x)).tolist() == want


def test_e2m1_matches_torch_float4_cast():
    """torch's float4_e2m1fn_x2 (an independent implementation): the codes of our rounding,
    packed two a byte, read back by torch as the same values."""
    if not hasattr(torch, "float4_e2m1fn_x2"):
        pytest.skip("this torch has no float4_e2m1fn_x2")
    x = torch.randn(4096, generator=torch.Generator().manual_seed(3)) * 3
    codes = Q.round_e2m1(x)
    from reference.quant_layouts import pack_mxfp4

    packed = pack_mxfp4(codes).view(torch.float4_e2m1fn_x2)
    # torch has no float4 -> float cast: read back through the bit pattern of each nibble
    raw = packed.view(torch.uint8)
    lo, hi = raw & 0xF, raw >> 4
    assert torch.equal(torch.stack([lo, hi], -1).flatten(), codes)


def test_e8m0_matches_torch():
    codes = torch.arange(256, dtype=torch.uint8)
    ours = Q.e8m0_decode(codes)
    theirs = codes.view(torch.float8_e8m0fnu).double()
    assert torch.equal(ours[:255], theirs[:255]) and torch.isnan(ours[255]) and torch.isnan(theirs[255])
    assert float(ours[127]) == 1.0 and float(ours[0]) == 2.0**-127


def test_mxfp4_quantizer_shared_exponent():
    """OCP MX 6.3: X = 2^(floor(log2(amax)) - 2); elements round(v / X) after saturation.
    amax 6 -> X = 1 (exact); amax 7 -> X = 1 as well, 7 saturates to 6; amax 0.75 -> X = 2^-3."""
    w = torch.zeros(1, 3, 32)
    w[0, 0, :4] = torch.tensor([6.0, -3.0, 0.5, 1.5])
    w[0, 1, :2] = torch.tensor([7.0, 1.0])
    w[0, 2, :2] = torch.tensor([0.75, 0.1875])
    qw = Q.quantize_weight(w, Q.MXFP4)
    assert qw.scale.flatten().tolist() == [127, 127, 124]
    d = qw.dequantize()
    assert d[0, 0, :4].tolist() == [6.0, -3.0, 0.5, 1.5]
    assert d[0, 1, :2].tolist() == [6.0, 1.0]
    assert d[0, 2, :2].tolist() == [0.75, 0.1875]
    assert torch.equal(Q.quantize_weight(torch.zeros(1, 1, 32), Q.MXFP4).dequantize(),
                       torch.zeros(1, 1, 32, dtype=torch.float64))


def test_mxfp4_round_trip_within_half_a_step():
    """Within half of e2m1's widest gap (4 -> 6: 2X) where |w| <= 6X; above, the spec's scale
    choice saturates (amax / X lies in [4, 8)) and the error stays below 8X - 6X."""
    w = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(1)) * 0.02
    qw = Q.quantize_weight(w, Q.MXFP4)
    X = Q.e8m0_decode(qw.scale).repeat_interleave(32, 2)
    err = (qw.dequantize() - w.double()).abs()
    saturated = w.double().abs() > 6 * X
    assert (err[~saturated] <= X[~saturated] + 1e-12).all()
    assert (err[saturated] < 2 * X[saturated]).all() and saturated.any()


def test_mxfp4_dequantize_matches_transformers():
    """transformers' gpt-oss loader (convert_moe_packed_tensors) on our packed blocks and
    e8m0 scales gives our dequantized weights (an independent reading of the checkpoint)."""
    mx = pytest.importorskip("transformers.integrations.mxfp4")
    from reference.quant_layouts import pack_mxfp4

    w = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(2))
    qw = Q.quantize_weight(w, Q.MXFP4)
    blocks = pack_mxfp4(qw.q).view(2, 16, 2, 16)  # [E, N, K/32, 16] as the checkpoint has it
    theirs = mx.convert_moe_packed_tensors(blocks, qw.scale, dtype=torch.float32)  # [E, K, N]
    assert torch.equal(theirs.transpose(1, 2).double(), qw.dequantize())


# --------------------------------------------------------------------------- GPTQ / AWQ layouts


def test_gptq_word_by_hand():
    """Codes 0..7 down K for column 0 -> one word 0x76543210; zeros are stored minus one."""
    from reference import quant_layouts as L

    codes = torch.zeros(1, 8, 8, dtype=torch.uint8)  # [E, N, K]
    codes[0, 0] = torch.arange(8)
    zero = torch.full((1, 8, 1), 8, dtype=torch.uint8)
    zero[0, 1] = 0  # 0 - 1 wraps to 0xF
    qweight, qzeros, scales = L.pack_gptq(codes, zero, torch.ones(1, 8, 1))
    assert qweight.shape == (1, 1, 8) and int(qweight[0, 0, 0]) == 0x76543210
    assert qzeros.shape == (1, 1, 1) and int(qzeros[0, 0, 0]) & 0xFFFFFFFF == 0x777777F7
    assert scales.shape == (1, 1, 8)
    c2, z2, _ = L.unpack_gptq(qweight, qzeros, scales)
    assert torch.equal(c2, codes) and torch.equal(z2, zero)


def test_awq_word_by_hand():
    """Columns 0..7 with codes 0..7 along N: AWQ's order puts column AWQ_ORDER[i] in nibble i,
    so the word reads 0x75316420."""
    from reference import quant_layouts as L

    codes = torch.zeros(1, 8, 1, dtype=torch.uint8)
    codes[0, :, 0] = torch.arange(8)
    qweight, qzeros, _ = L.pack_awq(codes, None, torch.ones(1, 8, 1))
    assert int(qweight[0, 0, 0]) == 0x75316420
    assert int(qzeros[0, 0, 0]) & 0xFFFFFFFF == 0x88888888  # no zero points: the middle code
    c2, z2, _ = L.unpack_awq(qweight, qzeros, torch.ones(1, 1, 8))
    assert torch.equal(c2, codes) and (z2 == 8).all()


@pytest.mark.parametrize("layout", ["gptq", "awq", "mxfp4"])
def test_layouts_round_trip(layout):
    from reference import quant_layouts as L

    g = torch.Generator().manual_seed(5)
    codes = torch.randint(0, 16, (3, 16, 64), generator=g, dtype=torch.uint8)
    zero = torch.randint(0, 16, (3, 16, 2), generator=g, dtype=torch.uint8)
    scale = torch.rand(3, 16, 2, generator=g)
    if layout == "mxfp4":
        assert torch.equal(L.unpack_mxfp4(L.pack_mxfp4(codes)), codes)
        return
    pack, unpack = (L.pack_gptq, L.unpack_gptq) if layout == "gptq" else (L.pack_awq, L.unpack_awq)
    c2, z2, s2 = unpack(*pack(codes, zero, scale))
    assert torch.equal(c2, codes) and torch.equal(z2, zero) and torch.equal(s2, scale)


def test_scale_dtype_is_what_the_codes_are_chosen_against():
    """int4_w4a8 stores bf16 scales: the codes are chosen against the rounded scale, so the
    dequantized weight stays within half a step of the float weight wherever the code did not
    clip at 0 or 15 (a scale rounded down can push the group's extreme past the last code)."""
    w = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(4))
    for zp in (False, True):
        qw = Q.quantize_weight(w, Q.int4_w4a8(32, zp))
        assert torch.equal(qw.scale, qw.scale.bfloat16().float())
        step = qw.scale.double().repeat_interleave(32, 2)
        zero = qw.zero.double().repeat_interleave(32, 2) if zp else 8.0
        raw = w.double() / step + zero
        inside = (raw >= -0.5) & (raw <= 15.5)
        err = (qw.dequantize() - w.double()).abs()
        assert (err[inside] <= step[inside] / 2 + 1e-9).all() and inside.float().mean() > 0.99
