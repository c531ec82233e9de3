"""A failure found by a randomized (nightly) run replays from its printed command alone: in
another directory, with no example database, the failing example comes back (issue 14)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLANTED = '''
from hypothesis import given, strategies as st


@given(n=st.integers(0, 10**6), tag=st.sampled_from(["a", "b", "c"]))
def test_planted(n, tag):
    assert n < 400_000 or tag != "b", f"planted failure at n={n}, tag={tag}"


@given(n=st.integers(0, 10))
def test_other(n):
    pass
'''


def _pytest(cwd: Path, storage: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYPOTHESIS_STORAGE_DIRECTORY": str(storage),
           "SUITE_NOX_SESSION": "cpu"}
    env.pop("SUITE_EXPECT_VLLM", None)
    env.pop("HYPOTHESIS_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p",
                           "no:cacheprovider", f"--rootdir={cwd}", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _command(junit: Path) -> str:
    for case in ET.parse(junit).getroot().iter("testcase"):
        for p in case.iter("property"):
            if p.get("name") == "reproduce":
                return p.get("value")
    raise AssertionError(f"no reproduce property in {junit}")


@pytest.fixture
def nightly_failure(tmp_path):
    run = tmp_path / "night"
    run.mkdir()
    (run / "test_planted.py").write_text(PLANTED)
    r = _pytest(run, run / ".hypothesis", "test_planted.py", "--hypothesis-profile=nightly",
                "--hypothesis-seed=12345", f"--junitxml={run / 'junit.xml'}")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    return run, _command(run / "junit.xml"), r.stdout


def test_printed_command_replays_the_example_in_a_clean_directory(tmp_path, nightly_failure):
    _, cmd, stdout = nightly_failure
    assert cmd.startswith("nox -s cpu -- test_planted.py::test_planted ")
    assert "--hypothesis-replay=" in cmd and "Reproduce" in stdout
    failing = next(line for line in stdout.splitlines() if "planted failure at" in line)
    # a fresh directory: the planted file, no .hypothesis/, nothing from the first run
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "test_planted.py").write_text(PLANTED)
    pytest_args = shlex.split(cmd.split(" -- ", 1)[1])
    r = _pytest(fresh, fresh / ".hypothesis-empty", *pytest_args)
    assert r.returncode == 1, r.stdout[-3000:]
    assert failing.strip().split("AssertionError: ")[-1] in r.stdout, (failing, r.stdout[-3000:])
    assert "DidNotReproduce" not in r.stdout


def test_replay_refuses_a_selection_of_several_tests(tmp_path, nightly_failure):
    run, cmd, _ = nightly_failure
    replay = next(a for a in shlex.split(cmd) if a.startswith("--hypothesis-replay="))
    r = _pytest(run, run / ".hypothesis", "test_planted.py", replay)
    assert r.returncode == 4, r.stdout[-2000:] + r.stderr[-2000:]
    assert "--hypothesis-replay needs VERSION:BLOB and exactly one selected property test" in (
        r.stdout + r.stderr)


def test_a_sweeps_replay_names_the_release(tmp_path, monkeypatch):
    """nox -s sweep runs each release in a venv of its own (SUITE_REPLAY_VLLM): a failure's
    command replays it on that release, not on the pin."""
    run = tmp_path / "sweep"
    run.mkdir()
    (run / "test_planted.py").write_text(PLANTED)
    monkeypatch.setenv("SUITE_REPLAY_VLLM", "0.27.0")
    r = _pytest(run, run / ".hypothesis", "test_planted.py", "--hypothesis-profile=nightly",
                "--hypothesis-seed=12345", f"--junitxml={run / 'junit.xml'}")
    assert r.returncode == 1, r.stdout[-3000:]
    assert _command(run / "junit.xml").startswith(
        "VLLM_UNDER_TEST=0.27.0 nox -s cpu -- test_planted.py::test_planted ")
