"""The fp64 target oracle of the tiny fixture (reference/target_model.py) against independent
implementations, and the bookkeeping of its speculative replay against reference/speculative.py
and reference/acceptance.py.

  whole model      transformers' Qwen3NextForCausalLM loads the committed checkpoint itself (its
                   own name conversion, pure-torch Gated DeltaNet) -> same logits
  MoE blocks       every transformers Qwen3NextSparseMoeBlock of the fixture == reference/moe.py
                   on the oracle's stacked expert weights, on the very inputs the block saw
  greedy           the oracle's speculative shortcut == naive token-by-token argmax
  acceptance       the replay's counters == greedy_verify rows fed to acceptance_stats
"""

from __future__ import annotations

import pathlib

import pytest
import torch

from reference.moe import MoEWeights, moe_block
from suites.compare import assert_close
from suites.tolerances import Tolerance

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "tiny_qwen3_next"
# transformers runs its norms, rotary, attention softmax, delta rule and router in float32
# even in a float64 model; the oracle is float64 throughout.
TOL_FP32_INTERNALS = Tolerance(rtol=1e-5, atol=1e-6, max_norm=2e-5, rms_norm=5e-6,
                               reason="transformers computes norms/rotary/delta rule in float32")
TOL_FP32_ROUTER = Tolerance(rtol=1e-5, atol=1e-7, max_norm=1e-6, rms_norm=1e-7,
                            reason="transformers computes router probabilities in float32")



pytestmark = pytest.mark.usefixtures("oracle_one_thread")

@pytest.fixture(scope="module")
def oracle():
    from reference.target_model import TinyQwen3Next

    return TinyQwen3Next.load(FIXTURE)


@pytest.fixture(scope="module")
def prompt():
    from fixtures.train_tiny_mtp import eval_prompts

    return eval_prompts(1)[0]


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen3NextForCausalLM.from_pretrained(FIXTURE, **_hf_kwargs()).eval()


def _hf_kwargs() -> dict:
    """float64; transformers 5 fuses experts and would call torch's grouped_mm, which has no
    float64 kernel: ask for its eager expert loop."""
    import transformers

    kw: dict = {"dtype": torch.float64}
    if int(transformers.__version__.split(".")[0]) >= 5:
        kw["experts_implementation"] = "eager"
    return kw


def test_target_logits_match_transformers(oracle, hf_model, prompt):
    ids = prompt + [int(t) for t in torch.arange(100, 124)]
    with torch.no_grad():
        out_hf = hf_model(torch.tensor([ids])).logits[0]
    ref = oracle.logits(oracle.hidden(ids))
    assert_close(out_hf, ref, TOL_FP32_INTERNALS, "transformers Qwen3NextForCausalLM vs oracle",
                 what="logits")


def test_moe_blocks_match_reference_moe(oracle, hf_model, prompt):
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [layer.mlp.register_forward_hook(
        lambda mod, args, out, i=i: seen.__setitem__(i, (args[0].detach(), out.detach())))
        for i, layer in enumerate(hf_model.model.layers)]
    try:
        with torch.no_grad():
            hf_model(torch.tensor([prompt]))
    finally:
        for h in hooks:
            h.remove()
    assert sorted(seen) == list(range(oracle.c.num_hidden_layers))
    w = oracle.w
    for i, (x, out_hf) in seen.items():
        p = f"model.layers.{i}.mlp."
        mw = MoEWeights(gate=w[p + "gate.weight"], w13=w[p + "experts.w13"], w2=w[p + "experts.w2"],
                        shared_w13=torch.cat([w[p + "shared_expert.gate_proj.weight"],
                                              w[p + "shared_expert.up_proj.weight"]]),
                        shared_w2=w[p + "shared_expert.down_proj.weight"],
                        shared_expert_gate=w[p + "shared_expert_gate.weight"])
        ref, _, _ = moe_block(x.reshape(-1, x.shape[-1]), oracle.c.moe, mw)
        assert_close(out_hf.reshape(ref.shape), ref, TOL_FP32_ROUTER,
                     f"layer {i}: transformers Qwen3NextSparseMoeBlock vs reference.moe_block")


def test_greedy_shortcut_equals_naive_greedy(oracle, prompt):
    n = 12
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(oracle.logits(oracle.hidden(seq)[-1]).argmax()))
    g = oracle.greedy(prompt, n)
    assert g.tokens == seq[len(prompt):]
    assert len(g.margins) == n and min(g.margins) >= 0


def test_replay_counters_equal_greedy_verify_rows(oracle, prompt):
    from reference.acceptance import acceptance_stats
    from reference.speculative import greedy_verify
    from reference.target_model import acceptance_from_traces, speculative_trace

    k, max_tokens = 3, 20
    stream = oracle.greedy(prompt, max_tokens + k).tokens
    tr = speculative_trace(oracle, prompt, stream, k, max_tokens)
    seq = list(prompt) + stream
    rows, last = [], len(prompt)
    for drafts in tr.drafts:
        target = seq[last + 1:last + 1 + k]  # greedy target choice after each draft position
        bonus = seq[last + 1 + k]
        rows.append(greedy_verify(drafts, target, bonus, k + 1))
        emitted = sum(t != -1 for t in rows[-1])
        last += emitted
    assert emitted and last - len(prompt) + 1 >= max_tokens
    ref = acceptance_stats(torch.tensor(rows), [k] * len(rows))
    got = acceptance_from_traces([tr], k)
    assert (got.num_drafts, got.num_draft_tokens, got.num_accepted_tokens,
            got.num_accepted_tokens_per_pos) == (ref.num_drafts, ref.num_draft_tokens,
                                                 ref.num_accepted_tokens,
                                                 ref.num_accepted_tokens_per_pos)


def test_qwen3_5_twin_matches_oracle(oracle, prompt):
    """The Qwen3.5-layout twin (fixtures/tiny_qwen3_5: split, non-interleaved Gated DeltaNet
    projections) is the same network: transformers' Qwen3_5MoeForCausalLM loads it and gives the
    oracle's logits of the Qwen3-Next fixture."""
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "Qwen3_5MoeForCausalLM", None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no Qwen3_5MoeForCausalLM")
    twin = cls.from_pretrained(FIXTURE.parent / "tiny_qwen3_5", **_hf_kwargs()).eval()
    ids = prompt + [int(t) for t in torch.arange(200, 216)]
    with torch.no_grad():
        out_hf = twin(torch.tensor([ids])).logits[0]
    assert_close(out_hf, oracle.logits(oracle.hidden(ids)), TOL_FP32_INTERNALS,
                 "transformers Qwen3_5MoeForCausalLM on tiny_qwen3_5 vs oracle of tiny_qwen3_next",
                 what="logits")
