"""vLLM's MTP draft modules (suites/backends/vllm/mtp.py: Qwen3NextMTP, Qwen3_5MoeMTP,
DeepSeekMTP) held to reference/mtp.py in fp64 on hypothesis-drawn shapes (heads and KV heads,
head_dim, experts and top-k of the family's MoE block, vocabularies off vLLM's 64-row padding,
prompts of 1-24 tokens, 1-3 chained draft steps), in float32 (tight: a wiring bug shows even
where it moves the output by a fraction of a percent) and bfloat16 (as the models ship).

What each property catches (tests/negative_controls/test_mtp_negative_controls.py plants each in vLLM's modules):
the two pre-projection norms swapped, the concat order swapped, the position-0 embedding mask
lost (DeepSeek), the pre-norm state fed back where the normed one belongs (and the reverse),
the drafted position not advanced. Every row is compared: the MoE router's own choice inside
the module is observed, held to the choices the oracle could make at its input's rounding, and
the oracle is evaluated with it (suites/mtp/module_checks.py); rows compared / drawn are
recorded and a test under COMPARED_FLOOR fails.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from fixtures.strategies import MTPProblem, mtp_problems
from suites.backends import UnsupportedShape
from suites.moe.checks import COMPARED_FLOOR
from suites.mtp.module_checks import check_mtp_causal_prefix, check_mtp_chain, check_mtp_step

pytestmark = pytest.mark.mtp


def _problem(mtp_backend, p: MTPProblem) -> MTPProblem:
    p = p.for_family(mtp_backend.family)
    try:
        mtp_backend.check(p)
    except UnsupportedShape as e:
        pytest.skip(str(e))
    return p


@given(p=mtp_problems())
def test_one_step_matches_oracle(mtp_backend, p, record):
    """One draft step over a prompt: the fed-back hidden state (the backend's declared
    convention), the logits, and the pre-norm hidden where the module returns it."""
    p = _problem(mtp_backend, p)
    f = check_mtp_step(mtp_backend, p)
    record(family=p.family, feeds_back=mtp_backend.feeds_back)
    record.rows(f.compared, f.drawn, COMPARED_FLOOR)
    record.sum(own_choice=f.own_choice)
    record.max(**{f"max_norm_{p.dtype}": f.max_norm, f"rms_norm_{p.dtype}": f.rms_norm})


@given(p=mtp_problems())
def test_chained_drafts_match_oracle(mtp_backend, p, record):
    """k chained steps, each on the module's own fed-back state: the chain stays on the
    oracle's, and every draft with a clear oracle margin is the oracle's."""
    p = _problem(mtp_backend, p)
    f = check_mtp_chain(mtp_backend, p)
    record.rows(f.compared, f.drawn, COMPARED_FLOOR)
    record.sum(steps=f.steps, chains_stopped_at_near_tie=f.stopped_at_tie,
               drafts_clear=f.drafts_clear, own_choice=f.own_choice)
    record.max(**{f"chain_max_norm_{p.dtype}": f.max_norm})


@given(p=mtp_problems())
def test_causal_prefix_invariance(mtp_backend, p, record):
    """The first half of the rows does not depend on the second half (what the drafter's
    KV cache relies on)."""
    p = _problem(mtp_backend, p)
    worst, compared, drawn = check_mtp_causal_prefix(mtp_backend, p)
    record.max(prefix_max_norm=worst)
    record.rows(compared, drawn, COMPARED_FLOOR)


# The target models' attention layout and expert counts at a CPU-sized hidden size (H 256,
# I 64): Qwen3.5-397B-A17B (32 query / 2 KV heads of 256, 512 experts top-10), Qwen3-Next-80B-
# A3B (16 / 2 of 256, 512 top-10), DeepSeek-V3 (256 experts top-8 in 8 groups, top-4 groups;
# its MLA is substituted, see suites/backends/vllm/mtp.py).
CATALOGUE = {
    "qwen3.5-397b-a17b": dict(family="qwen3_next", heads=32, kv_heads=2, head_dim=256, E=512, K=10),
    "qwen3-next-80b-a3b": dict(family="qwen3_next", heads=16, kv_heads=2, head_dim=256, E=512, K=10),
    "deepseek-v3": dict(family="deepseek_v3", heads=16, kv_heads=16, head_dim=64, E=256, K=8),
}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model", sorted(CATALOGUE))
@pytest.mark.backend_filter(lambda b, params: CATALOGUE[params["model"]]["family"] == b.family,
                            "a catalogue model runs on the modules of its family only")
def test_catalogue_chain_matches_oracle(mtp_backend, model, dtype, record):
    c = CATALOGUE[model]
    p = _problem(mtp_backend, MTPProblem(H=256, I=64, V=513, T=16, k=3, seed=0, dtype=dtype, **c))
    inputs = p.tensors()
    handle = mtp_backend.prepare(p, inputs)
    s = check_mtp_step(mtp_backend, p, inputs, handle)
    f = check_mtp_chain(mtp_backend, p, inputs, handle)
    record(max_norm=s.max_norm, chain_max_norm=f.max_norm, own_choice=s.own_choice,
           drafts_clear=f.drafts_clear)
    record.rows(s.compared + f.compared, s.drawn + f.drawn, COMPARED_FLOOR)
