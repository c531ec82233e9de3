"""Routers of the target models, in float64.

Every router maps router logits [T, E] to (topk_weights [T, K], topk_ids [T, K]).
Ids are returned sorted by descending selection score (vLLM returns them unsorted:
compare after sorting by expert id). Weights are float64 here; vLLM returns float32.

Conventions (names as in the models' config.json):
  Mixtral / Qwen3-MoE / Qwen3-Next / Qwen3.5  softmax over E, top-k, renormalize by norm_topk_prob
  DeepSeek-V2 ("group_limited_greedy")        softmax, group score = max in group, top topk_group groups
  DeepSeek-V3 ("noaux_tc")                    sigmoid, e_score_correction_bias added for selection only,
                                              group score = sum of top-2 in group, top-k of unmasked,
                                              weights = unbiased sigmoid, renormalized, * routed_scaling_factor
  gpt-oss                                     router bias, top-k of logits, softmax over those k
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ScoringFunc = Literal["softmax", "sigmoid"]
TopkMethod = Literal["greedy", "group_limited_greedy", "noaux_tc", "topk_softmax"]


@dataclass(frozen=True)
class RouterConfig:
    num_experts: int  # E
    num_experts_per_tok: int  # K
    topk_method: TopkMethod = "greedy"
    scoring_func: ScoringFunc = "softmax"
    norm_topk_prob: bool = True  # renormalize the K selected weights to sum to 1
    n_group: int = 1  # expert groups (grouped methods)
    topk_group: int = 1  # groups kept per token (grouped methods)
    routed_scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        E, K = self.num_experts, self.num_experts_per_tok
        if not 1 <= K <= E:
            raise ValueError(f"num_experts_per_tok={K} must be in [1, num_experts={E}]")
        if self.topk_method in ("group_limited_greedy", "noaux_tc"):
            if self.n_group < 1 or E % self.n_group:
                raise ValueError(f"n_group={self.n_group} must divide num_experts={E}")
            if not 1 <= self.topk_group <= self.n_group:
                raise ValueError(f"topk_group={self.topk_group} must be in [1, n_group={self.n_group}]")
            if self.topk_group * (E // self.n_group) < K:
                raise ValueError(
                    f"num_experts_per_tok={K} exceeds the experts in topk_group={self.topk_group} "
                    f"groups of {E // self.n_group}"
                )
            if self.topk_method == "noaux_tc" and E // self.n_group < 2:
                raise ValueError("noaux_tc scores a group by its top-2 experts: need >= 2 experts a group")


def router_logits(
    hidden_states: torch.Tensor,  # [T, H]
    gate_weight: torch.Tensor,  # [E, H]
    gate_bias: torch.Tensor | None = None,  # [E] (gpt-oss)
) -> torch.Tensor:  # [T, E] float64
    logits = hidden_states.double() @ gate_weight.double().T
    if gate_bias is not None:
        logits = logits + gate_bias.double()
    return logits


def _topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Descending by score; among equal scores the lower expert id first (deterministic).
    return torch.topk(scores, k, dim=-1, sorted=True)


def route_softmax_topk(
    logits: torch.Tensor,  # [T, E]
    top_k: int,
    renormalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # [T, K] float64, [T, K] int64
    """softmax over all E experts, keep the top-k probabilities, optionally renormalize."""
    probs = torch.softmax(logits.double(), dim=-1)  # [T, E]
    weights, ids = _topk(probs, top_k)  # [T, K]
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def route_topk_softmax(
    logits: torch.Tensor,  # [T, E] (gpt-oss: router bias already added)
    top_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """gpt-oss: top-k of the logits, then softmax over those k logits only."""
    top_logits, ids = _topk(logits.double(), top_k)  # [T, K]
    return torch.softmax(top_logits, dim=-1), ids


def route_grouped_topk(
    logits: torch.Tensor,  # [T, E]
    top_k: int,
    n_group: int,
    topk_group: int,
    renormalize: bool,
    scoring_func: ScoringFunc = "softmax",
    e_score_correction_bias: torch.Tensor | None = None,  # [E]
    routed_scaling_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-limited routing (DeepSeek-V2 max-per-group; DeepSeek-V3 noaux_tc with bias)."""
    T, E = logits.shape
    logits = logits.double()
    scores = torch.softmax(logits, dim=-1) if scoring_func == "softmax" else torch.sigmoid(logits)
    if e_score_correction_bias is not None:
        # The bias steers selection only; the weights are the unbiased scores.
        choice = scores + e_score_correction_bias.double()  # [T, E]
        group_scores = choice.view(T, n_group, -1).topk(2, dim=-1).values.sum(-1)  # [T, G]
    else:
        choice = scores
        group_scores = choice.view(T, n_group, -1).amax(dim=-1)  # [T, G]
    kept_groups = _topk(group_scores, topk_group)[1]  # [T, topk_group]
    group_mask = torch.zeros(T, n_group, dtype=torch.bool, device=logits.device)
    group_mask[torch.arange(T, device=logits.device)[:, None], kept_groups] = True
    expert_mask = group_mask.repeat_interleave(E // n_group, dim=1)  # [T, E]
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    ids = _topk(masked, top_k)[1]  # [T, K]
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * routed_scaling_factor, ids


def route(
    logits: torch.Tensor,  # [T, E]
    cfg: RouterConfig,
    e_score_correction_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch on cfg.topk_method; the one entry point suites call."""
    K = cfg.num_experts_per_tok
    if cfg.topk_method == "greedy":
        if cfg.scoring_func != "softmax":
            raise ValueError("greedy routing is softmax top-k")
        w, ids = route_softmax_topk(logits, K, cfg.norm_topk_prob)
        return w * cfg.routed_scaling_factor, ids
    if cfg.topk_method == "topk_softmax":
        w, ids = route_topk_softmax(logits, K)
        return w * cfg.routed_scaling_factor, ids
    bias = e_score_correction_bias if cfg.topk_method == "noaux_tc" else None
    if cfg.topk_method == "noaux_tc" and bias is None:
        raise ValueError("noaux_tc routing needs e_score_correction_bias")
    return route_grouped_topk(
        logits, K, cfg.n_group, cfg.topk_group, cfg.norm_topk_prob, cfg.scoring_func,
        bias, cfg.routed_scaling_factor,
    )


def routing_weights(
    logits: torch.Tensor,  # [T, E]
    cfg: RouterConfig,
    topk_ids: torch.Tensor,  # [T, K] a given choice of experts per token
    e_score_correction_bias: torch.Tensor | None = None,  # [E] (steers selection only)
) -> torch.Tensor:  # [T, K] float64
    """The routing weights the router's formula gives a given expert choice: the oracle
    evaluated with that choice (an implementation's own choice where rounding made the
    selection ambiguous). For the choice route() makes, equal to route()'s weights.

      greedy        softmax over all E, gathered at the choice, renormalized by norm_topk_prob
      topk_softmax  softmax over the chosen logits (gpt-oss)
      grouped       softmax or sigmoid score at the choice (unbiased), renormalized, scaled
    The correction bias never enters the weights, so it is not read here."""
    del e_score_correction_bias
    logits = logits.double()
    ids = topk_ids.long()
    if cfg.topk_method == "topk_softmax":
        weights = torch.softmax(logits.gather(1, ids), dim=-1)  # [T, K]
    else:
        if cfg.topk_method == "greedy" or cfg.scoring_func == "softmax":
            scores = torch.softmax(logits, dim=-1)  # [T, E]
        else:
            scores = torch.sigmoid(logits)
        weights = scores.gather(1, ids)  # [T, K]
        if cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * cfg.routed_scaling_factor


def selection_margin(
    logits: torch.Tensor,  # [T, E]
    cfg: RouterConfig,
    e_score_correction_bias: torch.Tensor | None = None,
) -> torch.Tensor:  # [T] float64
    """How far each token is from a different expert set: the smallest gap, in the score the
    router selects on, between a chosen and an unchosen candidate at the two boundaries the
    router has (k-th vs (k+1)-th expert; for grouped routers also the kept vs dropped group).
    A kernel that rounds scores to a coarser dtype may legitimately pick differently when the
    margin is below that dtype's resolution: such tokens are near-ties, reported not failed."""
    T, E = logits.shape
    K = cfg.num_experts_per_tok
    logits = logits.double()
    if cfg.topk_method in ("greedy", "topk_softmax"):
        # Selection is monotone in the logits: the margin is measured on the logits, the
        # kernel's input, whose rounding is what can flip a near-tie.
        s = logits
        if K == E:
            return torch.full((T,), float("inf"), dtype=torch.float64, device=logits.device)
        top = torch.topk(s, K + 1, dim=-1).values
        return top[:, K - 1] - top[:, K]
    scores = torch.softmax(logits, -1) if cfg.scoring_func == "softmax" else torch.sigmoid(logits)
    bias = e_score_correction_bias if cfg.topk_method == "noaux_tc" else None
    choice = scores + bias.double() if bias is not None else scores
    G = cfg.n_group
    grouped = choice.view(T, G, -1)
    if bias is not None:
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)
    else:
        group_scores = grouped.amax(-1)
    margins = []
    if cfg.topk_group < G:
        gs = torch.topk(group_scores, cfg.topk_group + 1, dim=-1).values
        margins.append(gs[:, cfg.topk_group - 1] - gs[:, cfg.topk_group])
    kept = torch.topk(group_scores, cfg.topk_group, dim=-1).indices
    mask = torch.zeros(T, G, dtype=torch.bool, device=logits.device)
    mask[torch.arange(T, device=logits.device)[:, None], kept] = True
    masked = choice.masked_fill(~mask.repeat_interleave(E // G, 1), float("-inf"))
    n_candidates = cfg.topk_group * (E // G)
    if n_candidates > K:
        top = torch.topk(masked, K + 1, dim=-1).values
        margins.append(top[:, K - 1] - top[:, K])
    if not margins:
        return torch.full((T,), float("inf"), dtype=torch.float64, device=logits.device)
    return torch.stack(margins, 0).amin(0)
