"""Roofline arithmetic, shared by the benchmarks that measure (suites/bench/roofline.py) and the
reports that merge runs from several processes (reports/merge.py). No torch here.

A benchmark's roofline fraction is achieved FLOP/s over the attainable FLOP/s at its arithmetic
intensity, min(peak, intensity x bandwidth); a kernel with no FLOP model (flop = 0) is held to
the copy bandwidth alone.
"""

from __future__ import annotations

RATE_FIELDS = ("achieved_flops_per_s", "achieved_bytes_per_s", "compute_fraction",
               "bandwidth_fraction", "roofline_fraction", "bound")


def figures(*, matmul_flops_per_s: dict[str, float], copy_bytes_per_s: float, dtype: str,
            flop: float, nbytes: float, seconds: float) -> dict:
    """Achieved FLOP/s and bytes/s of one call and its fraction of the machine's roofline."""
    achieved_flops = flop / seconds
    achieved_bytes = nbytes / seconds
    peak = matmul_flops_per_s.get(dtype) or max(matmul_flops_per_s.values())
    bw = copy_bytes_per_s
    if flop > 0:
        intensity = flop / nbytes if nbytes > 0 else float("inf")
        attainable = min(peak, intensity * bw)
        fraction = achieved_flops / attainable
        bound = "compute" if peak <= intensity * bw else "memory"
    else:
        fraction = achieved_bytes / bw
        bound = "memory"
    return {
        "achieved_flops_per_s": achieved_flops,
        "achieved_bytes_per_s": achieved_bytes,
        "compute_fraction": achieved_flops / peak,
        "bandwidth_fraction": achieved_bytes / bw,
        "roofline_fraction": fraction,
        "bound": bound,
    }
