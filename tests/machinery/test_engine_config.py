"""suites/backends/vllm/engine.py EngineConfig: the parallel layouts the e2e suite asks vLLM for
(issue 12) map to vLLM's LLM arguments, get distinct labels (one engine and log per layout), and
impossible layouts are refused with one line before any engine starts. No vLLM needed."""

from __future__ import annotations

import pytest

from suites.backends.vllm.engine import EngineConfig


def test_tp1_asks_for_nothing_parallel():
    kw = EngineConfig(model="/m").llm_kwargs()
    assert not {"tensor_parallel_size", "data_parallel_size", "enable_expert_parallel",
                "distributed_executor_backend"} & set(kw)
    assert EngineConfig(model="/m").layout == "tp1"


@pytest.mark.parametrize("layout, kw, label", [
    ("tp2", dict(tensor_parallel_size=2), "m-nospec-bfloat16-tp2"),
    ("tp2-ep", dict(tensor_parallel_size=2, enable_expert_parallel=True),
     "m-nospec-bfloat16-tp2-ep"),
    ("tp2-ep-round_robin", dict(tensor_parallel_size=2, enable_expert_parallel=True,
                                expert_placement_strategy="round_robin"),
     "m-nospec-bfloat16-tp2-ep-round_robin"),
    ("dp2-ep", dict(data_parallel_size=2, enable_expert_parallel=True),
     "m-nospec-bfloat16-dp2-ep"),
    ("tp2-dp2-ep", dict(tensor_parallel_size=2, data_parallel_size=2,
                        enable_expert_parallel=True), "m-nospec-bfloat16-tp2-dp2-ep"),
])
def test_parallel_layouts_reach_vllm(layout, kw, label):
    cfg = EngineConfig(model="/x/m", **kw)
    assert cfg.layout == layout and cfg.label == label
    llm = cfg.llm_kwargs()  # one LLM per data-parallel rank
    tp = cfg.tensor_parallel_size
    assert llm.get("tensor_parallel_size", 1) == tp
    assert llm.get("distributed_executor_backend") == ("mp" if tp > 1 else None)
    assert "data_parallel_size" not in llm  # vLLM's LLM refuses it in one process
    assert llm.get("enable_expert_parallel", False) == cfg.enable_expert_parallel
    assert llm.get("expert_placement_strategy") == (
        cfg.expert_placement_strategy if cfg.enable_expert_parallel else None)
    assert cfg.world_size == tp * cfg.data_parallel_size
    envs = [cfg.dp_env(r, 29500) for r in range(cfg.data_parallel_size)]
    if cfg.data_parallel_size == 1:
        assert envs == [{}]
    else:  # vLLM's offline SPMD data parallelism: size, rank and one master for all ranks
        assert [e["VLLM_DP_RANK"] for e in envs] == [str(r) for r in range(len(envs))]
        assert {e["VLLM_DP_SIZE"] for e in envs} == {str(cfg.data_parallel_size)}
        assert {(e["VLLM_DP_MASTER_IP"], e["VLLM_DP_MASTER_PORT"]) for e in envs} == {
            ("127.0.0.1", "29500")}


def test_spec_counters_of_data_parallel_ranks_add_up():
    from suites.backends.vllm.engine import _sum_spec

    a = dict(num_drafts=3, num_draft_tokens=6, num_accepted_tokens=4,
             num_accepted_tokens_per_pos=[3, 1])
    b = dict(num_drafts=2, num_draft_tokens=4, num_accepted_tokens=1,
             num_accepted_tokens_per_pos=[1])
    assert _sum_spec([a, b]) == dict(num_drafts=5, num_draft_tokens=10, num_accepted_tokens=5,
                                     num_accepted_tokens_per_pos=[4, 1])
    assert _sum_spec([a]) == a


@pytest.mark.parametrize("kw, message", [
    (dict(tensor_parallel_size=0), "parallel sizes must be >= 1"),
    (dict(enable_expert_parallel=True), "enable_expert_parallel needs"),
    (dict(tensor_parallel_size=2, enable_expert_parallel=True,
          expert_placement_strategy="random"), "vLLM 0.32 offers 'linear' and 'round_robin'"),
])
def test_impossible_layouts_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(model="/m", **kw)
