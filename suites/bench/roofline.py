"""This machine's roofline, measured in the same run as the benchmarks, and the timers.

Probes (median of several repetitions, best over a few sizes):
  matmul peak   torch.mm of square matrices per dtype  -> FLOP/s   (2 N^3 per product)
  copy          dst.copy_(src), src and dst well beyond the last-level cache -> bytes/s
                (read + write: 2 x nbytes per copy)

A benchmark's roofline fraction (reports/roofline.py) is achieved FLOP/s over the attainable
FLOP/s at its arithmetic intensity, min(peak, intensity x bandwidth); for kernels with no FLOP
model (flop = 0) it is achieved bytes/s over the copy bandwidth. Fractions above 1 are possible (the probes are torch
ops, not the hardware's datasheet; on a CPU the benchmarks repeat one call, so a working set that
fits in the last-level cache is read from cache: extra_info.cache_resident) and are reported, not
clipped.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from reports import roofline as _roofline_math

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class CudaEventTimer:
    """A pytest-benchmark timer read from CUDA events: seconds of GPU time since the first call.
    Each reading records an event on the current stream and waits for it, so a round's duration
    is the GPU time between the event before and the event after the launches."""

    def __init__(self) -> None:
        self._origin = None

    def __call__(self) -> float:
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        ev.synchronize()
        if self._origin is None:
            self._origin = ev
            return 0.0
        return self._origin.elapsed_time(ev) / 1e3


class L2Flush:
    """Called before each timed GPU round: overwrites a buffer twice the L2 size, so every round
    starts with a cold L2 (weights and activations come from HBM, as in a real decode step)."""

    def __init__(self, device: int = 0) -> None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 256 * 2**20
        self.nbytes = 2 * l2
        self._buf = torch.empty(self.nbytes, dtype=torch.uint8, device="cuda")

    def __call__(self) -> None:
        self._buf.zero_()


def _median_seconds(fn: Callable[[], object], device: str, reps: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(reps):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Roofline:
    device: str
    matmul_flops_per_s: dict[str, float]  # dtype name -> best median FLOP/s
    copy_bytes_per_s: float
    probe: dict = field(default_factory=dict)  # sizes, repetitions, seconds spent

    def as_dict(self) -> dict:
        return asdict(self)

    def figures(self, *, dtype: str, flop: float, nbytes: float, seconds: float) -> dict:
        """Achieved FLOP/s and bytes/s of one call and its fraction of this machine's roofline."""
        return _roofline_math.figures(matmul_flops_per_s=self.matmul_flops_per_s,
                                      copy_bytes_per_s=self.copy_bytes_per_s, dtype=dtype,
                                      flop=flop, nbytes=nbytes, seconds=seconds)


def measure(device: str, dtypes: tuple[str, ...] = ("bfloat16", "float32")) -> Roofline:
    """Run the probes (a few seconds on a CPU, under a second on a GPU)."""
    t_start = time.perf_counter()
    if device == "cuda":
        sizes, reps, copy_bytes = (4096, 8192), 10, 2 * 2**30
    else:
        sizes, reps, copy_bytes = (512, 1024, 2048), 5, 256 * 2**20
    peaks: dict[str, float] = {}
    per_size: dict[str, dict[int, float]] = {}
    for name in dtypes:
        dt = DTYPES[name]
        per_size[name] = {}
        for n in sizes:
            a = torch.randn(n, n, device=device).to(dt)
            b = torch.randn(n, n, device=device).to(dt)
            c = torch.empty(n, n, device=device, dtype=dt)
            s = _median_seconds(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), device, reps)
            per_size[name][n] = 2 * n**3 / s
        peaks[name] = max(per_size[name].values())
    src = torch.ones(copy_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    s = _median_seconds(lambda: dst.copy_(src), device, reps)
    bw = 2 * src.numel() * 4 / s
    probe = {
        "matmul_sizes": list(sizes), "repetitions": reps, "copy_bytes": copy_bytes,
        "matmul_flops_per_s_by_size": {k: {str(n): v for n, v in d.items()}
                                       for k, d in per_size.items()},
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t_start,
    }
    return Roofline(device=device, matmul_flops_per_s=peaks, copy_bytes_per_s=bw, probe=probe)
