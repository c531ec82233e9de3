"""The fixture, the live fp64 oracle and the fixture's golden data belong together: the oracle
measures exactly the acceptance counts tools/train_tiny_mtp.py stored in golden.json. A
drifted oracle, or a regenerated checkpoint without regenerated golden data, shows here rather
than as a puzzling engine failure. No engine needed (runs in `nox -s tests`)."""

from __future__ import annotations

import pytest

from suites.e2e.conftest import SPEC_KS

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("k", SPEC_KS, ids=lambda k: f"mtp{k}")
def test_oracle_reproduces_golden(k, oracle, prompts, max_tokens, oracle_greedy, fixture_golden):
    """The live fp64 oracle measures what the fixture script stored: the fixture, the oracle and
    the golden data belong together (a drifted oracle or a regenerated fixture without golden
    data shows here, not as a mysterious engine failure)."""
    from reference.target_model import speculative_acceptance

    st = speculative_acceptance(oracle, prompts, [g.tokens for g in oracle_greedy], k, max_tokens)
    gold = fixture_golden["by_k"][str(k)]
    assert st.num_drafts == gold["num_drafts"]
    assert st.num_accepted_tokens_per_pos == gold["num_accepted_tokens_per_pos"]
    assert st.num_accepted_tokens == gold["num_accepted_tokens"]
