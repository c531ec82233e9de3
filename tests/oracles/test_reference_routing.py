"""reference/routing.py against closed forms and brute-force enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given

from fixtures.seeds import generator
from fixtures.strategies import router_configs
from reference.routing import (
    RouterConfig,
    route,
    route_grouped_topk,
    route_softmax_topk,
    route_topk_softmax,
    selection_margin,
)


def _logits(T, E, seed="r"):
    return torch.randn(T, E, generator=generator(seed, T, E), dtype=torch.float64)


def test_gpt_oss_softmax_over_topk_equals_renormalized_softmax_topk():
    lg = _logits(50, 32)
    w1, i1 = route_topk_softmax(lg, 4)
    w2, i2 = route_softmax_topk(lg, 4, renormalize=True)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(w1, w2, rtol=1e-14, atol=1e-15)


def test_softmax_topk_without_renorm_is_the_plain_probabilities():
    lg = _logits(20, 16)
    w, ids = route_softmax_topk(lg, 3, renormalize=False)
    torch.testing.assert_close(w, torch.softmax(lg, -1).gather(1, ids), rtol=0, atol=0)
    assert (w.sum(-1) < 1).all()


def test_one_group_equals_plain_topk():
    lg = _logits(30, 24)
    w1, i1 = route_grouped_topk(lg, 5, n_group=1, topk_group=1, renormalize=True)
    w2, i2 = route_softmax_topk(lg, 5, renormalize=True)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(w1, w2, rtol=1e-14, atol=0)


def brute_force_v3(logits, bias, K, n_group, topk_group, scaling):
    """DeepSeek-V3 noaux_tc by enumeration: best group set by summed top-2 biased scores, then
    best K experts inside, weights = unbiased sigmoid renormalized * scaling."""
    E = logits.shape[0]
    per = E // n_group
    s = torch.sigmoid(logits)
    c = s + bias
    gscore = [float(c[g * per:(g + 1) * per].topk(2).values.sum()) for g in range(n_group)]
    best_groups = max(itertools.combinations(range(n_group), topk_group),
                      key=lambda gs: sum(gscore[g] for g in gs))
    cand = [e for g in best_groups for e in range(g * per, (g + 1) * per)]
    chosen = max(itertools.combinations(cand, K), key=lambda es: sum(float(c[e]) for e in es))
    ids = torch.tensor(sorted(chosen))
    w = s[ids] / s[ids].sum() * scaling
    return ids, w


@pytest.mark.parametrize("seed", range(6))
def test_deepseek_v3_routing_matches_enumeration(seed):
    E, K, G, TG = 16, 3, 4, 2
    lg = _logits(4, E, seed)
    bias = torch.randn(E, generator=generator("b", seed), dtype=torch.float64) * 0.1
    cfg = RouterConfig(num_experts=E, num_experts_per_tok=K, topk_method="noaux_tc",
                       scoring_func="sigmoid", n_group=G, topk_group=TG, routed_scaling_factor=2.5)
    w, ids = route(lg, cfg, bias)
    for t in range(lg.shape[0]):
        bf_ids, bf_w = brute_force_v3(lg[t], bias, K, G, TG, 2.5)
        order = torch.argsort(ids[t])
        assert ids[t][order].tolist() == bf_ids.tolist()
        torch.testing.assert_close(w[t][order], bf_w, rtol=1e-13, atol=0)


@given(cfg=router_configs())
def test_router_invariants(cfg):
    """Distinct ids in range; weights positive; renormalized weights sum to the scaling factor;
    grouped routes stay inside topk_group groups."""
    lg = _logits(9, cfg.num_experts, cfg)
    bias = torch.randn(cfg.num_experts, generator=generator("bias", cfg), dtype=torch.float64) * 0.05
    w, ids = route(lg, cfg, bias)
    assert ids.shape == (9, cfg.num_experts_per_tok)
    assert all(len(set(r)) == len(r) for r in ids.tolist())
    assert int(ids.min()) >= 0 and int(ids.max()) < cfg.num_experts
    assert (w > 0).all()
    if cfg.norm_topk_prob or cfg.topk_method == "topk_softmax":
        torch.testing.assert_close(w.sum(-1), torch.full((9,), cfg.routed_scaling_factor,
                                                         dtype=torch.float64), rtol=1e-12, atol=0)
    if cfg.topk_method in ("group_limited_greedy", "noaux_tc"):
        groups = ids // (cfg.num_experts // cfg.n_group)
        assert all(len(set(r)) <= cfg.topk_group for r in groups.tolist())


def test_selection_margin_flags_constructed_near_tie():
    from fixtures.weights import Routing

    cfg = RouterConfig(num_experts=16, num_experts_per_tok=4)
    tied = Routing("near_ties").logits(8, 16, 4, "m").double()
    clear = Routing("tie_free_bf16").logits(8, 16, 4, "m").double()
    assert (selection_margin(tied, cfg) <= 2 * torch.finfo(torch.float32).eps * 8).all()
    assert (selection_margin(clear, cfg) >= 0.125 - 1e-12).all()


@given(cfg=router_configs())
def test_routing_weights_at_the_routers_own_choice_are_its_weights(cfg):
    """routing_weights (the oracle evaluated with a given choice) reproduces route()'s weights
    at route()'s own choice, in any slot order, for every method."""
    from reference.routing import routing_weights

    lg = _logits(9, cfg.num_experts, cfg)
    bias = torch.randn(cfg.num_experts, generator=generator("bias", cfg), dtype=torch.float64) * 0.05
    w, ids = route(lg, cfg, bias)
    perm = torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(routing_weights(lg, cfg, ids[:, perm], bias), w[:, perm],
                               rtol=1e-13, atol=0)


def test_routing_weights_of_another_choice_by_hand():
    """Softmax top-2 renormalized, at the choice {0, 2} instead of the router's {0, 1}."""
    from reference.routing import routing_weights

    lg = torch.tensor([[2.0, 1.0, 0.5, -1.0]], dtype=torch.float64)
    cfg = RouterConfig(num_experts=4, num_experts_per_tok=2)
    e = torch.exp(lg[0])
    want = torch.stack([e[0], e[2]]) / (e[0] + e[2])
    torch.testing.assert_close(routing_weights(lg, cfg, torch.tensor([[0, 2]]))[0], want)
    sig = RouterConfig(num_experts=4, num_experts_per_tok=2, topk_method="noaux_tc",
                       scoring_func="sigmoid", n_group=2, topk_group=1, routed_scaling_factor=2.5,
                       norm_topk_prob=False)
    s = torch.sigmoid(lg[0])
    torch.testing.assert_close(routing_weights(lg, sig, torch.tensor([[1, 0]]))[0],
                               2.5 * torch.stack([s[1], s[0]]))


def test_moe_block_with_its_own_choice_forced_is_unchanged():
    from fixtures.strategies import BlockProblem
    from reference.moe import moe_block

    for family in ("qwen3_next", "deepseek_v3", "gpt_oss"):
        bp = BlockProblem(E=16, K=4, H=64, I=32, Is=32, norm_topk_prob=True, T=7, gate_scale=2.0,
                          seed=3, family=family)
        x, w = bp.tensors()
        out, tw, ids = moe_block(x, bp.cfg, w, router_logits_dtype=torch.bfloat16)
        forced = moe_block(x, bp.cfg, w, router_logits_dtype=torch.bfloat16,
                           topk_ids=ids.flip(1))
        torch.testing.assert_close(forced[0], out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(forced[1], tw.flip(1), rtol=1e-12, atol=0)
