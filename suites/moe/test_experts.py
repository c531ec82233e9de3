"""What only the float experts kind has: top-k = E against the dense mixture, and the catalogue's
real shapes. The properties every experts kind shares (oracle, permutation, batch invariance,
relabeling, EP sharding, zero-weight slots, finiteness, refused shapes) are written once in
suites/properties/experts.py and run by suites/properties/test_experts.py.

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
from suites.properties import experts as experts_properties

pytestmark = pytest.mark.moe

DTYPE_NAMES = checks.DTYPE_NAMES
problems = checks.problems_for


@given(data=st.data())
def test_topk_equals_dense(experts_backend, data, record):
    p = data.draw(problems(experts_backend, max_experts=16, max_tokens=64))
    record.max(worst_max_norm=checks.check_topk_equals_dense(experts_backend, p).max_norm)


# Realistic shapes from the catalogue (CPU-sized variants; "-dims" ones keep the real H and I).
CATALOGUE_CASES = [
    pytest.param(name, T, marks=[pytest.mark.slow] if name.endswith("-dims") else [],
                 id=f"{name}-T{T}")
    for name in sorted(CPU) for T in ((7,) if name.endswith("-dims") else (1, 7, 64))
]


def _model_dtype(b) -> str:
    """The models' dtype; fp16 where a backend cannot run bf16 (Triton's interpreter)."""
    return "bfloat16" if torch.bfloat16 in b.dtypes else "float16"


def _takes_model(b, params) -> bool:
    """The backend runs this model's experts by design (activation, biases, alignment)."""
    cfg = CPU[params["model"]]
    try:
        b.check(H=cfg.hidden_size, I=cfg.moe_intermediate_size, E=cfg.num_experts,
                dtype=getattr(torch, _model_dtype(b)), activation=cfg.hidden_act,
                bias=cfg.expert_bias)
    except ValueError:
        return False
    return True


@pytest.mark.backend_filter(_takes_model, "runs the model's experts (activation, biases)")
@pytest.mark.parametrize(("model", "T"), CATALOGUE_CASES)
def test_catalogue_shapes(experts_backend, model, T, record):
    cfg = CPU[model]
    act = cfg.hidden_act
    dtype = _model_dtype(experts_backend)
    p = ExpertsProblem(T=T, H=cfg.hidden_size, I=cfg.moe_intermediate_size, E=cfg.num_experts,
                       K=cfg.num_experts_per_tok, dtype=dtype, routing="uniform", activation=act,
                       bias=cfg.expert_bias, seed=len(model))
    c = experts_properties.matches_oracle(checks.FLOAT_EXPERTS, experts_backend, p)
    record(max_norm=f"{c.max_norm:.3e}")
