"""Interleaved A/B: two vLLMs timed on one machine at the same time, judged pair by pair.

Why: runs taken at different times on a shared machine differ by more than most code changes
(issue 13: the process medians of one benchmark moved 13-25% between runs minutes apart), so a
stored-run compare (reports/compare.py) mostly says "noisy". Chromium's Pinpoint and pyperf
interleave the two builds instead: whatever the machine does hits both sides alike, and a paired
comparison removes it.

Plan (`nox -s ab -- A B`, `python -m reports ab run`; the runner is harness/ab.py, this module
is the judgement): A and B are two Python environments, each with its vLLM (harness/install.py
installs them: .nox/ab-<slug>, one venv when A and B are the same requirement). Pairs of
benchmark processes in the balanced order A B | B A | A B | B A ... (schedule); each process is
one pytest run of suites/bench with the selection given, writing pytest-benchmark JSON, as `nox
-s bench` runs one process (harness.ab.bench_command: the same pytest arguments, with
--bench-rounds auto: rounds from each case's own variance). `--ab-slowdown-b GLOB=F` adds
suites/bench's `--bench-slowdown GLOB=F` to B's processes only (calibration: a known slowdown
in one side).

Sequential (the default since 2026-12-07, reports/sequential.py): the first 2 pairs time the
whole selection; after each pair from then on the benchmarks with a verdict (from pair 3) or
with none in sight (futility, from pair 2) leave, and the next pair times only those still
open, until none is, a benchmark has had `--ab-pairs N` pairs (default 10), or the next pair
would end past `--ab-budget` (e.g. 15m). The looks spend the error budget (group-sequential,
alpha over all looks; from 5 pairs the t interval intersected with the trimmed one); futility
spends nothing; the still-open and the futile are reported inconclusive. A folder without a
sequential plan (runs before it) is judged by the fixed rule below, one with the first
sequential plan (no "trim") by plain t looks without futility, as it ran.

`--ab-interleave window` (the default): the two processes of a pair run at the same time and
take turns with a baton (reports/baton.py): only the holder computes, and each timed case hands
the baton over before its first timed round and then every ~50 ms of rounds, so A's and B's
windows of a case alternate tens of milliseconds apart. Measured here (2026-12-06, the 6
cpu_fused_moe.vec / fused_experts_cpu cases of qwen3-next-80b-a3b-cpu-experts at T 1, 16, 64,
--bench-threads=1, A vs A, 8 pairs): the machine's speed for memory-bound cases drifts 10-30%
over tens of seconds, so processes run one after another (`--ab-interleave process`, the mode
before) gave 98% intervals of +-12-25% at T 16 and 64 (2 of 6 "same"; longer windows, 1.5 s
a case, did not narrow them); window interleaving gave +-3-4% (4 of 6 "same", the other two
within 1% of the bound); over the 52 moe and router benchmarks that run here (6 pairs, other
work on the second core), process mode 20 "same" / 32 inconclusive and window mode 39 / 13,
median interval half-width 6.8% vs 2.1% (reports/README.md has the table with the planted
slowdowns). A pair then takes as long as its two processes together.
`--ab-interleave process` keeps the old schedule (one process at a time; each process's output
on the terminal instead of processNN-<side>.log). When A and B are one environment (`auto`, the
default, then picks `shared`; harness/ab.py resolve_interleave) a pair is one process timing
both sides in alternating windows (suites/bench/timing.py SharedPair), which writes both
process files: the judgement below reads them as any pair's. Its A vs A measures that mode's
spread only: calibrate two environments from an A vs A run with `--ab-interleave window`.
Files: reports/out/<time>-ab/plan.json, processNN-A.json / processNN-B.json (and .log in window
mode) in run order, then ab.md and ab.json (the verdicts).

Rule (per benchmark; the fixed rule, one look after all pairs; the sequential rule takes the
same interval at each look, at the look's share of alpha), with t the threshold of
reports/thresholds.json (default 5%) and alpha its max_false_alarm_rate (1%):

  d_i       log(B's process median / A's process median) within pair i, the pairs taken in run
            order (processes 1-2, 3-4, ...): the two processes of a pair ran interleaved (or back
            to back), so a slow stretch of the machine hits both and cancels in d_i; the
            balanced order (AB, then BA) also cancels what favours the side that goes first
  ratio     exp(mean d): the geometric mean of the paired ratios B/A (> 1: B slower)
  interval  exp(mean d -+ t_{1-alpha, n-1} x sd(d) / sqrt(n)), n pairs: a Student t interval for
            the mean paired log-ratio, one-sided level alpha at each end (two-sided 98%)
  regression  the whole interval above 1 + t          faster  the whole interval below 1/(1 + t)
  same        the whole interval inside [1/(1 + t), 1 + t] (equivalence, TOST at alpha a side)
  inconclusive  otherwise, or fewer than 3 complete pairs
  acceptance_drop  as in compare: B's pooled acceptance rate lower than A's by more than
            acceptance_drop and a two-proportion z-test over the draft tokens rejects at
            acceptance_alpha

Why the mean and a t interval, not the median and a distribution-free one: with the default 6
pairs no distribution-free interval reaches the level (a sign-flip or Wilcoxon signed-rank
interval over 6 pairs has 2^6 = 64 sign patterns: its smallest one-sided level is 1/64 = 1.6%,
over the 1% bound; 7 pairs give 0.8%). The t interval's level holds where it matters: under "B
is no slower than A" the paired differences are symmetric (the balanced order makes A and B
exchangeable up to the shift), and for symmetric errors the one-sided t-test does not exceed its
nominal level at small levels (Efron 1969, "Student's t-test under symmetry conditions"); heavy
tails (a process beside another tenant: 5-150% slower) widen the interval, making a verdict
"inconclusive", not a false one. The rounds' own noise is inside sd(d) (each d_i carries its two
medians' estimation errors), so nothing is added for it, unlike compare's order statistics.
False regressions: at most alpha = 1% per benchmark even for a true slowdown exactly at the
threshold (the interval's lower end exceeds the true ratio with probability <= alpha); for A vs A
(true ratio 1) far fewer. Synthetic calibration (`python -m reports ab calibrate`: the compare
model of reports/synthetic.py, 10 rounds of 3% jitter a process, plus a drift common to
neighbouring processes, a log random walk of 2% a process; 1000 benchmarks a cell, seed 0):

  a quarter of the processes disturbed 1.05-2.5x (reports/synthetic.py's default, what this
  repo's CI machine showed):
  pairs | A vs A: regression  same | B +5% (at t): regression | B +10% flagged | B 2x flagged
      3 |             0.1%     4%  |                   0.5%   |          3%    |        35%
      6 |             0%       1%  |                   0.1%   |          2%    |        80%
     12 |             0%       0%  |                   0.6%   |          3%    |       100%
     24 |             0%       0%  |                   0.6%   |          6%    |       100%
  no disturbed processes (--disturbed 0):
      6 |             0%      66%  |                   0%     |         38%    |       100%
     12 |             0%     100%  |                   0%     |        100%    |       100%

Disturbed processes make verdicts rare, not wrong: more pairs buy "same" and power, never false
regressions. On a machine where a quarter of the process medians are 5-150% off, a 10% change
stays "inconclusive" at any affordable number of pairs (a median or trimmed-mean interval did
little better in the same simulation: 24 pairs, a sign interval flagged 44% of +10%, a 20%
trimmed t 21%): quieten the machine (--bench-threads=1 on an idle core) rather than add pairs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import pathlib
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from reports.verdicts import VerdictTable, write_new

if TYPE_CHECKING:
    from reports.compare import Rule
    from reports.schema import Run

# Importing this module needs only the standard library: harness/ab.py (the runner, which nox's
# own Python imports) takes the folder's format and ABError from here. The judgement imports
# numpy, scipy and the rest of reports/ inside the functions that use them (paired_interval,
# judge, load_folder, calibrate, main).

SIDES = ("A", "B")
MIN_PAIRS = 3  # fewer: t_{0.99, 1} = 31.8, no interval worth the name
VERDICTS = ("acceptance_drop", "regression", "faster", "same", "inconclusive", "new", "missing")
FAILING = ("acceptance_drop", "regression")
MARK = {"acceptance_drop": "ACCEPTANCE DROP", "regression": "REGRESSION", "faster": "faster",
        "same": "same", "inconclusive": "inconclusive", "new": "only in B", "missing": "only in A"}
_FROM_COMPARE = {"regression": "regression", "improvement": "faster", "unchanged": "same",
                 "inconclusive": "inconclusive"}
PROCESS_RE = re.compile(r"^process(\d{2,})-([AB])\.json$")
PLAN = "plan.json"


class ABError(ValueError):
    """Bad input for an A/B run (harness/ab.py) or judgement; str() is one line."""


# ------------------------------------------------------------------- the folder's format

def schedule(pairs: int) -> list[str]:
    """The sides of the processes in run order: A B, B A, A B, B A, ... (pair i is AB for even
    i, BA for odd i): each side runs first in half of the pairs. The judgement pairs processes
    in this order; harness/ab.py runs them in it."""
    return [s for i in range(pairs) for s in (("A", "B") if i % 2 == 0 else ("B", "A"))]


def process_file(folder: pathlib.Path, index: int, side: str) -> pathlib.Path:
    """Where the runner writes process `index` (from 1) of `side` (PROCESS_RE reads it back)."""
    return pathlib.Path(folder) / f"process{index:02d}-{side}.json"


# ---------------------------------------------------------------------------- the judgement

def paired_interval(a_meds, b_meds, alpha: float) -> tuple[float, float, float]:
    """(ratio, lo, hi) for B / A from the process medians of n pairs (a_meds[i] and b_meds[i]
    ran back to back): exp(mean d), exp(mean d -+ t_{1-alpha, n-1} sd(d) / sqrt(n)), d the log
    ratios. nan interval below 2 pairs."""
    import numpy as np
    from scipy.stats import t as student_t

    d = np.log(np.asarray(b_meds, dtype=np.float64) / np.asarray(a_meds, dtype=np.float64))
    m = float(d.mean())
    if d.size < 2:
        return math.exp(m), math.nan, math.nan
    half = float(student_t.ppf(1.0 - alpha, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return math.exp(m), math.exp(m - half), math.exp(m + half)


@dataclass
class ABRow:
    fullname: str
    family: str
    backend: str
    shape: str
    dtype: str
    tokens: int
    verdict: str
    threshold: float
    a_median: float = math.nan  # median of the side's process medians
    b_median: float = math.nan
    ratio: float = math.nan  # geometric mean of the paired ratios B/A
    lo: float = math.nan
    hi: float = math.nan
    pairs: int = 0  # complete pairs behind the interval
    b_slower: int = 0  # pairs in which B's process was the slower
    pair_ratios: list = field(default_factory=list)  # B/A in each pair, run order
    unpaired: str = ""  # compare's verdict on the same processes, unpaired (for contrast)
    a_acceptance: float = math.nan
    b_acceptance: float = math.nan
    acceptance_p: float = math.nan
    decided_at: int = 0  # sequential: the look (pairs) at which the benchmark left
    futile: str = ""  # sequential: it left without a verdict, futility: "band" (no change
    # beyond the band in sight) or "reach" (no verdict reachable by the last look)
    level: float = math.nan  # one-sided level a side of the interval shown

    @property
    def label(self) -> str:
        return f"{self.family} {self.backend} {self.shape} {self.dtype} T={self.tokens}"


@dataclass
class ABComparison(VerdictTable):
    a: str
    b: str
    rule: Rule
    alpha: float
    pairs: int  # complete pairs of processes
    rows: list[ABRow]
    notes: list[str]
    sequential: dict | None = None  # seq_plan(): max_pairs, rho, trim, futility_beta
    pooled: dict = field(default_factory=dict)  # backend -> pooled sd at each look (futility)
    VERDICTS: ClassVar[tuple[str, ...]] = VERDICTS
    FAILING: ClassVar[tuple[str, ...]] = FAILING

    def as_dict(self) -> dict:
        interval = (f"group-sequential Student t for the mean paired log-ratio"
                    f"{_trim_words(self.sequential)}: look n spends "
                    f"alpha x ((n/N)^rho - ((n-1)/N)^rho) a side, N = "
                    f"{self.sequential['max_pairs']}, rho = {self.sequential['rho']}"
                    f"{_futility_words(self.sequential)}"
                    if self.sequential else
                    f"two-sided {1 - 2 * self.alpha:.0%} Student t for the mean paired "
                    "log-ratio (one-sided alpha at each end)")
        return {"a": self.a, "b": self.b, "rule": dataclasses.asdict(self.rule),
                "alpha": self.alpha, "interval": interval, "sequential": self.sequential,
                "pairs": self.pairs, "notes": self.notes, "counts": self.counts(),
                "pooled_sd": self.pooled,
                "open": self.open_names(), "verdict_names": MARK,
                "rows": [dataclasses.asdict(r) for r in self.rows]}

    def open_names(self) -> list[str]:
        """Sequential: the benchmarks whose verdict is still open and that may still get a
        pair (fewer than N pairs); what the next pair of processes runs."""
        if not self.sequential:
            return []
        return [r.fullname for r in self.rows if r.verdict == "inconclusive"
                and not r.futile and r.pairs < self.sequential["max_pairs"]]


def _pairs(processes: list[tuple[str, Run]]) -> list[tuple[Run, Run]]:
    """(A, B) per pair, in run order; raises ABError when a pair is not one A and one B."""
    if any(side not in SIDES for side, _ in processes):
        raise ABError("a process's side must be A or B")
    out = []
    for i in range(0, len(processes) - 1, 2):
        (s1, r1), (s2, r2) = processes[i], processes[i + 1]
        if {s1, s2} != set(SIDES):
            raise ABError(f"processes {i + 1} and {i + 2} are {s1} and {s2}: each pair of "
                          "consecutive processes must be one A and one B (run order A B B A ...)")
        out.append((r1, r2) if s1 == "A" else (r2, r1))
    return out


def _pooled_acceptance(recs) -> tuple[float, int] | None:
    """Acceptance rate over several processes' records, weighted by their draft tokens."""
    got = [(float(r.extra["acceptance_rate"]), int(r.extra["num_draft_tokens"])) for r in recs
           if "acceptance_rate" in r.extra and r.extra.get("num_draft_tokens")]
    n = sum(k for _, k in got)
    return (sum(a * k for a, k in got) / n, n) if n else None


def _unpaired(a_runs: list[Run], b_runs: list[Run], rule: Rule) -> tuple[dict[str, str], str]:
    """compare's verdicts (stored-run rule) on the same processes, each side merged."""
    from reports.compare import compare
    from reports.merge import merge
    from reports.schema import SchemaError

    try:
        cmp = compare(merge(a_runs, "A"), merge(b_runs, "B"), rule)
    except SchemaError as e:
        return {}, f"unpaired compare not shown: {e}"
    return {r.fullname: _FROM_COMPARE.get(r.verdict, r.verdict) for r in cmp.rows}, ""


def seq_plan(sequential: dict) -> dict:
    """The sequential rule a plan names, normalised: max_pairs, rho, trim and futility_beta.
    A plan from before the trimmed interval and futility (2026-12-07, no "trim" key) is judged
    as it ran: plain t intervals, no futility."""
    from reports import sequential as seq

    try:
        modern = "trim" in sequential
        out = {"max_pairs": int(sequential["max_pairs"]),
               "rho": float(sequential.get("rho", seq.RHO)),
               "trim": float(sequential["trim"]) if modern else 0.0,
               "futility_beta": (None if not modern or sequential.get("futility_beta") is None
                                 else float(sequential["futility_beta"]))}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ABError(f"sequential plan {sequential!r}: expected max_pairs and rho") from None
    if out["max_pairs"] < 1 or not out["rho"] > 0 or not 0 <= out["trim"] < 0.5 or \
            (out["futility_beta"] is not None and not 0 < out["futility_beta"] < 0.5):
        raise ABError(f"sequential plan {sequential!r}: max_pairs >= 1, rho > 0, "
                      "0 <= trim < 0.5, 0 < futility_beta < 0.5")
    return out


def plan_sequential(max_pairs: int, *, futility: bool = True) -> dict:
    """What a sequential run's plan.json says of its rule (harness/ab.py writes it)."""
    from reports import sequential as seq

    return {"max_pairs": max_pairs, "rho": seq.RHO, "min_pairs": seq.MIN_PAIRS,
            "trim": seq.TRIM, "futility_beta": seq.FUTILITY_BETA if futility else None,
            "futility_from": seq.FUTILITY_FROM}


def _pooled_by_backend(ratios: dict, first: dict, sequential: dict) -> dict:
    """Per backend, the pooled sd of its benchmarks' log ratios at each look (seq.pooled_sd;
    index n - 1 for look n): what futility weighs a benchmark's own spread against."""
    from reports import sequential as seq

    if not sequential.get("futility_beta"):
        return {}
    groups: dict[str, list] = {}
    for name, r in ratios.items():
        groups.setdefault(first[name].backend, []).append(r)
    return {be: [seq.pooled_sd(series, n) for n in range(1, sequential["max_pairs"] + 1)]
            for be, series in groups.items()}


def judge(processes: list[tuple[str, Run]], rule: Rule | None = None, *, a: str = "A",
          b: str = "B", unpaired: bool = True, sequential: dict | None = None
          ) -> ABComparison:
    """The paired verdicts of processes given in run order as (side, run); `unpaired` adds
    compare's stored-run verdict on the same processes to each row, for contrast. With
    `sequential` ({"max_pairs": N, "rho": ...}, what a sequential run's plan.json says) each
    benchmark's verdict is reports/sequential.py's replay of its looks; without, the fixed
    rule (one interval at level alpha after all pairs)."""
    import numpy as np

    from reports import sequential as seq
    from reports.compare import Rule, acceptance_drop_p
    from reports.compare import classify as classify_interval

    rule = rule or Rule.load()
    if sequential is not None:
        sequential = seq_plan(sequential)
    alpha = rule.max_false_alarm_rate
    if len(processes) < 2:
        raise ABError(f"{len(processes)} process(es): an A/B judgement needs pairs of processes")
    notes = []
    if len(processes) % 2:
        notes.append(f"{len(processes)} processes: the last one has no partner (interrupted "
                     "run?) and is left out")
    pairs = _pairs(processes)
    machines = {r.machine_id for _, r in processes}
    if len(machines) != 1:
        raise ABError(f"processes from {len(machines)} machines ({', '.join(sorted(machines))}):"
                      " an A/B run is one machine's")
    for name, side in (("A", [p[0] for p in pairs]), ("B", [p[1] for p in pairs])):
        sw = sorted({f"{r.machine_info['software'].get('vllm')} "
                     f"{r.machine_info['software'].get('vllm_commit') or ''}".strip()
                     for r in side})
        notes.append(f"{name} = {a if name == 'A' else b}: vllm {', '.join(sw)}")
        slowed = sorted({str((r.machine_info.get("bench_settings") or {}).get("slowdown"))
                         for r in side if (r.machine_info.get("bench_settings") or {})
                         .get("slowdown")})
        if slowed:
            notes.append(f"{name}'s processes ran with --bench-slowdown {', '.join(slowed)} "
                         "(planted)")
    shared = sum(bool(ra.machine_info.get("ab_shared")) for ra, _ in pairs)
    if shared:
        notes.append(f"{shared} of {len(pairs)} pairs were one process timing both sides in "
                     "alternating windows (A and B one environment: --ab-interleave shared, "
                     "suites/bench/timing.py SharedPair): their spread is that mode's, "
                     "narrower than two environments' (one process for both)")
    contrast, why = (_unpaired([p[0] for p in pairs], [p[1] for p in pairs], rule) if unpaired
                     else ({}, ""))
    if why:
        notes.append(why)
    order: list[str] = []
    first: dict = {}
    for ra, rb in pairs:
        for r in (ra, rb):
            for rec in r.records:
                if rec.fullname not in first:
                    order.append(rec.fullname)
                    first[rec.fullname] = rec
    in_a = {n for ra, _ in pairs for n in ra.by_name}
    in_b = {n for _, rb in pairs for n in rb.by_name}
    ratios = {name: [rb.by_name[name].median / ra.by_name[name].median for ra, rb in pairs
                     if name in ra.by_name and name in rb.by_name] for name in order}
    pooled = _pooled_by_backend(ratios, first, sequential) if sequential else {}
    rows = []
    for name in order:
        rec = first[name]
        t = rule.threshold_for(rec.family)
        row = ABRow(fullname=name, family=rec.family, backend=rec.backend, shape=rec.shape_name,
                    dtype=rec.dtype, tokens=rec.tokens, verdict="", threshold=t,
                    unpaired=contrast.get(name, ""))
        a_recs = [ra.by_name[name] for ra, _ in pairs if name in ra.by_name]
        b_recs = [rb.by_name[name] for _, rb in pairs if name in rb.by_name]
        if a_recs:
            row.a_median = float(np.median([r.median for r in a_recs]))
        if b_recs:
            row.b_median = float(np.median([r.median for r in b_recs]))
        if name not in in_a or name not in in_b:
            row.verdict = "new" if name not in in_a else "missing"
            rows.append(row)
            continue
        both = [(ra.by_name[name].median, rb.by_name[name].median) for ra, rb in pairs
                if name in ra.by_name and name in rb.by_name]
        am, bm = [x for x, _ in both], [y for _, y in both]
        row.pairs = len(both)
        row.pair_ratios = ratios[name]
        row.b_slower = sum(y > x for x, y in both)
        if sequential:
            lk = seq.replay(row.pair_ratios, max_pairs=sequential["max_pairs"], alpha=alpha,
                            threshold=t, rho=sequential["rho"], trim=sequential["trim"],
                            pooled=pooled.get(rec.backend),
                            beta=sequential["futility_beta"] or 0.0)
            row.ratio, row.lo, row.hi, row.level = lk.ratio, lk.lo, lk.hi, lk.level
            row.verdict = lk.verdict or "inconclusive"
            row.decided_at = lk.n if (lk.verdict or lk.futile) else 0
            row.futile = lk.futile
        else:
            row.ratio, row.lo, row.hi = paired_interval(am, bm, alpha)
            row.level = alpha
            row.verdict = ("inconclusive" if row.pairs < MIN_PAIRS else
                           _FROM_COMPARE[classify_interval(row.lo, row.hi, t)])
        pa, pb = _pooled_acceptance(a_recs), _pooled_acceptance(b_recs)
        if pa and pb:
            row.a_acceptance, row.b_acceptance = pa[0], pb[0]
            row.acceptance_p = acceptance_drop_p(pa, pb)
            if pa[0] - pb[0] > rule.acceptance_drop and row.acceptance_p < rule.acceptance_alpha:
                row.verdict = "acceptance_drop"
        rows.append(row)
    few = [r for r in rows if 0 < r.pairs < MIN_PAIRS]
    if few:
        notes.append(f"{len(few)} benchmark(s) inconclusive by construction: fewer than "
                     f"{MIN_PAIRS} complete pairs (--ab-pairs >= {MIN_PAIRS}), e.g. {few[0].label}")
    if sequential:
        left = [r for r in rows if r.decided_at and not r.futile]
        futile = [r for r in rows if r.futile]
        band = sum(r.futile == "band" for r in futile)
        notes.append(f"sequential: {len(left)} of {len(rows)} benchmarks decided, at "
                     f"{np.mean([r.decided_at for r in left]) if left else 0:.1f} pairs on "
                     f"average; {len(futile)} left without a verdict for futility ({band} no "
                     f"change beyond the band in sight, {len(futile) - band} no verdict "
                     f"reachable by pair {sequential['max_pairs']}), at "
                     f"{np.mean([r.decided_at for r in futile]) if futile else 0:.1f} pairs on "
                     f"average; at most {sequential['max_pairs']} pairs a benchmark")
    return ABComparison(a=a, b=b, rule=rule, alpha=alpha, pairs=len(pairs), rows=rows,
                        notes=notes, sequential=sequential, pooled=pooled)


def load_folder(folder: str | pathlib.Path) -> tuple[dict, list[tuple[str, Run]]]:
    """An A/B run's folder: its plan (if any) and its process files in run order."""
    from reports.schema import load_run

    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ABError(f"{folder}: no such folder (an A/B run's folder: reports/out/<time>-ab)")
    plan = {}
    if (folder / PLAN).exists():
        try:
            plan = json.loads((folder / PLAN).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ABError(f"{folder / PLAN}: not a readable plan ({e})") from None
        if not isinstance(plan, dict):
            raise ABError(f"{folder / PLAN}: expected a JSON object")
    found = sorted((int(m.group(1)), m.group(2), p) for p in folder.iterdir()
                   if (m := PROCESS_RE.match(p.name)))
    if not found:
        raise ABError(f"{folder}: no processNN-A.json / processNN-B.json files")
    idx = [i for i, _, _ in found]
    if idx != list(range(1, len(found) + 1)):
        raise ABError(f"{folder}: process numbers {idx} are not 1..{len(found)} without gaps")
    return plan, [(side, load_run(p)) for _, side, p in found]


def _fmt_time(s: float) -> str:
    from reports.compare import _fmt_time as fmt

    return fmt(s)


def _trim_words(sequential: dict | None) -> str:
    from reports import sequential as seq

    if not sequential or not sequential.get("trim"):
        return ""
    first = next((n for n in range(2, 100) if seq.trimmed(n, sequential["trim"])), None)
    return (f" (from n >= {first} intersected with the {sequential['trim']:.0%}-trimmed t "
            "interval, each at half the level)")


def _futility_words(sequential: dict | None) -> str:
    from reports import sequential as seq

    beta = (sequential or {}).get("futility_beta")
    if not beta:
        return ""
    return (f"; from pair {seq.FUTILITY_FROM} a benchmark without a verdict leaves, "
            f"inconclusive ('at' marked 'futile'), when no change beyond the band is in sight "
            f"('band': its mean log ratio -+ z x sd / sqrt(n) at {1 - beta:.0%} a side, sd the "
            f"larger of its own and its backend's pooled, and every pair's ratio inside the "
            f"band) or, from pair {seq.REACH_FROM}, when no verdict is reachable by the last "
            f"pair even on an optimistic reading ('reach': median and MAD of its pairs, no wild "
            f"pair to come); futility claims nothing and spends no alpha")


def to_markdown(cmp: ABComparison) -> str:
    t = cmp.rule.threshold
    level = 1 - 2 * cmp.alpha
    c = cmp.counts()
    band = (f"With t = {t:.0%}: REGRESSION when the whole interval lies above {1 + t:.3f}, "
            f"faster below {1 / (1 + t):.3f}, same inside [{1 / (1 + t):.3f}, {1 + t:.3f}]")
    if cmp.sequential:
        n_max = cmp.sequential["max_pairs"]
        rule = (f"Rule (sequential, reports/sequential.py): per benchmark, the paired ratios B/A "
                f"of the process medians of the two processes of each pair; after each pair "
                f"n >= {MIN_PAIRS} a Student t interval of the mean log ratio"
                f"{_trim_words(cmp.sequential)} at one-sided level "
                f"a_n = {cmp.alpha:.0%} x ((n/{n_max})^{cmp.sequential['rho']:g} - "
                f"((n-1)/{n_max})^{cmp.sequential['rho']:g}) a side (the levels sum to "
                f"{cmp.alpha:.0%}: at most {cmp.alpha:.0%} false verdicts per benchmark over "
                f"all looks). {band}; a benchmark leaves at its first verdict ('at' = pairs "
                f"then){_futility_words(cmp.sequential)}, and is inconclusive when still open "
                f"after {n_max} pairs or when the run's budget ran out. The interval shown is the "
                "deciding (or last) look's.")
    else:
        rule = (f"Rule: per benchmark, the paired ratios B/A of the process medians of the two "
                f"processes of each pair; ratio = their geometric mean, interval = {level:.0%} "
                f"Student t interval of the mean log ratio ({cmp.alpha:.0%} one-sided at each "
                f"end: at most {cmp.alpha:.0%} false regressions per benchmark). {band}, "
                f"inconclusive otherwise or with fewer than {MIN_PAIRS} pairs.")
    lines = [
        f"A/B: A = {cmp.a}, B = {cmp.b}; {cmp.pairs} pairs of processes, run order A B B A ...",
        "",
        rule + " 'unpaired' is compare's stored-run rule on the same processes, for contrast.",
        "",
        "Verdicts: " + (", ".join(f"{MARK[v]} {n}" for v, n in c.items() if n) or "none"),
        "",
    ]
    lines += [f"- {n}" for n in cmp.notes]
    head = "interval" if cmp.sequential else f"{level:.0%} interval"
    lines += ["", f"| verdict | benchmark | A | B | ratio B/A | {head} | pairs | at | "
              "B slower in | unpaired | acceptance A/B |",
              "|---|---|---:|---:|---:|---|---:|---:|---:|---|---|"]
    rank = {v: i for i, v in enumerate(VERDICTS)}
    for r in sorted(cmp.rows, key=lambda r: (rank[r.verdict],
                                             -(r.ratio if math.isfinite(r.ratio) else 0))):
        interval = f"[{r.lo:.3f}, {r.hi:.3f}]" if math.isfinite(r.lo) else "-"
        ratio = f"{r.ratio:.3f}" if math.isfinite(r.ratio) else "-"
        acc = (f"{r.a_acceptance:.3f}/{r.b_acceptance:.3f}" if math.isfinite(r.a_acceptance)
               else "-")
        lines.append(f"| {MARK[r.verdict]} | {r.label} | {_fmt_time(r.a_median)} | "
                     f"{_fmt_time(r.b_median)} | {ratio} | {interval} | {r.pairs} | "
                     f"{_at(r)} | {r.b_slower}/{r.pairs} | {r.unpaired or '-'} | "
                     f"{acc} |")
    return "\n".join(lines) + "\n"


def _at(r: ABRow) -> str:
    if not r.decided_at:
        return "-"
    return f"{r.decided_at} futile ({r.futile})" if r.futile else str(r.decided_at)


def write_outputs(cmp: ABComparison, folder: pathlib.Path, *, extra: dict | None = None
                  ) -> tuple[pathlib.Path, pathlib.Path]:
    """ab.md and ab.json in the run's folder (never over an existing file)."""
    md, js = folder / "ab.md", folder / "ab.json"
    payload = {**cmp.as_dict(), **(extra or {})}
    for path, text in ((md, to_markdown(cmp)), (js, json.dumps(payload, indent=1) + "\n")):
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
        except FileExistsError:
            raise ABError(f"{path}: exists; refusing to overwrite it") from None
    return md, js


# ---------------------------------------------------------------- calibration (synthetic)

def synthetic_processes(names, rng, *, pairs: int, noise=None,
                        slowdown_b: dict | None = None, drift_sigma: float = 0.0,
                        speeds=None, order=None) -> list[tuple[str, Run]]:
    """Single-process runs in the order `order` (default schedule(pairs)) from
    reports/synthetic.py's model: B's true times multiplied by 1 + slowdown_b; a machine speed
    common to all benchmarks of a process (another tenant, a clock change: drift), a log random
    walk with step drift_sigma a process, times speeds[i] for process i when given."""
    from reports.schema import validate
    from reports.synthetic import Noise
    from reports.synthetic import run as synthetic_run

    noise = dataclasses.replace(noise or Noise(), processes=1)
    order = order or schedule(pairs)
    when = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)
    walk = 0.0
    out = []
    for i, side in enumerate(order):
        walk += float(rng.normal(0.0, drift_sigma)) if drift_sigma else 0.0
        speed = math.exp(walk) * (speeds[i] if speeds is not None else 1.0)
        raw = synthetic_run(names=names, rng=rng, noise=noise, machine_speed=speed,
                            slowdown=slowdown_b if side == "B" else None,
                            when=when + _dt.timedelta(seconds=i),
                            commit=("a" if side == "A" else "b") * 40)
        out.append((side, validate(raw, f"process{i + 1:02d}-{side}")))
    return out


def calibrate(rule: Rule, *, pairs=(3, 6, 12, 24), effects=(0.0, 0.05, 0.10, 1.0),
              n: int = 2000, noise=None, drift_sigma: float = 0.02, seed: int = 0) -> dict:
    """Verdict rates per pairs and planted slowdown of B (0 = A vs A) over n synthetic
    benchmarks a cell."""
    import numpy as np

    from reports.synthetic import benchmark_names

    rng = np.random.default_rng(seed)
    names = benchmark_names(n)
    cells = []
    for p in pairs:
        for eff in effects:
            procs = synthetic_processes(names, rng, pairs=p, noise=noise, drift_sigma=drift_sigma,
                                        slowdown_b={nm[0]: eff for nm in names} if eff else None)
            cmp = judge(procs, rule, unpaired=False)
            k = cmp.counts()
            cells.append({"pairs": p, "slowdown_b": eff,
                          **{v: k[v] / len(cmp.rows) for v in ("regression", "faster", "same",
                                                               "inconclusive")}})
    return {"benchmarks": n, "alpha": rule.max_false_alarm_rate, "threshold": rule.threshold,
            "drift_sigma": drift_sigma, "noise": dataclasses.asdict(noise) if noise else None,
            "cells": cells}


# ------------------------------------------------------------------------------------ CLI

USAGE = """python -m reports ab run --a-python PY --b-python PY [--a-name S] [--b-name S]
                        [--device cpu|cuda] [--out DIR] [--rule FILE] [--threshold F]
                        [--ab-pairs N] [--ab-slowdown-b GLOB=F] [--ab-interleave window|process]
                        [-- PYTEST ARGS]
       python -m reports ab judge DIR [--rule FILE] [--threshold F] [--markdown OUT] [--json OUT]
       python -m reports ab step DIR [--rule FILE] [--threshold F]
       python -m reports ab calibrate [--pairs 3,6,12,24] [--benchmarks N] [--disturbed F]
                        [--drift F] [--seed S]
       python -m reports ab calibrate --sequential [--pairs 10] [--from DIR] [--benchmarks N]
                        [--seed S]"""


def _parser():
    import argparse

    class P(argparse.ArgumentParser):
        def error(self, message):
            raise ABError(f"{self.prog}: {message}")

    p = P(prog="python -m reports ab", usage=USAGE, allow_abbrev=False,
          description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=P)
    rule = {"default": None, "help": "thresholds file (default reports/thresholds.json)"}
    # listed for --help only: reports/__main__.py hands `ab run` to harness/ab.py
    sub.add_parser("run", add_help=False, help="run the processes, then judge them "
                   "(harness/ab.py: python -m reports ab run --help)")
    s = sub.add_parser("judge", allow_abbrev=False)
    s.add_argument("folder")
    s.add_argument("--rule", **rule)
    s.add_argument("--threshold", type=float)
    s.add_argument("--markdown", help="also write the table here (must not exist)")
    s.add_argument("--json", help="also write the verdicts here (must not exist)")
    s = sub.add_parser("step", allow_abbrev=False, help="a sequential run so far: the "
                       "benchmarks still open, as JSON on stdout (harness/ab.py asks after "
                       "each pair)")
    s.add_argument("folder")
    s.add_argument("--rule", **rule)
    s.add_argument("--threshold", type=float)
    s = sub.add_parser("calibrate", allow_abbrev=False)
    s.add_argument("--sequential", action="store_true",
                   help="the sequential rule's operating characteristics (reports/sequential.py)"
                        " instead of the fixed rule's synthetic runs")
    s.add_argument("--pairs", default=None, help="fixed rule: pair counts (default 3,6,12,24); "
                                                 "--sequential: the maximum N (default 10)")
    s.add_argument("--from", dest="source", default=None,
                   help="--sequential: also resample the paired log-ratios of this A vs A run's "
                        "folder (reports/out/<time>-ab), its slowed backends left out")
    s.add_argument("--benchmarks", type=int, default=2000)
    s.add_argument("--disturbed", type=float, default=0.25)
    s.add_argument("--drift", type=float, default=0.02, help="log random-walk step a process")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rule", **rule)
    return p


def _rule(a) -> Rule:
    from reports.compare import DEFAULT_RULE, Rule

    return Rule.load(a.rule or DEFAULT_RULE, threshold=getattr(a, "threshold", None))


def print_report(cmp: ABComparison) -> None:
    """The table, then one line: the regressions of B (on stderr) or none."""
    print(to_markdown(cmp))
    c = cmp.counts()
    summary = ", ".join(f"{MARK[v]} {n}" for v, n in c.items() if n)
    if cmp.regressions:
        print(f"REGRESSION: B ({cmp.b}) slower than A ({cmp.a}) beyond the threshold in "
              f"{len(cmp.regressions)} of {len(cmp.rows)} benchmarks "
              f"({', '.join(r.label for r in cmp.regressions[:5])}"
              f"{', ...' if len(cmp.regressions) > 5 else ''}); {summary}", file=sys.stderr)
    else:
        print(f"no regression ({len(cmp.rows)} benchmarks, {cmp.pairs} pairs: {summary})")


def _calibrate_sequential(a) -> int:
    """`ab calibrate --sequential`: verdict shares and mean pairs of the sequential rule (the
    trimmed interval and futility as a run uses them) for normal paired log-ratios
    (reports/sequential.py simulate), for log-ratios resampled from a real A vs A run
    (--from FOLDER), then on reports/synthetic.py's runs; exit 1 when, in the normal or the
    resampled model, a false verdict rate at the threshold (B +5% called a regression, or same)
    exceeds the rule's alpha."""
    import numpy as np

    from reports import sequential as seq

    rule = _rule(a)
    try:
        n_max = int(a.pairs or seq.MAX_PAIRS)
    except ValueError:
        n_max = 0
    if n_max < seq.MIN_PAIRS:
        raise ABError(f"--pairs {a.pairs!r}: the sequential maximum is a whole number >= "
                      f"{seq.MIN_PAIRS}")
    t = rule.threshold
    alpha = rule.max_false_alarm_rate
    ratios = (1.0, 1.0 + t, 1.10, 2.0)
    kw = {"max_pairs": n_max, "alpha": alpha, "threshold": t, "n": a.benchmarks, "seed": a.seed}
    cells = seq.simulate(ratios=ratios, **kw)
    pool = _ab_pool(a.source) if a.source else None
    if pool is not None:
        for c in seq.simulate_noise(seq.resampled_noise(pool["d"]), ratios, **kw):
            cells.append({"sigma": "resampled", **c})
    print(json.dumps({"max_pairs": n_max, "rho": seq.RHO, "trim": seq.TRIM,
                      "futility_beta": seq.FUTILITY_BETA, "alpha": alpha, "threshold": t,
                      "benchmarks": a.benchmarks,
                      "resampled_from": {k: v for k, v in (pool or {}).items() if k != "d"},
                      "cells": cells}, indent=1))
    print("sigma of d | true ratio B/A | regression | faster | same | futile | inconclusive | "
          "mean pairs")
    for c in cells:
        sigma = f"{c['sigma']:10.1%}" if isinstance(c["sigma"], float) else f"{c['sigma']:>10}"
        print(f"{sigma} | {c['ratio']:14.2f} | {c['regression']:10.2%} | "
              f"{c['faster']:6.2%} | {c['same']:4.0%} | {c['futile']:6.0%} | "
              f"{c['inconclusive']:12.0%} | {c['mean_pairs']:.1f}")
    # the same rule on the fixed rule's synthetic runs (reports/synthetic.py: rounds' jitter, a
    # drift common to neighbouring processes, a share of disturbed processes), judged as a
    # sequential run's folder is
    from reports.synthetic import Noise, benchmark_names

    # The drift is common to every benchmark of a process, so one run's verdicts are
    # correlated (an unlucky drift moves them all): the shares are averaged over RUNS runs.
    runs = 20
    rng = np.random.default_rng(a.seed)
    names = benchmark_names(max(1, a.benchmarks // runs))
    print(f"synthetic processes (disturbed {a.disturbed:.0%}, drift {a.drift:.0%} a process), "
          f"at most {n_max} pairs, {runs} runs of {len(names)} benchmarks:")
    print("slowdown of B | regression | faster |   same | futile | inconclusive | mean pairs to "
          "a verdict")
    for eff in (0.0, t, 0.10, 1.0):
        k = dict.fromkeys(("regression", "faster", "same", "futile", "inconclusive"), 0)
        left = []
        for _ in range(runs):
            procs = synthetic_processes(names, rng, pairs=n_max, drift_sigma=a.drift,
                                        noise=Noise(disturbed=a.disturbed),
                                        slowdown_b={nm[0]: eff for nm in names} if eff
                                        else None)
            cmp = judge(procs, rule, unpaired=False, sequential=plan_sequential(n_max))
            for v, c in cmp.counts().items():
                if v in k:
                    k[v] += c
            k["futile"] += sum(bool(r.futile) for r in cmp.rows)
            k["inconclusive"] -= sum(bool(r.futile) for r in cmp.rows)
            left += [r.decided_at for r in cmp.rows if r.decided_at and not r.futile]
        share = {v: c / (runs * len(names)) for v, c in k.items()}
        print(f"{eff:13.0%} | {share['regression']:10.2%} | {share['faster']:6.2%} | "
              f"{share['same']:6.2%} | {share['futile']:6.0%} | {share['inconclusive']:12.0%} | "
              f"{np.mean(left) if left else float('nan'):.1f}")
        cells.append({"synthetic": True, "slowdown_b": eff, **share})
    # the exit status judges the independent normal-model and resampled cells (the rule's
    # guarantee); the synthetic runs' shares are correlated within a run, an illustration
    # with binomial slack (3 standard errors over a.benchmarks)
    worst = max(max(c["regression"], c["same"]) for c in cells
                if not c.get("synthetic") and c["ratio"] == 1.0 + t)
    return 0 if worst <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / a.benchmarks) else 1


def _ab_pool(folder: str) -> dict:
    """The paired log-ratios of an A vs A run's folder (both sides the same name), without the
    benchmarks of a backend B's processes were slowed in (plan.json slowdown_b): what this
    machine's pairs do when nothing changed, for `calibrate --sequential --from`."""
    import fnmatch

    import numpy as np

    plan, procs = load_folder(folder)
    names = ((plan.get("a") or {}).get("name"), (plan.get("b") or {}).get("name"))
    if not plan or names[0] != names[1]:
        raise ABError(f"{folder}: not an A vs A run (sides {names[0]!r} and {names[1]!r}); the "
                      "resampled model needs pairs in which nothing changed")
    slowed = [part.partition("=")[0] for part in str(plan.get("slowdown_b") or "").split(",")
              if part.strip()]
    pairs = _pairs(procs)
    d, kept, dropped = [], set(), set()
    for ra, rb in pairs:
        for name, rec in ra.by_name.items():
            if name not in rb.by_name:
                continue
            if any(fnmatch.fnmatch(rec.backend, g) for g in slowed):
                dropped.add(name)
                continue
            kept.add(name)
            d.append(math.log(rb.by_name[name].median / rec.median))
    if len(d) < 30:
        raise ABError(f"{folder}: {len(d)} unslowed pair ratios; the resampled model needs 30 "
                      "or more")
    machine = procs[0][1].machine_info.get("cpu") or {}
    return {"d": np.asarray(d), "folder": str(folder), "pairs": len(pairs),
            "benchmarks": len(kept), "left_out_slowed": len(dropped), "ratios": len(d),
            "cpu": {k: machine.get(k) for k in ("model", "isa_flags", "usable_cpus")
                    if k in machine}}


def _write_new(path: str, text: str) -> None:
    write_new(path, text, ABError)


def main(argv: list[str] | None = None) -> int:
    """`python -m reports ab judge|calibrate ...` (`ab run` is harness/ab.py's): 0 fine, 1 a
    regression (or acceptance drop) of B, 2 bad input (one line on stderr; nothing
    overwritten)."""
    from reports.compare import RuleError
    from reports.schema import SchemaError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        tail: list[str] = []
        if "--" in argv:
            k = argv.index("--")
            argv, tail = argv[:k], argv[k + 1:]
        a, extra = _parser().parse_known_args(argv)
        if a.cmd == "run":
            raise ABError("ab run: the runner is harness/ab.py (python -m reports ab run ..., "
                          "or python -m harness.ab ...)")
        if extra or tail:
            raise ABError(f"unrecognized arguments: {' '.join([*extra, *tail])}")
        if a.cmd == "step":
            plan, procs = load_folder(a.folder)
            if not plan.get("sequential"):
                raise ABError(f"{a.folder}: not a sequential run (its plan.json has no "
                              "'sequential')")
            cmp = judge(procs, _rule(a), unpaired=False, sequential=plan["sequential"])
            print(json.dumps({"pairs": cmp.pairs, "counts": cmp.counts(),
                              "open": cmp.open_names()}))
            return 0
        if a.cmd == "judge":
            rule = _rule(a)
            plan, procs = load_folder(a.folder)
            cmp = judge(procs, rule, a=(plan.get("a") or {}).get("name", "A"),
                        b=(plan.get("b") or {}).get("name", "B"),
                        sequential=plan.get("sequential"))
            print_report(cmp)
            if a.markdown:
                _write_new(a.markdown, to_markdown(cmp))
            if a.json:
                _write_new(a.json, json.dumps(cmp.as_dict(), indent=1) + "\n")
            return cmp.exit_code
        from reports.synthetic import Noise

        if a.sequential:
            return _calibrate_sequential(a)
        try:
            pairs = [int(x) for x in (a.pairs or "3,6,12,24").split(",") if x.strip()]
        except ValueError:
            pairs = []
        if not pairs or min(pairs) < 1:
            raise ABError(f"--pairs {a.pairs!r}: expected whole numbers >= 1")
        rule = _rule(a)
        res = calibrate(rule, pairs=pairs, n=a.benchmarks, seed=a.seed, drift_sigma=a.drift,
                        noise=Noise(disturbed=a.disturbed))
        print(json.dumps(res, indent=1))
        print("pairs | slowdown of B | regression | faster | same | inconclusive")
        for c in res["cells"]:
            print(f"{c['pairs']:5d} | {c['slowdown_b']:13.0%} | {c['regression']:10.2%} | "
                  f"{c['faster']:6.2%} | {c['same']:4.0%} | {c['inconclusive']:.0%}")
        worst = max((c["regression"] for c in res["cells"]
                     if c["slowdown_b"] <= rule.threshold), default=0.0)
        return 0 if worst <= rule.max_false_alarm_rate else 1
    except (ABError, SchemaError, RuleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
