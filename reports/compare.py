"""Noise-aware compare of two runs: a verdict per benchmark, a table, an exit code.

For each benchmark in both runs: the ratio r = median(CAND rounds) / median(BASE rounds) (> 1:
CAND is slower) and a percentile-bootstrap interval for it (both runs' rounds resampled
independently, `resamples` times, at `confidence`). With t the threshold (reports/thresholds.json,
default 5%):

  regression    the whole interval lies above 1 + t       (slower by more than t, beyond noise)
  improvement   the whole interval lies below 1 / (1 + t)
  unchanged     the interval lies inside [1 / (1 + t), 1 + t]
  inconclusive  the interval straddles a boundary (too noisy to tell at this threshold)
  drift         a regression or improvement that the machine explains: the benchmark's control
                op (timed around its rounds, suites/bench/timing.py) was slower in CAND by more
                than t (for a regression) or faster by more than t (for an improvement); the
                ratio is shown but not blamed on the code. A machine that drifted the other way
                only makes the verdict conservative, so it stands.
  new / missing in CAND only / in BASE only

Only regressions fail (exit 1). The rounds within a run do not see drift between runs (another
tenant on the machine, clock changes): the per-benchmark control catches it where the records
carry one, and the roofline probes of both runs are compared and printed with the table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import zlib
from dataclasses import dataclass, field

import numpy as np

from reports.schema import Run

DEFAULT_RULE = pathlib.Path(__file__).parent / "thresholds.json"
VERDICTS = ("regression", "improvement", "unchanged", "inconclusive", "drift", "new", "missing")


class RuleError(ValueError):
    """A thresholds file that cannot be used; str() is one line."""


@dataclass(frozen=True)
class Rule:
    threshold: float = 0.05
    confidence: float = 0.99
    resamples: int = 2000
    min_rounds: int = 5
    family_threshold: dict = field(default_factory=dict)
    max_false_alarm_rate: float = 0.01
    power_slowdown: float = 0.15
    min_power: float = 0.95

    def threshold_for(self, family: str) -> float:
        return float(self.family_threshold.get(family, self.threshold))

    @classmethod
    def load(cls, path: str | pathlib.Path = DEFAULT_RULE, **overrides) -> Rule:
        p = pathlib.Path(path)
        try:
            raw = json.loads(p.read_text())
        except FileNotFoundError:
            raise RuleError(f"{p}: no such thresholds file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RuleError(f"{p}: not a readable JSON thresholds file ({e})") from None
        if not isinstance(raw, dict):
            raise RuleError(f"{p}: expected a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in raw if k not in names and not k.startswith("_"))
        if unknown:
            raise RuleError(f"{p}: unknown fields {unknown}; known: {sorted(names)}")
        kw = {k: v for k, v in raw.items() if k in names}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        rule = cls(**kw)
        rule.check(str(p))
        return rule

    def check(self, source: str = "rule") -> None:
        def bad(name, v, want):
            raise RuleError(f"{source}: {name} = {v!r}: expected {want}")

        for name in ("threshold", "max_false_alarm_rate", "power_slowdown"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                bad(name, v, "a number in (0, 1)")
        for name in ("confidence", "min_power"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.5 <= v < 1:
                bad(name, v, "a number in [0.5, 1)")
        if not isinstance(self.resamples, int) or self.resamples < 100:
            bad("resamples", self.resamples, "an integer >= 100")
        if not isinstance(self.min_rounds, int) or self.min_rounds < 2:
            bad("min_rounds", self.min_rounds, "an integer >= 2")
        if not isinstance(self.family_threshold, dict):
            bad("family_threshold", self.family_threshold, "an object {family: threshold}")
        for fam, v in self.family_threshold.items():
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                bad(f"family_threshold.{fam}", v, "a number in (0, 1)")


def median_ratio_interval(base, cand, *, resamples: int, confidence: float,
                          seed: int) -> tuple[float, float, float]:
    """median(cand) / median(base) and its percentile-bootstrap interval."""
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    rng = np.random.default_rng(seed)
    mb = np.median(b[rng.integers(0, b.size, (resamples, b.size))], axis=1)
    mc = np.median(c[rng.integers(0, c.size, (resamples, c.size))], axis=1)
    ratios = mc / mb
    alpha = 1.0 - confidence
    lo, hi = np.quantile(ratios, [alpha / 2, 1 - alpha / 2])
    return float(np.median(c) / np.median(b)), float(lo), float(hi)


def classify(lo: float, hi: float, threshold: float) -> str:
    up, down = 1.0 + threshold, 1.0 / (1.0 + threshold)
    if lo > up:
        return "regression"
    if hi < down:
        return "improvement"
    if down <= lo and hi <= up:
        return "unchanged"
    return "inconclusive"


@dataclass
class Row:
    fullname: str
    family: str
    backend: str
    shape: str
    dtype: str
    tokens: int
    verdict: str
    threshold: float
    base_median: float = math.nan
    cand_median: float = math.nan
    ratio: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    base_cv: float = math.nan
    cand_cv: float = math.nan
    control_ratio: float = math.nan  # CAND/BASE median of the control op, when both carry one

    @property
    def label(self) -> str:
        return f"{self.family} {self.backend} {self.shape} {self.dtype} T={self.tokens}"


@dataclass
class Comparison:
    base: Run
    cand: Run
    rule: Rule
    rows: list[Row]
    notes: list[str]

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "regression"]

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.rows) for v in VERDICTS}

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def as_dict(self) -> dict:
        return {"base": self.base.source, "cand": self.cand.source,
                "rule": dataclasses.asdict(self.rule), "notes": self.notes,
                "counts": self.counts(), "rows": [dataclasses.asdict(r) for r in self.rows]}


def _drift_notes(base: Run, cand: Run, threshold: float) -> list[str]:
    notes = []
    rb, rc = base.machine_info["roofline"], cand.machine_info["roofline"]
    probes = [("copy bandwidth", rb["copy_bytes_per_s"], rc["copy_bytes_per_s"])]
    for dt, pb in rb["matmul_flops_per_s"].items():
        if dt in rc["matmul_flops_per_s"]:
            probes.append((f"matmul {dt}", pb, rc["matmul_flops_per_s"][dt]))
    parts, drifted = [], False
    for name, pb, pc in probes:
        ratio = pc / pb  # > 1: the machine was faster in CAND
        parts.append(f"{name} x{ratio:.3f}")
        drifted |= not (1 / (1 + threshold) <= ratio <= 1 + threshold)
    notes.append("roofline probes CAND/BASE: " + ", ".join(parts)
                 + (" -- the machine itself changed speed beyond the threshold; verdicts may "
                    "reflect load, not code" if drifted else ""))
    return notes


def compare(base: Run, cand: Run, rule: Rule | None = None) -> Comparison:
    rule = rule or Rule.load()
    notes = []
    if base.machine_id != cand.machine_id:
        notes.append(f"different machines: BASE {base.machine_id}, CAND {cand.machine_id} -- "
                     "ratios mix hardware and code")
    sb, sc = base.machine_info["software"], cand.machine_info["software"]
    for k in ("vllm", "vllm_commit", "torch"):
        if sb.get(k) != sc.get(k):
            notes.append(f"{k}: BASE {sb.get(k)} -> CAND {sc.get(k)}")
    notes.extend(_drift_notes(base, cand, rule.threshold))
    bmap, cmap = base.by_name, cand.by_name
    rows = []
    for name in list(bmap) + [n for n in cmap if n not in bmap]:
        rec = cmap.get(name) or bmap[name]
        t = rule.threshold_for(rec.family)
        row = Row(fullname=name, family=rec.family, backend=rec.backend, shape=rec.shape_name,
                  dtype=rec.dtype, tokens=rec.tokens, verdict="", threshold=t)
        b, c = bmap.get(name), cmap.get(name)
        if b is None or c is None:
            row.verdict = "new" if b is None else "missing"
            if b is not None:
                row.base_median, row.base_cv = b.median, b.robust_cv
            if c is not None:
                row.cand_median, row.cand_cv = c.median, c.robust_cv
            rows.append(row)
            continue
        row.base_median, row.cand_median = b.median, c.median
        row.base_cv, row.cand_cv = b.robust_cv, c.robust_cv
        if min(len(b.data), len(c.data)) < rule.min_rounds:
            row.ratio = c.median / b.median
            row.verdict = "inconclusive"
            notes.append(f"{row.label}: fewer than {rule.min_rounds} rounds, no interval")
        else:
            row.ratio, row.lo, row.hi = median_ratio_interval(
                b.data, c.data, resamples=rule.resamples, confidence=rule.confidence,
                seed=zlib.crc32(name.encode()))
            row.verdict = classify(row.lo, row.hi, t)
        cb, cc = b.extra.get("control"), c.extra.get("control")
        if cb and cc:
            row.control_ratio = cc["median_s"] / cb["median_s"]
            if (row.verdict == "regression" and row.control_ratio > 1 + t) or (
                    row.verdict == "improvement" and row.control_ratio < 1 / (1 + t)):
                row.verdict = "drift"
        rows.append(row)
    return Comparison(base=base, cand=cand, rule=rule, rows=rows, notes=notes)


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


_MARK = {"regression": "REGRESSION", "improvement": "improved", "unchanged": "same",
         "inconclusive": "noisy", "drift": "machine drift", "new": "new", "missing": "missing"}


def to_markdown(cmp: Comparison, *, only_changes: bool = False) -> str:
    c = cmp.counts()
    lines = [
        f"Compare: BASE {cmp.base.source} ({cmp.base.label}) vs CAND {cmp.cand.source} "
        f"({cmp.cand.label})",
        "",
        f"Rule: regression when the {cmp.rule.confidence:.0%} bootstrap interval of the median "
        f"ratio lies above 1 + threshold (default {cmp.rule.threshold:.0%}).",
        "",
        "Verdicts: " + ", ".join(f"{v} {n}" for v, n in c.items() if n),
        "",
    ]
    lines += [f"- {n}" for n in cmp.notes]
    lines += ["", "| verdict | benchmark | base | cand | ratio | interval | robust CV base/cand "
              "| control ratio |", "|---|---|---:|---:|---:|---|---|---:|"]
    order = {v: i for i, v in enumerate(VERDICTS)}
    for r in sorted(cmp.rows, key=lambda r: (order[r.verdict], -(r.ratio if math.isfinite(r.ratio)
                                                                  else 0))):
        if only_changes and r.verdict in ("unchanged",):
            continue
        interval = f"[{r.lo:.3f}, {r.hi:.3f}]" if math.isfinite(r.lo) else "-"
        ratio = f"{r.ratio:.3f}" if math.isfinite(r.ratio) else "-"
        cv = "/".join(f"{v:.1%}" if math.isfinite(v) else "-" for v in (r.base_cv, r.cand_cv))
        control = f"{r.control_ratio:.3f}" if math.isfinite(r.control_ratio) else "-"
        lines.append(f"| {_MARK[r.verdict]} | {r.label} | {_fmt_time(r.base_median)} | "
                     f"{_fmt_time(r.cand_median)} | {ratio} | {interval} | {cv} | {control} |")
    return "\n".join(lines) + "\n"
