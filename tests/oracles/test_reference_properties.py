"""The MoE properties hold for the oracle itself (oracle vs oracle, no vLLM needed), and the
oracle's grouped computation equals a per-token brute-force loop."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from fixtures.catalogue import CPU, REAL
from fixtures.strategies import ExpertsProblem, experts_problems
from reference.experts import expert_mlp, fused_experts
from suites.backends import REGISTRY
from suites.moe import checks
from suites.properties import experts as experts_properties

REF = REGISTRY.get("reference.experts")
small = experts_problems(dtypes=("float32", "bfloat16"), alignment=1, activations=("silu", "swigluoai"),
                         bias=True, max_tokens=40, max_experts=16, max_dim_units=2)


@settings(max_examples=15)
@given(p=small)
def test_grouped_oracle_equals_per_token_loop(p):
    t = p.tensors()
    out = fused_experts(t["x"], t["w13"], t["w2"], t["topk_weights"], t["topk_ids"], p.activation,
                        t["w13_bias"], t["w2_bias"])
    loop = torch.zeros_like(out)
    for i in range(p.T):
        for k in range(p.K):
            e = int(t["topk_ids"][i, k])
            b13 = None if t["w13_bias"] is None else t["w13_bias"][e]
            b2 = None if t["w2_bias"] is None else t["w2_bias"][e]
            loop[i] += float(t["topk_weights"][i, k]) * expert_mlp(
                t["x"][i : i + 1], t["w13"][e], t["w2"][e], p.activation, b13, b2)[0]
    torch.testing.assert_close(out, loop, rtol=1e-12, atol=1e-13)


@settings(max_examples=8)
@given(p=small)
def test_oracle_satisfies_the_properties(p):
    experts_properties.invariants(checks.FLOAT_EXPERTS, REF, p, n_shards=3)


def test_expert_map_marks_remote_experts():
    p = ExpertsProblem(T=12, H=32, I=32, E=6, K=2, dtype="float32", routing="uniform", seed=1)
    t = p.tensors()
    m = torch.tensor([-1, -1, -1, 0, 1, 2], dtype=torch.int32)
    part = fused_experts(t["x"], t["w13"][3:], t["w2"][3:], t["topk_weights"], t["topk_ids"],
                         expert_map=m)
    mask = (t["topk_ids"] >= 3).double()
    only_local = fused_experts(t["x"], t["w13"], t["w2"], (t["topk_weights"] * mask).float(),
                               t["topk_ids"])
    torch.testing.assert_close(part, only_local, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", sorted(CPU))
def test_catalogue_variants_are_valid(name):
    cfg = CPU[name]
    assert cfg.router.num_experts == cfg.num_experts  # building it validates E, K, groups
    assert cfg.hidden_size % 32 == 0 and cfg.moe_intermediate_size % 32 == 0
    real = REAL[name.rsplit("-cpu-", 1)[0]]
    if name.endswith("-experts"):
        assert (cfg.num_experts, cfg.num_experts_per_tok) == (real.num_experts, real.num_experts_per_tok)
    else:
        assert (cfg.hidden_size, cfg.moe_intermediate_size) == (real.hidden_size, real.moe_intermediate_size)
