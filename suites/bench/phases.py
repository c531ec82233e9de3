"""Prefill and decode of an end-to-end generate, told apart (suites/bench/test_e2e.py).

A generate call of N new tokens a request is a prefill (the prompts' forward pass, which also
yields each request's first token) and N - 1 decode steps (with MTP: drafting and verification).
Timing the whole call and dividing its tokens by it, as the e2e figure once did, calls prefill
time decode time. Here every round times two calls on the same warm engine and prompts, back to
back in the engine's process:

  first   LLM.generate(max_tokens=1)   prefill and the first token
  full    LLM.generate(max_tokens=N)   prefill and N - 1 decode steps

  decode  = full - first, paired within the round (the machine's drift and generate's fixed
            costs, request setup and output handling, cancel): the N - 1 tokens a request after
            the first

The order within a round alternates (first, full | full, first | ...) so that neither call always
runs on caches the other warmed. A round whose full call was not slower than its first one (a
disturbance larger than the whole decode: seen once here, a 1-token generate of 14.6 s beside a
full one of 0.9 s while other work shared the 2 cores) is timed again, at most `redo` times a
case, and counted (PhaseRounds.redone, recorded); one that stays so fails the case. vLLM 0.32's RequestOutput.metrics (RequestStateStats:
first_token_ts, last_token_ts) would give the same split from inside the engine, but the engine
backend (suites/backends/vllm/engine.py) returns only token ids, counters and the call's duration.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


class PhaseError(RuntimeError):
    """Rounds that cannot be split into prefill and decode (one line why)."""


@dataclass
class PhaseRounds:
    first: list = field(default_factory=list)  # results of generate(max_tokens=1), one a round
    full: list = field(default_factory=list)  # results of generate(max_tokens=N), one a round
    redone: list = field(default_factory=list)  # [round, first s, full s] of rounds timed again

    @property
    def first_s(self) -> list[float]:
        return [float(r.seconds) for r in self.first]

    @property
    def full_s(self) -> list[float]:
        return [float(r.seconds) for r in self.full]

    def decode_s(self) -> list[float]:
        """full - first per round; a round whose full call was not slower than its first one
        (a disturbance larger than N - 1 decode steps) is refused, not replayed as a time."""
        out = []
        for i, (a, b) in enumerate(zip(self.first_s, self.full_s)):
            if b <= a:
                raise PhaseError(f"round {i}: generate(max_tokens=N) took {b:.4g} s, not more "
                                 f"than generate(max_tokens=1) ({a:.4g} s): the machine was "
                                 "disturbed beyond what a decode time can be read from")
            out.append(b - a)
        return out


def time_rounds(generate: Callable[[str], object], rounds: int, *,
                before_round: Callable[[int], None] | None = None, redo: int = 2) -> PhaseRounds:
    """`rounds` rounds of generate("first") and generate("full") (results with .seconds),
    alternating their order; before_round(i) runs first in round i (the A/B baton). A round
    without decode time (full not slower than first) is timed again, `redo` times at most."""
    out = PhaseRounds()
    for i in range(rounds):
        while True:
            if before_round is not None:
                before_round(i)
            got = {}
            for which in (("first", "full") if i % 2 == 0 else ("full", "first")):
                got[which] = generate(which)
            a, b = float(got["first"].seconds), float(got["full"].seconds)
            if b > a or len(out.redone) >= redo:
                break
            out.redone.append([i, a, b])
        out.first.append(got["first"])
        out.full.append(got["full"])
    return out


def figures(*, batch: int, max_tokens: int, prompt_tokens: int, first_s: list[float],
            full_s: list[float], decode_s: list[float]) -> dict:
    """extra_info["phases"]: per phase what was timed, the median seconds, tokens and tokens/s."""
    if max_tokens < 2:
        raise PhaseError(f"max_tokens {max_tokens}: a decode phase needs at least 2 tokens")
    med = {k: statistics.median(v) for k, v in
           (("prefill", first_s), ("decode", decode_s), ("generate", full_s))}
    out = {
        "prefill": {"what": f"LLM.generate(max_tokens=1): prefill of {batch} prompt(s) of "
                            f"{prompt_tokens} tokens and each request's first token",
                    "tokens": batch, "prompt_tokens": batch * prompt_tokens},
        "decode": {"what": f"generate(max_tokens={max_tokens}) - generate(max_tokens=1), "
                           f"paired a round: the {max_tokens - 1} tokens a request after the "
                           "first (decode steps, with MTP drafting and verification)",
                   "tokens": batch * (max_tokens - 1)},
        "generate": {"what": f"LLM.generate(max_tokens={max_tokens}): prefill and decode",
                     "tokens": batch * max_tokens},
    }
    for k, p in out.items():
        rates(p, med[k])
    return out


def rates(phase: dict, median_s: float) -> None:
    """A phase's median and rates at `median_s` (also reports/merge.py's, over processes)."""
    phase["median_s"] = median_s
    phase["tokens_per_s"] = phase["tokens"] / median_s
    if "prompt_tokens" in phase:
        phase["prompt_tokens_per_s"] = phase["prompt_tokens"] / median_s
