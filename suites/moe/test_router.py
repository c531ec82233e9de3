"""Routers vs the fp64 oracle: ids exact except reported near-ties, weights within fp32 bounds
on every token (at a near-tie, the oracle's weights for the router's own choice)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fixtures.strategies import router_problems
from suites.moe import checks

pytestmark = [pytest.mark.moe, pytest.mark.interp_ci]

METHODS = ["greedy", "topk_softmax", "group_limited_greedy", "noaux_tc"]


# "computed": some routed weight is a computed probability; "exact": K = 1 renormalized, the one
# weight is exact in any dtype (a defect in how weights are computed cannot show there, so the
# ledger can name the computed cases alone).
@pytest.mark.backend_filter(lambda b, params: params["method"] in b.topk_methods,
                            "the router implements the method")
@pytest.mark.parametrize("weights", ["computed", "exact"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("logits_dtype", ["float32", "bfloat16"])
@given(data=st.data())
def test_router_matches_oracle(router_backend, method, logits_dtype, weights, data, record):
    rp = data.draw(router_problems(methods=(method,), logits_dtypes=(logits_dtype,),
                                   weights=weights))
    figures = checks.check_router(router_backend, rp)
    record.rows(figures["compared"], figures["tokens"], checks.COMPARED_FLOOR)
    record.sum(tokens=figures["tokens"], near_ties=figures["near_ties"],
               near_tie_candidates=figures["near_tie_candidates"], examples=1,
               renorm_underflow_tokens=figures["renorm_underflow_tokens"],
               known_defect_tokens=figures["known_defect_tokens"])
    record.max(worst_weights_max_norm=figures["weights_max_norm"])
    if figures["known_defect"]:
        record(known_defect=figures["known_defect"])
