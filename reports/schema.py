"""The result schema: pytest-benchmark JSON plus this suite's fields, validated on load.

A run file is what `pytest --benchmark-json` writes with suites/bench/conftest.py loaded:

  suite_schema  int, this module's SCHEMA_VERSION
  datetime      ISO 8601 (when the run ended)           version   pytest-benchmark's version
  commit_info   pytest-benchmark's (id, branch, dirty, ...) of the suite's checkout
  machine_info  pytest-benchmark's, plus the fingerprint:
      machine_id   [a-z0-9][a-z0-9._-]*: the folder under reports/history/
      kind         "cpu" | "gpu";  cpu {model, isa_flags, ...};  gpu {name, sm_count, memory_bytes,
                   driver, cuda} when kind is "gpu"
      software     {torch, vllm, vllm_commit, ...}     threads {...}
      roofline     {matmul_flops_per_s {dtype: FLOP/s}, copy_bytes_per_s}
  benchmarks[]  pytest-benchmark records: fullname (unique), name, group, stats {median, mean,
                min, max, stddev, rounds, data [seconds per call, one per round]}, and
      extra_info   family, backend, dtype, tokens, shape {...}, timing {...}, and per family
                   (FAMILY_FIELDS): the cost model and achieved rates, or e2e throughput and
                   acceptance; roofline_fraction in [0, 1] or null with roofline_flags saying
                   why (reports/roofline.py: above 1 the roof was wrong); optional: control {median_s, ...} (the machine's speed during
                   the case, see suites/bench/timing.py), acceptance_per_position, slowdown,
                   process_medians [one a process] + process_rounds (runs merged from several
                   processes, reports/merge.py).

A run comes in one of two forms, both accepted everywhere:

  full      as pytest-benchmark writes it: every record's stats.data holds the raw rounds
  compact   what reports/history.py stores (reports/compact.py makes it): the top-level field
            compact {format, rounds_sha256} is present, no record has stats.data, and every
            record's stats carries per_process {rounds, q1, median, q3, log_iqr}, one entry a
            process (quartiles of its rounds, and the interquartile range of their logs): all
            that compare and render read from the rounds. rounds_sha256 names the rounds the
            run was made from (kept, on request, in a gzip sidecar next to the run file).

Any violation raises SchemaError with one line: where (file and JSON path) and what was expected.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
COMPACT_FORMAT = 1  # the compact form's version (top-level compact.format)
PER_PROCESS = ("rounds", "q1", "median", "q3", "log_iqr")  # stats.per_process of a compact record
MACHINE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")

_COMMON = ("backend", "dtype", "tokens", "shape", "timing")
_KERNEL = ("flop", "bytes", "achieved_flops_per_s", "achieved_bytes_per_s", "roofline_fraction")
# Required extra_info fields per benchmark family (beyond "family" itself).
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "moe_experts": _COMMON + _KERNEL,
    "moe_quant_experts": _COMMON + _KERNEL,
    "router": _COMMON + _KERNEL,
    "rejection_sampler": _COMMON + _KERNEL,
    "e2e": (*_COMMON, "tokens_per_s", "mtp_k"),
}


class SchemaError(ValueError):
    """A run file that is not a valid result; str() is one line naming the file and the field."""


def robust_cv(xs) -> float:
    """0.7413 x IQR / median: the CV a normal distribution with this IQR would have, insensitive
    to the outlier rounds a shared machine produces (nan below 4 values)."""
    x = np.asarray(xs, dtype=np.float64)
    if x.size < 4:
        return float("nan")
    q1, q2, q3 = np.percentile(x, [25, 50, 75])
    return float(0.7413 * (q3 - q1) / q2)


def round_stats(data) -> dict:
    """pytest-benchmark's `stats` record (data included) for a list of round times."""
    x = np.asarray(data, dtype=np.float64)
    q1, med, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    iqr = q3 - q1
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    sd_out = int((np.abs(x - mean) > sd).sum()) if sd else 0
    iqr_out = int(((x < q1 - 1.5 * iqr) | (x > q3 + 1.5 * iqr)).sum())
    return {"min": float(x.min()), "max": float(x.max()), "mean": mean, "stddev": sd,
            "rounds": int(x.size), "median": med, "iqr": iqr, "q1": q1, "q3": q3,
            "ld15iqr": float(x[x >= q1 - 1.5 * iqr].min()),
            "hd15iqr": float(x[x <= q3 + 1.5 * iqr].max()),
            "iqr_outliers": iqr_out, "stddev_outliers": sd_out, "outliers": f"{sd_out};{iqr_out}",
            "ops": 1.0 / mean, "total": float(x.sum()), "iterations": 1,
            "data": [float(t) for t in data]}


@dataclass(frozen=True)
class ProcessSummary:
    """What compare and render need of one process's rounds (a compact record stores these)."""

    rounds: int
    q1: float
    median: float
    q3: float
    log_iqr: float  # interquartile range of the log round times

    @classmethod
    def of(cls, xs) -> ProcessSummary:
        x = np.asarray(xs, dtype=np.float64)
        q1, med, q3 = np.percentile(x, [25, 50, 75])
        lq1, lq3 = np.percentile(np.log(x), [25, 75])
        return cls(rounds=int(x.size), q1=float(q1), median=float(med), q3=float(q3),
                   log_iqr=float(lq3 - lq1))

    @property
    def robust_cv(self) -> float:
        """robust_cv of the process's rounds (nan below 4 rounds)."""
        return 0.7413 * (self.q3 - self.q1) / self.median if self.rounds >= 4 else math.nan

    @property
    def median_se(self) -> float:
        """Standard error of the process's median in log time: 1.2533 x robust sd of the log
        rounds / sqrt(rounds) (nan below 4 rounds)."""
        if self.rounds < 4:
            return math.nan
        return 1.2533 * 0.7413 * self.log_iqr / math.sqrt(self.rounds)


@dataclass
class Record:
    fullname: str
    name: str
    group: str | None
    family: str
    backend: str
    dtype: str
    tokens: int
    extra: dict
    stats: dict
    data: list[float]  # the raw rounds; empty in a compact record (see `compact`)

    @property
    def median(self) -> float:
        """The benchmark's time: the median of its process medians in a run merged from several
        processes (reports/merge.py), else the median of its rounds."""
        meds = self.process_medians
        if len(meds) > 1:
            return float(np.median(meds))
        return float(self.stats["median"])

    @property
    def compact(self) -> bool:
        """A record of a compact run: summaries of its rounds (stats.per_process), not the rounds."""
        return not self.data and "per_process" in self.stats

    @property
    def process_data(self) -> list[list[float]]:
        """The rounds of each process (one list for a single-process run). A compact record
        keeps none: use process_summaries."""
        if self.compact:
            raise SchemaError(f"{self.fullname}: a compact record keeps no rounds (its "
                              "process_summaries hold what compare and render use)")
        counts = self.extra.get("process_rounds")
        if not counts or len(counts) != len(self.process_medians):
            return [self.data]
        out, i = [], 0
        for n in counts:
            out.append(self.data[i:i + n])
            i += n
        return out

    @property
    def process_summaries(self) -> list[ProcessSummary]:
        """One ProcessSummary a process (of process_data): stored in a compact record, computed
        from the rounds in a full one, the same numbers either way."""
        if self.compact:
            pp = self.stats["per_process"]
            return [ProcessSummary(*(pp[k][i] for k in PER_PROCESS))
                    for i in range(len(pp["rounds"]))]
        return [ProcessSummary.of(xs) for xs in self.process_data]

    @property
    def median_se(self) -> float:
        """Standard error of one process's median, in log time: 1.2533 x robust sd of the log
        rounds / sqrt(rounds), the median over processes (how far a process's median moves
        with its own rounds, before anything moves the whole process)."""
        ses = [s.median_se for s in self.process_summaries if s.rounds >= 4]
        return float(np.median(ses)) if ses else 0.0

    @property
    def process_medians(self) -> list[float]:
        """One median a process: compare's samples (a single-process run gives one)."""
        meds = self.extra.get("process_medians")
        return [float(m) for m in meds] if meds else [float(self.stats["median"])]

    @property
    def cv(self) -> float:
        """Coefficient of variation of the rounds (stddev / mean)."""
        mean = float(self.stats["mean"])
        return float(self.stats["stddev"]) / mean if mean > 0 else float("nan")

    @property
    def robust_cv(self) -> float:
        """robust_cv of the rounds (pooled over processes in a merged run); a compact record
        takes the quartiles from its stats (nan where they are missing, e.g. a pooled baseline)."""
        if not self.compact:
            return robust_cv(self.data)
        st = self.stats
        if st["rounds"] < 4 or not all(k in st for k in ("q1", "q3", "median")):
            return float("nan")
        return float(0.7413 * (st["q3"] - st["q1"]) / st["median"])

    @property
    def shape_name(self) -> str:
        return str(self.extra.get("shape", {}).get("name", "?"))


@dataclass
class Run:
    source: str
    machine_id: str
    datetime: _dt.datetime
    machine_info: dict
    commit_info: dict
    records: list[Record]
    raw: dict = field(repr=False)

    @property
    def by_name(self) -> dict[str, Record]:
        return {r.fullname: r for r in self.records}

    @property
    def compact(self) -> bool:
        """Stored in the compact form (no raw rounds; see the module doc)."""
        return "compact" in self.raw

    @property
    def label(self) -> str:
        commit = (self.commit_info.get("id") or "")[:8]
        return f"{self.datetime:%Y-%m-%d %H:%M}" + (f" {commit}" if commit else "")


def _fail(source: str, where: str, what: str) -> SchemaError:
    return SchemaError(f"{source}: {where}: {what}" if where else f"{source}: {what}")


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, float) else repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


class _V:
    """Field checks that raise SchemaError naming the JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def obj(self, v: Any, where: str) -> dict:
        if not isinstance(v, dict):
            raise _fail(self.source, where, f"expected an object, got {type(v).__name__}")
        return v

    def key(self, d: dict, k: str, where: str) -> Any:
        if k not in d:
            raise _fail(self.source, where, f"missing field {k!r}")
        return d[k]

    def string(self, v: Any, where: str, *, nullable: bool = False) -> str | None:
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v:
            raise _fail(self.source, where, f"expected a non-empty string, got {_short(v)}")
        return v

    def integer(self, v: Any, where: str, *, minimum: int = 0) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise _fail(self.source, where, f"expected an integer >= {minimum}, got {_short(v)}")
        return v

    def number(self, v: Any, where: str, *, positive: bool = False) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ok = ok and (v > 0 if positive else v >= 0)
        if not ok:
            want = "a finite number > 0" if positive else "a finite number >= 0"
            raise _fail(self.source, where, f"expected {want}, got {_short(v)}")
        return float(v)

    def numbers(self, xs: Any, where: str, what: str, *, positive: bool = False) -> list[float]:
        """A non-empty list of finite numbers (>= 0, or > 0 when positive)."""
        if not isinstance(xs, list) or not xs:
            raise _fail(self.source, where, f"expected a non-empty list of {what}")
        return [self.number(x, f"{where}[{j}]", positive=positive) for j, x in enumerate(xs)]


def _machine(v: _V, mi: Any) -> dict:
    mi = v.obj(mi, "machine_info")
    mid = v.string(v.key(mi, "machine_id", "machine_info"), "machine_info.machine_id")
    if not MACHINE_ID_RE.match(mid):
        raise _fail(v.source, "machine_info.machine_id",
                    f"{mid!r} is not a valid machine id ({MACHINE_ID_RE.pattern})")
    kind = v.key(mi, "kind", "machine_info")
    if kind not in ("cpu", "gpu"):
        raise _fail(v.source, "machine_info.kind", f"expected 'cpu' or 'gpu', got {_short(kind)}")
    cpu = v.obj(v.key(mi, "cpu", "machine_info"), "machine_info.cpu")
    v.string(v.key(cpu, "model", "machine_info.cpu"), "machine_info.cpu.model")
    flags = v.key(cpu, "isa_flags", "machine_info.cpu")
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise _fail(v.source, "machine_info.cpu.isa_flags", "expected a list of strings")
    if kind == "gpu":
        gpu = v.obj(v.key(mi, "gpu", "machine_info"), "machine_info.gpu")
        v.string(v.key(gpu, "name", "machine_info.gpu"), "machine_info.gpu.name")
        v.integer(v.key(gpu, "sm_count", "machine_info.gpu"), "machine_info.gpu.sm_count",
                  minimum=1)
        v.number(v.key(gpu, "memory_bytes", "machine_info.gpu"), "machine_info.gpu.memory_bytes",
                 positive=True)
        for k in ("driver", "cuda"):
            v.string(v.key(gpu, k, "machine_info.gpu"), f"machine_info.gpu.{k}", nullable=True)
    sw = v.obj(v.key(mi, "software", "machine_info"), "machine_info.software")
    v.string(v.key(sw, "torch", "machine_info.software"), "machine_info.software.torch")
    for k in ("vllm", "vllm_commit"):
        v.string(v.key(sw, k, "machine_info.software"), f"machine_info.software.{k}", nullable=True)
    v.obj(v.key(mi, "threads", "machine_info"), "machine_info.threads")
    rl = v.obj(v.key(mi, "roofline", "machine_info"), "machine_info.roofline")
    peaks = v.obj(v.key(rl, "matmul_flops_per_s", "machine_info.roofline"),
                  "machine_info.roofline.matmul_flops_per_s")
    if not peaks:
        raise _fail(v.source, "machine_info.roofline.matmul_flops_per_s", "no dtype measured")
    for dt, p in peaks.items():
        v.number(p, f"machine_info.roofline.matmul_flops_per_s.{dt}", positive=True)
    v.number(v.key(rl, "copy_bytes_per_s", "machine_info.roofline"),
             "machine_info.roofline.copy_bytes_per_s", positive=True)
    return mi


def _per_process(v: _V, stats: dict, w: str, rounds: int) -> None:
    """stats.per_process of a compact record: equal-length columns, rounds summing to the
    record's, quartiles ordered."""
    where = f"{w}.stats.per_process"
    pp = v.obj(v.key(stats, "per_process", f"{w}.stats"), where)
    cols = {}
    for k in PER_PROCESS:
        xs = v.key(pp, k, where)
        if not isinstance(xs, list) or not xs:
            raise _fail(v.source, f"{where}.{k}", "expected a non-empty list, one entry a process")
        if k == "rounds":
            cols[k] = [v.integer(x, f"{where}.{k}[{j}]", minimum=1) for j, x in enumerate(xs)]
        else:
            cols[k] = [v.number(x, f"{where}.{k}[{j}]", positive=k != "log_iqr")
                       for j, x in enumerate(xs)]
    n = len(cols["rounds"])
    for k, xs in cols.items():
        if len(xs) != n:
            raise _fail(v.source, f"{where}.{k}", f"expected {n} entries (one a process), "
                        f"got {len(xs)}")
    if sum(cols["rounds"]) != rounds:
        raise _fail(v.source, f"{where}.rounds", f"expected counts summing to {rounds}, got "
                    f"{_short(cols['rounds'])}")
    for j in range(n):
        if not cols["q1"][j] <= cols["median"][j] <= cols["q3"][j]:
            raise _fail(v.source, where, f"process {j}: expected q1 <= median <= q3")


def _roofline_fraction(v: _V, ex: dict, val: Any, where: str) -> None:
    """A roofline fraction is a number in [0, 1], or null where extra_info.roofline_flags says
    why it was withheld (reports/roofline.py: above 1, the roof used was wrong). Records written
    before roofline_basis existed may hold a fraction above 1 (held to the wrong roof): loaded,
    and shown as such by render."""
    flags = ex.get("roofline_flags")
    if flags is not None and (not isinstance(flags, list)
                              or not all(isinstance(f, str) and f for f in flags)):
        raise _fail(v.source, where.replace("roofline_fraction", "roofline_flags"),
                    "expected a list of non-empty strings")
    if val is None:
        if not flags:
            raise _fail(v.source, where, "null without extra_info.roofline_flags saying why")
        return
    x = v.number(val, where)
    if x > 1 + 1e-9 and "roofline_basis" in ex:
        raise _fail(v.source, where, f"{x!r} > 1: the roof it is against is wrong (the peak of "
                    "another arithmetic, or DRAM bandwidth for a cached working set); withhold "
                    "it and say why in roofline_flags (reports/roofline.py figures)")


def _record(v: _V, b: Any, i: int, *, compact: bool = False) -> Record:
    w = f"benchmarks[{i}]"
    b = v.obj(b, w)
    fullname = v.string(v.key(b, "fullname", w), f"{w}.fullname")
    name = v.string(v.key(b, "name", w), f"{w}.name")
    group = v.key(b, "group", w)
    if group is not None and not isinstance(group, str):
        raise _fail(v.source, f"{w}.group", f"expected a string or null, got {_short(group)}")
    stats = v.obj(v.key(b, "stats", w), f"{w}.stats")
    for k in ("min", "max", "mean", "median"):
        v.number(v.key(stats, k, f"{w}.stats"), f"{w}.stats.{k}", positive=True)
    v.number(v.key(stats, "stddev", f"{w}.stats"), f"{w}.stats.stddev")
    rounds = v.integer(v.key(stats, "rounds", f"{w}.stats"), f"{w}.stats.rounds", minimum=1)
    data = stats.get("data")
    if compact:
        if data is not None:
            raise _fail(v.source, f"{w}.stats.data", "a compact run keeps no raw rounds (drop "
                        "the top-level 'compact' field to keep them)")
        _per_process(v, stats, w, rounds)
        data = []
    elif data is None:
        raise _fail(v.source, f"{w}.stats", "missing field 'data' (the per-round times; write "
                    "the file with --benchmark-json, which includes them)")
    elif not isinstance(data, list) or len(data) != rounds:
        raise _fail(v.source, f"{w}.stats.data",
                    f"expected a list of {rounds} round times, got {_short(data)}")
    for j, t in enumerate(data):
        v.number(t, f"{w}.stats.data[{j}]", positive=True)
    if not float(stats["min"]) <= float(stats["median"]) <= float(stats["max"]):
        raise _fail(v.source, f"{w}.stats", "median outside [min, max]")
    ex = v.obj(v.key(b, "extra_info", w), f"{w}.extra_info")
    family = v.key(ex, "family", f"{w}.extra_info")
    if family not in FAMILY_FIELDS:
        raise _fail(v.source, f"{w}.extra_info.family",
                    f"unknown family {_short(family)}; known: {', '.join(FAMILY_FIELDS)}")
    for k in FAMILY_FIELDS[family]:
        val = v.key(ex, k, f"{w}.extra_info")
        where = f"{w}.extra_info.{k}"
        if k in ("backend", "dtype"):
            v.string(val, where)
        elif k in ("tokens",):
            v.integer(val, where, minimum=1)
        elif k == "mtp_k":
            v.integer(val, where)
        elif k in ("shape", "timing"):
            v.obj(val, where)
        elif k == "roofline_fraction":
            _roofline_fraction(v, ex, val, where)
        else:
            v.number(val, where)
    control = ex.get("control")
    if control is not None:
        v.obj(control, f"{w}.extra_info.control")
        v.number(v.key(control, "median_s", f"{w}.extra_info.control"),
                 f"{w}.extra_info.control.median_s", positive=True)
    meds = ex.get("process_medians")
    if meds is not None:
        v.numbers(meds, f"{w}.extra_info.process_medians", "per-process medians", positive=True)
        pr = ex.get("process_rounds")
        if pr is not None and (not isinstance(pr, list) or len(pr) != len(meds)
                               or sum(pr) != rounds):
            raise _fail(v.source, f"{w}.extra_info.process_rounds",
                        f"expected {len(meds)} round counts summing to {rounds}, got {_short(pr)}")
    acc = ex.get("acceptance_per_position")
    if acc is not None:
        where = f"{w}.extra_info.acceptance_per_position"
        for j, a in enumerate(v.numbers(acc, where, "rates")):
            if a > 1:
                raise _fail(v.source, f"{where}[{j}]", f"a rate must lie in [0, 1], got {a!r}")
    return Record(fullname=fullname, name=name, group=group, family=family,
                  backend=ex["backend"], dtype=ex["dtype"], tokens=ex["tokens"], extra=ex,
                  stats=stats, data=[float(t) for t in data])


def validate(obj: Any, source: str = "<run>") -> Run:
    v = _V(source)
    top = v.obj(obj, "")
    ver = v.key(top, "suite_schema", "")
    if isinstance(ver, bool) or not isinstance(ver, int) or not 1 <= ver <= SCHEMA_VERSION:
        raise _fail(source, "suite_schema",
                    f"unsupported schema version {_short(ver)} (this reader knows 1..{SCHEMA_VERSION})")
    when = v.string(v.key(top, "datetime", ""), "datetime")
    try:
        dt = _dt.datetime.fromisoformat(when)
    except ValueError:
        raise _fail(source, "datetime", f"not an ISO 8601 time: {_short(when)}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=_dt.timezone.utc)
    v.string(v.key(top, "version", ""), "version")
    commit = v.obj(v.key(top, "commit_info", ""), "commit_info")
    mi = _machine(v, v.key(top, "machine_info", ""))
    compact = top.get("compact")
    if compact is not None:
        compact = v.obj(compact, "compact")
        fmt = v.key(compact, "format", "compact")
        if fmt != COMPACT_FORMAT or isinstance(fmt, bool):
            raise _fail(source, "compact.format", f"unsupported compact format {_short(fmt)} "
                        f"(this reader knows {COMPACT_FORMAT})")
        digest = v.key(compact, "rounds_sha256", "compact")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise _fail(source, "compact.rounds_sha256",
                        f"expected 64 hex digits, got {_short(digest)}")
    benches = v.key(top, "benchmarks", "")
    if not isinstance(benches, list) or not benches:
        raise _fail(source, "benchmarks", "expected a non-empty list of benchmark records")
    records = [_record(v, b, i, compact=compact is not None) for i, b in enumerate(benches)]
    seen: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.fullname in seen:
            raise _fail(source, f"benchmarks[{i}].fullname",
                        f"duplicate of benchmarks[{seen[r.fullname]}] ({r.fullname})")
        seen[r.fullname] = i
    return Run(source=source, machine_id=mi["machine_id"], datetime=dt.astimezone(_dt.timezone.utc),
               machine_info=mi, commit_info=commit, records=records, raw=top)


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def loads(text: str, source: str = "<run>") -> Run:
    if not text.strip():
        raise SchemaError(f"{source}: empty file")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise SchemaError(f"{source}: not valid JSON (line {e.lineno} column {e.colno}: "
                          f"{e.msg}); truncated or corrupt?") from None
    except ValueError as e:
        raise SchemaError(f"{source}: not valid JSON ({e})") from None
    return validate(obj, source)


def load_run(path: str | pathlib.Path) -> Run:
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise SchemaError(f"{p}: is a directory, expected a run file") from None
    except UnicodeDecodeError:
        raise SchemaError(f"{p}: not UTF-8 text (binary or corrupt file)") from None
    except OSError as e:
        raise SchemaError(f"{p}: cannot read ({e.strerror})") from None
    return loads(text, str(p))
