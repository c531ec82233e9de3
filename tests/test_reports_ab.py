"""reports/ab.py, the interleaved A/B mode, on synthetic process files (reports/synthetic.py) and
fake interpreters (no benchmark runs): the order is balanced; a drift common to the two
processes of a pair cancels in the paired verdict while the stored-run compare of the same
processes cannot see past it; a planted 10% slowdown of B is flagged and nothing else; A vs A
reaches "same" with enough pairs; bad input exits 2 with one line and overwrites nothing."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pytest

from reports import ab
from reports.__main__ import main
from reports.compare import Rule, compare
from reports.merge import merge
from reports.synthetic import Noise, benchmark_names

RULE = Rule.load()
QUIET = Noise(disturbed=0.0, rounds=50)  # a machine without other tenants


def _processes(n_bench=40, *, pairs=6, noise=QUIET, slowdown_b=None, speeds=None, order=None,
               drift_sigma=0.0, seed=0):
    names = benchmark_names(n_bench)
    rng = np.random.default_rng(seed)
    slow = {names[i][0]: f for i, f in (slowdown_b or {}).items()}
    return names, ab.synthetic_processes(names, rng, pairs=pairs, noise=noise, slowdown_b=slow,
                                         speeds=speeds, order=order, drift_sigma=drift_sigma)


def _verdicts(cmp) -> dict[str, str]:
    return {r.fullname: r.verdict for r in cmp.rows}


@pytest.mark.parametrize("pairs", [1, 2, 3, 6, 7, 12])
def test_order_is_balanced(pairs):
    order = ab.schedule(pairs)
    assert len(order) == 2 * pairs
    assert order[:8] == ["A", "B", "B", "A", "A", "B", "B", "A"][:2 * pairs]
    # each pair of consecutive processes is one A and one B; each side leads in half the pairs
    assert all({order[i], order[i + 1]} == {"A", "B"} for i in range(0, len(order), 2))
    assert sum(order[i] == "A" for i in range(0, len(order), 2)) == (pairs + 1) // 2
    # with an even number of pairs, A's and B's mean positions coincide: a steady trend over
    # the run (linear drift) weighs on both sides alike
    pos = {s: [i for i, x in enumerate(order) if x == s] for s in ("A", "B")}
    if pairs % 2 == 0:
        assert sum(pos["A"]) == sum(pos["B"])


def test_common_drift_cancels_when_paired():
    """Each pair of processes runs at its own machine speed (another tenant for a while, a
    clock change): up to 60% apart between pairs, the same for the two processes of a pair."""
    pair_speed = [1.0, 1.35, 0.9, 1.6, 1.1, 1.25]
    speeds = [s for s in pair_speed for _ in range(2)]
    _, procs = _processes(speeds=speeds)
    cmp = ab.judge(procs, RULE)
    counts = cmp.counts()
    assert counts["regression"] == counts["faster"] == 0, ab.to_markdown(cmp)
    assert counts["same"] >= 0.9 * len(cmp.rows), ab.to_markdown(cmp)
    for r in cmp.rows:
        assert r.lo <= 1.02 and r.hi >= 0.98  # the intervals hold the true ratio 1
    # the stored-run rule on the same processes: the drift spreads each side's medians, so it
    # cannot call any of them the same
    unpaired = compare(merge([r for s, r in procs if s == "A"], "A"),
                       merge([r for s, r in procs if s == "B"], "B"), RULE).counts()
    assert unpaired["unchanged"] == 0 and unpaired["inconclusive"] == len(cmp.rows)
    assert {r.unpaired for r in cmp.rows} == {"inconclusive"}  # the contrast column says so


def test_drift_between_stored_runs_is_a_false_verdict_unpaired():
    """The situation A/B exists for: A's processes first, then B's, the machine 15% slower by
    then. The stored-run compare finds identical code 15% slower: a regression, relabelled
    "machine drift" where the control op saw the machine slow down too (here it does), never
    "same"; interleaved and paired, the same drift (a steady trend over the run) gives no
    verdict against B and calls most benchmarks the same."""
    order = ["A"] * 6 + ["B"] * 6
    _, seq = _processes(pairs=6, order=order, speeds=[1.0] * 6 + [1.15] * 6)
    unpaired = compare(merge([r for s, r in seq if s == "A"], "A"),
                       merge([r for s, r in seq if s == "B"], "B"), RULE).counts()
    assert unpaired["regression"] + unpaired["drift"] >= 36 and unpaired["unchanged"] == 0
    with pytest.raises(ab.ABError, match="one A and one B"):
        ab.judge(seq, RULE)  # not an A/B run: its processes cannot be paired in run order
    trend = [1.15 ** (i / 11) for i in range(12)]  # 15% slower by the end, steadily
    _, inter = _processes(pairs=6, speeds=trend)
    cmp = ab.judge(inter, RULE)
    assert cmp.counts()["regression"] == cmp.counts()["faster"] == 0, ab.to_markdown(cmp)
    assert cmp.counts()["same"] >= 30, ab.to_markdown(cmp)


def test_unbalanced_order_would_turn_a_trend_into_a_verdict():
    """Why the order is A B B A, not A B A B: with B always second, a trend of 8% a process
    makes identical code look 8% slower."""
    speeds = [1.08 ** i for i in range(12)]
    _, abab = _processes(pairs=6, order=["A", "B"] * 6, speeds=speeds)
    assert len(ab.judge(abab, RULE).regressions) >= 30
    _, abba = _processes(pairs=6, speeds=speeds)
    assert ab.judge(abba, RULE).regressions == []


def test_planted_ten_percent_is_flagged_and_nothing_else():
    slowed = {i: 0.10 for i in range(0, 40, 4)}  # 10 of 40 benchmarks, B 10% slower
    names, procs = _processes(slowdown_b=slowed, drift_sigma=0.01)  # 1% drift a process
    cmp = ab.judge(procs, RULE)
    v = _verdicts(cmp)
    slow = {names[i][0] for i in slowed}
    assert {n for n, x in v.items() if x == "regression"} == slow, ab.to_markdown(cmp)
    assert not [n for n, x in v.items() if x == "faster"]
    assert sum(v[n] == "same" for n in v if n not in slow) >= 0.8 * (len(v) - len(slow))
    for r in cmp.rows:
        if r.fullname in slow:
            assert r.lo > 1 + RULE.threshold and r.lo < 1.10 < r.hi  # the interval holds 1.10
    assert cmp.exit_code == 1
    md = ab.to_markdown(cmp)
    assert md.count("| REGRESSION |") == len(slow) and "98% interval" in md


def test_a_vs_a_is_same_with_enough_pairs():
    # 3 pairs: t_{0.99, 2} = 6.96, the interval too wide for "same" but never a verdict
    _, few = _processes(pairs=3, drift_sigma=0.02, seed=3)
    c3 = ab.judge(few, RULE).counts()
    assert c3["regression"] == c3["faster"] == 0
    _, many = _processes(pairs=12, drift_sigma=0.02, seed=3)
    c12 = ab.judge(many, RULE).counts()
    assert c12["regression"] == c12["faster"] == 0
    assert c12["same"] >= 38 and c12["same"] > c3["same"]


def test_disturbed_processes_make_inconclusive_not_false_verdicts():
    """A quarter of the process medians 1.05-2.5x slower (another tenant on the cores): wide
    intervals, no false regression over 400 benchmarks of A vs A."""
    _, procs = _processes(400, pairs=6, noise=Noise(), drift_sigma=0.02, seed=4)
    c = ab.judge(procs, RULE, unpaired=False).counts()
    assert c["regression"] <= RULE.max_false_alarm_rate * 400 and c["faster"] <= 4
    assert c["inconclusive"] > c["same"]


def test_slowdown_at_the_threshold_is_rarely_a_regression():
    """The interval's level: B exactly 5% slower (not a regression by the rule) is called one
    in at most ~alpha of the benchmarks (1%; binomial slack over 600)."""
    _, procs = _processes(600, pairs=6, noise=Noise(disturbed=0.0), drift_sigma=0.02,
                          slowdown_b={i: RULE.threshold for i in range(600)}, seed=5)
    c = ab.judge(procs, RULE, unpaired=False).counts()
    assert c["regression"] <= 2 * RULE.max_false_alarm_rate * 600, c


def test_paired_interval_is_a_t_interval_of_the_log_ratios():
    a = [1.0, 1.2, 0.9, 1.1]
    b = [1.05, 1.26, 0.945, 1.17]
    ratio, lo, hi = ab.paired_interval(a, b, 0.01)
    d = np.log(np.array(b) / np.array(a))
    assert ratio == pytest.approx(float(np.exp(d.mean())))
    from scipy.stats import t

    half = t.ppf(0.99, 3) * d.std(ddof=1) / 2
    assert (lo, hi) == pytest.approx((np.exp(d.mean() - half), np.exp(d.mean() + half)))


def _write(folder: pathlib.Path, procs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (side, run) in enumerate(procs, start=1):
        ab.process_file(folder, i, side).write_text(json.dumps(run.raw))


def test_judge_a_folder_and_the_cli_exit_codes(tmp_path, capsys):
    _, procs = _processes(8, slowdown_b={0: 0.5})
    folder = tmp_path / "run-ab"
    _write(folder, procs)
    out_md = tmp_path / "table.md"
    assert main(["ab", "judge", str(folder), "--markdown", str(out_md)]) == 1
    text = capsys.readouterr()
    assert "REGRESSION" in text.err and out_md.read_text().count("| REGRESSION |") == 1
    # a second write to the same table is refused, and it stays as it was
    before = out_md.read_text()
    assert main(["ab", "judge", str(folder), "--markdown", str(out_md)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and out_md.read_text() == before


def _bad_input(tmp_path, capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    _, procs = _processes(6)
    # not a folder / no process files
    _bad_input(tmp_path, capsys, ["ab", "judge", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    _bad_input(tmp_path, capsys, ["ab", "judge", str(tmp_path / "empty")])
    # a corrupt process file
    bad = tmp_path / "corrupt"
    _write(bad, procs)
    ab.process_file(bad, 3, "B").write_text('{"benchmarks": [')
    assert "not valid JSON" in _bad_input(tmp_path, capsys, ["ab", "judge", str(bad)])
    # two A's in one pair
    twice = tmp_path / "twice"
    _write(twice, [procs[0], procs[0], *procs[2:]])
    assert "one A and one B" in _bad_input(tmp_path, capsys, ["ab", "judge", str(twice)])
    # a gap in the numbering
    gap = tmp_path / "gap"
    _write(gap, procs)
    ab.process_file(gap, 2, "B").unlink()
    assert "without gaps" in _bad_input(tmp_path, capsys, ["ab", "judge", str(gap)])
    # processes of two machines
    other = tmp_path / "machines"
    _write(other, procs)
    raw = json.loads(ab.process_file(other, 2, "B").read_text())
    raw["machine_info"]["machine_id"] = "cpu-elsewhere-00000000"
    ab.process_file(other, 2, "B").write_text(json.dumps(raw))
    assert "machines" in _bad_input(tmp_path, capsys, ["ab", "judge", str(other)])
    # run: bad pairs, bad slowdown, a missing interpreter, an output folder in use
    fake = _fake_python(tmp_path, procs[0][1])
    base = ["ab", "run", "--a-python", str(fake), "--b-python", str(fake)]
    _bad_input(tmp_path, capsys, [*base, "--out", str(tmp_path / "o1"), "--ab-pairs", "0"])
    _bad_input(tmp_path, capsys, [*base, "--out", str(tmp_path / "o2"), "--",
                                  "--ab-slowdown-b", "cpu_fused_moe.vec"])
    _bad_input(tmp_path, capsys, [*base, "--out", str(tmp_path / "o3"), "--",
                                  "--bench-processes=3"])
    _bad_input(tmp_path, capsys, ["ab", "run", "--a-python", str(tmp_path / "nope"),
                                  "--b-python", str(fake), "--out", str(tmp_path / "o4")])
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert "refusing to overwrite" in _bad_input(tmp_path, capsys, [*base, "--out", str(used)])
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob("o[0-9]/process*"))  # nothing ran for bad arguments


def _fake_python(tmp_path: pathlib.Path, run) -> pathlib.Path:
    """An 'interpreter' that logs its arguments and writes a prepared process file where
    pytest-benchmark would (--benchmark-json=PATH): the run loop without benchmarks."""
    src = tmp_path / "process.json"
    src.write_text(json.dumps(run.raw))
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {log}\n"
                    f"for a in \"$@\"; do case \"$a\" in --benchmark-json=*) "
                    f"cp {src} \"${{a#--benchmark-json=}}\";; esac; done\nexit 0\n")
    fake.chmod(0o755)
    return fake


def test_run_alternates_sides_and_slows_only_b(tmp_path, capsys):
    _, procs = _processes(4)
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    pa, pb = _fake_python(tmp_path / "a", procs[0][1]), _fake_python(tmp_path / "b", procs[1][1])
    out = tmp_path / "out"
    rc = main(["ab", "run", "--a-python", str(pa), "--b-python", str(pb), "--a-name", "0.31.0",
               "--b-name", "/src/vllm", "--out", str(out), "--ab-pairs", "4", "--",
               "-k", "moe_experts", "--ab-slowdown-b=cpu_fused_moe.vec=0.1",
               "--bench-threads=1"])
    assert rc == 0, capsys.readouterr()
    calls = [(pathlib.Path(line.split()[0]).parent.name, line.split()[1:])
             for p in (tmp_path / "a" / "calls.log", tmp_path / "b" / "calls.log")
             for line in p.read_text().splitlines()]
    by_file = sorted((next(a for a in args if a.startswith("--benchmark-json=")), side, args)
                     for side, args in calls)
    assert [side for _, side, _ in by_file] == [s.lower() for s in ab.schedule(4)]
    for _, side, args in by_file:
        # one process of nox -s bench: its pytest arguments, then the selection
        assert args[:6] == ["-m", "pytest", "suites/bench", "-m", "bench", "--device=cpu"]
        assert ("--bench-slowdown=cpu_fused_moe.vec=0.1" in args) == (side == "b")
        assert args[args.index("-k") + 1] == "moe_experts" and "--bench-threads=1" in args
    assert (out / "ab.md").exists() and json.loads((out / "ab.json").read_text())["pairs"] == 4
    plan = json.loads((out / "plan.json").read_text())
    assert plan["order"] == ab.schedule(4) and plan["slowdown_b"] == "cpu_fused_moe.vec=0.1"
    assert len(plan["wall_s"]["processes"]) == 8


def test_a_failed_process_stops_the_run(tmp_path, capsys):
    _, procs = _processes(4)
    good = _fake_python(tmp_path, procs[0][1])
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    err = _bad_input(tmp_path, capsys, ["ab", "run", "--a-python", str(good), "--b-python",
                                        str(broken), "--out", str(tmp_path / "out")])
    assert "process 2 (B) failed: pytest exit 1" in err
    assert not (tmp_path / "out" / "ab.md").exists()


def test_bench_command_is_what_nox_bench_runs():
    """noxfile.py's bench session builds its pytest command with ab.bench_command, and the
    module's run half imports nothing but the standard library (nox's own Python loads it)."""
    text = (pathlib.Path(__file__).parents[1] / "noxfile.py").read_text()
    assert '_repo_module("reports.ab").bench_command(' in text
    import subprocess
    import sys

    code = ("import sys; import reports.ab as ab; ab.schedule(2); "
            "sys.exit(any(m in sys.modules for m in ('numpy', 'scipy', 'torch')))")
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def _baton_python(tmp_path: pathlib.Path, run, slices: pathlib.Path) -> pathlib.Path:
    """An 'interpreter' that takes part in the baton like suites/bench does (hello, then a few
    compute slices with a pass between them, each slice logged with its start and end time),
    then writes a prepared process file where pytest-benchmark would."""
    src = tmp_path / "process.json"
    src.write_text(json.dumps(run.raw))
    script = tmp_path / "fake_bench.py"
    script.write_text(f'''
import json, os, shutil, sys, time
sys.path.insert(0, {str(pathlib.Path(__file__).parents[1])!r})
from reports.baton import Baton
b = Baton.from_env()
assert b is not None, "the runner did not hand this process a baton"
b.hello()
for i in range(4):
    t0 = time.monotonic()
    time.sleep(0.02)
    with open({str(slices)!r}, "a") as f:
        f.write(json.dumps([b.side, t0, time.monotonic()]) + "\\n")
    if i < 3:
        b.pass_()
b.close()
out = next(a for a in sys.argv if a.startswith("--benchmark-json="))
shutil.copy({str(src)!r}, out.partition("=")[2])
''')
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    fake.chmod(0o755)
    return fake


def test_window_mode_runs_each_pair_together_taking_turns(tmp_path, capsys):
    """The default interleave: both processes of a pair run at once, each with the baton's
    socket and its side in its environment; their compute slices never overlap and alternate,
    the side named first in the pair going first."""
    _, procs = _processes(4)
    slices = tmp_path / "slices.jsonl"
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    pa = _baton_python(tmp_path / "a", procs[0][1], slices)
    pb = _baton_python(tmp_path / "b", procs[1][1], slices)
    out = tmp_path / "out"
    rc = main(["ab", "run", "--a-python", str(pa), "--b-python", str(pb), "--out", str(out),
               "--ab-pairs", "2"])
    assert rc == 0, capsys.readouterr()
    got = [json.loads(line) for line in slices.read_text().splitlines()]
    assert len(got) == 16
    by_pair = [sorted(got[:8], key=lambda s: s[1]), sorted(got[8:], key=lambda s: s[1])]
    for pair, first in zip(by_pair, ("A", "B")):
        sides = [s for s, _, _ in pair]
        assert sides == [first, "B" if first == "A" else "A"] * 4, sides
        assert all(pair[i][2] <= pair[i + 1][1] for i in range(len(pair) - 1)), "overlap"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["interleave"] == "window" and plan["handovers"] == [6, 6]
    assert sorted(p.name for p in out.glob("process*.log")) == [
        "process01-A.log", "process02-B.log", "process03-B.log", "process04-A.log"]


def test_interleave_option_is_checked(tmp_path, capsys):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    err = _bad_input(tmp_path, capsys, ["ab", "run", "--a-python", str(fake), "--b-python",
                                        str(fake), "--out", str(tmp_path / "o"),
                                        "--ab-interleave", "sometimes"])
    assert "--ab-interleave 'sometimes': expected one of window, process" in err
    assert ab.split_args(["--ab-interleave=process", "-k", "x"]).interleave == "process"
    assert ab.split_args(["-k", "x"]) == ab.Args(rest=["-k", "x"])
