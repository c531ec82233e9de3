"""suites/moe/routing_choice.py against brute force: every choice the reference router makes on
logits inside the rounding box is declared admissible (soundness), every choice declared
admissible is made by the router on a witness inside the box (exactness), and a token declared
unambiguous is routed the same way all over its box."""

from __future__ import annotations

import itertools

import pytest
import torch

from reference.routing import RouterConfig, route
from suites.moe.routing_choice import admissible, ambiguous, gate_logit_box, ulp

CONFIGS = {
    "softmax-topk": RouterConfig(num_experts=6, num_experts_per_tok=2),
    "gpt-oss": RouterConfig(num_experts=6, num_experts_per_tok=3, topk_method="topk_softmax"),
    "deepseek-v3": RouterConfig(num_experts=8, num_experts_per_tok=2, topk_method="noaux_tc",
                                scoring_func="sigmoid", n_group=4, topk_group=2,
                                routed_scaling_factor=2.5),
    "deepseek-v2": RouterConfig(num_experts=8, num_experts_per_tok=3,
                                topk_method="group_limited_greedy", n_group=4, topk_group=2),
}


def _problem(name: str, T: int = 12, seed: int = 0):
    """Logits crowded near each other (so boxes overlap), a box of a few percent."""
    cfg = CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, cfg.num_experts, generator=g, dtype=torch.float64) * 0.3
    delta = torch.rand(T, cfg.num_experts, generator=g, dtype=torch.float64) * 0.08
    bias = (torch.randn(cfg.num_experts, generator=g, dtype=torch.float64) * 0.05
            if cfg.topk_method == "noaux_tc" else None)
    return cfg, logits, delta, bias


def _sets(ids: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(sorted(r)) for r in ids.tolist()]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_choice_inside_the_box_is_admissible(name):
    cfg, logits, delta, bias = _problem(name)
    g = torch.Generator().manual_seed(1)
    seen = 0
    for _ in range(400):
        # uniform inside the box, and its corners (where choices flip)
        u = torch.rand(logits.shape, generator=g, dtype=torch.float64) * 2 - 1
        u = torch.where(torch.rand(logits.shape, generator=g) < 0.5, u.sign(), u)
        ids = route(logits + u * delta, cfg, bias)[1]
        v = admissible(logits, delta, cfg, ids, bias)
        assert v.admissible.all(), v.reason[v.first_bad()]
        seen += 1
    assert seen


def _witness(cfg, logits, delta, bias, S):
    """Logits inside the box (plus fp32 slack) on which the router should select S: S at the
    top of its box, the rest at the bottom (grouped: the kept groups' other experts as high
    as the weakest of S allows)."""
    lo, hi = logits - delta, logits + delta
    chosen = torch.zeros(logits.shape[0], dtype=torch.bool)
    chosen[list(S)] = True
    w = torch.where(chosen, hi, lo)
    return w


@pytest.mark.parametrize("name", ["softmax-topk", "gpt-oss"])
def test_admissible_choices_are_made_on_a_witness(name):
    """Exactness (non-grouped): a set declared admissible is selected on S-high / rest-low."""
    cfg, logits, delta, bias = _problem(name, T=20)
    K, E = cfg.num_experts_per_tok, cfg.num_experts
    checked = rejected = 0
    for t in range(logits.shape[0]):
        for S in itertools.combinations(range(E), K):
            ids = torch.tensor([S])
            ok = bool(admissible(logits[t : t + 1], delta[t : t + 1], cfg, ids, bias).admissible)
            w = _witness(cfg, logits[t], delta[t], bias, S)
            got = tuple(sorted(route(w[None], cfg, bias)[1][0].tolist()))
            top = w.topk(K).values
            strict = K == E or bool(top[K - 1] > w.topk(K + 1).values[K])
            if ok and strict:
                assert got == S, (t, S, got)
                checked += 1
            if not ok:
                assert got != S
                rejected += 1
    assert checked and rejected


@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-v2"])
def test_grouped_admissibility_matches_enumeration(name):
    """Grouped routers: admissible(S) agrees with a dense search over the box corners and
    midpoints (3^E points on E=8 experts), up to the fp32 slack the check adds."""
    cfg, logits, delta, bias = _problem(name, T=6, seed=3)
    E, K = cfg.num_experts, cfg.num_experts_per_tok
    grid = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=E)), dtype=torch.float64)
    for t in range(logits.shape[0]):
        pts = logits[t] + grid * delta[t]  # [3^E, E]
        reached = set(_sets(route(pts, cfg, bias)[1]))
        for S in reached:  # sound: every reached set is admissible
            v = admissible(logits[t : t + 1], delta[t : t + 1], cfg, torch.tensor([S]), bias)
            assert bool(v.admissible), (t, S, v.reason[0])
        declared = {S for S in itertools.combinations(range(E), K)
                    if bool(admissible(logits[t : t + 1], delta[t : t + 1], cfg,
                                       torch.tensor([S]), bias).admissible)}
        # the box is convex and selection is decided by comparisons of monotone values: the
        # corners and midpoints reach nearly every admissible set; allow a small remainder
        # (sets reachable only off the grid) but never a large one
        assert reached <= declared
        assert len(declared - reached) <= max(1, len(declared) // 4), (declared - reached)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unambiguous_tokens_route_alike_all_over_the_box(name):
    cfg, logits, delta, bias = _problem(name, T=40, seed=5)
    delta = delta / 4  # fewer overlaps: some unambiguous tokens
    amb = ambiguous(logits, delta, cfg, bias)
    assert (~amb).any() and amb.any()
    own = _sets(route(logits, cfg, bias)[1])
    g = torch.Generator().manual_seed(2)
    for _ in range(300):
        u = (torch.rand(logits.shape, generator=g, dtype=torch.float64) * 2 - 1).sign()
        got = _sets(route(logits + u * delta, cfg, bias)[1])
        for t in (~amb).nonzero().flatten().tolist():
            assert got[t] == own[t], (t, own[t], got[t])


def test_gate_box_covers_a_bf16_gate():
    """The box holds what a bf16 linear layer (fp32 accumulate, one rounding) emits, and is
    about half an ulp wide (not an amax over the row)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g).to(torch.bfloat16)
    w = (torch.randn(128, 256, generator=g) * 0.3).to(torch.bfloat16)
    exact, delta = gate_logit_box(x, w, None, torch.bfloat16)
    got = torch.nn.functional.linear(x, w).double()
    assert ((got - exact).abs() <= delta).all()
    half = 0.5 * ulp(exact, torch.bfloat16)
    assert (delta <= 2 * half + 2e-3).all()  # a binade crossing at most doubles the ulp
    assert float((delta / half).median()) < 1.2
    b = (torch.randn(128, generator=g)).to(torch.bfloat16)
    exact_b, delta_b = gate_logit_box(x, w, b, torch.bfloat16)
    two_roundings = (torch.nn.functional.linear(x, w) + b).double()
    assert ((two_roundings - exact_b).abs() <= delta_b).all()


def test_inadmissible_choice_is_explained():
    cfg = CONFIGS["softmax-topk"]
    logits = torch.tensor([[4.0, 3.0, 1.0, 0.5, 0.0, -1.0]], dtype=torch.float64)
    delta = torch.full_like(logits, 0.01)
    v = admissible(logits, delta, cfg, torch.tensor([[0, 2]]))
    assert not bool(v.admissible[0]) and "expert 1 (not chosen)" in v.reason[0]
    v = admissible(logits, delta, cfg, torch.tensor([[0, 0]]))
    assert "distinct" in v.reason[0]
