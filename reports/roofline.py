"""Roofline arithmetic, shared by the benchmarks that measure (suites/bench/probes.py) and the
reports that merge runs from several processes (reports/merge.py). No torch here.

A benchmark's roofline fraction is achieved FLOP/s over the attainable FLOP/s at its arithmetic
intensity, min(peak, intensity x bandwidth), which is max(compute fraction, bandwidth fraction);
a kernel with no FLOP model (flop = 0) is held to the copy bandwidth alone.

The peak is that of the arithmetic the kernel does (`compute_dtype`, measured in the same run):
the activation dtype for a float kernel and for a weight-only quantized one (it dequantizes its
weights to that dtype and multiplies there), int8 for an int8 W8A8 / W4A8 kernel, float8_e4m3fn
for an fp8 W8A8 kernel. Holding an int8 kernel to the bf16 matmul peak gave fractions above 1.
Where this run measured no peak of that arithmetic (e.g. fp8 on a CPU: no probe reaches its
ISA path), the compute fraction is unavailable (None) and the roofline fraction is the memory
roof's alone; `roofline_basis` says which roof a fraction is against.

A fraction above 1 is never recorded: the kernel cannot beat the machine, so the roof used is
wrong (the wrong arithmetic's peak, a probe that under-measured, or the DRAM copy bandwidth for a
working set read from cache). That fraction is withheld (None) and `roofline_flags` says which
roof was exceeded, by how much, and why it is the wrong one.
"""

from __future__ import annotations

RATE_FIELDS = ("achieved_flops_per_s", "achieved_bytes_per_s", "compute_fraction",
               "bandwidth_fraction", "roofline_fraction", "bound", "compute_dtype",
               "peak_flops_per_s", "roofline_basis", "roofline_flags")
# Relative slack before a fraction counts as above 1 (float rounding of a kernel at the roof).
ABOVE_ONE = 1e-9


def above_roof_flags(*, compute_fraction: float | None, bandwidth_fraction: float | None,
                     compute_dtype: str, peak: float | None, bandwidth: float) -> list[str]:
    """One line for each fraction above 1: the roof it was measured against is wrong."""
    flags = []
    if compute_fraction is not None and compute_fraction > 1 + ABOVE_ONE:
        flags.append(
            f"compute fraction {compute_fraction:.3g} > 1: the peak used ({compute_dtype} matmul, "
            f"{peak:.4g} FLOP/s measured in this run) is wrong for this kernel: it does not do "
            f"{compute_dtype} arithmetic (check extra_info.compute_dtype) or the probe "
            "under-measured the peak; not recorded as a fraction")
    if bandwidth_fraction is not None and bandwidth_fraction > 1 + ABOVE_ONE:
        flags.append(
            f"bandwidth fraction {bandwidth_fraction:.3g} > 1: the roof used (copy bandwidth "
            f"{bandwidth:.4g} B/s, a DRAM-sized copy probe) is wrong for this case: its working "
            "set is read from cache (extra_info.cache_resident) or it streams faster than a "
            "copy; not recorded as a fraction")
    return flags


def figures(*, matmul_flops_per_s: dict[str, float], copy_bytes_per_s: float, dtype: str,
            flop: float, nbytes: float, seconds: float, compute_dtype: str | None = None) -> dict:
    """Achieved FLOP/s and bytes/s of one call and its fractions of the machine's roofline, the
    compute roof being the `compute_dtype` matmul peak (default: `dtype`)."""
    compute_dtype = compute_dtype or dtype
    achieved_flops = flop / seconds
    achieved_bytes = nbytes / seconds
    peak = matmul_flops_per_s.get(compute_dtype)
    bw = copy_bytes_per_s
    bandwidth = achieved_bytes / bw
    compute = achieved_flops / peak if peak else None
    if flop <= 0:
        fraction, bound = bandwidth, "memory"
        basis = "copy bandwidth (no FLOP model)"
    elif peak is None:
        fraction, bound = bandwidth, "memory"
        basis = (f"copy bandwidth only: no {compute_dtype} matmul peak measured on this machine, "
                 "the compute fraction is unavailable")
    else:
        intensity = flop / nbytes if nbytes > 0 else float("inf")
        fraction = max(compute, bandwidth)  # = achieved / min(peak, intensity x bandwidth)
        bound = "compute" if peak <= intensity * bw else "memory"
        basis = f"min({compute_dtype} matmul peak, intensity x copy bandwidth)"
    flags = above_roof_flags(compute_fraction=compute, bandwidth_fraction=bandwidth,
                             compute_dtype=compute_dtype, peak=peak, bandwidth=bw)

    def kept(x: float | None) -> float | None:
        return None if x is None or x > 1 + ABOVE_ONE else x

    return {
        "achieved_flops_per_s": achieved_flops,
        "achieved_bytes_per_s": achieved_bytes,
        "compute_dtype": compute_dtype,
        "peak_flops_per_s": peak,
        "compute_fraction": kept(compute),
        "bandwidth_fraction": kept(bandwidth),
        "roofline_fraction": kept(fraction),
        "bound": bound,
        "roofline_basis": basis,
        "roofline_flags": flags,
    }
