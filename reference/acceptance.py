"""Speculative-decoding acceptance metrics with vLLM's definitions (vllm/v1/spec_decode/metrics.py,
SpecDecodingStats.observe_draft and SpecDecodingLogging.log):

  a draft                = one request with k_r > 0 draft tokens in one step
  accepted tokens        = emitted tokens - 1 (the last emitted token is recovered or bonus)
  acceptance rate        = accepted tokens / draft tokens
  mean acceptance length = 1 + accepted tokens / drafts   (counts the bonus/recovered token)
  per-position rate i    = (drafts whose position i was accepted) / drafts     (unconditional)

The conditional rate at position i (accepted at i / reached i) is what equals beta_i =
sum min(p_i, q_i); the unconditional one equals prod_{j<=i} beta_j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference.speculative import PLACEHOLDER


@dataclass
class AcceptanceStats:
    num_drafts: int
    num_draft_tokens: int
    num_accepted_tokens: int
    num_accepted_tokens_per_pos: list[int]  # [max_k]
    num_draft_tokens_per_pos: list[int]  # [max_k] drafts that had a token at position i

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else float("nan")

    @property
    def mean_acceptance_length(self) -> float:
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else float("nan")

    @property
    def per_position_rate(self) -> list[float]:
        return [a / self.num_drafts if self.num_drafts else float("nan")
                for a in self.num_accepted_tokens_per_pos]

    def reached(self, i: int) -> int:
        """Drafts that verified position i: they had a token there and accepted 0 .. i-1."""
        return self.num_draft_tokens_per_pos[i] if i == 0 else self.num_accepted_tokens_per_pos[i - 1]

    def conditional_rate(self, i: int) -> float:
        n = self.reached(i)
        return self.num_accepted_tokens_per_pos[i] / n if n else float("nan")


def num_accepted(output_token_ids: torch.Tensor) -> torch.Tensor:  # [B, max_k + 1] -> [B]
    """Accepted drafts per request: emitted tokens - 1 (0 for a request that emitted nothing)."""
    emitted = (output_token_ids != PLACEHOLDER).sum(-1)
    return (emitted - 1).clamp_min(0)


def acceptance_stats(output_token_ids: torch.Tensor, num_draft_tokens: list[int]) -> AcceptanceStats:
    """Metrics of one step from the sampler output [B, max_k + 1] and the drafts per request."""
    acc = num_accepted(output_token_ids).tolist()
    max_k = max(num_draft_tokens) if num_draft_tokens else 0
    per_pos = [0] * max_k
    draft_per_pos = [0] * max_k
    drafts = tokens = accepted = 0
    for a, k in zip(acc, num_draft_tokens):
        if k == 0:
            continue
        drafts += 1
        tokens += k
        accepted += a
        for i in range(a):
            per_pos[i] += 1
        for i in range(k):
            draft_per_pos[i] += 1
    return AcceptanceStats(drafts, tokens, accepted, per_pos, draft_per_pos)
