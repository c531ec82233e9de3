"""Negative controls on the oracle side: drafters with the bugs users meet, planted in the fp64
oracle, must miss the e2e suite's acceptance rule by far more than its tolerance — so the same
bugs inside vLLM's MTP model code would fail suites/e2e/test_tiny_mtp_engine.py.

  swapped concat      fc([rms_h(h), rms_e(e)]) instead of fc([rms_e(e), rms_h(h)])
  skipped hidden norm fc([rms_e(e), h])          (pre_fc_norm_hidden not applied)
  hidden off by one   entry t reads h_{t-1} instead of h_t (hidden states from the wrong position)

Each planted drafter is replayed on the correct oracle's greedy streams (the target is the same,
so the streams are too) and judged with suites.e2e.judge.acceptance_violations against the correct
replay, exactly as the engine's counters are judged.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from reference.target_model import TinyQwen3Next, rms_norm, speculative_acceptance
from suites.e2e.judge import MARGIN_TOL, acceptance_violations, replay_acceptance

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "tiny_qwen3_next"
K = 3
PROMPTS = 4
MAX_TOKENS = 32


class SwappedConcat(TinyQwen3Next):
    def mtp_fc_input(self, emb, hidden, w, c):
        e = rms_norm(emb, w["mtp.pre_fc_norm_embedding.weight"], c.rms_norm_eps)
        h = rms_norm(hidden, w["mtp.pre_fc_norm_hidden.weight"], c.rms_norm_eps)
        return torch.cat([h, e], dim=-1)


class SkippedHiddenNorm(TinyQwen3Next):
    def mtp_fc_input(self, emb, hidden, w, c):
        e = rms_norm(emb, w["mtp.pre_fc_norm_embedding.weight"], c.rms_norm_eps)
        return torch.cat([e, hidden], dim=-1)


class HiddenOffByOne(TinyQwen3Next):
    def mtp_fc_input(self, emb, hidden, w, c):
        shifted = torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], dim=1)
        return super().mtp_fc_input(emb, shifted, w, c)



pytestmark = pytest.mark.usefixtures("oracle_one_thread")

@pytest.fixture(scope="module")
def setup():
    from tools.train_tiny_mtp import eval_prompts

    good = TinyQwen3Next.load(FIXTURE)
    prompts = eval_prompts()[:PROMPTS]
    streams = [good.greedy(p, MAX_TOKENS).tokens for p in prompts]
    return good, prompts, streams, replay_acceptance(good, prompts, streams, K, MAX_TOKENS, MARGIN_TOL)


@pytest.mark.parametrize("bug", [SwappedConcat, SkippedHiddenNorm, HiddenOffByOne],
                         ids=lambda b: b.__name__)
def test_planted_drafter_bug_is_caught(setup, bug):
    good, prompts, streams, ref = setup
    bad = bug(good.w, good.c, good.config)
    got = speculative_acceptance(bad, prompts, [s + good.greedy(p + s, K).tokens
                                                for p, s in zip(prompts, streams)], K, MAX_TOKENS)
    v = acceptance_violations(got.num_drafts, got.num_draft_tokens, got.num_accepted_tokens,
                              got.num_accepted_tokens_per_pos, ref, K)
    assert v, (f"{bug.__name__} not caught: counters {got.num_accepted_tokens_per_pos} over "
               f"{got.num_drafts} drafts vs correct {ref.stats.num_accepted_tokens_per_pos} over "
               f"{ref.stats.num_drafts} (allowance {ref.uncertain_steps})")
    # Caught by a wide berth, not by one count: acceptance at position 0 moves by more than
    # 10 points (and in the direction of a broken drafter).
    assert got.per_position_rate[0] < ref.stats.per_position_rate[0] - 0.10, (
        f"{bug.__name__}: position-0 acceptance {got.per_position_rate[0]:.3f} vs correct "
        f"{ref.stats.per_position_rate[0]:.3f}")


def test_correct_drafter_meets_the_rule(setup):
    """The rule accepts the right drafter replayed independently (guards against a rule that
    flags everything)."""
    good, prompts, streams, ref = setup
    again = TinyQwen3Next.load(FIXTURE)
    got = speculative_acceptance(again, prompts, [s + good.greedy(p + s, K).tokens
                                                  for p, s in zip(prompts, streams)], K, MAX_TOKENS)
    assert not acceptance_violations(got.num_drafts, got.num_draft_tokens, got.num_accepted_tokens,
                                     got.num_accepted_tokens_per_pos, ref, K)
