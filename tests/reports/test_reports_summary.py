"""reports/summary.py: JUnit XML -> Markdown, with figures and clean errors on bad input."""

from __future__ import annotations

import pytest

from reports import summary

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="9">
<testcase classname="suites.moe.test_experts" name="test_matches_oracle[cpu_fused_moe.vec]" time="1.5">
  <properties><property name="worst_max_norm" value="4.8e-03"/><property name="examples" value="25"/></properties>
</testcase>
<testcase classname="suites.moe.test_router" name="test_router_matches_oracle[cpu_router-bfloat16-greedy]" time="0.5">
  <skipped type="pytest.xfail" message="known failure cpu-router-bf16-softmax"/>
</testcase>
<testcase classname="suites.moe.test_router" name="test_router_matches_oracle[cpu_router-float32-noaux_tc]" time="0.5">
  <properties><property name="known_defect_tokens" value="1"/>
  <property name="known_defect" value="router-sigmoid-renorm-zero-sum-nan"/></properties>
</testcase>
<testcase classname="suites.moe.test_router" name="test_router_matches_oracle[cpu_router-float32-greedy]" time="0.5"/>
<testcase classname="suites.moe.test_experts" name="test_batch_invariance[fused_experts_cpu]" time="0.2">
  <properties><property name="reproduce" value="nox -s cpu -- suites/moe/test_experts.py::test_batch_invariance[fused_experts_cpu] --hypothesis-profile=repro --hypothesis-replay=6.1:AAEC"/></properties>
  <failure message="[batch_invariance] backend=fused_experts_cpu problem: T=3">trace</failure>
</testcase>
<testcase classname="suites.test_known_failures" name="test_cpu_expand[float32]" time="0.1">
  <failure message="[XPASS(strict)] known failure cpu-expand-batch-to-tokens-lost-write">x</failure>
</testcase>
<testcase classname="suites.mtp.test_rejection_batch" name="test_mixed[vllm.rejection_sampler-q-given]" time="0.1">
  <properties><property name="xpassed" value="known failure cpu-expand-batch-to-tokens-lost-write"/></properties>
</testcase>
<testcase classname="suites.moe.test_experts" name="test_matches_oracle[cpu_fused_moe.amx]" time="0.0">
  <skipped type="pytest.skip" message="cpu_fused_moe.amx: no AMX on this CPU"/>
</testcase>
<testcase classname="suites.moe.test_experts" name="test_matches_oracle[fused_experts_cpu]" time="0.0">
  <skipped type="pytest.skip" message="fused_experts_cpu: needs AVX-512"/>
</testcase>
</testsuite></testsuites>
"""


def test_summary_table(tmp_path):
    j = tmp_path / "junit.xml"
    j.write_text(JUNIT)
    out = tmp_path / "summary.md"
    assert summary.main([str(j), "--out", str(out), "--html", str(tmp_path / "s.html")]) == 0
    text = out.read_text()
    # the matrix comes first, worst outcome per cell with its count; backends that only
    # skipped are listed apart with their reason
    assert text.index("## Property x backend") < text.index("## New failures")
    assert ("| property | cpu_fused_moe.vec | cpu_router | fused_experts_cpu | "
            "vllm.rejection_sampler |") in text
    assert "| router_matches_oracle |  | known 2/3 |  |  |" in text
    assert "| batch_invariance |  |  | FAILED 1/1 |  |" in text
    assert "| matches_oracle | passed |  | skipped |  |" in text
    assert "| mixed |  |  |  | XPASS 1/1 |" in text
    # new failures before the ledger sections, each with its replay command
    assert text.index("## New failures") < text.index("## Ledger entries that passed") < \
        text.index("## Known failures")
    assert ("replay: `nox -s cpu -- suites/moe/test_experts.py::test_batch_invariance"
            "[fused_experts_cpu] --hypothesis-profile=repro --hypothesis-replay=6.1:AAEC`") in text
    assert "test_cpu_expand[float32]`: [XPASS(strict)]" in text
    assert "1 token(s) in the region of router-sigmoid-renorm-zero-sum-nan" in text
    assert "- 1 x fused_experts_cpu: needs AVX-512" in text
    assert "Not run here (every case skipped): cpu_fused_moe.amx (no AMX on this CPU)" in text
    assert "Verdict: 1 new failure(s), 2 unexpected pass(es) of ledger entries, 2 known" in text
    assert "worst_max_norm 0.0048, examples 25" in text
    page = (tmp_path / "s.html").read_text()
    assert "<th>cpu_router</th>" in page and "<th>router_matches_oracle</th>" in page and "known 2/3" in page and "--hypothesis-replay" in page


def test_summary_refuses_to_overwrite_and_rejects_corrupt(tmp_path, capsys):
    j = tmp_path / "junit.xml"
    j.write_text(JUNIT)
    out = tmp_path / "summary.md"
    out.write_text("earlier")
    assert summary.main([str(j), "--out", str(out)]) == 2
    assert out.read_text() == "earlier"
    bad = tmp_path / "bad.xml"
    bad.write_text("<testsuites><testcase")
    with pytest.raises(SystemExit, match="cannot read JUnit XML"):
        summary.main([str(bad)])


SHARES = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
<testcase classname="suites.moe.test_moe_block" name="test_block_matches_oracle[vllm.qwen3_next_moe_block]" time="1">
  <properties><property name="compared" value="1908"/><property name="drawn" value="1908"/></properties>
</testcase>
<testcase classname="suites.mtp.test_mtp_modules" name="test_one_step_matches_oracle[vllm.deepseek_mtp]" time="1">
  <properties><property name="compared" value="40"/><property name="drawn" value="80"/></properties>
  <failure message="nothing to judge: 40 of 80 rows drawn were held to the oracle">x</failure>
</testcase>
<testcase classname="suites.moe.test_moe_block" name="test_block_matches_oracle[vllm.mixtral_moe_block]" time="0">
  <skipped type="pytest.skip" message="no"/>
</testcase>
</testsuite></testsuites>
"""


def test_summary_shows_rows_compared_per_backend_and_property(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(SHARES)
    rows = summary.parse(junit)
    shares = summary.compared_shares(rows)
    assert shares == {("vllm.qwen3_next_moe_block", "test_block_matches_oracle"): (1908, 1908),
                      ("vllm.deepseek_mtp", "test_one_step_matches_oracle"): (40, 80)}
    md = summary.render(rows, "junit.xml")
    assert "## Rows held to the oracle" in md
    assert "100.0% (1908/1908)" in md and "50.0% (40/80)" in md
    assert "Rows held to the oracle" in summary.render_html(rows, "junit.xml")


def test_junit_records_the_software_under_test_and_the_summary_says_it(tmp_path):
    """conftest.py writes the installed vLLM / torch versions as JUnit testsuite properties
    (without importing vLLM), so a summary, a sweep matrix or a nightly report says which
    release its results are for."""
    import os
    import pathlib
    import subprocess
    import sys
    from importlib import metadata

    root = pathlib.Path(__file__).resolve().parents[2]
    junit = tmp_path / "junit.xml"
    r = subprocess.run([sys.executable, "-m", "pytest", "tests/reports/test_reports_summary.py",
                        "-k", "rows_compared_per_backend", f"--junitxml={junit}", "-q",
                        "-p", "no:cacheprovider"], cwd=root, capture_output=True, text=True,
                       env={**os.environ, "VLLM_UNDER_TEST": "0.32.0"})
    assert r.returncode == 0, r.stdout[-2000:]
    props = summary.under_test(junit)
    assert props["torch"] == metadata.version("torch")
    assert props["VLLM_UNDER_TEST"] == "0.32.0"
    md = summary.render(summary.parse(junit), str(junit), props)
    assert "Under test: " in md and f"torch {metadata.version('torch')}" in md
    # a file from before: said so, not guessed
    old = tmp_path / "old.xml"
    old.write_text(SHARES)
    assert summary.under_test_line(summary.under_test(old)).startswith("Under test: not recorded")
