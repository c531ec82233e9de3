"""Quantized routed experts (fp8 block scales, int8 w8a8 per channel, int4/int8 weight-only
groups) vs the dequantizing fp64 oracle and invariants, per backend.

Every drawn problem has distinct per-expert scales and non-uniform block scales (a spread of
2^+-1.5..3 per scale unit), zero-activation tokens and an exactly-zero weight scale unit, ragged
N against the fp8 block, and tokens at decode and awkward sizes.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from suites.moe import quant_checks as Q

pytestmark = pytest.mark.moe


@given(data=st.data())
def test_matches_oracle(quant_backend, data, record):
    c = Q.check_matches_oracle(quant_backend, data.draw(Q.problems_for(quant_backend)))
    record.max(worst_max_norm=c.max_norm, worst_rms_norm=c.rms_norm)
    record.sum(examples=1)


@given(data=st.data())
def test_token_permutation(quant_backend, data, record):
    p = data.draw(Q.problems_for(quant_backend))
    record.max(worst_abs_diff=Q.check_token_permutation(quant_backend, p))


@given(data=st.data())
def test_batch_invariance(quant_backend, data, record):
    p = data.draw(Q.problems_for(quant_backend))
    record.max(worst_abs_diff=Q.check_batch_invariance(quant_backend, p))


@given(data=st.data(), n_shards=st.sampled_from([2, 3]))
def test_ep_sharding(quant_backend, data, n_shards, record):
    if not quant_backend.supports_expert_map:
        # not a pass: the op cannot be sharded by expert (see suites/moe/test_experts.py)
        pytest.skip(f"{quant_backend.name} takes no expert_map: no expert-parallel mode to "
                    "test at kernel level")
    p = data.draw(Q.problems_for(quant_backend))
    record.max(worst_max_norm=Q.check_ep_sharding(quant_backend, p, n_shards).max_norm)


@given(data=st.data())
def test_saturating_activations(quant_backend, data, record):
    """Activations far outside any fixed range (x ~ 1e3: fp8's 448 and int8's 127 are only
    reachable through the dynamic scale) stay finite and match the oracle. float32 (or bf16,
    which has float32's range, where the kernel is bf16 only): the outputs (quadratic in x
    through the gated activation) would overflow float16."""
    from dataclasses import replace

    wide = "float32" if torch.float32 in quant_backend.dtypes else "bfloat16"
    p = replace(data.draw(Q.problems_for(quant_backend)), x_scale=1e3, dtype=wide)
    c = Q.check_matches_oracle(quant_backend, p)
    record.max(worst_max_norm=c.max_norm)
