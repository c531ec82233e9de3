"""Expert kernels vs the fp64 oracle and invariants (DESIGN.md "Properties"), per backend.

Every failure names the backend, the drawn problem (shape, dtype, routing, seed) and the error
figures; the report's "Reproduce" section gives one command that replays it.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fixtures.catalogue import CPU
from fixtures.strategies import ExpertsProblem
from suites.moe import checks

pytestmark = pytest.mark.moe

DTYPE_NAMES = checks.DTYPE_NAMES
problems = checks.problems_for


@given(data=st.data())
def test_matches_oracle(experts_backend, data, record):
    c = checks.check_matches_oracle(experts_backend, data.draw(problems(experts_backend)))
    record.max(worst_max_norm=c.max_norm, worst_rms_norm=c.rms_norm)
    record.sum(examples=1)


@given(data=st.data())
def test_token_permutation(experts_backend, data, record):
    record.max(worst_abs_diff=checks.check_token_permutation(experts_backend, data.draw(problems(experts_backend))))


@given(data=st.data())
def test_batch_invariance(experts_backend, data, record):
    record.max(worst_abs_diff=checks.check_batch_invariance(experts_backend, data.draw(problems(experts_backend))))


@given(data=st.data())
def test_expert_relabeling(experts_backend, data, record):
    record.max(worst_abs_diff=checks.check_expert_relabeling(experts_backend, data.draw(problems(experts_backend))))


@given(data=st.data(), n_shards=st.sampled_from([2, 3, 4]))
def test_ep_sharding(experts_backend, data, n_shards, record):
    if not experts_backend.supports_expert_map:
        # not a pass: the op cannot be sharded by expert; where vLLM shards such an op (its CPU
        # experts layer), suites/moe/test_ep_layer.py runs it and the ledger says what fails
        pytest.skip(f"{experts_backend.name} takes no expert_map: no expert-parallel mode to "
                    "test at kernel level")
    p = data.draw(problems(experts_backend))
    record.max(worst_max_norm=checks.check_ep_sharding(experts_backend, p, n_shards).max_norm)


@given(data=st.data())
def test_topk_equals_dense(experts_backend, data, record):
    p = data.draw(problems(experts_backend, max_experts=16, max_tokens=64))
    record.max(worst_max_norm=checks.check_topk_equals_dense(experts_backend, p).max_norm)


@given(data=st.data())
def test_zero_weight_slots(experts_backend, data, record):
    record.max(worst_abs_diff=checks.check_zero_weight_slots(experts_backend, data.draw(problems(experts_backend))))


@pytest.mark.parametrize("x_scale", [1e-3, 1.0, 30.0])
def test_finite_outputs(experts_backend, x_scale):
    p = ExpertsProblem(T=33, H=64, I=64, E=8, K=2, dtype=DTYPE_NAMES[str(experts_backend.dtypes[0])],
                       routing="hot_expert", seed=11, x_scale=x_scale)
    checks.check_finite(experts_backend, p)


@pytest.mark.parametrize(("H", "I"), [(48, 64), (64, 48), (40, 40)])
def test_refused_shapes_raise_cleanly(experts_backend, H, I, record):
    if experts_backend.alignment == 1:
        pytest.skip(f"{experts_backend.name} accepts any H and I")
    record(refusal=checks.check_refuses_unaligned(experts_backend, H, I))


# Realistic shapes from the catalogue (CPU-sized variants; "-dims" ones keep the real H and I).
CATALOGUE_CASES = [
    pytest.param(name, T, marks=[pytest.mark.slow] if name.endswith("-dims") else [],
                 id=f"{name}-T{T}")
    for name in sorted(CPU) for T in ((7,) if name.endswith("-dims") else (1, 7, 64))
]


@pytest.mark.parametrize(("model", "T"), CATALOGUE_CASES)
def test_catalogue_shapes(experts_backend, model, T, record):
    cfg = CPU[model]
    act = cfg.hidden_act
    # the models' dtype; fp16 where a backend cannot run bf16 (Triton's interpreter)
    dtype = "bfloat16" if torch.bfloat16 in experts_backend.dtypes else "float16"
    try:
        experts_backend.check(H=cfg.hidden_size, I=cfg.moe_intermediate_size, E=cfg.num_experts,
                              dtype=getattr(torch, dtype), activation=act,
                              bias=cfg.expert_bias)
    except ValueError as e:
        pytest.skip(str(e))
    p = ExpertsProblem(T=T, H=cfg.hidden_size, I=cfg.moe_intermediate_size, E=cfg.num_experts,
                       K=cfg.num_experts_per_tok, dtype=dtype, routing="uniform", activation=act,
                       bias=cfg.expert_bias, seed=len(model))
    record(max_norm=f"{checks.check_matches_oracle(experts_backend, p).max_norm:.3e}")
