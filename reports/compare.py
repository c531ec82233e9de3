"""Noise-aware compare of two runs: a verdict per benchmark, a table, an exit code.

A run's evidence about a benchmark is one median per process (reports/merge.py: `nox -s bench`
runs the benchmarks in P processes, default 5). Not the rounds: on a shared machine the rounds of
one process move together (other tenants take the cores for seconds at a time, and where a
process's threads and allocations land shifts all of its rounds), so an interval over rounds is
~100x too narrow. What the process medians look like (20 processes of the same code, 27
benchmarks, this repo's CI machine): the undisturbed ones agree within 1-2%, about a quarter are
disturbed, slower by 5-150%, and few (4%, mostly benchmarks bimodal per process) are more than
5% faster than the typical one. So the estimate is built on the fast half:

  ratio     median(CAND process medians) / median(BASE process medians)   (> 1: CAND slower)
  interval  [ min(CAND) / m_k(BASE),  m_k(CAND) / min(BASE) ]
            m_k = the k-th fastest process median, k = ceil(P / 2): the fast half's slowest
            (widened by 2.576 standard errors of a process median, from its own rounds: few
            noisy rounds make each median uncertain too; ~0.1% here, so rarely visible)

The interval holds the ratio. Its lower end says "even the fastest CAND process is slower than
half of BASE's processes by this much", which disturbed CAND processes cannot fake unless all
of them are disturbed, and disturbed BASE processes cannot hide unless half of them are. With t
the threshold (reports/thresholds.json, default 5%):

  regression    the whole interval lies above 1 + t
  improvement   the whole interval lies below 1 / (1 + t)
  unchanged     shown "same": the whole interval lies inside [1 / (1 + t), 1 + t], equivalence
                within the threshold (TOST-style: both one-sided claims "not slower by more than
                t" and "not faster by more than t" hold at the interval's level), not merely "no
                regression found". The tables show the interval beside the verdict. Reaching it
                takes many rounds a process and processes that agree: the rounds' widening alone
                is exp(2.576 x se), ~4.4% a side at 10 rounds of 3% jitter (no room left inside
                +-5%), ~1.4% at 100; the order statistics do not narrow with more processes
                (min over more processes only reaches further), and runs taken at different
                times on a drifting machine stay "noisy" whatever P (that is the A/B mode's
                job). Synthetic model (calibrate: same_rate on clean runs, false_same_rate =
                "same" claimed for a 2t slowdown): 10 rounds, P = 5: 3% / 0%; 100 rounds, P = 5:
                76% / 0%; 100 rounds, P = 10: 89% / 0%.
  inconclusive  the interval straddles a boundary (too noisy to tell at this threshold), or a run
                has fewer than min_processes processes (one process cannot say how far its
                median would move in the next); shown "noisy"
  drift         a regression or improvement that the machine explains: the benchmark's control
                op (timed around its rounds, suites/bench/timing.py) was slower in CAND by more
                than t (for a regression) or faster by more than t (for an improvement)
  new / missing in CAND only / in BASE only
  acceptance_drop  records carrying an MTP acceptance rate (e2e, rejection sampler): CAND's
                rate is below BASE's by more than acceptance_drop (absolute, default 0.02) and
                a one-sided two-proportion z-test over the draft tokens behind each rate says so
                at acceptance_alpha (default 1e-3, its false-alarm rate); overrides the time
                verdict (a drafter or sampler that accepts less is a regression at any speed)

Regressions and acceptance drops fail (exit 1).

BASE may be a pooled baseline (`[MACHINE:]pool:N`, reports/history.py pool, reports/merge.py
pool): the process medians of the machine's last N clean runs, pooled per benchmark, judged by
the same rule with P_base = all pooled processes.

Measured on those 20 processes (`python -m reports calibrate --processes-from ...`, random splits
into runs of P, 12,960 comparisons at P = 5): false-alarm rate 0.12% per benchmark and
comparison, regression flagged for 84% of +15% slowdowns (P = 6: 0.08% / 90%; P = 4: 1.3%, over
the rule's 1% bound). Rules tried on the same data and rejected: a bootstrap of the median of
process medians (0.02% / 21%), Mann-Whitney-Hodges-Lehmann (0% / 21%), Welch on log medians
(0% / 5%), the ratio of minima (3.7% / 98%). The synthetic model (reports/synthetic.py) gives
0.25% / 87%. Rerun the calibration on a new machine before trusting these figures there.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy.stats import norm as _norm

from reports.schema import Run
from reports.verdicts import VerdictTable

DEFAULT_RULE = pathlib.Path(__file__).parent / "thresholds.json"
Z_ROUNDS = 2.576  # two-sided 99% normal quantile, for the rounds' own uncertainty
VERDICTS = ("acceptance_drop", "regression", "improvement", "unchanged", "inconclusive", "drift",
            "new", "missing")
FAILING = ("acceptance_drop", "regression")


class RuleError(ValueError):
    """A thresholds file that cannot be used; str() is one line."""


@dataclass(frozen=True)
class Rule:
    threshold: float = 0.05
    min_processes: int = 3
    family_threshold: dict = field(default_factory=dict)
    max_false_alarm_rate: float = 0.01
    power_slowdown: float = 0.15
    min_power: float = 0.8
    acceptance_drop: float = 0.02
    acceptance_alpha: float = 0.001

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

        for name in ("threshold", "max_false_alarm_rate", "power_slowdown", "acceptance_drop",
                     "acceptance_alpha"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                bad(name, v, "a number in (0, 1)")
        if not isinstance(self.min_power, (int, float)) or not 0.5 <= self.min_power < 1:
            bad("min_power", self.min_power, "a number in [0.5, 1)")
        if (isinstance(self.min_processes, bool) or not isinstance(self.min_processes, int)
                or self.min_processes < 2):
            bad("min_processes", self.min_processes, "an integer >= 2")
        if not isinstance(self.family_threshold, dict):
            bad("family_threshold", self.family_threshold, "an object {family: threshold}")
        for fam, v in self.family_threshold.items():
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                bad(f"family_threshold.{fam}", v, "a number in (0, 1)")


def fast_half(xs) -> float:
    """m_k: the k-th smallest of xs, k = ceil(len / 2)."""
    v = np.sort(np.asarray(xs, dtype=np.float64))
    return float(v[(v.size + 1) // 2 - 1])


def process_interval(base, cand, *, se: float = 0.0) -> tuple[float, float, float]:
    """(ratio, lo, hi) from the process medians of BASE and CAND (see the module doc). `se`, the
    standard error of one process median from its own rounds (log scale, both runs combined),
    widens the interval by Z_ROUNDS x se on each side: few, noisy rounds make a process median
    itself uncertain, which the order statistics alone would not see."""
    b = np.asarray(base, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    ratio = float(np.median(c) / np.median(b))
    widen = math.exp(Z_ROUNDS * se)
    return ratio, float(c.min() / fast_half(b)) / widen, float(fast_half(c) / b.min()) * widen


def acceptance(rec) -> tuple[float, int] | None:
    """(acceptance rate, draft tokens behind it) of a record that carries one."""
    x = rec.extra
    if "acceptance_rate" not in x or not x.get("num_draft_tokens"):
        return None
    return float(x["acceptance_rate"]), int(x["num_draft_tokens"])


def acceptance_drop_p(base: tuple[float, int], cand: tuple[float, int]) -> float:
    """One-sided p-value of a pooled two-proportion z-test for "CAND accepts less than BASE"."""
    (pb, nb), (pc, nc) = base, cand
    pooled = (pb * nb + pc * nc) / (nb + nc)
    se = math.sqrt(pooled * (1 - pooled) * (1 / nb + 1 / nc))
    if se == 0:
        return 0.0 if pc < pb else 1.0
    return float(_norm.sf((pb - pc) / se))


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
    base_processes: int = 0
    cand_processes: int = 0
    base_spread: float = math.nan  # max / min - 1 of the run's process medians
    cand_spread: float = math.nan
    control_ratio: float = math.nan  # CAND/BASE median of the control op, when both carry one
    base_acceptance: float = math.nan  # acceptance rate (accepted / draft tokens), if recorded
    cand_acceptance: float = math.nan
    acceptance_p: float = math.nan  # one-sided p-value of "CAND accepts less"

    @property
    def label(self) -> str:
        return f"{self.family} {self.backend} {self.shape} {self.dtype} T={self.tokens}"


@dataclass
class Comparison(VerdictTable):
    base: Run
    cand: Run
    rule: Rule
    rows: list[Row]
    notes: list[str]
    VERDICTS: ClassVar[tuple[str, ...]] = VERDICTS
    FAILING: ClassVar[tuple[str, ...]] = FAILING

    def as_dict(self) -> dict:
        return {"base": self.base.source, "cand": self.cand.source,
                "rule": dataclasses.asdict(self.rule), "notes": self.notes,
                "counts": self.counts(), "verdict_names": MARK,
                "rows": [dataclasses.asdict(r) for r in self.rows]}


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
    for side, run in (("BASE", base), ("CAND", cand)):
        pooled = run.raw.get("pool")
        if pooled:
            runs = pooled["runs"]
            vs = sorted({str(r.get("vllm")) for r in runs})
            notes.append(f"{side} pools the process medians of {len(runs)} clean run(s) "
                         f"({runs[0]['label']} .. {runs[-1]['label']})"
                         + (f", {len(pooled['skipped'])} planted run(s) skipped"
                            if pooled.get("skipped") else "")
                         + (f"; vllm versions {', '.join(vs)}" if len(vs) > 1 else ""))
    notes.extend(_drift_notes(base, cand, rule.threshold))
    bmap, cmap = base.by_name, cand.by_name
    rows = []
    few: list[str] = []

    def describe(rec, side: str) -> None:
        meds = rec.process_medians
        setattr(row, f"{side}_median", rec.median)
        setattr(row, f"{side}_processes", len(meds))
        setattr(row, f"{side}_spread", max(meds) / min(meds) - 1.0)

    for name in list(bmap) + [n for n in cmap if n not in bmap]:
        rec = cmap.get(name) or bmap[name]
        t = rule.threshold_for(rec.family)
        row = Row(fullname=name, family=rec.family, backend=rec.backend, shape=rec.shape_name,
                  dtype=rec.dtype, tokens=rec.tokens, verdict="", threshold=t)
        b, c = bmap.get(name), cmap.get(name)
        for rec_, side in ((b, "base"), (c, "cand")):
            if rec_ is not None:
                describe(rec_, side)
        if b is None or c is None:
            row.verdict = "new" if b is None else "missing"
            rows.append(row)
            continue
        row.ratio, row.lo, row.hi = process_interval(
            b.process_medians, c.process_medians, se=math.hypot(b.median_se, c.median_se))
        if min(row.base_processes, row.cand_processes) < rule.min_processes:
            row.verdict = "inconclusive"
            few.append(row.label)
        else:
            row.verdict = classify(row.lo, row.hi, t)
        cb, cc = b.extra.get("control"), c.extra.get("control")
        if cb and cc:
            row.control_ratio = cc["median_s"] / cb["median_s"]
            if (row.verdict == "regression" and row.control_ratio > 1 + t) or (
                    row.verdict == "improvement" and row.control_ratio < 1 / (1 + t)):
                row.verdict = "drift"
        ab, ac = acceptance(b), acceptance(c)
        if ab and ac:
            row.base_acceptance, row.cand_acceptance = ab[0], ac[0]
            row.acceptance_p = acceptance_drop_p(ab, ac)
            if ab[0] - ac[0] > rule.acceptance_drop and row.acceptance_p < rule.acceptance_alpha:
                row.verdict = "acceptance_drop"
        rows.append(row)
    if few:
        notes.append(f"{len(few)} benchmark(s) inconclusive by construction: a run has fewer "
                     f"than {rule.min_processes} processes (run nox -s bench with "
                     f"--bench-processes >= {rule.min_processes}), e.g. {few[0]}")
    return Comparison(base=base, cand=cand, rule=rule, rows=rows, notes=notes)


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


# How each verdict reads in tables and on the console ("unchanged" is the verdict "same").
MARK = {"acceptance_drop": "ACCEPTANCE DROP", "regression": "REGRESSION",
        "improvement": "improved", "unchanged": "same", "inconclusive": "noisy",
        "drift": "machine drift", "new": "new", "missing": "missing"}


def to_markdown(cmp: Comparison, *, only_changes: bool = False) -> str:
    c = cmp.counts()
    t = cmp.rule.threshold
    lines = [
        f"Compare: BASE {cmp.base.source} ({cmp.base.label}) vs CAND {cmp.cand.source} "
        f"({cmp.cand.label})",
        "",
        "Rule: ratio = median(CAND) / median(BASE) of the runs' process medians; interval "
        "[min(CAND) / fast-half(BASE), fast-half(CAND) / min(BASE)]. With the threshold t "
        f"(default {t:.0%}): REGRESSION when the whole interval lies above {1 + t:.3f}, "
        f"improved when below {1 / (1 + t):.3f}, same when inside [{1 / (1 + t):.3f}, "
        f"{1 + t:.3f}] (equivalent within t), noisy when it straddles a bound"
        + ("; per-family t: " + ", ".join(f"{f} {v:.0%}" for f, v in
                                          sorted(cmp.rule.family_threshold.items()))
           if cmp.rule.family_threshold else "") + ".",
        "",
        "Verdicts: " + ", ".join(f"{MARK[v]} {n}" for v, n in c.items() if n),
        "",
    ]
    lines += [f"- {n}" for n in cmp.notes]
    lines += ["", "| verdict | benchmark | base | cand | ratio | interval | processes base/cand "
              "| spread base/cand | control ratio | acceptance base/cand |",
              "|---|---|---:|---:|---:|---|---|---|---:|---|"]
    order = {v: i for i, v in enumerate(VERDICTS)}
    for r in sorted(cmp.rows, key=lambda r: (order[r.verdict], -(r.ratio if math.isfinite(r.ratio)
                                                                  else 0))):
        if only_changes and r.verdict in ("unchanged",):
            continue
        interval = f"[{r.lo:.3f}, {r.hi:.3f}]" if math.isfinite(r.lo) else "-"
        ratio = f"{r.ratio:.3f}" if math.isfinite(r.ratio) else "-"
        procs = f"{r.base_processes or '-'}/{r.cand_processes or '-'}"
        spread = "/".join(f"{v:.1%}" if math.isfinite(v) else "-"
                          for v in (r.base_spread, r.cand_spread))
        control = f"{r.control_ratio:.3f}" if math.isfinite(r.control_ratio) else "-"
        acc = (f"{r.base_acceptance:.3f}/{r.cand_acceptance:.3f}"
               if math.isfinite(r.base_acceptance) else "-")
        lines.append(f"| {MARK[r.verdict]} | {r.label} | {_fmt_time(r.base_median)} | "
                     f"{_fmt_time(r.cand_median)} | {ratio} | {interval} | {procs} | {spread} | "
                     f"{control} | {acc} |")
    return "\n".join(lines) + "\n"
