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
