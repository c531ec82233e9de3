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

What a timed round contains is recorded, not assumed (extra_info.timing.region, timed_region()):
read from the tensors the case passes in and the call hands back. A kernel benchmark times the
kernel and what launches it, with inputs already on the device and outputs left there: in a
model the output feeds the next layer on the device, so a device-to-host copy would time PCIe
and a synchronisation, not the kernel (and at decode sizes it can cost more than the kernel).
run_case refuses a case whose call moves its inputs or outputs between host and device unless
the benchmark says why that copy belongs to what it measures (`copies={"d2h": why}` or
{"h2d": why}: the rejection sampler hands its sampled ids to the host, as an engine step does);
the copy is then timed for real (CUDA events bracket the call, which waits for it) and the
record says so.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch

from reports import baton as _baton
from suites.bench import probes as _roofline
from suites.bench.fingerprint import llc_bytes as _llc_bytes

CPU_SHAPES = ("qwen3.5-397b-a17b-cpu-experts", "qwen3-next-80b-a3b-cpu-dims",
              "deepseek-v3-cpu-experts", "mixtral-8x7b-cpu-experts")
GPU_SHAPES = ("qwen3.5-397b-a17b", "qwen3-next-80b-a3b", "deepseek-v3", "mixtral-8x7b")
CPU_TOKENS = tuple(2**i for i in range(11))  # 1 .. 1024
GPU_TOKENS = tuple(2**i for i in range(14))  # 1 .. 8192


ROUNDS_RULES = ("time", "auto")
# --bench-rounds auto (what an A/B run's processes use, harness/ab.py): the rounds that bring
# the standard error of the case's median to AUTO_SE of it, from the spread of an untimed pilot
# (the warm-up calls after the first, plus PILOT_CALLS calls for a case under PILOT_MAX_S a call,
# PILOT_SLOW_CALLS under PILOT_SLOW_MAX_S): n =
# (1.2533 x cv / AUTO_SE)^2 (the median's standard error is 1.2533 sigma / sqrt(n) for normal
# rounds; cv robust (robust_cv) from 8 pilot calls on), cv at least CV_FLOOR (a pilot of a few calls underestimates it), at least AUTO_MIN
# rounds, and never more than the time rule would time. In an A/B pair the median's own error
# is one part of the pair-to-pair spread (the other: the machine between windows), so halving
# it further buys little: a 20 us router call needs ~100 rounds (2 ms), not the 0.3 s of
# rounds the time rule gives it.
AUTO_SE = 0.005
CV_FLOOR = 0.01
AUTO_MIN = 5
PILOT_CALLS = 20
PILOT_MAX_S = 0.002
PILOT_SLOW_CALLS = 4  # and 4 for a case under PILOT_SLOW_MAX_S a call (at most 0.1 s more)
PILOT_SLOW_MAX_S = 0.025
WARMUP_MAX_S = 1.0  # auto warm-up: calls until two agree within 10%, at most 5 or this long
AUTO_CONTROL_REPS = 10  # the control op before and after the rounds (40 with the time rule)
REWARM_MAX_S = 0.005  # A/B windows: an untimed re-warm call after each handover below this
MIN_WINDOWS = 4  # A/B windows: a case's timed rounds span at least this many windows a side


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


def slowdown_for(slowdown: dict[str, float], backend: str) -> float:
    """The fraction a parsed --bench-slowdown slows `backend` by (the largest of the globs that
    match it; 0: not slowed)."""
    return max((f for g, f in slowdown.items() if fnmatch.fnmatch(backend, g)), default=0.0)


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
    rounds_rule: str = "time"  # "time": fill time_s; "auto": from the case's own variance

    @classmethod
    def from_options(cls, *, device: str, tokens, shapes, dtypes, threads, time_s, min_rounds,
                     slowdown, include_reference, usable_cpus,
                     rounds_rule: str | None = None) -> BenchSettings:
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
        rounds_rule = (rounds_rule or "time").strip()
        if rounds_rule not in ROUNDS_RULES:
            raise ValueError(f"--bench-rounds {rounds_rule!r}: expected one of "
                             f"{', '.join(ROUNDS_RULES)}")
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
            rounds_rule=rounds_rule,
        )

    @property
    def roofline_dtypes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.dtypes, "float32")))

    def slowdown_for(self, backend: str) -> float:
        return slowdown_for(self.slowdown, backend)

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
        return {"op": self.OP, "median_s": statistics.median(self.times),
                "robust_cv": robust_cv(self.times), "rounds": len(self.times)}


# The baton of an interleaved A/B pair (reports/baton.py), set by conftest.py when the A/B runner
# asked for it; None otherwise.
BATON: _baton.Baton | None = None
# Both sides of an A/B pair in this process (SharedPair), set by conftest.py from
# SUITE_BENCH_SHARED; None otherwise.
SHARED: SharedPair | None = None


class Windows:
    """Per-round setup that gives the other side of an A/B pair its turn every `rounds` timed
    rounds (a window of about reports.baton.WINDOW_S seconds): `turn` passes the baton to the
    other process, or runs the other side's window in this one (Guest), and returns when this
    side may compute again; then one untimed call, so that the next window does not start on
    caches the other side just evicted. Wraps the case's own per-round setup (the control op)."""

    def __init__(self, turn: Callable[[], None], target: Callable[[], object],
                 inner: Callable[[], None] | None, rounds: int, rewarm: bool = True) -> None:
        self.turn, self.target, self.inner, self.rounds = turn, target, inner, rounds
        # The re-warm call matters for short calls, whose first round after the other side's
        # window would run on evicted caches; a call of REWARM_MAX_S or more refills its
        # working set within its own first percent, the same on both sides, and an extra
        # call a window would double the time of a case whose window is one round.
        self.rewarm = rewarm
        self.count = 0
        self.handovers = 0

    def handover(self) -> None:
        self.turn()
        self.handovers += 1
        if self.rewarm:
            self.target()

    def setup(self) -> None:
        if self.count and self.count % self.rounds == 0:
            self.handover()
        self.count += 1
        if self.inner is not None:
            self.inner()


@dataclass
class SharedPair:
    """Both sides of an A/B pair in this one process (harness/ab.py `--ab-interleave shared`,
    chosen when A and B are one environment, so that the only difference between them is B's
    --ab-slowdown-b): A is timed by pytest-benchmark as in any process, B by a Guest whose
    windows alternate with A's in every case, on the same weights, inputs and process state.
    Between two processes each case keeps an offset of its own for the whole process (measured
    on the Intel Xeon AMX machine, 2026-12-07: the pair log-ratio's sd was 4.6% between pairs
    against a 1.8% standard error within a pair); one process has the same offset on both
    sides, and it cancels in B/A. conftest.py writes B's records to `b_json`, in the format of
    A's --benchmark-json, for reports/ab.py to read as B's process file."""

    first: str  # "A" or "B": the side whose window opens each case (the pair's balanced order)
    b_json: str
    b_slowdown: dict[str, float] = field(default_factory=dict)
    records: dict[str, dict] = field(default_factory=dict)  # fullname -> B's data, extra_info

    def __post_init__(self) -> None:
        if self.first not in ("A", "B"):
            raise ValueError(f"shared A/B pair: first side {self.first!r}, expected A or B")


class Guest:
    """Side B of a SharedPair in one case: `window()` times up to `window_rounds` of its rounds
    (Windows' turn), each after the case's own per-round setup (`inner`: the control op, on B's
    rounds as on A's), the way pytest-benchmark's pedantic runner times A's: `timer` (the
    fixture's own) right before and after the call, and the call's output kept until the next
    round's call has returned, as pedantic keeps A's: no round frees the previous output inside
    its timing, and each call allocates its output while the previous one is still held, on
    both sides alike. Its first call of each window is an untimed re-warm when A's windows
    have one. Measured (runs 7 and 8, 308 unslowed benchmarks, pairs 1-2): the median of B/A
    is 0.9996 and 0.9994."""

    def __init__(self, target: Callable[[], object], inner: Callable[[], None] | None,
                 rounds: int, window_rounds: int, rewarm: bool,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.target, self.inner, self.rounds, self.timer = target, inner, rounds, timer
        self.window_rounds, self.rewarm = window_rounds, rewarm
        self.data: list[float] = []
        self.windows = 0
        self.result: object = None

    def window(self) -> None:
        n = min(self.window_rounds, self.rounds - len(self.data))
        if n <= 0:
            return
        self.windows += 1
        if self.rewarm:
            self.target()
        target, timer = self.target, self.timer
        for _ in range(n):
            if self.inner is not None:
                self.inner()
            start = timer()
            result = target()
            end = timer()
            self.result = result  # the previous round's output is freed here, untimed
            self.data.append(end - start)

    def finish(self) -> None:
        while len(self.data) < self.rounds:
            self.window()


def _tensors(obj) -> list:
    """The tensors in a call's inputs or outputs (tensors, or tuples/lists/dicts of them; any
    object with a `device` and `nbytes` counts, so tests can pass stand-ins)."""
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return [obj] if hasattr(obj, "device") and hasattr(obj, "nbytes") else []


def _on_host(t) -> bool:
    return torch.device(t.device).type == "cpu"


class RooflineWarning(UserWarning):
    """A roofline fraction above 1 was withheld: the roof it was against is the wrong one."""


class TimedRegionError(RuntimeError):
    """A case whose timed call would time a host/device copy it does not say it means to."""


def timed_region(device: str, *, inputs: Iterable = (), output=None,
                 copies: dict[str, str] | None = None) -> dict:
    """What one timed round of a case contains, from the tensors it passes in (`inputs`) and the
    call's `output`: extra_info.timing.region. On cuda a host input (copied in by the call) or a
    host output (copied out) is refused with TimedRegionError unless copies["h2d"] /
    copies["d2h"] says why that copy belongs to what the benchmark measures; it is then listed
    as timed."""
    copies = dict(copies or {})
    unknown = set(copies) - {"h2d", "d2h"}
    if unknown:
        raise ValueError(f"copies: keys 'h2d' and 'd2h' only, got {sorted(unknown)}")
    ins, outs = _tensors(list(inputs)), _tensors(output)
    if device != "cuda":
        return {"device": device, "clock": "perf_counter",
                "contains": ["one call on the host: the kernel(s) and the adapter's Python"],
                "excludes": ["the control op (untimed per-round setup, timing.Control)"],
                "h2d_copy": False, "d2h_copy": False}
    h2d = [t for t in ins if _on_host(t)]
    d2h = [t for t in outs if _on_host(t)]
    contains = ["the call's work as the GPU sees it between a CUDA event before and one after: "
                "its kernels and the gaps in which the GPU waits on the host (launch overhead, "
                "the adapter's and vLLM's Python between launches)",
                "the adapter's closing torch.cuda.synchronize (the host's return after the last "
                "kernel, a few microseconds)"]
    excludes = ["the L2 flush (untimed setup before each round)"]
    if h2d:
        contains.append(f"host-to-device copy of {len(h2d)} input tensor(s), "
                        f"{sum(int(t.nbytes) for t in h2d)} bytes")
    else:
        excludes.append("host-to-device copies of the inputs (on the device before timing)")
    if d2h:
        contains.append(f"device-to-host copy of {len(d2h)} output tensor(s), "
                        f"{sum(int(t.nbytes) for t in d2h)} bytes, and the synchronisation it "
                        "implies")
    else:
        excludes.append("device-to-host copies (the outputs stay on the device)")
    unmeant = [(k, w) for k, w, ts in (("h2d", "takes host inputs", h2d),
                                       ("d2h", "returns host outputs", d2h))
               if ts and not copies.get(k)]
    if unmeant:
        raise TimedRegionError(
            f"the timed call {' and '.join(w for _, w in unmeant)}: a kernel benchmark times "
            "the kernel, not a copy between host and device (move the inputs to the device "
            "before timing, leave the outputs there), or pass run_case copies={"
            + ", ".join(f"'{k}': 'why the copy is part of what is measured'" for k, _ in unmeant)
            + "}")
    region = {"device": device, "clock": "cuda-events", "contains": contains,
              "excludes": excludes, "h2d_copy": bool(h2d), "d2h_copy": bool(d2h)}
    why = {k: copies[k] for k, ts in (("h2d", h2d), ("d2h", d2h)) if ts}
    if why:
        region["copies_why"] = why
    return region


def robust_cv(times) -> float:
    """0.7413 x IQR / median: the coefficient of variation that one outlier cannot move."""
    xs = sorted(times)
    n = len(xs)
    return 0.7413 * (xs[(3 * n) // 4] - xs[n // 4]) / statistics.median(xs)


def auto_rounds(pilot: list[float], time_rounds: int) -> tuple[int, float]:
    """--bench-rounds auto: (rounds, the pilot's cv) from untimed pilot calls' durations; at
    most time_rounds (what the time rule would time)."""
    if len(pilot) >= 8:  # robust: one preempted call must not set the rounds
        cv = robust_cv(pilot)
    else:
        cv = statistics.pstdev(pilot) / statistics.fmean(pilot) if len(pilot) > 1 else 1.0
    need = math.ceil((1.2533 * max(cv, CV_FLOOR) / AUTO_SE) ** 2)
    return min(time_rounds, max(AUTO_MIN, need)), cv


def window_rounds(t: float, rounds: int) -> int:
    """Timed rounds a side computes before it passes the baton (A/B window interleaving): about
    reports.baton.WINDOW_S seconds of calls of t seconds, and at most rounds / MIN_WINDOWS, so
    each case's rounds span at least MIN_WINDOWS windows a side. A case of a few hundred
    rounds used to fit one window a side; a slow stretch of the machine (measured here
    2026-12-07: 50 ms stretches 2-3x slower for cpu_fused_moe) then fell on one side's whole
    median. Over MIN_WINDOWS alternations it falls on a quarter of one side's rounds, which
    the median does not follow, or on both sides."""
    return max(1, min(math.ceil(_baton.WINDOW_S / t), math.ceil(rounds / MIN_WINDOWS)))


def run_case(benchmark, fn: Callable[[], object], *, settings: BenchSettings,
             roofline: _roofline.Roofline, group: str, backend: str, extra: dict,
             inputs: Iterable = (), copies: dict[str, str] | None = None) -> None:
    """Time fn and fill benchmark.extra_info: `extra` (family, shape, dtype, tokens, flop, bytes,
    models; compute_dtype: the arithmetic whose peak is the compute roof, default dtype) plus
    the achieved rates, the roofline fractions and how it was timed, including what a timed
    round contains (timed_region: `inputs` are the tensors fn reads, `copies` why a
    host/device copy in the timed call is meant)."""
    slowdown = settings.slowdown_for(backend)
    target = Slowed(fn, slowdown) if slowdown else fn
    benchmark.group = group
    cuda = settings.device == "cuda"
    auto = settings.rounds_rule == "auto"

    def call() -> tuple[object, float]:
        t0 = time.perf_counter()
        out = target()
        if cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    # Warm-up: first calls pay for allocation, prepacking caches, kernel selection, JIT.
    # "time": 3 calls. "auto": until two calls in a row agree within 10% (at most 5 calls or
    # WARMUP_MAX_S after the first).
    warm = []
    while len(warm) < 3 or (auto and len(warm) < 5 and sum(warm[1:]) < WARMUP_MAX_S
                            and abs(warm[-1] / warm[-2] - 1) > 0.10):
        output, dt = call()
        warm.append(dt)
        if auto and len(warm) == 2 and abs(warm[1] / warm[0] - 1) <= 0.10:
            break
    region = timed_region(settings.device, inputs=inputs, output=output, copies=copies)
    t = max(statistics.median(warm[1:] if len(warm) > 2 else warm), 1e-7)
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
    pilot_cv = None
    if auto:
        pilot = warm[1:] if len(warm) > 2 else warm  # two that agreed: both are warm
        if t < PILOT_MAX_S:
            pilot += [call()[1] for _ in range(PILOT_CALLS)]
        elif t < PILOT_SLOW_MAX_S:
            pilot += [call()[1] for _ in range(PILOT_SLOW_CALLS)]
        rounds, pilot_cv = auto_rounds(pilot, rounds)
    window = guest = None
    if SHARED is not None and not cuda:
        # both sides here: B's windows are Windows' turns, on the same fn, inputs and control
        b_slowdown = slowdown_for(SHARED.b_slowdown, backend)
        wr = window_rounds(t, rounds)
        guest = Guest(Slowed(fn, b_slowdown) if b_slowdown else fn, setup, rounds, wr,
                      rewarm=t < REWARM_MAX_S,
                      timer=getattr(benchmark, "_timer", None) or time.perf_counter)
        window = Windows(guest.window, target, setup, wr, rewarm=t < REWARM_MAX_S)
        setup = window.setup
        if SHARED.first == "B":
            window.handover()  # B's window opens the case, as the baton's first side's would
    elif BATON is not None and not cuda:
        window = Windows(BATON.pass_, target, setup, window_rounds(t, rounds),
                         rewarm=t < REWARM_MAX_S)
        setup = window.setup
        window.handover()  # the other side reaches this case: the timed windows start aligned
    reps = AUTO_CONTROL_REPS if auto else Control.REPS
    if control is not None:
        control.sample(reps)
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1,
                       warmup_rounds=0 if auto else 1)
    if guest is not None:
        guest.finish()  # B's last window, when A's opened the case
    if control is not None:
        control.sample(reps)
    median = benchmark.stats.stats.median
    info = dict(extra, backend=backend, device=settings.device)
    _rates(info, median, roofline)
    info["timing"] = {
        "clock": "cuda-events" if cuda else "perf_counter",
        "cold_l2": cuda, "warmup_calls": len(warm) + (0 if auto else 1), "iterations": 1,
        "rounds": rounds, "rounds_rule": settings.rounds_rule,
        "threads": torch.get_num_threads(), "region": region,
    }
    if pilot_cv is not None:
        info["timing"]["pilot_cv"] = pilot_cv
    if control is not None:
        info["control"] = control.summary()
        llc = _llc_bytes()
        # A memory-bound case whose bytes fit in the last-level cache runs from cache, above the
        # DRAM copy bandwidth: a bandwidth fraction above 1 is withheld and flagged
        # (roofline_flags), this says why.
        info["cache_resident"] = bool(llc and info["bytes"] <= llc)
    for flag in info["roofline_flags"]:
        warnings.warn(f"{benchmark.name}: {flag}", RooflineWarning, stacklevel=2)
    if slowdown:
        info["slowdown"] = slowdown
    if guest is not None:
        info["timing"]["shared"] = {"side": "A", "first": SHARED.first,
                                    "window_rounds": window.rounds, "turns": window.handovers}
        SHARED.records[benchmark.fullname] = _guest_record(guest, info, roofline, b_slowdown)
    elif window is not None:
        info["timing"]["baton"] = {"window_rounds": window.rounds, "handovers": window.handovers}
    benchmark.extra_info.update(info)


def _rates(info: dict, median: float, roofline: _roofline.Roofline) -> None:
    """A record's median and what follows from it: tokens/s, achieved rates and roofline
    fractions (info has tokens, dtype, flop, bytes and maybe compute_dtype)."""
    info.update(median_s=median, tokens_per_s=info["tokens"] / median)
    info.update(roofline.figures(dtype=info["dtype"], flop=info["flop"], nbytes=info["bytes"],
                                 seconds=median, compute_dtype=info.get("compute_dtype")))


def _guest_record(guest: Guest, info: dict, roofline: _roofline.Roofline,
                  slowdown: float) -> dict:
    """B's record of a shared-pair case (SharedPair.records): its rounds, and A's extra_info
    with B's median, rates and roofline fractions and B's slowdown."""
    b = copy.deepcopy(info)
    b.pop("slowdown", None)
    _rates(b, statistics.median(guest.data), roofline)
    b["timing"]["shared"] = {**b["timing"]["shared"], "side": "B", "windows": guest.windows}
    if slowdown:
        b["slowdown"] = slowdown
    return {"data": list(guest.data), "extra_info": b}
