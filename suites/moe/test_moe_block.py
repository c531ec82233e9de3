"""vLLM's MoE layers as each model family's file builds them (suites/backends/vllm/layer.py:
Qwen3-Next / Qwen3.5, Qwen3-MoE, Mixtral, DeepSeek-V3, gpt-oss), held to the fp64 block of
reference/moe.py on hypothesis-drawn shapes (E up to 512, top-k up to 10, decode and awkward
token counts) made into the backend's family (BlockProblem.for_family) and on the catalogue's
CPU-sized shapes of that family's models.

The kernel tests (test_experts.py, test_router.py) pin each piece; this one catches what only
the composition gets wrong: the shared expert's gate not wired, norm_topk_prob not plumbed from
the config, weights loaded into the wrong slots (tests/negative_controls/test_moe_block_negative_controls.py plants
each). Every row is compared: the block's own routing is observed, its choice must be one the
oracle could make at bf16 router logits, and the output is held to the oracle evaluated with
that choice (check_block_matches_oracle); rows compared / drawn are recorded and a test below
COMPARED_FLOOR fails.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from fixtures.catalogue import get as get_shape
from fixtures.strategies import BlockProblem, block_problems
from suites.backends import UnsupportedShape
from suites.moe.checks import COMPARED_FLOOR, check_block_matches_oracle

pytestmark = pytest.mark.moe


def _run(block_backend, bp, record):
    bp = bp.for_family(block_backend.family)
    try:
        block_backend.check(bp.cfg)
    except UnsupportedShape as e:
        pytest.skip(str(e))
    figures = check_block_matches_oracle(block_backend, bp)
    record(family=bp.family, routing_observed=figures["observed"])
    record.rows(figures["compared"], figures["drawn"], COMPARED_FLOOR)
    record.sum(own_choice=figures["own_choice"])
    if "max_norm" in figures:
        record.max(max_norm=figures["max_norm"], rms_norm=figures["rms_norm"])


@given(bp=block_problems(norm_topk_prob=True))
def test_block_matches_oracle(block_backend, bp, record):
    """norm_topk_prob=True, as Qwen3-Next, Qwen3.5, Qwen3-MoE, Mixtral and DeepSeek-V3 ship."""
    _run(block_backend, bp, record)


@pytest.mark.backend_filter(lambda b, params: getattr(b, "family", "") != "mixtral",
                            "a block that can skip renormalization (Mixtral's always does)")
@given(bp=block_problems(norm_topk_prob=False))
def test_block_without_renormalization(block_backend, bp, record):
    """norm_topk_prob=False (Qwen1.5/2-MoE-style configs): the top-k softmax probabilities are
    used as they are, so the log-normalizer's precision shows in every routed weight. Mixtral
    always renormalizes (its MixtralMoE cannot express it: not collected)."""
    _run(block_backend, bp, record)


# The catalogue's CPU-sized shapes of each family's models ("-experts": the real E and top-k;
# "-dims": the real H and I).
FAMILY_MODELS = {
    "qwen3_next": ("qwen3.5-397b-a17b", "qwen3-next-80b-a3b"),
    "qwen3_moe": ("qwen3-30b-a3b",),
    "mixtral": ("mixtral-8x7b",),
    "deepseek_v3": ("deepseek-v3",),
    "gpt_oss": ("gpt-oss-20b",),
}


def catalogue_problem(shape: str, family: str, tokens: int) -> BlockProblem:
    """The block problem of a catalogue shape; its family config must be the catalogue's."""
    c = get_shape(shape)
    bp = BlockProblem(E=c.num_experts, K=c.num_experts_per_tok, H=c.hidden_size,
                      I=c.moe_intermediate_size, Is=c.shared_expert_intermediate_size,
                      norm_topk_prob=c.norm_topk_prob, T=tokens, gate_scale=4.0, seed=0,
                      family=family)
    fields = ("num_experts_per_tok", "topk_method", "scoring_func", "n_group", "topk_group",
              "routed_scaling_factor", "shared_expert_intermediate_size", "shared_expert_gated",
              "norm_topk_prob")
    differ = {f: (getattr(bp.cfg, f), getattr(c, f)) for f in fields
              if getattr(bp.cfg, f) != getattr(c, f)}
    if differ:
        raise ValueError(f"{shape}: the {family} block problem differs from the catalogue in "
                         f"{differ} (BlockProblem.cfg vs fixtures/catalogue.py)")
    return bp


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cpu-experts", "cpu-dims"])
@pytest.mark.parametrize("tokens", [1, 8, 64])
def test_catalogue_block_matches_oracle(block_backend, variant, tokens, record):
    """Every model of the backend's family at the catalogue's CPU-sized shapes."""
    from fixtures.catalogue import CATALOGUE

    shapes = [f"{m}-{variant}" for m in FAMILY_MODELS[block_backend.family]
              if f"{m}-{variant}" in CATALOGUE]
    if not shapes:
        pytest.skip(f"no {variant} shape of the {block_backend.family} family in the catalogue "
                    "(fixtures/catalogue.py: Mixtral's real I=14336 is too big for CI)")
    for shape in shapes:
        _run(block_backend, catalogue_problem(shape, block_backend.family, tokens), record)
