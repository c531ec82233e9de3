"""vLLM's engine end to end on the committed tiny Qwen3-Next fixture (hybrid Gated DeltaNet +
gated attention, sparse MoE with sigmoid-gated shared expert, trained MTP head) and on its
Qwen3.5-layout twin (Qwen3_5MoeForCausalLM + Qwen3_5MoeMTP: vLLM's qwen3_5.py and
qwen3_5_mtp.py), each held to the fp64 oracle of reference/target_model.py read from its own
files (suites/e2e/conftest.py E2E_FIXTURES).

  greedy output, MTP off and MTP k = 1, 2, 3   == oracle greedy, margin-aware, teacher-forced
  greedy output, MTP on                        == MTP off (first divergence must be a near-tie)
  spec-decode counters (drafts, per position)  == the oracle drafter replayed on the engine's
                                                  streams (exact, unless drafter near-ties)
  per-position acceptance                      >= the fixture's golden curve (golden.json;
                                                  test_golden.py checks the oracle still
                                                  measures it)
  seeded random sampling                       identical run to run; other seeds differ

What the engine gets wrong shows as: a MoE/attention/DeltaNet bug -> greedy divergences with
large oracle margins and large log-probability errors; MTP weights loaded wrongly, hidden states
taken from the wrong layer or position, a swapped fc concat or a skipped pre-fc norm -> counters
off the replay and below the golden curve (tests/negative_controls/test_mtp_drafter_negative_controls.py shows
the oracle drafter with those bugs planted misses the replay by far more than the tolerance).
"""

from __future__ import annotations

import pytest

from suites.e2e.conftest import ACCEPTANCE_TABLE, SPEC_KS, engine_runs
from suites.e2e.judge import (
    FLOOR_SLACK,
    MARGIN_TOL,
    StreamVerdict,
    acceptance_violations,
    first_divergence,
    fmt_rates,
    judge_stream,
    replay_acceptance,
)

# Each engine configuration starts in ~20-40 s on 2 cores: slow, outside `nox -s tests`.
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ALL_KS = (0, *SPEC_KS)


def _kid(k: int) -> str:
    return f"mtp{k}" if k else "nospec"


@pytest.mark.parametrize("k", ALL_KS, ids=_kid)
def test_greedy_matches_oracle(engine_backend, model, k, oracle, prompts, max_tokens, record):
    runs = engine_runs(engine_backend, k, prompts, max_tokens, model, record=record)
    v = StreamVerdict()
    for i, (p, c) in enumerate(zip(prompts, runs.greedy.completions)):
        assert len(c.token_ids) == max_tokens, f"prompt {i}: {len(c.token_ids)} tokens"
        judge_stream(oracle, i, p, c.token_ids, c.logprobs, MARGIN_TOL, v)
    record(near_ties=len(v.near_ties), divergences=len(v.failures),
           max_logprob_err=round(v.max_logprob_err, 4), min_oracle_margin=round(v.min_margin, 4),
           engine_seconds=round(runs.greedy.seconds, 2),
           engine_start_seconds=round(runs.greedy.start_seconds, 1))
    report = (f"{_kid(k)}: {len(v.failures)} divergences beyond margin tolerance {MARGIN_TOL}, "
              f"{len(v.near_ties)} near-ties over {v.positions} tokens; max |logprob error| "
              f"{v.max_logprob_err:.3g}")
    print(report)
    for d in v.near_ties:
        print(f"near-tie (reported): {d}")
    assert not v.failures, report + "\n" + "\n".join(map(str, v.failures))
    # Argmax agreement alone would let a small numeric bug through; the engine's log-probability
    # of each token it chose must match the oracle's within the same tolerance.
    assert v.max_logprob_err <= MARGIN_TOL, report


@pytest.mark.parametrize("k", SPEC_KS, ids=_kid)
def test_mtp_on_equals_mtp_off(engine_backend, model, k, oracle, prompts, max_tokens, record):
    off = engine_runs(engine_backend, 0, prompts, max_tokens, model, record=record)
    on = engine_runs(engine_backend, k, prompts, max_tokens, model, record=record)
    failures, near = [], []
    for i, (p, a, b) in enumerate(zip(prompts, off.greedy.completions, on.greedy.completions)):
        j = first_divergence(a.token_ids, b.token_ids)
        if j is None:
            continue
        tf = oracle.teacher_forced(p, b.token_ids[: j + 1])  # common prefix, then position j
        line = (f"prompt {i} token {j}: MTP off {a.token_ids[j]}, MTP k={k} {b.token_ids[j]}, "
                f"oracle {tf.argmax[j]} with margin {tf.margins[j]:.3f}")
        (near if tf.margins[j] <= MARGIN_TOL else failures).append(line)
    record(near_ties=len(near), divergences=len(failures))
    for line in near:
        print(f"near-tie (reported; the streams are judged on their own by "
              f"test_greedy_matches_oracle): {line}")
    assert not failures, "greedy output changes when speculation is on:\n" + "\n".join(failures)


@pytest.mark.parametrize("k", SPEC_KS, ids=_kid)
def test_acceptance_matches_oracle(engine_backend, model, k, oracle, prompts, max_tokens,
                                   oracle_greedy, fixture_golden, record):
    from reference.target_model import speculative_acceptance

    runs = engine_runs(engine_backend, k, prompts, max_tokens, model, record=record)
    eng = runs.greedy.spec
    rep = replay_acceptance(oracle, prompts, [c.token_ids for c in runs.greedy.completions],
                            k, max_tokens, MARGIN_TOL)
    ref = rep.stats
    own = speculative_acceptance(oracle, prompts, [g.tokens for g in oracle_greedy], k, max_tokens)
    eng_rates = [a / eng.num_drafts if eng.num_drafts else float("nan")
                 for a in eng.num_accepted_tokens_per_pos]
    eng_mal = 1 + eng.num_accepted_tokens / eng.num_drafts if eng.num_drafts else float("nan")
    ACCEPTANCE_TABLE.append(
        f"{model} k={k}  vLLM {fmt_rates(eng_rates)} MAL {eng_mal:.3f} ({eng.num_drafts} drafts) | "
        f"oracle on vLLM's streams {fmt_rates(ref.per_position_rate)} MAL "
        f"{ref.mean_acceptance_length:.3f} ({ref.num_drafts}) | oracle greedy "
        f"{fmt_rates(own.per_position_rate)} MAL {own.mean_acceptance_length:.3f} | "
        f"drafter near-tie steps {rep.uncertain_steps}")
    record(engine_per_pos=fmt_rates(eng_rates), oracle_per_pos=fmt_rates(ref.per_position_rate),
           engine_mean_acceptance_length=round(eng_mal, 4),
           oracle_mean_acceptance_length=round(ref.mean_acceptance_length, 4),
           uncertain_steps=rep.uncertain_steps)
    bad = acceptance_violations(eng.num_drafts, eng.num_draft_tokens, eng.num_accepted_tokens,
                                eng.num_accepted_tokens_per_pos, rep, k)
    assert not bad, (
        f"k={k}: the engine's spec-decode counters are not what its drafter should give:\n  "
        + "\n  ".join(bad) + f"\nengine per position {eng.num_accepted_tokens_per_pos}, oracle "
        f"replay {ref.num_accepted_tokens_per_pos}; steps after a drafter near-tie (margin <= "
        f"{MARGIN_TOL}): {rep.uncertain_steps}")


@pytest.mark.parametrize("k", SPEC_KS, ids=_kid)
def test_acceptance_above_golden_curve(engine_backend, model, k, oracle, prompts, max_tokens,
                                       fixture_golden, record):
    runs = engine_runs(engine_backend, k, prompts, max_tokens, model, record=record)
    eng = runs.greedy.spec
    gold = fixture_golden["by_k"][str(k)]
    rates = [a / eng.num_drafts for a in eng.num_accepted_tokens_per_pos] if eng.num_drafts else []
    eng_mal = 1 + eng.num_accepted_tokens / eng.num_drafts if eng.num_drafts else 0.0
    floor = [g - FLOOR_SLACK for g in gold["per_position_rate"]]
    record(engine_per_pos=fmt_rates(rates), golden_per_pos=fmt_rates(gold["per_position_rate"]))
    assert len(rates) == k and all(r >= f for r, f in zip(rates, floor)), (
        f"k={k}: per-position acceptance {fmt_rates(rates)} fell below the golden curve "
        f"{fmt_rates(gold['per_position_rate'])} - {FLOOR_SLACK}")
    assert eng_mal >= gold["mean_acceptance_length"] - k * FLOOR_SLACK, (
        f"k={k}: mean acceptance length {eng_mal:.3f} < golden {gold['mean_acceptance_length']}")


@pytest.mark.parametrize("k", ALL_KS, ids=_kid)
def test_seeded_sampling_reproducible(engine_backend, model, k, prompts, max_tokens, record):
    runs = engine_runs(engine_backend, k, prompts, max_tokens, model, record=record)
    first, second = ([c.token_ids for c in r.completions] for r in runs.sampled)
    other = [c.token_ids for c in runs.sampled_other_seeds.completions]
    diff = [i for i, (a, b) in enumerate(zip(first, second)) if a != b]
    record(requests=len(first), irreproducible=len(diff))
    assert not diff, (f"{_kid(k)}: seeded sampling differs between two runs for requests {diff}:\n"
                      + "\n".join(f"{first[i]}\n{second[i]}" for i in diff))
    # The seed must matter: other seeds give another stream for at least one request
    # (temperature 1 over 24 tokens of a language with branching points).
    assert other != first, f"{_kid(k)}: different seeds produced identical samples"
