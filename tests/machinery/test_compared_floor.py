"""A test that compared (almost) nothing has not passed: the Recorder's rows compared / drawn and
the floor check in the root conftest (pytest_runtest_call) turn such a pass into a failure."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

from conftest import compared_shortfall

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_shortfall_rule():
    assert compared_shortfall({"drawn": 100, "compared": 100}, 0.99) is None
    assert compared_shortfall({"drawn": 100, "compared": 99}, 0.99) is None
    assert "98 of 100" in compared_shortfall({"drawn": 100, "compared": 98}, 0.99)
    assert "nothing to judge" in compared_shortfall({"drawn": 16, "compared": 0}, 0.99)
    assert compared_shortfall({"drawn": 0, "compared": 0}, 0.99) is not None  # drew nothing
    assert compared_shortfall({"compared": 3}, 0.99) is None  # no rows recorded: not this rule
    assert compared_shortfall({"drawn": 5, "compared": 0}, None) is None  # no floor set


def test_a_test_that_compared_nothing_fails(tmp_path):
    """Run a generated test file through pytest with this repo's conftest: the body passes,
    its Recorder says 0 of 16 rows were compared, the test must FAIL with the figures; the
    same test comparing every row passes."""
    folder = ROOT / "tests" / f"_generated_floor_{os.getpid()}"
    folder.mkdir()
    try:
        (folder / "test_floor_generated.py").write_text(textwrap.dedent("""
            import pytest

            @pytest.mark.parametrize("compared", [0, 16])
            def test_rows(compared, record):
                record.rows(compared, 16, 0.99)
        """))
        r = subprocess.run([sys.executable, "-m", "pytest", str(folder), "-q", "-p",
                            "no:cacheprovider", "-rf"], cwd=ROOT, capture_output=True,
                           text=True, env={**os.environ, "SUITE_EXPECT_VLLM": "0"}, timeout=300)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "test_rows[0]" in out and "nothing to judge: 0 of 16 rows" in out, out


def test_unobservable_block_at_qwen35_routing_is_judged_by_its_share():
    """Where the choice cannot be observed, ambiguous rows are excluded and counted; the
    count is what the floor judges (a one-token decode problem at 512/10 compares 0 or 1)."""
    from fixtures.strategies import BlockProblem
    from reference.moe import moe_block
    from suites.moe.checks import check_block_matches_oracle

    class Unobservable:
        name = "reference.moe_block(unobservable)"

        def forward(self, cfg, w, x):
            return moe_block(x, cfg, w, router_logits_dtype=x.dtype)[0].to(x.dtype)

    drawn = compared = 0
    for seed in range(12):
        bp = BlockProblem(E=512, K=10, H=64, I=32, Is=32, norm_topk_prob=True, T=4,
                          gate_scale=1.0, seed=seed)
        f = check_block_matches_oracle(Unobservable(), bp)
        assert not f["observed"]
        drawn, compared = drawn + f["drawn"], compared + f["compared"]
    assert drawn == 48 and compared < drawn  # some rows are ambiguous at bf16
    assert compared_shortfall({"drawn": drawn, "compared": compared}, 0.99) is not None
