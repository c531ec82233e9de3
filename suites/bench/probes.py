"""This machine's roofline, measured in the same run as the benchmarks, and the timers.

Probes (median of several repetitions, best over a few sizes):
  matmul peak   per dtype of arithmetic -> FLOP/s (2 N^3 per product of square matrices):
                  bfloat16, float16, float32   torch.mm
                  int8                         torch._int_mm, int8 x int8 -> int32 (CPU: the
                                               int8 GEMM path of torch's CPU build, oneDNN's
                                               VNNI / AMX-INT8 kernels where the CPU has them;
                                               GPU: int8 tensor cores)
                  float8_e4m3fn                torch._scaled_mm e4m3 x e4m3 -> bf16, GPU of
                                               compute capability >= 8.9 only (fp8 tensor
                                               cores); not probed on a CPU: no torch op there
                                               reaches an fp8 ISA path (AMX-FP8), so an fp8
                                               W8A8 kernel on a CPU gets no compute fraction
                A probe that fails is named in probe["unmeasured"] with its error, never guessed.
  copy          dst.copy_(src), src and dst well beyond the last-level cache -> bytes/s
                (read + write: 2 x nbytes per copy)

A benchmark's roofline fraction (reports/roofline.py) is achieved FLOP/s over the attainable
FLOP/s at its arithmetic intensity, min(peak, intensity x bandwidth), the peak being that of the
arithmetic the kernel does (extra_info.compute_dtype: int8 for an int8 W8A8 kernel, not the bf16
matmul peak); for kernels with no FLOP model (flop = 0) it is achieved bytes/s over the copy
bandwidth. A fraction above 1 would mean the roof is wrong (the probes are torch ops, not the
hardware's datasheet; on a CPU the benchmarks repeat one call, so a working set that fits in the
last-level cache is read from cache: extra_info.cache_resident): it is not recorded, and
extra_info.roofline_flags says which roof was exceeded and why.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from reports import roofline as _roofline_math

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Arithmetic of quantized kernels whose peak is probed besides the float dtypes (extra_info.
# compute_dtype of a quantized record names one of these, or the activation dtype).
QUANT_PROBES = ("int8", "float8_e4m3fn")
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: fp8 tensor cores


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

    def figures(self, *, dtype: str, flop: float, nbytes: float, seconds: float,
                compute_dtype: str | None = None) -> dict:
        """Achieved FLOP/s and bytes/s of one call and its fractions of this machine's roofline,
        against the peak of `compute_dtype` (default: dtype)."""
        return _roofline_math.figures(matmul_flops_per_s=self.matmul_flops_per_s,
                                      copy_bytes_per_s=self.copy_bytes_per_s, dtype=dtype,
                                      flop=flop, nbytes=nbytes, seconds=seconds,
                                      compute_dtype=compute_dtype)


def quant_probe_plan(device: str, capability: tuple[int, int] | None) -> dict[str, str | None]:
    """Which quantized-arithmetic peaks to probe on `device`: {dtype: None (probe it) or the
    reason it is not probed}. capability: the GPU's compute capability (None on a CPU)."""
    plan: dict[str, str | None] = {"int8": None}
    if device != "cuda":
        plan["float8_e4m3fn"] = ("no torch op reaches a CPU's fp8 arithmetic (AMX-FP8): an fp8 "
                                 "W8A8 kernel here gets the memory roof only")
    elif capability is None or tuple(capability) < FP8_MIN_CAPABILITY:
        plan["float8_e4m3fn"] = (f"compute capability {capability} < "
                                 f"{FP8_MIN_CAPABILITY}: no fp8 tensor cores")
    else:
        plan["float8_e4m3fn"] = None
    return plan


def _matmul_operands(name: str, n: int, device: str):
    """(callable, description) of one square product of dtype-of-arithmetic `name`."""
    if name in DTYPES:
        dt = DTYPES[name]
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        c = torch.empty(n, n, device=device, dtype=dt)
        return (lambda: torch.mm(a, b, out=c)), f"torch.mm {name}"
    if name == "int8":
        a = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-64, 64, (n, n), dtype=torch.int8, device=device)
        if device == "cuda":
            b = b.t().contiguous().t()  # column-major: the layout cuBLASLt's int8 GEMM takes
        c = torch.empty(n, n, dtype=torch.int32, device=device)
        return (lambda: torch._int_mm(a, b, out=c)), "torch._int_mm int8 x int8 -> int32"
    if name == "float8_e4m3fn":
        a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major
        one = torch.ones((), device=device)
        return (lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one,
                                         out_dtype=torch.bfloat16)), \
            "torch._scaled_mm float8_e4m3fn x float8_e4m3fn -> bfloat16 (tensor-wise scales)"
    raise ValueError(f"no matmul probe for {name!r}")


def measure(device: str, dtypes: tuple[str, ...] = ("bfloat16", "float32"), *,
            sizes: tuple[int, ...] | None = None) -> Roofline:
    """Run the probes (a few seconds on a CPU, under a second on a GPU): the matmul peak of each
    float dtype in `dtypes` and of the quantized arithmetic quant_probe_plan allows here."""
    t_start = time.perf_counter()
    if device == "cuda":
        default_sizes, reps, copy_bytes = (4096, 8192), 10, 2 * 2**30
        capability = torch.cuda.get_device_capability()
    else:
        default_sizes, reps, copy_bytes = (512, 1024, 2048), 5, 256 * 2**20
        capability = None
    sizes = tuple(sizes or default_sizes)
    peaks: dict[str, float] = {}
    per_size: dict[str, dict[int, float]] = {}
    ops: dict[str, str] = {}
    unmeasured: dict[str, str] = {}
    plan = {**{d: None for d in dtypes}, **quant_probe_plan(device, capability)}
    for name, reason in plan.items():
        if reason is not None:
            unmeasured[name] = reason
            continue
        try:
            per_size[name] = {}
            for n in sizes:
                fn, ops[name] = _matmul_operands(name, n, device)
                per_size[name][n] = 2 * n**3 / _median_seconds(fn, device, reps)
        except (RuntimeError, NotImplementedError, TypeError) as e:
            if name in DTYPES:
                raise  # the float probes are the roofline itself
            per_size.pop(name, None)
            ops.pop(name, None)
            first = (str(e).strip().splitlines() or [""])[0][:200]
            unmeasured[name] = f"probe failed: {type(e).__name__}: {first}"
            continue
        peaks[name] = max(per_size[name].values())
    src = torch.ones(copy_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    s = _median_seconds(lambda: dst.copy_(src), device, reps)
    bw = 2 * src.numel() * 4 / s
    probe = {
        "matmul_sizes": list(sizes), "repetitions": reps, "copy_bytes": copy_bytes,
        "matmul_flops_per_s_by_size": {k: {str(n): v for n, v in d.items()}
                                       for k, d in per_size.items()},
        "ops": ops, "unmeasured": unmeasured,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t_start,
    }
    if capability is not None:
        probe["compute_capability"] = list(capability)
    return Roofline(device=device, matmul_flops_per_s=peaks, copy_bytes_per_s=bw, probe=probe)


def measure_or_reuse(path: str | None, device: str, dtypes: tuple[str, ...]) -> Roofline:
    """The roofline from `path` when an earlier process of the same run measured it there with
    the same device, dtypes, threads and CPU capability (an A/B run's processes: harness/ab.py
    sets SUITE_BENCH_ROOFLINE to a file in the run's folder, so the probes' seconds are spent
    once a run, not twice a pair); else measure it, and write it there if nothing is there yet.
    A file that does not match or cannot be read is left as it is and the probes run."""
    import json
    import os

    key = {"device": device, "dtypes": sorted(dtypes), "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved.get("key") == key:
                r = Roofline(**saved["roofline"])
                r.probe = {**r.probe, "reused_from": path}
                return r
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass  # unreadable: measure, leave the file alone
    r = measure(device, dtypes)
    if path and not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"key": key, "roofline": r.as_dict()}, f)
            os.link(tmp, path)  # fails if another process wrote it first: theirs stays
        except OSError:
            pass
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return r
