"""End-to-end decode throughput with MTP off and on (k = 1, 2, 3), with acceptance figures.

The engine is vLLM's whole `LLM` (suites/backends/engine.py: a child process per configuration)
serving the committed tiny trained Qwen3-Next fixture (fixtures/tiny_qwen3_next: Gated DeltaNet +
gated attention, 8 experts top-2 + gated shared expert, one trained MTP layer); nothing is
downloaded. On a GPU runner the same fixture runs through vllm.engine.cuda: tokens/s there
measure the engine's overheads (scheduling, drafting, verification) more than its kernels.

A round is one LLM.generate call on a warm engine: B of the fixture's held-out prompts (32
tokens each), greedy, MAX_TOKENS new tokens each with ignore_eos, timed with perf_counter inside
the engine's process around generate alone (no IPC); the durations are handed to
pytest-benchmark through timing.ReplayClock, so the record holds one datum per measured round.
tokens = B x MAX_TOKENS generated tokens a round; tokens_per_s = tokens / median round.

Acceptance (k > 0) comes from vLLM's spec-decode counters summed over the timed rounds:
acceptance_per_position[i] = accepted at draft position i / drafts (vLLM's unconditional rate,
reference/acceptance.py), mean_acceptance_length = 1 + accepted / drafts (tokens per
verification step). Greedy decoding makes them the same every round. Performance runs never
assert: correctness of these streams is suites/e2e's job.
"""

from __future__ import annotations

import json
import math
import pathlib

import pytest

from suites.bench import timing
from suites.bench.conftest import settings
from suites.bench.selection import backends
from suites.bench.timing import Control, ReplayClock

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "tiny_qwen3_next"
SPEC_KS = (0, 1, 2, 3)  # 0: MTP off
BATCHES = (1, 8)  # one request (latency-bound decode), the fixture's 8 held-out prompts
MAX_TOKENS = 64
WARMUP_CALLS = 2  # the first calls after start-up pay for graph capture / caches
MIN_ROUNDS = 7  # engine rounds are ~0.1-2 s; 7 keeps a 4-configuration run in minutes
ROUNDS_A_TURN = 2  # generate calls between two baton handovers in an interleaved A/B pair

CLOCK = ReplayClock()
pytestmark = [pytest.mark.bench, pytest.mark.e2e, pytest.mark.mtp,
              pytest.mark.benchmark(timer=CLOCK)]


def _kid(k: int) -> str:
    return f"mtp{k}" if k else "nospec"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "e2e_case" not in metafunc.fixturenames:
        return
    s = settings(metafunc.config)
    params = [pytest.param((name, k, b), marks=marks,
                           id=f"{name}-tiny-qwen3-next-{_kid(k)}-B{b}")
              for name, marks in backends(metafunc.config, "engine", s.include_reference)
              for k in SPEC_KS  # outer: consecutive cases reuse one engine
              for b in BATCHES]
    metafunc.parametrize("e2e_case", params)


def _prompts() -> list[list[int]]:
    path = FIXTURE / "golden.json"
    if not path.exists():
        pytest.fail(f"{path} missing: run python -m fixtures.train_tiny_mtp --golden",
                    pytrace=False)
    return [list(p) for p in json.loads(path.read_text())["prompts"]]


def _model_shape() -> dict:
    cfg = json.loads((FIXTURE / "config.json").read_text())
    keys = ("hidden_size", "num_hidden_layers", "num_experts", "num_experts_per_tok",
            "moe_intermediate_size", "vocab_size", "num_nextn_predict_layers")
    return {k: cfg[k] for k in keys if k in cfg}


def test_e2e(benchmark, e2e_case, bench_settings):
    from suites.backends import REGISTRY
    from suites.backends.engine import EngineConfig, EngineError, EngineRequest

    name, k, batch = e2e_case
    backend = REGISTRY.get(name)
    prompts = _prompts()
    requests = [EngineRequest(tuple(prompts[i % len(prompts)]), MAX_TOKENS, logprobs=None)
                for i in range(batch)]
    config = EngineConfig(model=str(FIXTURE), num_speculative_tokens=k)
    benchmark.group = f"e2e tiny-qwen3-next B{batch}"
    try:
        warm = [backend.generate(config, requests) for _ in range(WARMUP_CALLS)]
        start_s = warm[0].start_seconds
        t = max(min(w.seconds for w in warm), 1e-6)
        rounds = min(bench_settings.max_rounds,
                     max(MIN_ROUNDS, math.ceil(bench_settings.time_s / t)))
        control = Control()
        control.sample(Control.REPS)
        results = []
        for i in range(rounds):
            if timing.BATON is not None and i % ROUNDS_A_TURN == 0:
                # interleaved A/B (reports/baton.py): take turns every few generate calls, as
                # run_case does every ~50 ms of rounds, then one untimed call to warm up again
                timing.BATON.pass_()
                backend.generate(config, requests)
            results.append(backend.generate(config, requests))
        control.sample(Control.REPS)
    except EngineError as e:
        pytest.fail(f"{name} {config.label}: {e}", pytrace=False)

    generated = sum(len(c.token_ids) for r in results for c in r.completions)
    tokens = batch * MAX_TOKENS
    if generated != tokens * rounds:  # ignore_eos: every request must run to MAX_TOKENS
        pytest.fail(f"{name} {config.label}: generated {generated} tokens in {rounds} rounds, "
                    f"expected {tokens} a round", pytrace=False)
    CLOCK.load([r.seconds for r in results])
    benchmark.pedantic(CLOCK.advance, rounds=rounds, iterations=1, warmup_rounds=0)

    median = benchmark.stats.stats.median
    info = {
        "family": "e2e", "backend": name, "device": backend.device, "dtype": config.dtype,
        "tokens": tokens, "mtp_k": k, "median_s": median, "tokens_per_s": tokens / median,
        "shape": {"name": "tiny-qwen3-next", "B": batch, "max_tokens": MAX_TOKENS,
                  "prompt_tokens": len(prompts[0]), **_model_shape()},
        "engine_start_s": start_s,
        "timing": {"clock": "perf_counter in the engine process around LLM.generate "
                            "(replayed into pytest-benchmark)",
                   "warmup_calls": WARMUP_CALLS, "iterations": 1, "rounds": rounds,
                   "engine": "vllm.LLM enforce_eager, prefix caching off, max_num_seqs "
                             f"{config.max_num_seqs}"},
        "control": control.summary(),
    }
    if k:
        drafts = sum(r.spec.num_drafts for r in results)
        accepted = sum(r.spec.num_accepted_tokens for r in results)
        per_pos = [0] * k
        for r in results:
            for i, a in enumerate(r.spec.num_accepted_tokens_per_pos[:k]):
                per_pos[i] += a
        if drafts <= 0:
            pytest.fail(f"{name} {config.label}: MTP k={k} but the engine counted no drafts "
                        "(speculative decoding not active?)", pytrace=False)
        info.update(acceptance_per_position=[a / drafts for a in per_pos],
                    acceptance_rate=accepted / (drafts * k),
                    mean_acceptance_length=1.0 + accepted / drafts,
                    num_drafts=drafts, num_draft_tokens=drafts * k,
                    num_accepted_tokens=accepted)
    benchmark.extra_info.update(info)
