"""End-to-end decode throughput with MTP off and on (k = 1, 2, 3), prefill told apart, with
acceptance figures.

The engine is vLLM's whole `LLM` (suites/backends/vllm/engine.py: a child process per configuration)
serving the committed tiny trained Qwen3-Next fixture (fixtures/tiny_qwen3_next: Gated DeltaNet +
gated attention, 8 experts top-2 + gated shared expert, one trained MTP layer); nothing is
downloaded. On a GPU runner the same fixture runs through vllm.engine.cuda: tokens/s there
measure the engine's overheads (scheduling, drafting, verification) more than its kernels.

A round is two LLM.generate calls on a warm engine with B of the fixture's held-out prompts (32
tokens each), greedy, ignore_eos, each timed with perf_counter inside the engine's process around
generate alone (no IPC): one of 1 new token a request (prefill and the first token) and one of
MAX_TOKENS (prefill and MAX_TOKENS - 1 decode steps), back to back (suites/bench/phases.py).
The timed datum of a round is the decode time, the second minus the first; the durations are
handed to pytest-benchmark through timing.ReplayClock, so the record holds one datum per round.
tokens = B x (MAX_TOKENS - 1) decoded tokens a round; tokens_per_s = decode tokens / median
decode time (prefill excluded: the whole call once stood in for it). extra_info.phases holds
all three: prefill (median seconds, prompt tokens/s), decode, and the whole generate.

Each engine backend asks vLLM for one model runner (vllm.engine / vllm.engine.cuda: V1,
vllm.engine.v2 / vllm.engine.cuda.v2: Model Runner V2); extra_info.model_runner is the runner vLLM
reports it built (suites/backends/vllm/engine.py), and a run that is not the one asked for is not
recorded (suites/e2e/judge.py runner_problems): V1's timings never go into history as V2's.

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

from suites.bench import phases, timing
from suites.bench.conftest import settings_of
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
    s = settings_of(metafunc.config)
    params = [pytest.param((name, k, b), marks=marks,
                           id=f"{name}-tiny-qwen3-next-{_kid(k)}-B{b}-decode")
              for name, marks in backends(metafunc.config, "engine", s.include_reference)
              for k in SPEC_KS  # outer: consecutive cases reuse one engine
              for b in BATCHES]
    metafunc.parametrize("e2e_case", params)


def _prompts() -> list[list[int]]:
    path = FIXTURE / "golden.json"
    if not path.exists():
        pytest.fail(f"{path} missing: run python -m tools.train_tiny_mtp --golden",
                    pytrace=False)
    return [list(p) for p in json.loads(path.read_text())["prompts"]]


def _model_shape() -> dict:
    cfg = json.loads((FIXTURE / "config.json").read_text())
    keys = ("hidden_size", "num_hidden_layers", "num_experts", "num_experts_per_tok",
            "moe_intermediate_size", "vocab_size", "num_nextn_predict_layers")
    return {k: cfg[k] for k in keys if k in cfg}


def test_e2e(benchmark, e2e_case, bench_settings):
    from suites.backends import REGISTRY
    from suites.backends.vllm.engine import (
        EngineConfig,
        EngineError,
        EngineRequest,
        junit_runner,
        runner_refusal,
    )
    from suites.e2e.judge import runner_problems

    if timing.SHARED is not None:
        pytest.skip("an A/B pair in one process (--ab-interleave shared) times run_case "
                    "benchmarks only; the e2e engine benchmark needs two processes "
                    "(--ab-interleave window)")
    name, k, batch = e2e_case
    backend = REGISTRY.get(name)
    prompts = _prompts()
    requests = {n: [EngineRequest(tuple(prompts[i % len(prompts)]), n, logprobs=None)
                    for i in range(batch)] for n in (1, MAX_TOKENS)}
    config = EngineConfig(model=str(FIXTURE), num_speculative_tokens=k)
    benchmark.group = f"e2e tiny-qwen3-next B{batch} decode"

    def generate(which: str):
        return backend.generate(config, requests[1 if which == "first" else MAX_TOKENS])

    def before_round(i: int) -> None:
        if timing.BATON is not None and i % ROUNDS_A_TURN == 0:
            # interleaved A/B (reports/baton.py): take turns every few rounds, as run_case does
            # every ~50 ms of rounds, then one untimed call to warm up again
            timing.BATON.pass_()
            generate("full")

    try:
        warm = [generate(w) for _ in range(WARMUP_CALLS) for w in ("first", "full")]
        start_s = warm[0].start_seconds
        runner = warm[0].model_runner
        wrong = runner_problems(backend.model_runner, runner)
        if wrong:  # before any timing: a fallback's figures are not the runner's asked for
            pytest.fail(f"{name} {config.label}: not timed, this engine cannot be reported as "
                        f"Model Runner {str(backend.model_runner).upper()}: " + "; ".join(wrong),
                        pytrace=False)
        t = max(min(w.seconds for w in warm[1::2]), 1e-6)
        rounds = min(bench_settings.max_rounds,
                     max(MIN_ROUNDS, math.ceil(bench_settings.time_s / t)))
        control = Control()
        control.sample(Control.REPS)
        timed = phases.time_rounds(generate, rounds, before_round=before_round)
        control.sample(Control.REPS)
        decode_s = timed.decode_s()
    except (EngineError, phases.PhaseError) as e:
        refused = runner_refusal(str(e))
        if refused and backend.model_runner:
            pytest.skip(f"{name}: vLLM refuses Model Runner {backend.model_runner.upper()} for "
                        f"this configuration: {refused}")
        pytest.fail(f"{name} {config.label}: {e}", pytrace=False)

    results = timed.full
    for n, rs in ((MAX_TOKENS, timed.full), (1, timed.first)):
        generated = sum(len(c.token_ids) for r in rs for c in r.completions)
        if generated != batch * n * rounds:  # ignore_eos: every request must run to n tokens
            pytest.fail(f"{name} {config.label}: generate(max_tokens={n}) gave {generated} "
                        f"tokens in {rounds} rounds, expected {batch * n} a round", pytrace=False)
    tokens = batch * (MAX_TOKENS - 1)
    CLOCK.load(decode_s)
    benchmark.pedantic(CLOCK.advance, rounds=rounds, iterations=1, warmup_rounds=0)

    median = benchmark.stats.stats.median
    info = {
        "family": "e2e", "backend": name, "device": backend.device, "dtype": config.dtype,
        **junit_runner(runner),  # model_runner (what vLLM built), _requested, _class
        "tokens": tokens, "mtp_k": k, "median_s": median, "tokens_per_s": tokens / median,
        "shape": {"name": "tiny-qwen3-next", "B": batch, "max_tokens": MAX_TOKENS,
                  "prompt_tokens": len(prompts[0]), **_model_shape()},
        "phase": "decode",
        "phases": phases.figures(batch=batch, max_tokens=MAX_TOKENS,
                                 prompt_tokens=len(prompts[0]), first_s=timed.first_s,
                                 full_s=timed.full_s, decode_s=decode_s),
        "engine_start_s": start_s,
        "timing": {"clock": "perf_counter in the engine process around LLM.generate "
                            "(replayed into pytest-benchmark)",
                   "region": {
                       "device": backend.device, "clock": "perf_counter (engine process)",
                       "contains": [f"decode: generate(max_tokens={MAX_TOKENS}) minus "
                                    "generate(max_tokens=1) of the same prompts in the same "
                                    f"round, the {MAX_TOKENS - 1} tokens a request after the "
                                    "first"],
                       "excludes": ["prefill and the first token (timed apart: "
                                    "extra_info.phases.prefill)", "IPC with the engine process",
                                    "engine start-up (engine_start_s)"]},
                   "warmup_calls": 2 * WARMUP_CALLS, "iterations": 1, "rounds": rounds,
                   "redone_rounds": timed.redone,
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
