"""The plain-torch stand-ins for vLLM's CUDA MoE ops (suites/backends/vllm/cuda_op_standins.py),
held to the ops' contracts, with negative controls (a stand-in with a planted bug fails here).

moe_align_block_size is checked by enumeration: every routed slot of a local expert appears
exactly once, in a block of its own expert, in expert order, slots in their original order,
each expert's group padded to a multiple of the block size with the sentinel; remote slots
(expert_map -1) appear nowhere. moe_sum against a float64 sum; the activations (vLLM's own
forward_native fallbacks) against reference/experts.py, written independently.

The alignment and the sum need no vLLM; the activation stand-ins need vLLM's Python files (any
build) and skip without them.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference.experts import gelu_and_mul, silu_and_mul, swiglu_oai
from suites.backends.vllm import cuda_op_standins as S

pytestmark = pytest.mark.interp_ci


def run_align(topk_ids, E, bs, expert_map=None, impl=S.moe_align_block_size):
    """Buffers sized as vllm/.../moe_align_block_size.py sizes them."""
    n = topk_ids.numel()
    max_padded = n + E * (bs - 1)
    if n < E:
        max_padded = min(n * bs, max_padded)
    sorted_ids = torch.full((max_padded,), -7, dtype=torch.int32)
    expert_ids = torch.full(((max_padded + bs - 1) // bs,), -7, dtype=torch.int32)
    ntpp = torch.full((1,), -7, dtype=torch.int32)
    impl(topk_ids, E, bs, sorted_ids, expert_ids, ntpp, expert_map, None)
    return sorted_ids, expert_ids, int(ntpp[0])


def check_alignment(topk_ids, E, bs, expert_map, sorted_ids, expert_ids, total) -> None:
    flat = topk_ids.reshape(-1).tolist()
    n = len(flat)

    def local(e):
        return e if expert_map is None else int(expert_map[e])

    kept = [s for s, e in enumerate(flat) if local(e) >= 0]
    expected_total = 0
    expected_rows: list[int] = []
    expected_blocks: list[int] = []
    for e in range(E):
        slots = [s for s in kept if flat[s] == e]
        if not slots:
            continue
        padded = -(-len(slots) // bs) * bs
        expected_total += padded
        expected_rows += slots + [n] * (padded - len(slots))
        expected_blocks += [local(e)] * (padded // bs)
    ctx = (f"topk_ids={topk_ids.tolist()}, E={E}, block_size={bs}, "
           f"expert_map={None if expert_map is None else expert_map.tolist()}")
    assert total == expected_total, f"num_tokens_post_pad {total} != {expected_total}; {ctx}"
    assert total % bs == 0, f"num_tokens_post_pad {total} not a multiple of {bs}; {ctx}"
    assert sorted_ids[:total].tolist() == expected_rows, (
        f"sorted_token_ids {sorted_ids[:total].tolist()} != {expected_rows}; {ctx}")
    assert expert_ids[: total // bs].tolist() == expected_blocks, (
        f"expert_ids {expert_ids[: total // bs].tolist()} != {expected_blocks}; {ctx}")


@st.composite
def align_problems(draw):
    E = draw(st.integers(1, 12))
    K = draw(st.integers(1, E))
    M = draw(st.integers(1, 40))
    bs = draw(st.sampled_from([1, 2, 4, 16, 64]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(M)]).int()
    expert_map = None
    if draw(st.booleans()):
        owned = torch.rand(E, generator=g) < 0.5
        expert_map = torch.full((E,), -1, dtype=torch.int32)
        expert_map[owned] = torch.arange(int(owned.sum()), dtype=torch.int32)
    return ids, E, bs, expert_map


@given(align_problems())
def test_moe_align_block_size_contract(problem):
    ids, E, bs, expert_map = problem
    sorted_ids, expert_ids, total = run_align(ids, E, bs, expert_map)
    check_alignment(ids, E, bs, expert_map, sorted_ids, expert_ids, total)


def _unpadded(topk_ids, E, bs, sorted_ids, expert_ids, ntpp, expert_map=None, scatter_idx=None):
    """Planted bug: num_tokens_post_pad counts the routed slots, not the padded blocks."""
    S.moe_align_block_size(topk_ids, E, bs, sorted_ids, expert_ids, ntpp, expert_map, scatter_idx)
    ntpp.fill_(int((sorted_ids[: int(ntpp[0])] < topk_ids.numel()).sum()))


def _wrong_local_id(topk_ids, E, bs, sorted_ids, expert_ids, ntpp, expert_map=None,
                    scatter_idx=None):
    """Planted bug: blocks carry the global expert id even under expert parallelism."""
    S.moe_align_block_size(topk_ids, E, bs, sorted_ids, expert_ids, ntpp, None, scatter_idx)
    if expert_map is not None:
        keep = sorted_ids < topk_ids.numel()
        flat = topk_ids.reshape(-1).long()
        remote = torch.zeros_like(keep)
        remote[keep] = expert_map.long()[flat[sorted_ids[keep].long()]] < 0
        sorted_ids[remote] = topk_ids.numel()


@pytest.mark.parametrize("bug", [_unpadded, _wrong_local_id], ids=["unpadded", "global-ids"])
def test_broken_alignment_is_caught(bug):
    ids = torch.tensor([[0, 3], [3, 1], [1, 2], [3, 0], [2, 3]], dtype=torch.int32)
    expert_map = torch.tensor([-1, 0, -1, 1], dtype=torch.int32)
    with pytest.raises(AssertionError):
        check_alignment(ids, 4, 4, expert_map, *run_align(ids, 4, 4, expert_map, impl=bug))


def test_scatter_idx_marks_dropped_slots():
    ids = torch.tensor([[0, 1], [1, 2]], dtype=torch.int32)
    expert_map = torch.tensor([0, -1, 1], dtype=torch.int32)
    sorted_ids = torch.empty(16, dtype=torch.int32)
    expert_ids = torch.empty(4, dtype=torch.int32)
    ntpp = torch.empty(1, dtype=torch.int32)
    scatter = torch.empty(4, 1, dtype=torch.int32)
    S.moe_align_block_size(ids, 3, 4, sorted_ids, expert_ids, ntpp, expert_map, scatter)
    assert scatter.view(-1).tolist() == [0, -1, -1, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K", [1, 2, 5, 10])
def test_moe_sum(dtype, K):
    x = torch.randn(7, K, 33, generator=torch.Generator().manual_seed(K)).to(dtype)
    out = torch.full((7, 33), float("nan"), dtype=dtype)
    S.moe_sum(x, out)
    ref = x.double().sum(1)
    assert torch.isfinite(out).all()
    # one rounding of the output dtype
    assert ((out.double() - ref).abs() <= torch.finfo(dtype).eps * ref.abs() + 1e-30).all()


needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="the activation stand-ins are vLLM's forward_native: "
                                       "vLLM is not installed")


@needs_vllm
@pytest.mark.parametrize(("name", "ref"), [("silu_and_mul", silu_and_mul),
                                           ("gelu_and_mul", gelu_and_mul),
                                           ("swigluoai_and_mul", swiglu_oai)])
def test_activation_standins_match_reference(name, ref):
    x = torch.randn(9, 2 * 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[0, :4] = torch.tensor([-20.0, 20.0, 9.0, -9.0], dtype=torch.float64)  # swiglu clamps
    out = torch.full((9, 24), float("nan"), dtype=torch.float64)
    S.implementation("_C", name)(out, x)
    torch.testing.assert_close(out, ref(x), rtol=1e-12, atol=1e-12)


@pytest.mark.interpreter  # stand-ins are installed only under it (nox -s triton_interpret)
def test_install_registers_only_missing_ops():
    """install() never shadows a real op: each stand-in is registered only where torch has no op
    of that name, and registering twice is a no-op."""
    first = S.install()
    assert S.install() == first
    for qual in first:
        ns, name = qual.split("::")
        assert S._has_op(ns, name)
