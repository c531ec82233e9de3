"""Interleaved A/B, the runner half: install the two sides, launch the benchmark processes in the
balanced order A B | B A | ..., the two of a pair taking turns with the baton (reports/baton.py)
or one after the other, and write them where reports/ab.py (the judging half: the paired rule,
its tables, its calibration; read its docstring for the why and the measurements) reads them.
Sequential (reports/sequential.py): after each pair from the 2nd, `python -m reports ab step`
says which benchmarks are still open (verdicts from the 3rd pair; futility, no change beyond
the band in sight, from the 2nd), and only those run in the next pair; the run ends when none
is open, after --ab-pairs pairs (default 10), or before a pair that would end past
--ab-budget. Each process times with --bench-rounds auto (SUITE_BENCH_ROUNDS) and the run's
roofline probes run once (SUITE_BENCH_ROOFLINE, suites/bench/probes.py measure_or_reuse).

  nox -s ab -- A B [--ab-pairs N] [--ab-budget 15m] [--ab-slowdown-b GLOB=F]
               [--ab-interleave auto|window|process|shared] [pytest args]
                                               session(): the sides' venvs, then `ab run` in A's
  python -m reports ab run --a-python PY --b-python PY [--a-name S] [--b-name S]
               [--device cpu|cuda] [--out DIR] [--rule FILE] [--threshold F]
               [--ab-pairs N] [--ab-budget T] [--ab-slowdown-b GLOB=F]
               [--ab-interleave auto|window|process|shared] [-- PYTEST ARGS]
                                               main(): run, then judge (reports/ab.py)

Interleave (--ab-interleave; auto by default): two environments run "window" (both processes
of a pair at once, taking turns with the baton); one environment for both sides (`nox -s ab --
pinned pinned`, A vs A, a planted --ab-slowdown-b) runs "shared": a pair is one process that
times A and B in alternating windows of every case (suites/bench/timing.py SharedPair), because
between two processes each case keeps an offset of its own for the whole process, which one
process gives both sides alike. "process" runs the two one after the other.

A benchmark process is one pytest run of suites/bench with the selection given, exactly the
command `nox -s bench` runs for each of its processes (bench_command). `--ab-slowdown-b GLOB=F`
adds suites/bench's `--bench-slowdown GLOB=F` to B's processes only (calibration). Files:
reports/out/<time>-ab/plan.json, processNN-A.json / processNN-B.json (and .log in window mode)
in run order, then ab.md and ab.json.

The run half needs only the standard library (nox's own Python imports it, and harness.bisect
runs A/B checks from there); the judgement is reports/ab.py's, in an environment with numpy.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from harness import options
from harness.project import ROOT
from reports import baton as _baton
from reports import sequential as _sequential
from reports.ab import PLAN, ABError, plan_sequential, process_file, schedule

__all__ = ["DEFAULT_PAIRS", "INTERLEAVE", "PLAN", "ABError", "Args", "ProcessFailed", "Side",
           "bench_command", "judge_folder", "main", "new_folder", "process_file", "run",
           "schedule", "session", "split_args"]

DEFAULT_PAIRS = int(options.OPTIONS["--ab-pairs"].default)
INTERLEAVE = options.OPTIONS["--ab-interleave"].choices
AB_OPTIONS = ("--ab-pairs", "--ab-slowdown-b", "--ab-interleave", "--ab-budget")
BENCH_DIR = "suites/bench"
# the first pair after which benchmarks may leave: futility from pair 2, verdicts from pair 3
FIRST_LOOK = min(_sequential.MIN_PAIRS, _sequential.FUTILITY_FROM)
WEIGHT_CACHE_ENV = "SUITE_BENCH_WEIGHT_CACHE"  # suites/bench/workloads.py (not imported: torch)
SHARED_ENV = "SUITE_BENCH_SHARED"  # suites/bench/conftest.py: both sides in one process
FIXED_S = 30.0  # a pair's fixed seconds (two process starts, collection, probes), for budgets


class ProcessFailed(RuntimeError):
    """A benchmark process of one side failed (its pytest output is above)."""

    def __init__(self, index: int, side: str, rc: int, folder: pathlib.Path) -> None:
        self.index, self.side, self.rc, self.folder = index, side, rc, folder
        why = f"signal {-rc}" if rc < 0 else f"pytest exit {rc}" if rc else "no JSON written"
        super().__init__(f"process {index} ({side}) failed: {why}; nothing judged (the "
                         f"processes before it are in {folder})")


def bench_command(python: str, json_path: pathlib.Path | str, pytest_args, *, device: str,
                  quiet: bool, targets: Sequence[str] = (BENCH_DIR,)) -> list[str]:
    """One benchmark process, the pytest invocation `nox -s bench` runs for each of its
    processes (harness.sessions.bench) and an A/B run for each of its (`targets`: the node ids
    still open in a sequential run's later pairs, else suites/bench)."""
    return [python, "-m", "pytest", *targets, "-m", "bench", f"--device={device}",
            f"--benchmark-json={json_path}", "--benchmark-columns=median,iqr,rounds",
            "--benchmark-sort=fullname", *(["-q"] if quiet else []), *pytest_args]


@dataclass
class Args:
    """What split_args finds among pytest's arguments."""

    pairs: int = DEFAULT_PAIRS
    slowdown_b: str | None = None
    interleave: str = "auto"
    budget_s: float | None = None
    rest: list[str] = field(default_factory=list)


def split_args(argv: Sequence[str]) -> Args:
    """--ab-pairs N / --ab-slowdown-b GLOB=F / --ab-interleave MODE (harness.options),
    mixed with pytest's arguments (the rest); --bench-processes is refused."""
    try:
        p = options.parse(argv, *AB_OPTIONS, environ={}, refuse={
            "--bench-processes": "an A/B run's processes are its pairs (--ab-pairs N runs 2N "
                                 "processes)"})
    except options.OptionError as e:
        raise ABError(str(e)) from None
    return Args(pairs=p.ab_pairs, slowdown_b=p.ab_slowdown_b, interleave=p.ab_interleave,
                budget_s=p.ab_budget, rest=p.rest)


@dataclass
class Side:
    name: str  # as given: a version, a requirement, a wheel, a checkout
    python: str  # the interpreter of its environment


def new_folder(out: str | pathlib.Path | None) -> pathlib.Path:
    """The run's folder: `out` (must not exist or be empty), else reports/out/<time>-ab."""
    folder = pathlib.Path(out) if out else (
        ROOT / "reports" / "out" / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-ab")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ABError(f"{folder}: exists and is not an empty folder; refusing to overwrite it")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ABError(f"{folder}: cannot create ({e.strerror})") from None
    return folder


def step_folder(folder: pathlib.Path, *, python: str, env: dict | None = None) -> list[str]:
    """The benchmarks of a sequential run still open after the pairs in `folder`:
    `python -m reports ab step` in the environment of `python` (one with numpy and scipy)."""
    r = subprocess.run([python, "-m", "reports", "ab", "step", str(folder)], cwd=ROOT,
                       env={**os.environ, **(env or {})}, capture_output=True, text=True)
    try:
        if r.returncode != 0:
            raise ValueError
        return list(json.loads(r.stdout.strip().splitlines()[-1])["open"])
    except (ValueError, KeyError, IndexError, TypeError):
        err = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise ABError(f"judging the pairs so far failed ({python} -m reports ab step "
                      f"{folder}): {err}") from None


def _count_records(path: pathlib.Path) -> int:
    try:
        return len(json.loads(path.read_text()).get("benchmarks") or [])
    except (OSError, ValueError, AttributeError):
        return 0


def next_pair_estimate(history: list[dict], n_open: int, fixed_s: float = FIXED_S) -> float:
    """Seconds the next pair should take with n_open benchmarks: a pair costs a fixed part
    (process start, imports, collection, the roofline probes: ~15 s a process here) plus a
    part per benchmark, this run's last pair's (its wall less the fixed part, per benchmark it
    timed)."""
    last = history[-1]
    per = max(0.0, last["wall_s"] - fixed_s) / max(1, last["benchmarks"])
    return fixed_s + per * n_open


def same_environment(a: Side, b: Side) -> bool:
    """A and B run the same interpreter of the same environment (its path, not resolved: a
    venv's python is a link to the base interpreter that every venv shares)."""
    return os.path.normpath(os.path.abspath(a.python)) == \
        os.path.normpath(os.path.abspath(b.python))


def resolve_interleave(interleave: str, a: Side, b: Side) -> str:
    """The interleave a run uses: "auto" is "shared" when A and B are one environment (the only
    difference between them is then B's --ab-slowdown-b, and one process holding both sides
    cancels the offset each process gives each case; suites/bench/timing.py SharedPair), else
    "window". "shared" for two environments is refused: one process imports one vLLM."""
    if interleave not in INTERLEAVE:
        raise ABError(f"interleave {interleave!r}: expected one of {', '.join(INTERLEAVE)}")
    same = same_environment(a, b)
    if interleave == "auto":
        return "shared" if same else "window"
    if interleave == "shared" and not same:
        raise ABError(f"--ab-interleave shared: A ({a.python}) and B ({b.python}) are two "
                      "environments, and one process imports one vLLM; use window")
    return interleave


def run(a: Side, b: Side, *, pairs: int, pytest_args: list[str], folder: pathlib.Path,
        device: str = "cpu", slowdown_b: str | None = None, env: dict | None = None,
        interleave: str = "auto", budget_s: float | None = None,
        step: Callable[[pathlib.Path], list[str]] | None = None, futility: bool = True,
        say=lambda line: print(line, flush=True)) -> list[tuple[str, pathlib.Path]]:
    """Run the sequential A/B: pairs of benchmark processes in the balanced order A B, B A, ...
    (in "window" mode the side named first in a pair takes the baton first); the first
    FIRST_LOOK pairs time the whole selection, each later pair only the benchmarks still open
    (`step(folder)`: default `python -m reports ab step` in A's environment), until none is
    open, `pairs` pairs have run, or the next pair would end past `budget_s`. `futility`
    False: benchmarks leave only at a verdict (bisect: a step needs one). Returns (side,
    file) in run order. Raises ProcessFailed when a process fails or writes no JSON."""
    for side in (a, b):
        if not (os.path.isfile(side.python) and os.access(side.python, os.X_OK)):
            raise ABError(f"{side.python}: no Python interpreter there (side {side.name})")
    asked, interleave = interleave, resolve_interleave(interleave, a, b)
    folder = pathlib.Path(folder).absolute()  # the processes run in ROOT, not in our cwd
    env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    for var in (_baton.ENV_SOCKET, _baton.ENV_SIDE):
        env.pop(var, None)
    env.setdefault("SUITE_BENCH_ROUNDS", "auto")  # --bench-rounds on the command line wins
    if device == "cpu":
        # one pinned thread a process unless --bench-threads says otherwise: measured here
        # (2026-12-07, router + cpu_fused_moe.vec at T 1 and 16, 5 pairs), the paired spread
        # sd(d) had median 2.0% with one thread, 7.3% with two (the machine's both cores, the
        # other side's process asleep on the baton) and 36% with two and OMP_WAIT_POLICY=PASSIVE
        env.setdefault("SUITE_BENCH_THREADS", "1")
    env["SUITE_BENCH_ROOFLINE"] = str(folder / "roofline.json")  # probed once a run
    step = step or (lambda f: step_folder(f, python=a.python, env=env))
    order = schedule(pairs)
    plan = {"format": "ab-plan/2", "a": dataclasses.asdict(a), "b": dataclasses.asdict(b),
            "pairs": pairs, "order": order, "device": device, "pytest_args": list(pytest_args),
            "slowdown_b": slowdown_b, "interleave": interleave, "interleave_asked": asked,
            "sequential": plan_sequential(pairs, futility=futility),
            "budget_s": budget_s, "bench_rounds": env["SUITE_BENCH_ROUNDS"],
            "bench_threads": env.get("SUITE_BENCH_THREADS"),
            "started": _dt.datetime.now().astimezone().isoformat()}
    (folder / PLAN).write_text(json.dumps(plan, indent=1) + "\n")
    done: list[tuple[str, pathlib.Path]] = []
    walls: list[float] = []
    handovers: list[int] = []
    history: list[dict] = []
    t0 = time.monotonic()
    targets: list[str] = [BENCH_DIR]
    stopped = f"{pairs} pairs (the most a benchmark gets)"

    def command(i: int, side_name: str, quiet: bool) -> tuple[list[str], pathlib.Path]:
        side = a if side_name == "A" else b
        part = process_file(folder, i, side_name)
        extra = [f"--bench-slowdown={slowdown_b}"] if side_name == "B" and slowdown_b else []
        return bench_command(side.python, part, [*pytest_args, *extra], device=device,
                             quiet=quiet, targets=targets), part

    sock_dir = tempfile.mkdtemp(prefix="ab-baton-")  # a socket path must be short
    # the oracle's quantized weights, computed by the first process that needs them and read
    # back by every later one (suites/bench/workloads.py quantized_weights); removed at the end
    weights_dir = None
    if WEIGHT_CACHE_ENV not in env:
        weights_dir = tempfile.mkdtemp(prefix="ab-weights-")
        env[WEIGHT_CACHE_ENV] = weights_dir
    try:
        for p in range(pairs):
            i1 = 2 * p + 1
            first, second = order[i1 - 1], order[i1]
            if p and budget_s is not None:
                n_open = history[-1]["benchmarks"] if targets == [BENCH_DIR] else len(targets)
                est = next_pair_estimate(history, n_open)
                elapsed = time.monotonic() - t0
                if elapsed + est > budget_s:
                    stopped = (f"budget: {elapsed:.0f} s spent, the next pair ({n_open} "
                               f"benchmarks, ~{est:.0f} s) would end past {budget_s:.0f} s")
                    say(f"A/B: stopping, {stopped}")
                    break
            what = "the selection" if targets == [BENCH_DIR] else \
                f"{len(targets)} open benchmark(s)"
            start = time.monotonic()
            if interleave == "process":
                for i, side_name in ((i1, first), (i1 + 1, second)):
                    cmd, part = command(i, side_name, quiet=i > 2)
                    say(f"A/B pair {p + 1} of at most {pairs}, process {i}: {side_name} "
                        f"({(a if side_name == 'A' else b).name}), {what}")
                    s0 = time.monotonic()
                    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
                    walls.append(round(time.monotonic() - s0, 2))
                    if rc != 0 or not part.exists():
                        raise ProcessFailed(i, side_name, rc, folder)
                    done.append((side_name, part))
            elif interleave == "shared":
                say(f"A/B pair {p + 1} of at most {pairs}: one process for {i1} ({first}) and "
                    f"{i1 + 1} ({second}), {what}, windows alternating, {first} first")
                _shared_pair(i1, first, second, command, env, folder, done, walls, say,
                             slowdown_b)
            else:
                say(f"A/B pair {p + 1} of at most {pairs}: processes {i1} ({first}) and "
                    f"{i1 + 1} ({second}), {what}, interleaved by windows, {first} first")
                handovers.append(_window_pair(p, i1, first, second, command, sock_dir, env,
                                              folder, done, walls, say))
            wall = round(time.monotonic() - start, 2)
            n_timed = max(_count_records(done[-1][1]), _count_records(done[-2][1]))
            history.append({"pair": p + 1, "targets": "selection" if targets == [BENCH_DIR]
                            else len(targets), "benchmarks": n_timed, "wall_s": wall})
            if p + 1 >= (FIRST_LOOK if futility else _sequential.MIN_PAIRS) and p + 1 < pairs:
                targets = step(folder)
                history[-1]["open_after"] = len(targets)
                say(f"A/B after pair {p + 1}: {len(targets)} benchmark(s) still open "
                    f"({time.monotonic() - t0:.0f} s so far)")
                if not targets:
                    stopped = f"no benchmark open after {p + 1} pairs"
                    break
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
        if weights_dir:
            shutil.rmtree(weights_dir, ignore_errors=True)
    plan["wall_s"] = {"total": round(time.monotonic() - t0, 1), "processes": walls}
    plan["steps"] = history
    plan["stopped"] = stopped
    if handovers:
        plan["handovers"] = handovers
    (folder / PLAN).write_text(json.dumps(plan, indent=1) + "\n")
    return done


def _window_pair(p, i1, first, second, command, sock_dir, env, folder, done, walls,
                 say) -> int:
    """Both processes of pair p at once, taking turns with the baton; returns its handovers."""
    server = _baton.BatonServer(os.path.join(sock_dir, f"pair{p + 1}"), first).start()
    procs = {}
    start = time.monotonic()
    try:
        for i, side_name in ((i1, first), (i1 + 1, second)):
            cmd, part = command(i, side_name, quiet=True)
            log = open(folder / f"process{i:02d}-{side_name}.log", "w")  # noqa: SIM115
            penv = {**env, _baton.ENV_SOCKET: server.path, _baton.ENV_SIDE: side_name}
            procs[side_name] = (i, part, log, subprocess.Popen(
                cmd, cwd=ROOT, env=penv, stdout=log, stderr=subprocess.STDOUT))
        rcs: dict[str, int] = {}
        while len(rcs) < 2:
            for side_name, (_, _, _, proc) in procs.items():
                if side_name not in rcs and proc.poll() is not None:
                    rcs[side_name] = proc.returncode
                    server.side_exited(side_name)
            time.sleep(0.2)
    finally:
        for _, _, log, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        server.close()
    wall = round(time.monotonic() - start, 2)
    for side_name in (first, second):
        i, part, log, _ = procs[side_name]
        walls.append(wall)
        if rcs[side_name] != 0 or not part.exists():
            _say_tail(pathlib.Path(log.name), say)
            raise ProcessFailed(i, side_name, rcs[side_name], folder)
        done.append((side_name, part))
    return server.handovers


def _say_tail(log: pathlib.Path, say) -> None:
    """A failed process's log, its last 3000 characters."""
    say(f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-3000:]}")


def _shared_pair(i1, first, second, command, env, folder, done, walls, say,
                 slowdown_b) -> None:
    """Both sides of a pair in one process (A and B one environment): A's benchmark process,
    told by SUITE_BENCH_SHARED to time B too, in windows alternating with A's (`first` opening
    each case), with B's slowdown, and to write B's records to B's process file."""
    index = {first: i1, second: i1 + 1}
    cmd, part_a = command(index["A"], "A", quiet=True)
    part_b = process_file(folder, index["B"], "B")
    log_path = folder / f"process{i1:02d}-{i1 + 1:02d}-shared.log"
    penv = {**env, SHARED_ENV: json.dumps({"first": first, "b_json": str(part_b),
                                           "b_slowdown": slowdown_b})}
    start = time.monotonic()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=penv, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    walls.append(round(time.monotonic() - start, 2))
    if rc != 0 or not part_a.exists() or not part_b.exists():
        _say_tail(log_path, say)
        raise ProcessFailed(i1, "A and B", rc, folder)
    done.extend((side, part_a if side == "A" else part_b) for side in (first, second))


def judge_folder(folder: pathlib.Path, *, python: str = sys.executable,
                 env: dict | None = None) -> tuple[int, dict | None, str]:
    """Judge a run's folder in the environment of `python` (one with numpy: `python -m reports
    ab judge`, ab.md and ab.json written into the folder), from a Python without it. Returns
    (exit status, the verdicts of ab.json or None, the last line it wrote on stderr)."""
    folder = pathlib.Path(folder)
    cmd = [python, "-m", "reports", "ab", "judge", str(folder), "--markdown",
           str(folder / "ab.md"), "--json", str(folder / "ab.json")]
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                       text=True)
    err = (r.stderr.strip().splitlines() or [""])[-1]
    try:
        verdicts = json.loads((folder / "ab.json").read_text()) if r.returncode in (0, 1) \
            else None
    except (OSError, json.JSONDecodeError):
        verdicts = None
    return r.returncode, verdicts, err


# ------------------------------------------------------------------------- nox -s ab

USAGE = ("usage: nox -s ab -- A B [--ab-pairs N] [--ab-budget T] [--ab-slowdown-b GLOB=F] "
         "[pytest args], A "
         "and B as VLLM_UNDER_TEST takes them (e.g. pinned 0.31.0 /path/to/vllm)")


def session(runner, posargs: Sequence[str], *, flavour: str, pins=None,
            venv_root: pathlib.Path | None = None) -> int:
    """nox -s ab: each side (as VLLM_UNDER_TEST takes it) in a venv of its own under venv_root
    (default .nox; one venv when both are the same requirement), then `python -m reports ab
    run` in A's. Its exit status: 0 fine, 1 a regression of B, 2 bad input or a failed
    process."""
    from harness import install, sessions
    from harness.spec import SpecError, UnderTest

    posargs = list(posargs)
    if len(posargs) < 2 or any(a.startswith("-") for a in posargs[:2]):
        runner.error(USAGE)
    names = posargs[:2]
    try:
        sides = [UnderTest.parse(n, pins, name=f"side {n!r}") for n in names]
        split_args(posargs[2:])  # bad options fail here, before anything is installed
    except (SpecError, ABError) as e:
        runner.log(f"error: {e}")
        return 2
    if any(not s.expects_vllm for s in sides):
        runner.error("nox -s ab times two vLLMs: `none` has nothing to time")
    pythons = install.cached_venvs(runner, sides, flavour, root=venv_root)
    for name, python in zip(names, pythons):
        if python is None:
            runner.error(f"{name}: does not install here (pip output above)")
    for python in dict.fromkeys(pythons):
        sessions.print_environment(runner, python)
    pa, pb = pythons
    env = {"SUITE_NOX_SESSION": "bench", "PYTHONHASHSEED": "0", "SUITE_EXPECT_VLLM": "1",
           "SUITE_EXPECT_BACKENDS": sessions.EXPECTED_BACKENDS[flavour]}
    return runner.call([pa, "-m", "reports", "ab", "run", "--a-python", pa, "--b-python", pb,
                        "--a-name", names[0], "--b-name", names[1],
                        f"--device={sessions.device(flavour)}", "--", *posargs[2:]], env=env)


# ----------------------------------------------------------------- python -m reports ab run

def _parser():
    import argparse

    class P(argparse.ArgumentParser):
        def error(self, message):
            raise ABError(f"{self.prog}: {message}")

    p = P(prog="python -m reports ab run", allow_abbrev=False,
          description=__doc__.split("\n\n")[0])
    p.add_argument("--a-python", required=True)
    p.add_argument("--b-python", required=True)
    p.add_argument("--a-name", default="A")
    p.add_argument("--b-name", default="B")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", help="the run's folder (default reports/out/<time>-ab; must not "
                                 "exist or be empty)")
    p.add_argument("--rule", default=None, help="thresholds file (default "
                                                "reports/thresholds.json)")
    p.add_argument("--threshold", type=float)
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m reports ab run ...` (reports/__main__.py hands it here): run, then judge with
    reports/ab.py in this Python. 0 fine, 1 a regression (or acceptance drop) of B, 2 bad input
    or a failed process (one line on stderr; nothing overwritten)."""
    from reports import ab as judging
    from reports.compare import DEFAULT_RULE, Rule, RuleError
    from reports.schema import SchemaError, load_run

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        tail: list[str] = []
        if "--" in argv:
            k = argv.index("--")
            argv, tail = argv[:k], argv[k + 1:]
        a, extra = _parser().parse_known_args(argv)
        args = split_args([*extra, *tail])
        rule = Rule.load(a.rule or DEFAULT_RULE, threshold=a.threshold)
        folder = new_folder(a.out)
        t0 = time.monotonic()
        done = run(Side(a.a_name, a.a_python), Side(a.b_name, a.b_python), pairs=args.pairs,
                   pytest_args=args.rest, folder=folder, device=a.device,
                   slowdown_b=args.slowdown_b, interleave=args.interleave,
                   budget_s=args.budget_s)
        plan = json.loads((folder / PLAN).read_text())
        cmp = judging.judge([(s, load_run(p)) for s, p in done], rule, a=a.a_name, b=a.b_name,
                            sequential=plan["sequential"])
        cmp.notes.append(f"stopped: {plan['stopped']}; {plan['wall_s']['total']:.0f} s")
        md, _ = judging.write_outputs(cmp, folder, extra={"folder": str(folder),
                                                           "wall_s": plan.get("wall_s")})
        judging.print_report(cmp)
        print(f"A/B: {len(done)} processes ({len(done) // 2} pairs) in "
              f"{time.monotonic() - t0:.0f} s; table: {md}")
        return cmp.exit_code
    except (ABError, SchemaError, RuleError, ProcessFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
