"""The nightly baseline: a pool of clean runs, and a regressed run never joins it (issue 28).

The nightly GPU workflow compared each run with `previous` and committed it whatever the
verdict: a kernel 4% slower every night is never 5% slower than the night before, and a
regressed run became the next night's baseline. Now it compares with `pool:N` (the last N clean
runs) and files the verdict beside the run (`compare --record-verdict`); a run judged a
regression never enters a pool (reports/history.py).

The nights here are synthetic (reports/synthetic.py, the CI machine's noise model: 5 processes of
10 rounds, a quarter of the processes disturbed), 30 benchmarks, slower code unplanted
(`code_speed`): what a real drift looks like to the history. The workflow's own compare step is
run as written (its shell, with `nox -s compare` replaced by `python -m reports compare`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from reports import history
from reports.__main__ import main
from reports.schema import validate
from reports.synthetic import Noise, benchmark_names, run

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly-gpu.yml"
T0 = _dt.datetime(2026, 1, 1, 2, 30, tzinfo=_dt.timezone.utc)
CLEAN_NIGHTS = 5
N_BENCH = 30


def _steps() -> dict[str, dict]:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gpu-bench"]
    return {s.get("id") or s.get("name"): s for s in job["steps"]}


def _compare_step_script(machine: str, run_file: pathlib.Path) -> str:
    script = _steps()["compare"]["run"]
    assert "python3 -m nox -s compare --" in script
    return (script.replace("${{ steps.bench.outputs.machine }}", machine)
            .replace("${{ steps.bench.outputs.run }}", str(run_file))
            .replace("python3 -m nox -s compare --",
                     f"{sys.executable} -m reports compare --history reports/history"))


def _workflow_compare(cwd: pathlib.Path, machine: str, run_file: pathlib.Path) -> int:
    """The workflow's compare step in `cwd` (its reports/history is the history), as GitHub
    runs a step: bash -e -o pipefail, with the job's env."""
    out = cwd / "reports" / "out" / "nightly"
    if out.exists():
        for f in out.iterdir():  # each night starts from a fresh checkout
            f.unlink()
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "POOL": str(yaml.safe_load(WORKFLOW.read_text())["jobs"]["gpu-bench"]["env"]["POOL"])}
    p = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                        _compare_step_script(machine, run_file)],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stdout[-2000:] + p.stderr[-2000:]
    return p.returncode


def _cli(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue() + err.getvalue()


def _nights(speeds: list[float], seed: int = 0):
    """(raw run, night index) for CLEAN_NIGHTS nights of the old code, then one a speed."""
    rng = np.random.default_rng(seed)
    names = benchmark_names(N_BENCH)
    for i, speed in enumerate([1.0] * CLEAN_NIGHTS + speeds):
        yield run(names=names, rng=rng, noise=Noise(), when=T0 + _dt.timedelta(days=i),
                  code_speed=speed), i


def _regressions(json_file: pathlib.Path) -> int:
    return sum(r["verdict"] == "regression" for r in json.loads(json_file.read_text())["rows"])


def _simulate(tmp_path: pathlib.Path, speeds: list[float], mode: str) -> list[int]:
    """Benchmarks flagged each night after the clean ones. mode: "workflow" (the nightly step:
    pool:N, verdicts filed), "pool-without-verdicts" (pool:N, nothing filed: regressed runs
    join the pool, the old behaviour), "previous"."""
    cwd = tmp_path / mode
    root = cwd / "reports" / "history"
    flagged = []
    for raw, i in _nights(speeds):
        path, created = history.store(validate(raw, f"night{i}"), root)
        assert created
        machine = raw["machine_info"]["machine_id"]
        if i < CLEAN_NIGHTS:
            continue
        out = cwd / "reports" / "out" / "nightly" / "compare.json"
        if mode == "workflow":
            rc = _workflow_compare(cwd, machine, path)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.unlink(missing_ok=True)
            base = f"{machine}:previous" if mode == "previous" else f"{machine}:pool:5"
            rc, text = _cli("compare", base, str(path), "--history", str(root),
                            "--json", str(out), *(["--min-pool", "1"] if "pool" in mode else []))
            assert rc in (0, 1), text
        n = _regressions(out)
        assert (rc == 1) == (n > 0)
        flagged.append(n)
    return flagged


def test_slow_drift_is_flagged_by_the_pool_not_by_previous(tmp_path):
    """4% slower every night for 5 nights. Against `previous` each night is 4% slower than its
    baseline, under the 5% threshold: the drift is never seen (at most the rule's own false
    alarms, a benchmark or two). Against the pool of clean runs the slowdown accumulates and,
    the regressed nights kept out of the pool, most benchmarks are flagged by night 4."""
    drift = [1.04**k for k in range(1, 6)]
    pooled = _simulate(tmp_path, drift, "workflow")
    previous = _simulate(tmp_path, drift, "previous")
    assert pooled[0] == 0  # +4%: under the threshold
    assert pooled[3] > N_BENCH / 2 and pooled[4] > N_BENCH / 2, pooled
    assert max(previous) <= 2 and sum(previous) <= 2, previous
    # the nights judged a regression carry it, and are kept out of the next pools
    root = tmp_path / "workflow" / "reports" / "history"
    machine = history.machines(root)[0]
    files = history.run_files(root, machine)
    judged = [(f.name, history.regressed(f)) for f in files[CLEAN_NIGHTS:]]
    assert [bool(why) for _, why in judged] == [n > 0 for n in pooled], judged
    chosen, _, skipped, _ = history.pool_files(f"{machine}:pool:5", root)
    assert {f.name for f in chosen}.isdisjoint(name for name, why in judged if why)
    assert sum("judged a regression" in s for s in skipped) == sum(n > 0 for n in pooled)


def test_a_regressed_run_never_becomes_the_baseline(tmp_path):
    """A 12% step that stays: with verdicts filed (the workflow) every following night is still
    flagged; without them (regressed runs pooled, as `previous` + commit did) the pool fills with
    the slow runs and by the fourth night the regression is the baseline: nothing flagged."""
    step = [1.12] * 6
    kept_out = _simulate(tmp_path, step, "workflow")
    pooled_in = _simulate(tmp_path, step, "pool-without-verdicts")
    assert min(kept_out) >= N_BENCH / 3, kept_out
    assert pooled_in[0] >= N_BENCH / 3 and max(pooled_in[3:]) <= 1, pooled_in


def test_verdict_file_beside_the_run_and_the_run_untouched(tmp_path):
    root = tmp_path / "h"
    paths = []
    for raw, i in _nights([1.3]):
        paths.append(history.store(validate(raw, f"n{i}"), root)[0])
    before = paths[-1].read_bytes()
    machine = history.machines(root)[0]
    rc, text = _cli("compare", f"{machine}:pool:5", f"{machine}:latest", "--history", str(root),
                    "--record-verdict")
    assert rc == 1 and "verdict filed" in text
    assert paths[-1].read_bytes() == before  # a stored run is never rewritten
    v = json.loads(history.verdict_path(paths[-1]).read_text())
    assert v["judgments"][0]["verdict"] == "regression" and v["accepted"] is None
    assert v["judgments"][0]["baseline_runs"] == [p.name for p in paths[:-1]]
    assert len(history.run_files(root, machine)) == len(paths)  # the verdict is no run file
    # a clean judgment later does not wash the regression out
    history.record_verdict(paths[-1], root, baseline="x", baseline_runs=[], regressions=[],
                           counts={}, threshold=0.05)
    assert history.regressed(paths[-1])
    # a later run's pool skips it, and says why
    raw = list(_nights([1.3]))[-1][0]
    raw["datetime"] = (T0 + _dt.timedelta(days=30)).isoformat()
    later = history.store(validate(raw, "later"), root)[0]
    files, _, skipped, _ = history.pool_files(f"{machine}:pool:5", root,
                                              exclude=validate(raw, "later"))
    assert paths[-1] not in files and later not in files and len(files) == CLEAN_NIGHTS
    assert any(paths[-1].name in s and "judged a regression" in s for s in skipped)


def test_accept_makes_the_run_a_rebaseline(tmp_path):
    root = tmp_path / "h"
    paths = [history.store(validate(raw, f"n{i}"), root)[0] for raw, i in _nights([1.3, 1.3])]
    machine = history.machines(root)[0]
    slow1, slow2 = paths[-2], paths[-1]
    history.record_verdict(slow1, root, baseline="pool:5", baseline_runs=[],
                           regressions=["a"], counts={}, threshold=0.05)
    with pytest.raises(history.HistoryError, match="say why"):
        history.accept(slow1, root, reason=" ")
    with pytest.raises(history.HistoryError, match="no regression judged"):
        history.accept(paths[0], root, reason="meant")
    rc, _ = _cli("accept", str(slow1), "--reason", "fp32 accumulation", "--history", str(root))
    assert rc == 0 and history.regressed(slow1) is None
    # the pool for the run after it starts at it: the runs before measured the old code
    files, _, skipped, _ = history.pool_files(f"{machine}:pool:5", root,
                                              exclude=validate(json.loads(slow2.read_text()),
                                                               "slow2"), min_runs=1)
    assert files == [slow1] and any("accepted rebaseline" in s for s in skipped)
    with pytest.raises(history.HistoryError, match=r"holds 2 clean run\(s\) since the accepted "
                                                   r"rebaseline .* need 5"):
        history.pool_files(f"{machine}:pool:5", root)
    rc, _ = _cli("compare", f"{machine}:pool:5", str(slow2), "--history", str(root),
                 "--min-pool", "1")
    assert rc == 0  # 1.3 against the accepted 1.3: no regression


def test_cli_refusals(tmp_path):
    root = tmp_path / "h"
    paths = [history.store(validate(raw, f"n{i}"), root)[0] for raw, i in _nights([])]
    machine = history.machines(root)[0]
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(paths[-1].read_bytes())
    rc, text = _cli("compare", f"{machine}:previous", str(outside), "--history", str(root),
                    "--record-verdict")
    assert rc == 2 and "not a run stored in" in text
    rc, text = _cli("compare", f"{machine}:previous", f"{machine}:latest", "--history",
                    str(root), "--min-pool", "1")
    assert rc == 2 and "--min-pool applies to a pooled BASE" in text
    rc, text = _cli("compare", f"{machine}:pool:5", f"{machine}:latest", "--history", str(root))
    assert rc == 2 and "holds 4 clean run(s), need 5" in text
    rc, text = _cli("compare", f"{machine}:pool:5", f"{machine}:latest", "--history", str(root),
                    "--min-pool", "6")
    assert rc == 2 and "must lie in [1, 5]" in text


def test_the_nightly_workflow_uses_the_pool_and_files_verdicts():
    steps = _steps()
    compare, report = steps["compare"]["run"], steps["Report (Markdown + HTML with plots)"]["run"]
    assert ":previous" not in compare and ":previous" not in report
    assert re.search(r'"\$machine:pool:\$POOL"', compare) and "--record-verdict" in compare
    assert "pool:$POOL" in report
    commit = next(s for name, s in steps.items() if str(name).startswith("Commit the history"))
    assert "git add reports/history/" in commit["run"]  # the verdict files travel with the runs
