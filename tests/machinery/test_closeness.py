"""suites/closeness.py's closeness, held to what it claims (its module docstring):
a small row wholly wrong fails, a uniform 1.5% error in bf16 fails, and rounding alone (or a
rounding shared by many elements, as vLLM's FP8_W8A16 makes) passes. No vLLM needed.

Each negative control also checks that the tensor-wide normalized max and RMS alone (the old
verdict) would have passed it: what fails is the new part of the verdict, not a coincidence.
"""

from __future__ import annotations

import math

import pytest
import torch

from reference import quant as Q
from suites.closeness import SYSTEMATIC_SIGMAS, closeness
from suites.tolerances import TOLERANCES, Tolerance, unit_roundoff

BF16 = TOLERANCES[torch.bfloat16]


def _outputs(T: int, H: int, seed: int, row_scales=None) -> torch.Tensor:  # [T, H] float64
    """MoE-output-like rows: Gaussian, each row at its own scale (tokens of different norm)."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(T, H, generator=g, dtype=torch.float64)
    if row_scales is not None:
        ref = ref * row_scales[:, None]
    return ref


def _old_verdict(c) -> bool:
    return c.nonfinite == 0 and c.max_norm <= c.tol.max_norm and c.rms_norm <= c.tol.rms_norm


@pytest.mark.parametrize("wrong", ["negated", "another_row", "zeroed"])
def test_small_row_wholly_wrong_fails(wrong):
    """Token 5 has 1/256 of the others' norm (a small routing weight, a quiet token); its whole
    row is wrong. The tensor-wide metrics see at most 2/256 of max|ref|, under every bound;
    the row held to its own scale (floored at eps x max|ref| = 1/128 of it) sees 16-40x its bound."""
    scales = torch.ones(16, dtype=torch.float64)
    scales[5] = scales[6] = 1 / 256
    ref = _outputs(16, 64, seed=1, row_scales=scales)
    out = ref.to(torch.bfloat16)
    if wrong == "negated":
        out[5] = -out[5]
    elif wrong == "another_row":
        out[5] = out[6]
    else:
        out[5] = 0
    c = closeness(out, ref, BF16)
    assert _old_verdict(c), "the control must be invisible to the tensor-wide metrics"
    assert not c.ok and c.worst_row == 5 and c.row_max_norm > 10 * BF16.row_bound
    report = c.report()
    assert "Worst row: 5 of 16" in report and "row 5 against its own scale" in report


def test_uniform_relative_error_in_bf16_fails():
    """Every element 1.5% too large: inside the bf16 max and RMS bounds (the old verdict passed
    it), outside the systematic-error bound."""
    ref = _outputs(32, 64, seed=2)
    out = (ref * 1.015).to(torch.bfloat16)
    c = closeness(out, ref, BF16)
    assert _old_verdict(c) and c.row_max_norm <= BF16.row_bound
    assert not c.ok and c.failed == ("systematic error",)
    assert c.systematic == pytest.approx(0.015, rel=0.05)
    assert "Systematic error" in c.report()


def test_uniform_error_power_claim():
    """The docstring's power: e = 1.5% is seen from ~400 elements (max|ref| / mean|ref| ~ 4):
    a [16, 32] output, at every seed tried."""
    for seed in range(5):
        ref = _outputs(16, 32, seed=seed)
        out = (ref * 1.015).to(torch.bfloat16)
        c = closeness(out, ref, BF16)
        assert not c.ok and "systematic error" in c.failed, c.report()
    ref = _outputs(16, 32, seed=3)
    out = (ref * 1.015).to(torch.bfloat16)
    c = closeness(out, ref, BF16)
    assert not c.ok and "systematic error" in c.failed


@pytest.mark.parametrize("T,H", [(1, 32), (7, 96), (64, 256), (257, 512)])
@pytest.mark.parametrize("seed", range(4))
def test_rounding_alone_passes(T, H, seed):
    """The output rounded once to bf16 (and fp16): every part of the verdict passes, however
    many elements (the systematic bound is noise-based, rounding is unbiased)."""
    ref = _outputs(T, H, seed, row_scales=torch.exp2(-torch.rand(T, generator=torch.Generator()
                                                                  .manual_seed(seed)) * 6))
    for dt in (torch.bfloat16, torch.float16):
        c = closeness(ref.to(dt), ref, TOLERANCES[dt])
        assert c.ok, c.report()


def test_rounding_noise_at_the_rms_bound_passes_the_systematic_test():
    """Independent zero-mean errors with an RMS at the bound: the systematic statistic stays
    within its SYSTEMATIC_SIGMAS bound (20 draws; its false-positive rate is that of a 6-sigma
    normal tail)."""
    for seed in range(20):
        g = torch.Generator().manual_seed(100 + seed)
        ref = torch.randn(64, 128, generator=g, dtype=torch.float64)
        scale = float(ref.abs().max())
        noise = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        out = ref + noise / float(noise.pow(2).mean().sqrt()) * BF16.rms_norm * scale * 0.99
        c = closeness(out, ref, Tolerance(1, 1, 1, BF16.rms_norm, row_norm=1))
        assert "systematic error" not in c.failed, c.report()
        sigmas = c.systematic * float(ref.abs().sum()) / (math.sqrt(ref.numel()) * BF16.rms_norm * scale)
        assert sigmas < SYSTEMATIC_SIGMAS


def test_a_rounding_shared_by_a_block_passes():
    """vLLM's FP8_W8A16 (brgemm path) folds a block scale into the e4m3 weights and rounds the
    product to bf16: every weight of a block inherits a mantissa-dependent rounding, a
    systematic error of up to ~u for all tokens through that expert. Legitimate arithmetic: it
    passes (SYSTEMATIC_SHARED_ROUNDINGS), at T = 257 tokens through one expert."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(256, 128, generator=g, dtype=torch.float64)
    q = Q.quantize_weight(w[None], Q.fp8_block(128, 128, False))
    exact = q.dequantize()[0]  # [256, 128]
    upcast = (q.q[0].to(torch.bfloat16).float() * q.scale[0].repeat_interleave(128, 0)
              .repeat_interleave(128, 1)[:256, :128]).to(torch.bfloat16).double()
    x = torch.randn(257, 128, generator=g, dtype=torch.float64).bfloat16().double()
    ref = x @ exact.T
    out = (x @ upcast.T).to(torch.bfloat16)
    c = closeness(out, ref, BF16)
    assert c.ok, c.report()
    assert c.systematic > 0  # measurably biased, and still within the bound


def test_zero_row_is_held_to_zero():
    """A row whose reference is exactly 0 (an all-zero token) is held to 0: the kernels compute
    it exactly (zero codes, zero sums), a stray value fails."""
    ref = _outputs(4, 32, seed=5)
    ref[2] = 0
    out = ref.to(torch.bfloat16)
    assert closeness(out, ref, BF16).ok
    out[2, 7] = 1e-3
    c = closeness(out, ref, BF16)
    assert not c.ok and c.worst_row == 2 and c.worst_row_floored


def test_row_scale_from_the_error_model():
    """A row ~0 by cancellation carries the rounding of its terms: with the accumulated
    magnitude as row_scale it is judged against that, without it it fails loudly."""
    ref = _outputs(4, 32, seed=6)
    ref[1] *= 1e-6  # ~0 by cancellation of terms of size ~1
    out = ref.clone()
    out[1] += unit_roundoff(torch.bfloat16) * 0.5  # half a rounding of a term of size 1
    row_scale = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert not closeness(out, ref, BF16).ok
    c = closeness(out, ref, BF16, row_scale=row_scale)
    assert c.ok, c.report()


def test_one_dimensional_and_scalar_inputs_are_one_row():
    ref = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    c = closeness(ref.to(torch.bfloat16), ref, BF16)
    assert c.ok and c.rows == 1
    c = closeness(torch.tensor(1.5, dtype=torch.bfloat16), torch.tensor(1.5, dtype=torch.float64), BF16)
    assert c.ok and c.rows == 1


def test_nonfinite_output_fails_and_says_so():
    ref = _outputs(3, 32, seed=8)
    out = ref.to(torch.bfloat16)
    out[1, 3] = float("nan")
    c = closeness(out, ref, BF16)
    assert not c.ok and "non-finite output" in c.failed and "Non-finite" in c.report()


def test_rms_of_a_handful_of_elements_is_held_to_the_max_bound():
    """One element's RMS is its max: the RMS bound (an average of many roundings) does not
    judge it, the max bound does; from RMS_MIN_ELEMENTS on the RMS bound applies again."""
    from suites.closeness import RMS_MIN_ELEMENTS, closeness
    from suites.tolerances import TOLERANCES

    tol = TOLERANCES[torch.float32]
    ref = torch.tensor([[0.1175]], dtype=torch.float64)
    off = ref * (1 + 0.5 * (tol.rms_norm + tol.max_norm) / 1)  # between the two bounds
    assert closeness(off.float(), ref, tol).ok
    n = RMS_MIN_ELEMENTS
    ref_n = 0.1175 + torch.arange(n, dtype=torch.float64)[None] * 1e-3  # n distinct values
    off_n = ref_n * (1 + 0.5 * (tol.rms_norm + tol.max_norm))
    c = closeness(off_n, ref_n, tol)
    assert not c.ok and "normalized RMS" in c.failed


@pytest.mark.parametrize("rows", [31, 64])
def test_the_same_computation_repeated_is_one_rounding(rows):
    """Rows that are one computation on the same inputs (a router fed permutations of one set
    of logits: one softmax weight per row, the nightly's cpu_router case) round alike: their
    equal errors are one sample, not `rows` independent ones, for the RMS and the systematic
    bound alike. The same relative error over as many distinct values is a pattern and fails."""
    from suites.tolerances import TOLERANCES

    tol = TOLERANCES[torch.float32]
    e = 1.854e-6  # the nightly's: within the max model, above the RMS bound
    assert tol.rms_norm < e < tol.max_norm
    same = torch.full((rows, 1), 0.1175, dtype=torch.float64)
    c = closeness(same * (1 - e), same, tol)
    assert c.ok, c.report()
    distinct = 0.1175 * (1 + 0.5 * torch.rand(rows, 1, generator=torch.Generator().manual_seed(0),
                                              dtype=torch.float64))
    c = closeness(distinct * (1 - e), distinct, tol)
    assert not c.ok and {"normalized RMS", "systematic error"} & set(c.failed), c.report()


def test_references_equal_but_for_fp64_summation_order_are_one_value():
    """The nightly's T = 255, K = 3 router case: each row's fp64 weights differ from the
    others' in the last bits (summation order), the outputs by one shared fp32 error."""
    from suites.tolerances import TOLERANCES

    tol = TOLERANCES[torch.float32]
    base = torch.tensor([0.1175, 0.0431, 0.0159], dtype=torch.float64)
    jitter = 1 + 1e-16 * torch.randn(255, 3, generator=torch.Generator().manual_seed(1),
                                     dtype=torch.float64)
    ref = base * jitter
    assert torch.unique(ref).numel() > 3  # distinct in fp64
    out = (base * (1 - 1.85e-6)).float().expand(255, 3)
    assert closeness(out, ref, tol).ok


def test_below_the_smallest_normal_a_flushed_zero_is_not_an_error():
    """The nightly's FP8_W8A16 bf16 case: an output whose exact value is a bf16 subnormal
    (3.5e-39) comes out 0 (flush to zero); a normal-range wrong value there still fails."""
    ref = torch.full((1, 32), 3.487e-39, dtype=torch.float64)
    assert closeness(torch.zeros(1, 32, dtype=torch.bfloat16), ref, BF16).ok
    wrong = torch.full((1, 32), 1e-37, dtype=torch.bfloat16)
    assert not closeness(wrong, ref, BF16).ok
