"""Negative controls for the parallel end-to-end suite (suites/e2e/test_parallel_engine.py): the
bugs that live only in tensor/expert-parallel serving, planted in the fp64 oracle of the TP=2
fixture, must fail the suite's own judgement (suites.e2e.judge.judge_stream, margin-aware and
teacher-forced against the correct oracle) -- so the same bugs inside vLLM's distributed MoE
would fail the engine tests.

  reduced twice      the MoE block's output all-reduced twice over 2 ranks: x2
  not reduced        rank 0's view only: the routed experts of EP rank 1 (4..7, linear
                     placement) and the second half of the TP-sliced shared expert missing
  expert map shifted every expert computed with the weights of the expert one shard over
                     (e -> (e + E/2) mod E), the routing itself right

Each planted oracle generates greedy streams; the correct oracle must find divergences beyond
the margin tolerance, or log-probabilities off by more than it, in every case.
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from reference.target_model import TinyQwen3Next, sparse_moe_fp64, target_hidden
from suites.e2e.judge import MARGIN_TOL, StreamVerdict, judge_stream, one_thread

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "tiny_qwen3_next_tp2"
PROMPTS = 3
TOKENS = 16


def _planted_moe(kind: str):
    def moe(x, w, p, c):
        if kind == "reduced_twice":
            return 2 * sparse_moe_fp64(x, w, p, c)
        E = c.num_experts
        v = dict(w)
        if kind == "expert_map_shifted":
            v[p + "experts.w13"] = torch.roll(w[p + "experts.w13"], E // 2, dims=0)
            v[p + "experts.w2"] = torch.roll(w[p + "experts.w2"], E // 2, dims=0)
        elif kind == "not_reduced":
            w2 = w[p + "experts.w2"].clone()
            w2[E // 2:] = 0  # rank 1's experts under linear placement
            v[p + "experts.w2"] = w2
            down = w[p + "shared_expert.down_proj.weight"].clone()
            down[:, down.shape[1] // 2:] = 0  # rank 1's half of the shared expert's columns
            v[p + "shared_expert.down_proj.weight"] = down
        else:
            raise KeyError(kind)
        return sparse_moe_fp64(x, v, p, c)

    return moe


class Planted(TinyQwen3Next):
    kind: str = ""

    def hidden(self, ids):
        return target_hidden(torch.tensor([ids]), self.w, self.c, moe=_planted_moe(self.kind))[0]


@pytest.fixture(scope="module")
def oracle():
    return TinyQwen3Next.load(FIXTURE)


@pytest.fixture(scope="module")
def prompts():
    import json

    return json.loads((FIXTURE / "golden.json").read_text())["prompts"][:PROMPTS]


@pytest.mark.parametrize("kind", ["reduced_twice", "not_reduced", "expert_map_shifted"])
def test_planted_parallel_bug_fails_the_judgement(kind, oracle, prompts):
    bad = Planted(oracle.w, oracle.c, oracle.config)
    bad.kind = kind
    v = StreamVerdict()
    with one_thread():
        for i, p in enumerate(prompts):
            tokens = bad.greedy(list(p), TOKENS).tokens
            # what the engine reports: its own token's log-probability under the planted model
            tf = bad.teacher_forced(list(p), tokens)
            logprobs = [{t: lp} for t, lp in zip(tokens, tf.logprob)]
            judge_stream(oracle, i, list(p), tokens, logprobs, MARGIN_TOL, v)
    caught = bool(v.failures) or v.max_logprob_err > MARGIN_TOL
    assert caught, (f"{kind}: {len(v.failures)} divergences beyond {MARGIN_TOL}, max |logprob "
                    f"error| {v.max_logprob_err:.3g}: the parallel suite would pass this bug")


def test_correct_oracle_passes_its_own_judgement(oracle, prompts):
    """The control of the controls: the same procedure with nothing planted finds nothing."""
    v = StreamVerdict()
    with one_thread():
        for i, p in enumerate(prompts[:1]):
            tokens = oracle.greedy(list(p), TOKENS).tokens
            tf = oracle.teacher_forced(list(p), tokens)
            judge_stream(oracle, i, list(p), tokens, [{t: lp} for t, lp in zip(tokens, tf.logprob)],
                         MARGIN_TOL, v)
    assert not v.failures and v.max_logprob_err < 1e-9
