"""Layer-level expert parallelism: vLLM's MoE blocks (Qwen3NextSparseMoeBlock, DeepseekV2MoE with
a DeepSeek-V3 config) over two expert-parallel ranks in two processes of a real
torch.distributed group (suites/backends/vllm/ep_layer.py), held to the fp64 block with the same
weights (suites/moe/ep_checks.py):

  placement            (b) the expert_map vLLM built on each rank is the placement it documents
                       for the strategy ("linear"; "round_robin" with expert groups, else its
                       fallback to linear), the ranks' experts cover each expert exactly once, and
                       each rank kept exactly its experts' checkpoint weights
  block                (a) the all-reduced output equals the fp64 block, (c) the ranks' routed
                       outputs before the reduction sum to the fp64 routed experts, (e) finite
  remote tokens        (d) a token whose experts all live on other ranks gets exactly 0 from a
                       rank's routed experts (routing forced through the gate, EPProblem)
  redundant experts    the same with EPLB's redundant experts, where vLLM can build them here

The default (ci) cases are one small shape per family and placement (8 experts top-2, H 128,
I 64, T 33): vLLM's import in the two workers dominates (~20 s once per session). The drawn
cases are slow. suites/known_failures.py cpu-ep-experts-ignore-expert-map: on CPU the forward
properties fail (wrong answers, or a refused out-of-bounds forward).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.strategies import EP_ROUTINGS, BlockProblem, EPProblem, ep_problems
from suites.backends import UnsupportedShape
from suites.moe.checks import COMPARED_FLOOR
from suites.moe.ep_checks import check_block, check_placement, check_remote_zero

pytestmark = pytest.mark.moe

PLACEMENTS = ("linear", "round_robin")
REDUNDANT = 2  # redundant experts tried where EPLB constructs (8 + 2 physical over 2 ranks)


def small(backend, placement: str, routing: str, num_redundant_experts: int = 0) -> EPProblem:
    """The CI shape: 8 experts top-2, H 128, I 64, shared 64, 33 tokens."""
    block = BlockProblem(E=8, K=2, H=128, I=64, Is=64, norm_topk_prob=True, T=33,
                         gate_scale=4.0, seed=1, family=backend.family)
    return EPProblem(block=block, placement=placement, routing=routing,
                     num_redundant_experts=num_redundant_experts, ep_size=backend.ep_size)


def _applicable(backend, p: EPProblem) -> None:
    try:
        backend.check(p.cfg)
    except UnsupportedShape as e:
        pytest.skip(str(e))
    if why := backend.redundancy_reason(p.num_redundant_experts):
        pytest.skip(f"{backend.name}: {p.num_redundant_experts} redundant experts: {why}")


def _record(record, figures: dict) -> None:
    if "drawn" in figures:  # rows held to the oracle: a test under the floor has judged nothing
        record.rows(figures.pop("compared"), figures.pop("drawn"), COMPARED_FLOOR)
    for k, v in figures.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            record.max(**{k: v}) if "norm" in k else record.sum(**{k: v})
        else:
            record(**{k: str(v)})


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_ep_placement(ep_block_backend, placement, record):
    """(b) one_rank routing: every expert id stays inside both ranks' local range, so the
    forward runs on every backend (the layout is reported either way)."""
    p = small(ep_block_backend, placement, "one_rank")
    _applicable(ep_block_backend, p)
    _record(record, check_placement(ep_block_backend, p))


@pytest.mark.parametrize("routing", EP_ROUTINGS)
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_ep_block_matches_oracle(ep_block_backend, placement, routing, record):
    """(a), (c), (e) with the block's own router and with routing forced onto one rank's or
    both ranks' experts."""
    p = small(ep_block_backend, placement, routing)
    _applicable(ep_block_backend, p)
    _record(record, check_block(ep_block_backend, p))


@pytest.mark.parametrize("routing", ["one_rank", "split"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_ep_remote_tokens_add_zero(ep_block_backend, placement, routing, record):
    """(d) one_rank: rank 1 holds none of any token's experts; split: each rank holds none of
    half the tokens' experts."""
    p = small(ep_block_backend, placement, routing)
    _applicable(ep_block_backend, p)
    _record(record, check_remote_zero(ep_block_backend, p))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_ep_redundant_experts(ep_block_backend, placement, record):
    """EPLB's redundant experts (8 logical + 2 physical replicas): every logical expert on some
    rank, each replica's weights its logical expert's, and (a), (c), (d), (e) unchanged. vLLM
    0.32 builds EPLB only on CUDA/ROCm/XPU: elsewhere this skips with its error."""
    p = small(ep_block_backend, placement, "split", num_redundant_experts=REDUNDANT)
    _applicable(ep_block_backend, p)
    _record(record, check_placement(ep_block_backend, p))
    _record(record, check_block(ep_block_backend, p))
    _record(record, check_remote_zero(ep_block_backend, p))


def _drawn(data, b) -> EPProblem:
    redundant = (0,) if b.redundancy_reason(REDUNDANT) else (0, REDUNDANT)
    p = data.draw(ep_problems(family=b.family, redundant=redundant, ep_size=b.ep_size),
                  label="problem")
    _applicable(b, p)
    return p


@pytest.mark.slow
@given(data=st.data())
def test_ep_drawn_placement(ep_block_backend, data, record):
    """(b) on drawn problems: E up to 128 (uneven splits where the family allows), both
    placements, redundant experts where EPLB constructs."""
    _record(record, check_placement(ep_block_backend, _drawn(data, ep_block_backend)))


@pytest.mark.slow
@given(data=st.data())
def test_ep_drawn(ep_block_backend, data, record):
    """(a), (c), (d), (e) on drawn problems: E up to 128, K up to 10, both placements, the three
    routings, redundant experts where EPLB constructs."""
    b = ep_block_backend
    p = _drawn(data, b)
    _record(record, check_block(b, p))
    _record(record, check_remote_zero(b, p))
