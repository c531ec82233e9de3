"""Shared state of the end-to-end suite: the fp64 oracle of the committed fixture, its greedy
outputs and acceptance on the fixture's held-out prompts, and one engine run per configuration
(MTP off, MTP with k = 1, 2, 3), each made once per session and reused by every test.

Thresholds (MARGIN_TOL, FLOOR_SLACK) are data in suites/e2e/judge.py, with their reasons.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import pytest

from fixtures.seeds import stable_seed
from suites.e2e.judge import one_thread

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "tiny_qwen3_next"
SPEC_KS = (1, 2, 3)
SAMPLED_TOKENS = 24
SAMPLED_SEEDS = 4


@dataclass
class EngineRuns:
    """What one engine configuration produced in this session."""

    greedy: object  # EngineResult of the greedy requests (one per prompt, logprobs top-2)
    sampled: list  # [EngineResult, EngineResult]: the same seeded requests, twice
    sampled_other_seeds: object  # EngineResult: the same prompts with different seeds


def golden() -> dict:
    return json.loads((FIXTURE / "golden.json").read_text())


@pytest.fixture(scope="session")
def fixture_golden() -> dict:
    if not (FIXTURE / "golden.json").exists():
        pytest.fail(f"{FIXTURE}/golden.json missing: run python -m tools.train_tiny_mtp --golden")
    return golden()


@pytest.fixture(scope="session")
def oracle():
    from reference.target_model import TinyQwen3Next

    return TinyQwen3Next.load(FIXTURE)


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


_RUNS: dict[tuple[str, int], EngineRuns] = {}


@pytest.fixture(autouse=True)
def _oracle_single_thread():
    with one_thread():
        yield


def _sampled_requests(prompts, seed_tag: str):
    from suites.backends.vllm.engine import EngineRequest

    return [EngineRequest(tuple(p), SAMPLED_TOKENS, temperature=1.0,
                          seed=stable_seed("e2e-sampling", seed_tag, i), logprobs=None)
            for i, p in enumerate(prompts[:SAMPLED_SEEDS])]


def engine_runs(backend, k: int, prompts, max_tokens) -> EngineRuns:
    """Run every request the suite needs on configuration k once per session; an engine error is
    cached too, so each test of a broken configuration fails with the engine's log at once."""
    from suites.backends.vllm.engine import EngineConfig, EngineError, EngineRequest

    key = (backend.name, k)
    if key not in _RUNS:
        cfg = EngineConfig(model=str(FIXTURE), num_speculative_tokens=k)
        try:
            greedy = backend.generate(cfg, [EngineRequest(tuple(p), max_tokens, logprobs=2)
                                            for p in prompts])
            sampled = [backend.generate(cfg, _sampled_requests(prompts, "a")) for _ in range(2)]
            other = backend.generate(cfg, _sampled_requests(prompts, "b"))
            _RUNS[key] = EngineRuns(greedy, sampled, other)
        except EngineError as e:
            _RUNS[key] = e  # type: ignore[assignment]
    run = _RUNS[key]
    if isinstance(run, Exception):
        pytest.fail(str(run), pytrace=False)
    return run


# Per-position acceptance of the engine next to the oracle's, printed at the end of the run.
ACCEPTANCE_TABLE: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if ACCEPTANCE_TABLE:
        terminalreporter.section("MTP acceptance: vLLM vs fp64 oracle (same prompts)")
        for line in ACCEPTANCE_TABLE:
            terminalreporter.write_line(line)
