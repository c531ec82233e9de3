"""How a case is timed, and the settings every benchmark shares.

CPU: a few warm-up calls, then pytest-benchmark's pedantic mode, one call a round (perf_counter
resolves tens of nanoseconds) and `rounds` rounds (enough to fill time_s, at least min_rounds, for
the bootstrap in reports/compare.py). A fixed control op (Control: a small fp32 matmul on the same
threads) is timed right before and right after the timed rounds and, as pytest-benchmark's
untimed per-round setup, once every `every` rounds in between (at most ~5% of the window): its
median is the machine's speed during this case's window. Another tenant that takes the CPUs in
one run and not the other slows the control as it slows the kernel, and compare reports such a
case as drift, not as a regression of the code. (A control before every round was tried and
rejected: it evicts the kernel's working set and slowed small kernels by 20%.)
GPU: one call a round, preceded (untimed) by an L2 flush; the round is timed by CUDA events
(see roofline.CudaEventTimer, installed by conftest.py).
"""

from __future__ import annotations

import fnmatch
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from reports import baton as _baton
from suites.bench import roofline as _roofline
from suites.bench.fingerprint import llc_bytes as _llc_bytes

CPU_SHAPES = ("qwen3.5-397b-a17b-cpu-experts", "qwen3-next-80b-a3b-cpu-dims",
              "deepseek-v3-cpu-experts", "mixtral-8x7b-cpu-experts")
GPU_SHAPES = ("qwen3.5-397b-a17b", "qwen3-next-80b-a3b", "deepseek-v3", "mixtral-8x7b")
CPU_TOKENS = tuple(2**i for i in range(11))  # 1 .. 1024
GPU_TOKENS = tuple(2**i for i in range(14))  # 1 .. 8192


def _csv(value: str | None) -> list[str] | None:
    if value is None or not str(value).strip():
        return None
    return [v.strip() for v in str(value).split(",") if v.strip()]


def parse_slowdown(value: str | None) -> dict[str, float]:
    """'cpu_fused_moe.vec=0.1,cpu_router=0.05' -> {glob: fraction}."""
    out: dict[str, float] = {}
    for part in _csv(value) or []:
        glob, sep, frac = part.partition("=")
        try:
            f = float(frac)
        except ValueError:
            f = float("nan")
        if not sep or not glob or not (0 < f <= 10):
            raise ValueError(f"--bench-slowdown entry {part!r}: expected GLOB=FRACTION with "
                             "0 < FRACTION <= 10")
        out[glob] = f
    return out


@dataclass
class BenchSettings:
    device: str
    tokens: tuple[int, ...]
    shapes: tuple[str, ...]
    dtypes: tuple[str, ...]
    threads: int
    pinned_cpus: list[int]
    time_s: float
    min_rounds: int
    max_rounds: int
    slowdown: dict[str, float] = field(default_factory=dict)
    include_reference: bool = False

    @classmethod
    def from_options(cls, *, device: str, tokens, shapes, dtypes, threads, time_s, min_rounds,
                     slowdown, include_reference, usable_cpus) -> BenchSettings:
        cuda = device == "cuda"
        tok = tuple(int(t) for t in _csv(tokens) or ()) or (GPU_TOKENS if cuda else CPU_TOKENS)
        if any(t < 1 for t in tok):
            raise ValueError(f"token counts must be >= 1, got {tok}")
        dts = tuple(_csv(dtypes) or ("bfloat16",))
        unknown = [d for d in dts if d not in _roofline.DTYPES]
        if unknown:
            raise ValueError(f"unknown dtypes {unknown}; known: {sorted(_roofline.DTYPES)}")
        usable = usable_cpus or list(range(torch.get_num_threads()))
        n = int(threads) if threads else len(usable)
        if not 1 <= n <= len(usable):
            raise ValueError(f"--bench-threads {n}: this process may use {len(usable)} CPUs")
        if slowdown and cuda:
            raise ValueError("--bench-slowdown spins the host clock: a CPU demonstration only")
        return cls(
            device=device, tokens=tok, shapes=tuple(_csv(shapes) or (GPU_SHAPES if cuda else CPU_SHAPES)),
            dtypes=dts, threads=n, pinned_cpus=usable[:n],
            # Per process: nox -s bench repeats every case in 5 processes, and a process's
            # median is already precise to ~0.1% after a few tenths of a second (the spread
            # between processes is what limits a compare, reports/merge.py).
            time_s=float(time_s) if time_s else (0.2 if cuda else 0.3),
            min_rounds=int(min_rounds) if min_rounds else 10,
            max_rounds=1000,
            slowdown=slowdown or {}, include_reference=include_reference,
        )

    @property
    def roofline_dtypes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.dtypes, "float32")))

    def slowdown_for(self, backend: str) -> float:
        return max((f for g, f in self.slowdown.items() if fnmatch.fnmatch(backend, g)), default=0.0)

    def as_dict(self) -> dict:
        return asdict(self)


class Slowed:
    """A deliberately slowed implementation: after each call it busy-waits for `fraction` of
    that call's own duration (extra work, not sleep), so the kernel reads `1 + fraction` times
    slower on any machine. Used to show that `nox -s compare` flags a regression."""

    def __init__(self, fn: Callable[[], object], fraction: float) -> None:
        self.fn, self.fraction = fn, fraction

    def __call__(self):
        t0 = time.perf_counter()
        out = self.fn()
        end = time.perf_counter() + self.fraction * (time.perf_counter() - t0)
        while time.perf_counter() < end:
            pass
        return out


class ReplayClock:
    """A pytest-benchmark timer that replays durations measured elsewhere (in the engine's own
    process, for the e2e benchmark): load(durations), then time `advance` with pedantic; each
    round reads exactly the next loaded duration, so pytest-benchmark's statistics and JSON are
    those of the measured rounds. Install it with pytest.mark.benchmark(timer=clock)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._pending: list[float] = []

    def __call__(self) -> float:
        return self.now

    def load(self, durations) -> None:
        self._pending = [float(d) for d in durations]
        if not self._pending or min(self._pending) <= 0:
            raise ValueError(f"replayed durations must be positive, got {self._pending!r}")

    def advance(self) -> None:
        if not self._pending:
            raise RuntimeError("ReplayClock: more rounds timed than durations loaded")
        self.now += self._pending.pop(0)

    def __repr__(self) -> str:
        return "ReplayClock(durations measured in the engine process)"


class Control:
    """Times a fixed op (fp32 [64, 256] @ [256, 256], about 8 MFLOP) each time it is called."""

    OP = "torch.mm float32 [64,256]x[256,256]"
    REPS = 40  # before and after the timed rounds each

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(64, 256, generator=g)
        self.b = torch.randn(256, 256, generator=g)
        self.c = torch.empty(64, 256)
        self.times: list[float] = []

    def __call__(self) -> None:
        t0 = time.perf_counter()
        torch.mm(self.a, self.b, out=self.c)
        self.times.append(time.perf_counter() - t0)

    def sample(self, reps: int) -> None:
        for _ in range(reps):
            self()

    def every(self, n: int) -> Callable[[], None]:
        """A per-round setup that runs the control once every n rounds."""
        count = 0

        def setup() -> None:
            nonlocal count
            count += 1
            if count % n == 0:
                self()

        return setup

    def summary(self) -> dict:
        xs = sorted(self.times)
        n = len(xs)
        q1, med, q3 = xs[n // 4], statistics.median(xs), xs[(3 * n) // 4]
        return {"op": self.OP, "median_s": med, "robust_cv": 0.7413 * (q3 - q1) / med,
                "rounds": n}


# The baton of an interleaved A/B pair (reports/baton.py), set by conftest.py when the A/B runner
# asked for it; None otherwise.
BATON: _baton.Baton | None = None


class Windows:
    """Per-round setup that hands the baton to the other side of an A/B pair every `rounds`
    timed rounds (a window of about reports.baton.WINDOW_S seconds), then makes one untimed call
    so that the next window does not start on caches the other side just evicted. Wraps the
    case's own per-round setup (the control op)."""

    def __init__(self, baton, target: Callable[[], object], inner: Callable[[], None] | None,
                 rounds: int) -> None:
        self.baton, self.target, self.inner, self.rounds = baton, target, inner, rounds
        self.count = 0
        self.handovers = 0

    def handover(self) -> None:
        self.baton.pass_()
        self.handovers += 1
        self.target()

    def setup(self) -> None:
        if self.count and self.count % self.rounds == 0:
            self.handover()
        self.count += 1
        if self.inner is not None:
            self.inner()


def run_case(benchmark, fn: Callable[[], object], *, settings: BenchSettings,
             roofline: _roofline.Roofline, group: str, backend: str, extra: dict) -> None:
    """Time fn and fill benchmark.extra_info: `extra` (family, shape, dtype, tokens, flop, bytes,
    models) plus the achieved rates, the roofline fractions and how it was timed."""
    slowdown = settings.slowdown_for(backend)
    target = Slowed(fn, slowdown) if slowdown else fn
    benchmark.group = group
    cuda = settings.device == "cuda"
    # Warm-up: first calls pay for allocation, prepacking caches, kernel selection, JIT.
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        target()
        if cuda:
            torch.cuda.synchronize()
        warm.append(time.perf_counter() - t0)
    t = max(statistics.median(warm), 1e-7)
    control = None
    if cuda:
        setup = _roofline.L2Flush()
    else:
        control = Control()
        control.sample(3)  # warm-up, not kept
        tc = statistics.median(control.times)
        control.times.clear()
        setup = control.every(max(10, math.ceil(20 * tc / t)))
    rounds = min(settings.max_rounds, max(settings.min_rounds, math.ceil(settings.time_s / t)))
    window = None
    if BATON is not None and not cuda:
        window = Windows(BATON, target, setup, max(1, math.ceil(_baton.WINDOW_S / t)))
        setup = window.setup
        window.handover()  # the other side reaches this case: the timed windows start aligned
    if control is not None:
        control.sample(Control.REPS)
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    if control is not None:
        control.sample(Control.REPS)
    median = benchmark.stats.stats.median
    info = dict(extra)
    info.update(backend=backend, device=settings.device, median_s=median,
                tokens_per_s=info["tokens"] / median)
    info.update(roofline.figures(dtype=info["dtype"], flop=info["flop"], nbytes=info["bytes"],
                                 seconds=median))
    info["timing"] = {
        "clock": "cuda-events" if cuda else "perf_counter",
        "cold_l2": cuda, "warmup_calls": len(warm) + 1, "iterations": 1,
        "rounds": rounds, "threads": torch.get_num_threads(),
    }
    if control is not None:
        info["control"] = control.summary()
        llc = _llc_bytes()
        # A memory-bound case whose bytes fit in the last-level cache runs from cache, above the
        # DRAM copy bandwidth: its roofline fraction can exceed 1 (said here, not clipped).
        info["cache_resident"] = bool(llc and info["bytes"] <= llc)
    if window is not None:
        info["timing"]["baton"] = {"window_rounds": window.rounds, "handovers": window.handovers}
    if slowdown:
        info["slowdown"] = slowdown
    benchmark.extra_info.update(info)
