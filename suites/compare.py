"""Comparators that explain themselves (torch.testing-style plus normalized max/RMS error).

Every failure message names what was compared, the mismatch counts, the worst element, and the
normalized errors, so the reader knows "how far off" without rerunning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suites.tolerances import Tolerance


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
        if self.nonfinite:
            lines.append(f"  Non-finite elements in the output: {self.nonfinite}")
        return "\n".join(lines)


def closeness(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance) -> Closeness:
    """out vs ref (ref in float64). Passes when the output is finite, the normalized max and RMS
    errors are within bounds, and no element violates |d| <= atol + rtol*|ref| by more than the
    normalized bound allows (elementwise mismatches are reported; the normalized metrics decide,
    because near-zero outputs of a long weighted sum have no meaningful relative error)."""
    if out.shape != ref.shape:
        raise AssertionError(f"shape mismatch: out {tuple(out.shape)} vs ref {tuple(ref.shape)}")
    o = out.detach().double().cpu()
    r = ref.detach().double().cpu()
    nonfinite = int((~torch.isfinite(o)).sum())
    d = (o - r).abs()
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
    ok = nonfinite == 0 and max_norm <= tol.max_norm and rms_norm <= tol.rms_norm
    return Closeness(ok, mism, d.numel(), max_abs, idx, max_rel, max_norm, rms_norm, nonfinite, tol)


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance, context: str = "",
                 what: str = "output") -> Closeness:
    c = closeness(out, ref, tol)
    if not c.ok:
        raise AssertionError(f"{context}\n{c.report(what)}" if context else c.report(what))
    return c


def assert_equal_ints(out: torch.Tensor, ref: torch.Tensor, what: str, context: str = "") -> None:
    """Integer metadata compared exactly."""
    if out.shape != ref.shape or not torch.equal(out.long().cpu(), ref.long().cpu()):
        diff = (out.long().cpu() != ref.long().cpu()).nonzero()[:5].tolist() if out.shape == ref.shape else "shape"
        raise AssertionError(f"{context}\n{what} differ exactly at {diff}")
