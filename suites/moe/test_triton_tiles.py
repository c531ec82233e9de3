"""vLLM's Triton MoE kernel at the tile configs it really launches.

vLLM picks a tile config per (E, N, dtype, GPU) from tuned JSON files shipped in
vllm/model_executor/layers/fused_moe/configs/ (else get_default_config). The drawn shapes of
test_experts.py rarely hit a tuned file, so this test draws a tile config from every tuned
file vLLM ships for the emulated GPU (BLOCK_SIZE_M 16..128, BLOCK_SIZE_N 32..256,
BLOCK_SIZE_K 64..256, GROUP_SIZE_M 1..64) and launches the drawn problem with it through vLLM's
own override_config: tiles far larger than the problem (masked N and K tails, the small-batch
EM shortcut when T < BLOCK_SIZE_M, M blocks grouped across experts) must still give the oracle's
answer. Tuned files are for 16-bit activations, so the problems are fp16/bf16.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suites.moe import checks
from suites.properties import experts as experts_properties

pytestmark = [pytest.mark.moe, pytest.mark.interp_ci]


@pytest.mark.backend_filter(lambda b, params: hasattr(b, "tile_config"), "a Triton backend")
@given(data=st.data())
def test_tuned_tile_configs_match_oracle(experts_backend, data, record):
    from suites.backends.vllm.triton_kernels import EMULATED_GPU, tuned_tile_configs

    configs = tuned_tile_configs(None)
    if not configs:
        pytest.skip(f"this vLLM ships no tuned unquantized MoE configs for {EMULATED_GPU}")
    file, m, cfg = data.draw(st.sampled_from(configs), label="tuned config")
    p = data.draw(checks.problems_for(experts_backend, dtypes=("bfloat16", "float16")))
    try:
        with experts_backend.tile_config(cfg):
            c = experts_properties.matches_oracle(checks.FLOAT_EXPERTS, experts_backend, p)
    except AssertionError as e:
        raise AssertionError(f"tile config {cfg} (from {file}, M={m})\n{e}") from None
    record.max(worst_max_norm=c.max_norm)
    record.sum(examples=1)
