"""reports/summary.py: JUnit XML -> Markdown, with figures and clean errors on bad input."""

from __future__ import annotations

import pytest

from reports import summary

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="3">
<testcase classname="suites.moe.test_experts" name="test_matches_oracle[cpu_fused_moe.vec]" time="1.5">
  <properties><property name="worst_max_norm" value="4.8e-03"/><property name="examples" value="25"/></properties>
</testcase>
<testcase classname="suites.moe.test_router" name="test_router_matches_oracle[cpu_router-bfloat16-greedy]" time="0.5">
  <skipped type="pytest.xfail" message="known failure cpu-router-bf16-softmax"/>
</testcase>
<testcase classname="suites.moe.test_experts" name="test_batch_invariance[fused_experts_cpu]" time="0.2">
  <failure message="[batch_invariance] backend=fused_experts_cpu problem: T=3">trace</failure>
</testcase>
</testsuite></testsuites>
"""


def test_summary_table(tmp_path):
    j = tmp_path / "junit.xml"
    j.write_text(JUNIT)
    out = tmp_path / "summary.md"
    assert summary.main([str(j), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| cpu_fused_moe.vec | test_matches_oracle |" in text
    assert "worst_max_norm 0.0048, examples 25" in text
    assert "xfail" in text and "FAILED" in text
    assert "## Failures" in text and "batch_invariance" in text


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
