"""vLLM's engine with tensor, expert and data parallelism on its own distributed executor (issue
12), on the TP=2-capable tiny Qwen3-Next fixture (fixtures/tiny_qwen3_next_tp2: every head and
expert count divides by 2), held to the same fp64 oracle as TP=1:

  greedy output per layout, MTP off and on  == oracle greedy, margin-aware, teacher-forced
  greedy output per layout                  == the same fixture at TP=1 wherever the oracle's
                                               margin is clear (a divergence must be a near-tie)
  spec-decode counters per layout           == the oracle drafter replayed on the streams
  the layout the engine reports             == the one asked for (sizes, expert parallelism,
                                               placement, one worker process per rank)

The bugs that live only here: an expert map off by one shard (tokens get another rank's expert:
large-margin divergences), the MoE output all-reduced twice or not at all (outputs scaled by 2
or missing half the experts), padding slots carrying garbage expert ids, the MTP drafter reading
another shard's hidden state (acceptance off the replay). Layouts: TP=2; TP=2 with EP (linear
and round-robin placement); DP=2 with EP, as vLLM's offline SPMD data parallelism runs it (one
LLM per DP rank, VLLM_DP_* in its environment: LLM(data_parallel_size=2) in one process is
refused by vLLM, "not supported for single-process usage and may hang").

Layouts that vLLM's CPU build gets wrong are in the known-failure ledger (backend vllm.engine,
parameter layout): the root conftest marks their cases strict xfail, so a fixed vLLM shows up
as an unexpected pass.

Each configuration starts an engine with one worker process per rank (~40-60 s on 2 cores):
slow, part of `nox -s cpu`, outside `nox -s tests`.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re

import pytest

from suites.e2e.judge import (
    MARGIN_TOL,
    StreamVerdict,
    acceptance_violations,
    first_divergence,
    fmt_rates,
    judge_stream,
    one_thread,
    replay_acceptance,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FIXTURE_TP2 = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "tiny_qwen3_next_tp2"
MTP_K = 2  # MTP on: two speculative tokens (position 0 and a drafted-from-draft position)
KS = (0, MTP_K)

LAYOUTS = {
    "tp2": dict(tensor_parallel_size=2),
    "tp2-ep": dict(tensor_parallel_size=2, enable_expert_parallel=True),
    "tp2-ep-round_robin": dict(tensor_parallel_size=2, enable_expert_parallel=True,
                               expert_placement_strategy="round_robin"),
    "dp2-ep": dict(data_parallel_size=2, enable_expert_parallel=True),
}


def _kid(k: int) -> str:
    return f"mtp{k}" if k else "nospec"


@functools.cache
def _golden() -> dict:
    path = FIXTURE_TP2 / "golden.json"
    if not path.exists():
        pytest.fail(f"{path} missing: run python -m tools.train_tiny_mtp --fixture tp2")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def oracle_tp2():
    from reference.target_model import TinyQwen3Next

    return TinyQwen3Next.load(FIXTURE_TP2)


@pytest.fixture(scope="module")
def prompts_tp2() -> list[list[int]]:
    return [list(p) for p in _golden()["prompts"]]


@pytest.fixture(scope="module")
def max_tokens_tp2() -> int:
    return int(_golden()["max_tokens"])


_RUNS: dict[tuple, object] = {}

# Lines of an engine's whole log that say how it died (the error quotes only the log's tail,
# which a worker's crash report scrolls out of): segfault reports with their native frames,
# fatal errors, glibc's heap-corruption aborts ("free(): invalid pointer", "corrupted size vs.
# prev_size"), dead workers, the exception lines of tracebacks and their vLLM frames.
CRASH_LINES = re.compile(r"Segfault encountered|Fatal Python error|csrc/\S+\.(?:cpp|h)\b|"
                         r"died unexpectedly|^\w+\(\): .*|^corrupted .*|^double free .*|"
                         r"^\S*(?:Error|Exception)\b.*|"
                         r"File \"\S*/vllm/\S+\", line \d+, in \w+")
LOG_PATH = re.compile(r"\((/\S+\.log)\) ---")


def crash_excerpt(error: str, max_lines: int = 80) -> str:
    """The CRASH_LINES of every engine log the error names (deduplicated, in order)."""
    seen, out = set(), []
    for path in dict.fromkeys(LOG_PATH.findall(error)):
        try:
            text = pathlib.Path(path).read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            body = line.split("] ", 1)[-1].strip() if line.startswith("(") else line.strip()
            if CRASH_LINES.search(body) and body not in seen:
                seen.add(body)
                out.append(body)
    if not out:
        return ""
    return "\n--- crash lines of the whole engine log ---\n" + "\n".join(out[-max_lines:])


def _run(backend, layout: str, k: int, prompts, max_tokens, record):
    """Greedy requests (top-2 logprobs) on one configuration, once per session. An engine that
    fails raises EngineError with its log's tail and the crash lines of the whole log (what the
    known-failure ledger's entries for this backend match); the error is cached too, so each
    test of a broken configuration fails at once with the same error. The model runner that ran
    is recorded and checked (conftest.check_model_runner)."""
    from suites.backends.vllm.engine import EngineConfig, EngineError, EngineRequest
    from suites.e2e.conftest import check_model_runner, skip_if_runner_refused

    key = (backend.name, layout, k)
    if key not in _RUNS:
        cfg = EngineConfig(model=str(FIXTURE_TP2), num_speculative_tokens=k,
                           **LAYOUTS.get(layout, {}))
        try:
            _RUNS[key] = backend.generate(cfg, [EngineRequest(tuple(p), max_tokens, logprobs=2)
                                                for p in prompts])
        except EngineError as e:
            _RUNS[key] = EngineError(str(e) + crash_excerpt(str(e)))
    run = _RUNS[key]
    if isinstance(run, EngineError):
        skip_if_runner_refused(backend, str(run))
        raise EngineError(str(run)) from None
    check_model_runner(backend, run, record)
    return run


@pytest.mark.parametrize("k", KS, ids=_kid)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_greedy_matches_oracle(engine_backend, layout, k, oracle_tp2, prompts_tp2,
                                        max_tokens_tp2, record):
    res = _run(engine_backend, layout, k, prompts_tp2, max_tokens_tp2, record)
    v = StreamVerdict()
    with one_thread():
        for i, (p, c) in enumerate(zip(prompts_tp2, res.completions)):
            assert len(c.token_ids) == max_tokens_tp2, f"prompt {i}: {len(c.token_ids)} tokens"
            judge_stream(oracle_tp2, i, p, c.token_ids, c.logprobs, MARGIN_TOL, v)
    record(layout=layout, engine_layout=json.dumps(res.layout), near_ties=len(v.near_ties),
           divergences=len(v.failures), max_logprob_err=round(v.max_logprob_err, 4),
           engine_start_seconds=round(res.start_seconds, 1), engine_seconds=round(res.seconds, 2))
    report = (f"{layout} {_kid(k)}: {len(v.failures)} divergences beyond margin tolerance "
              f"{MARGIN_TOL}, {len(v.near_ties)} near-ties over {v.positions} tokens; max "
              f"|logprob error| {v.max_logprob_err:.3g}; engine layout {res.layout}")
    print(report)
    assert not v.failures, report + "\n" + "\n".join(map(str, v.failures))
    assert v.max_logprob_err <= MARGIN_TOL, report


@pytest.mark.parametrize("k", KS, ids=_kid)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_equals_tp1(engine_backend, layout, k, oracle_tp2, prompts_tp2, max_tokens_tp2,
                             record):
    par = _run(engine_backend, layout, k, prompts_tp2, max_tokens_tp2, record)
    one = _run(engine_backend, "tp1", k, prompts_tp2, max_tokens_tp2, record)
    failures, near = [], []
    with one_thread():
        for i, (p, a, b) in enumerate(zip(prompts_tp2, one.completions, par.completions)):
            j = first_divergence(a.token_ids, b.token_ids)
            if j is None:
                continue
            tf = oracle_tp2.teacher_forced(p, b.token_ids[: j + 1])
            line = (f"prompt {i} token {j}: TP=1 {a.token_ids[j]}, {layout} {b.token_ids[j]}, "
                    f"oracle {tf.argmax[j]} with margin {tf.margins[j]:.3f}")
            (near if tf.margins[j] <= MARGIN_TOL else failures).append(line)
    record(layout=layout, near_ties=len(near), divergences=len(failures))
    for line in near:
        print(f"near-tie (reported): {line}")
    assert not failures, (f"{layout} {_kid(k)}: greedy output differs from TP=1 where the oracle "
                          "is sure:\n" + "\n".join(failures))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_acceptance_matches_oracle(engine_backend, layout, oracle_tp2, prompts_tp2,
                                            max_tokens_tp2, record):
    k = MTP_K
    res = _run(engine_backend, layout, k, prompts_tp2, max_tokens_tp2, record)
    eng = res.spec
    with one_thread():
        rep = replay_acceptance(oracle_tp2, prompts_tp2, [c.token_ids for c in res.completions],
                                k, max_tokens_tp2, MARGIN_TOL)
    rates = [a / eng.num_drafts if eng.num_drafts else float("nan")
             for a in eng.num_accepted_tokens_per_pos]
    record(layout=layout, engine_per_pos=fmt_rates(rates),
           oracle_per_pos=fmt_rates(rep.stats.per_position_rate),
           uncertain_steps=rep.uncertain_steps)
    bad = acceptance_violations(eng.num_drafts, eng.num_draft_tokens, eng.num_accepted_tokens,
                                eng.num_accepted_tokens_per_pos, rep, k)
    assert not bad, (
        f"{layout} k={k}: spec-decode counters are not what the drafter should give:\n  "
        + "\n  ".join(bad) + f"\nengine per position {eng.num_accepted_tokens_per_pos}, oracle "
        f"replay {rep.stats.num_accepted_tokens_per_pos}; uncertain steps {rep.uncertain_steps}")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_engine_runs_the_layout_asked_for(engine_backend, layout, prompts_tp2, max_tokens_tp2,
                                          record):
    from suites.backends.vllm.engine import EngineConfig

    res = _run(engine_backend, layout, 0, prompts_tp2, max_tokens_tp2, record)
    want = EngineConfig(model=str(FIXTURE_TP2), **LAYOUTS[layout])
    got = res.layout
    record(layout=layout, engine_layout=json.dumps(got))
    assert got.get("tensor_parallel_size") == want.tensor_parallel_size, got
    assert got.get("data_parallel_size") == want.data_parallel_size, got
    assert bool(got.get("enable_expert_parallel")) == want.enable_expert_parallel, got
    if want.enable_expert_parallel:
        assert got.get("expert_placement_strategy") == want.expert_placement_strategy, got
    workers = got.get("workers")
    if isinstance(workers, list) and want.tensor_parallel_size > 1:
        ranks = [w for w in workers if "Worker" in w]
        assert len(ranks) == want.world_size, f"{layout}: worker processes {workers}"
