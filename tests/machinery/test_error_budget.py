"""tools/error_budget.py: transformers' blocks get the problem's weights in the right slots
(a misplaced weight would be an O(1) error, far above bf16's), and bad arguments are refused."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from fixtures.strategies import BLOCK_FAMILIES, BlockProblem
from tools import error_budget


@pytest.mark.parametrize("family", BLOCK_FAMILIES)
def test_transformers_block_is_within_bf16_of_the_oracle(family):
    bp = BlockProblem(E=16, K=4, H=64, I=32, Is=32, norm_topk_prob=True, T=9, gate_scale=4.0,
                      seed=5)
    hf, vllm = error_budget.errors(family, bp, None)
    assert vllm is None
    assert 0 < hf["max"] < 2e-2 and hf["rms"] < 6e-3, (family, hf)


def test_problems_are_distinct_and_counted():
    ps = error_budget.problems(8)
    assert len(ps) == 8 and len(set(ps)) == 8


def test_rejects_zero_problems(capsys):
    with pytest.raises(SystemExit) as e:
        error_budget.main(["--problems", "0"])
    assert e.value.code == 2 and "at least 1" in capsys.readouterr().err
