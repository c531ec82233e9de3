"""Which expert choices a MoE router may make under its dtype's rounding, judged expert by expert.

A bf16 model's gate is a bf16 linear layer: the implementation's router sees each logit
l_e = x . W_e (+ b_e) after an fp32 accumulation and a rounding to the model dtype, so it sees
some l'_e with |l'_e - l_e| <= delta_e (the logit box, `gate_logit_box`):

    delta_e = 1/2 ulp(|l_e| + g_e) + g_e          one rounding of the accumulated logit
              (+ 1/2 ulp(|x . W_e|) with a bias)  the bias added after a rounded GEMM
    g_e     = H u32 sum_h |x_h W_eh|               fp32 accumulation of H exact products

A choice S (K distinct experts per token) is *admissible* when some logits inside the box make
the router select exactly S (ties broken either way). That is decided on the boundary experts,
not on an amax over all experts:

  softmax top-k / gpt-oss top-k-softmax (selection monotone in the logits): S is admissible iff
      min_{e in S} (l_e + delta_e) >= max_{f not in S} (l_f - delta_f)
  grouped (DeepSeek-V2/V3, score c_e = score(l_e) [+ e_score_correction_bias_e], groups ranked
  by their max or top-2 sum, the top topk_group groups kept, then the top K of their experts):
      every expert's score lies in [lo_e, hi_e] (the box mapped through the monotone score, plus
      fp32 slack). S is admissible iff for some set of kept groups G containing S's groups:
        - every unchosen expert of G can sit at or below tau = min_{e in S} hi_e (lo_f <= tau),
        - with S at hi, G's other experts at min(hi, tau) and every other group at lo, each
          kept group's score is >= each dropped group's.
      Setting the values that way is optimal for S, so the test is exact for the box model;
      the kept-group sets are enumerated (n_group <= 8: at most 70).
      A softmax score couples the experts through its normalizer; its per-expert intervals are
      a relaxation (every real perturbation lies inside), so the verdict stays sound.

`ambiguous` marks the tokens where more than the oracle's own choice could be admissible (the
fallback exclusion for an implementation whose choice cannot be observed: the engine).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

U32 = 2.0 ** -24  # fp32 unit roundoff


def ulp(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of dtype's numbers at |v| (fp64 tensor; subnormals at the smallest normal's)."""
    fi = torch.finfo(dtype)
    a = v.double().abs().clamp_min(fi.tiny)
    return torch.exp2(torch.floor(torch.log2(a))) * fi.eps


def gate_logit_box(x: torch.Tensor, gate: torch.Tensor, gate_bias: torch.Tensor | None,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(l [T, E] exact fp64 logits of x [T, H] under gate [E, H] (+ bias [E]), delta [T, E]
    the half-width of the box an implementation's dtype logits lie in)."""
    xd, wd = x.double(), gate.double()
    mm = xd @ wd.T  # [T, E]
    g = x.shape[-1] * U32 * (xd.abs() @ wd.abs().T)  # [T, E] fp32 accumulation bound
    logits = mm if gate_bias is None else mm + gate_bias.double()
    delta = 0.5 * ulp(logits.abs() + g, dtype) + g
    if gate_bias is not None:  # the GEMM may be rounded before the bias is added
        delta = delta + 0.5 * ulp(mm.abs() + g, dtype)
    return logits, delta


def _score(logits: torch.Tensor, scoring_func: str) -> torch.Tensor:
    return torch.softmax(logits, -1) if scoring_func == "softmax" else torch.sigmoid(logits)


def _selection_boxes(logits, delta, cfg, bias):
    """(lo, hi) [T, E] of the value each expert is selected on, and whether groups are ranked
    by their top-2 sum (else max)."""
    if cfg.topk_method in ("greedy", "topk_softmax"):
        return logits - delta, logits + delta, False
    bias = bias if cfg.topk_method == "noaux_tc" else None
    if bias is None and cfg.scoring_func == "softmax":
        # softmax is monotone in the token's logits and groups rank by their max: select on l
        return logits - delta, logits + delta, False
    if cfg.scoring_func == "sigmoid":
        lo, hi = torch.sigmoid(logits - delta), torch.sigmoid(logits + delta)
    else:  # softmax scores with a bias: per-expert intervals of the coupled softmax
        e_lo, e_hi = torch.exp(logits - delta), torch.exp(logits + delta)
        lo = e_lo / (e_lo + (e_hi.sum(-1, keepdim=True) - e_hi))
        hi = e_hi / (e_hi + (e_lo.sum(-1, keepdim=True) - e_lo))
    if bias is not None:
        lo, hi = lo + bias.double(), hi + bias.double()
    slack = 8 * U32 * torch.maximum(lo.abs(), hi.abs())  # fp32 score, bias add, group sums
    return lo - slack, hi + slack, bias is not None


def _group_score(v: torch.Tensor, n_group: int, top2: bool) -> torch.Tensor:
    g = v.view(*v.shape[:-1], n_group, -1)  # [..., G, E/G]
    return g.topk(2, dim=-1).values.sum(-1) if top2 else g.amax(-1)


@dataclass
class ChoiceVerdict:
    admissible: torch.Tensor  # [T] bool
    reason: list[str]  # per token: '' or why the choice is not admissible

    def first_bad(self) -> int | None:
        bad = (~self.admissible).nonzero()
        return int(bad[0]) if bad.numel() else None


def admissible(logits: torch.Tensor, delta: torch.Tensor, cfg, topk_ids: torch.Tensor,
               e_score_correction_bias: torch.Tensor | None = None) -> ChoiceVerdict:
    """Is each token's choice topk_ids [T, K] one the router could make on logits inside the
    box [logits - delta, logits + delta] (module docstring)?"""
    T, E = logits.shape
    ids = topk_ids.long()
    K = ids.shape[1]
    reasons = [""] * T
    ok = torch.ones(T, dtype=torch.bool)
    if cfg.num_experts_per_tok != K:
        return ChoiceVerdict(torch.zeros(T, dtype=torch.bool),
                             [f"{K} experts per token, the config says {cfg.num_experts_per_tok}"] * T)
    out_of_range = ((ids < 0) | (ids >= E)).any(1)
    srt = ids.clamp(0, E - 1).sort(1).values
    dup = (srt[:, 1:] == srt[:, :-1]).any(1) if K > 1 else torch.zeros(T, dtype=torch.bool)
    for t in (out_of_range | dup).nonzero().flatten().tolist():
        ok[t] = False
        reasons[t] = f"ids {ids[t].tolist()} are not {K} distinct experts in [0, {E})"
    chosen = torch.zeros(T, E, dtype=torch.bool)
    chosen.scatter_(1, ids.clamp(0, E - 1), True)
    lo, hi, top2 = _selection_boxes(logits.double(), delta.double(), cfg, e_score_correction_bias)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    tau = torch.where(chosen, hi, inf).amin(1)  # [T] the chosen experts' lowest possible value
    grouped = cfg.topk_method not in ("greedy", "topk_softmax") and cfg.n_group > 1
    if not grouped:
        rival = torch.where(chosen, -inf, lo).amax(1)  # [T] the strongest unchosen expert
        bad = ok & (rival > tau)
        for t in bad.nonzero().flatten().tolist():
            f = int(torch.where(chosen[t], -inf, lo[t]).argmax())
            e = int(torch.where(chosen[t], hi[t], inf).argmin())
            reasons[t] = (f"expert {f} (not chosen) is above chosen expert {e} by more than "
                          f"rounding allows: {float(lo[t, f]):.6g} > {float(hi[t, e]):.6g} "
                          f"(selection values at the edges of the rounding box)")
        return ChoiceVerdict(ok & ~bad, reasons)
    G = cfg.n_group
    per = E // G
    # values that favour S most: S at hi, unchosen at min(hi, tau) where kept, lo where dropped
    in_vals = torch.where(chosen, hi, torch.minimum(hi, tau[:, None]))
    hi_g = _group_score(in_vals, G, top2)  # [T, G] score if kept
    lo_g = _group_score(lo, G, top2)  # [T, G] score if dropped
    over_tau = (~chosen & (lo > tau[:, None])).view(T, G, per).any(-1)  # [T, G] cannot be kept
    needed = chosen.view(T, G, per).any(-1)  # [T, G] groups holding S
    combos = torch.tensor([[g in c for g in range(G)]
                           for c in itertools.combinations(range(G), cfg.topk_group)])  # [C, G]
    kept = combos[None]  # [1, C, G]
    covers = (kept | ~needed[:, None]).all(-1)  # [T, C]
    feasible = ~(kept & over_tau[:, None]).any(-1)  # [T, C]
    min_kept = torch.where(kept, hi_g[:, None], inf).amin(-1)  # [T, C]
    max_dropped = torch.where(kept, -inf, lo_g[:, None]).amax(-1)  # [T, C]
    works = covers & feasible & (min_kept >= max_dropped)
    bad = ok & ~works.any(-1)
    for t in bad.nonzero().flatten().tolist():
        groups = needed[t].nonzero().flatten().tolist()
        if len(groups) > cfg.topk_group:
            reasons[t] = (f"ids {ids[t].tolist()} span groups {groups}, more than topk_group="
                          f"{cfg.topk_group}")
        elif not (covers[t] & feasible[t]).any():
            f = int(torch.where(~chosen[t] & (lo[t] > tau[t]), lo[t], -inf).argmax())
            reasons[t] = (f"expert {f} (not chosen) shares a needed group and scores "
                          f"{float(lo[t, f]):.6g} > {float(tau[t]):.6g}, the lowest any chosen "
                          f"expert can score")
        else:
            reasons[t] = (f"ids {ids[t].tolist()} need groups {groups} kept, but no set of "
                          f"{cfg.topk_group} groups containing them outranks the rest within "
                          f"rounding (group scores kept/dropped {hi_g[t].tolist()} / "
                          f"{lo_g[t].tolist()})")
    return ChoiceVerdict(ok & ~bad, reasons)


def ambiguous(logits: torch.Tensor, delta: torch.Tensor, cfg,
              e_score_correction_bias: torch.Tensor | None = None) -> torch.Tensor:
    """[T] bool: tokens where a choice other than the oracle's might be admissible (the
    oracle's selection is not stable over the box): at the expert boundary, the weakest chosen
    expert's lo does not clear the strongest unchosen one's hi; for grouped routers also the
    weakest kept group's lowest score vs the strongest dropped group's highest."""
    from reference.routing import route

    T, E = logits.shape
    if cfg.num_experts_per_tok == E:
        return torch.zeros(T, dtype=torch.bool)
    ids = route(logits.double(), cfg, e_score_correction_bias)[1]
    chosen = torch.zeros(T, E, dtype=torch.bool)
    chosen.scatter_(1, ids.long(), True)
    lo, hi, top2 = _selection_boxes(logits.double(), delta.double(), cfg, e_score_correction_bias)
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    grouped = cfg.topk_method not in ("greedy", "topk_softmax") and cfg.n_group > 1
    if not grouped:
        return torch.where(chosen, lo, inf).amin(1) <= torch.where(chosen, -inf, hi).amax(1)
    G = cfg.n_group
    kept = chosen.view(T, G, -1).any(-1)  # groups holding the choice (a subset of the kept)
    # the oracle's kept groups: the top topk_group by group score at the exact values
    c_lo, c_hi = lo.view(T, G, -1), hi.view(T, G, -1)
    mid = _group_score((lo + hi) / 2, G, top2)
    kept_groups = torch.zeros(T, G, dtype=torch.bool)
    kept_groups.scatter_(1, mid.topk(cfg.topk_group, -1).indices, True)
    kept_groups |= kept
    g_lo, g_hi = _group_score(c_lo.reshape(T, E), G, top2), _group_score(c_hi.reshape(T, E), G, top2)
    group_tie = torch.where(kept_groups, g_lo, inf).amin(1) <= torch.where(kept_groups, -inf, g_hi).amax(1)
    in_kept = kept_groups.repeat_interleave(E // G, 1)
    expert_tie = (torch.where(chosen, lo, inf).amin(1)
                  <= torch.where(~chosen & in_kept, hi, -inf).amax(1))
    return (group_tie & (cfg.topk_group < G)) | expert_tie
