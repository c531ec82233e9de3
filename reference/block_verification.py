"""Block verification (Sun, Mendlovic, Leviathan, Aharoni, Beirami, Ro, Suresh 2024, "Block
Verification Accelerates Speculative Decoding", arXiv:2403.10444, Algorithm 2), in float64.

One verification step of one request. The drafter proposed X_1 .. X_gamma, X_i drawn from
M_s(. | c, X^{i-1}); the target scored gamma + 1 positions, M_b(. | c, X^i) for i = 0 .. gamma.
Token-wise verification (reference/speculative.py) accepts each draft on its own ratio; block
verification judges the draft *prefixes* jointly:

  p_0 = 1
  p_i = min(p_{i-1} M_b(X_i | X^{i-1}) / M_s(X_i | X^{i-1}), 1)               i = 1 .. gamma
  h_i = r_i / (r_i + 1 - p_i),  r_i = sum_x max(p_i M_b(x | X^i) - M_s(x | X^i), 0)   i < gamma
  h_gamma = p_gamma                                       (0 / 0 := 1: p_i = 1 and r_i = 0)
  eta_i ~ U(0, 1) independent;  tau = the last i with eta_i <= h_i (0 when there is none)
  Y ~ M_b(. | X^gamma)                                                   when tau = gamma
  Y ~ max(p_tau M_b(. | X^tau) - M_s(. | X^tau), 0) / Z                   otherwise
  output X_1 .. X_tau, Y   (tau + 1 tokens)

Its guarantee (the paper's validity, Definition 1): the output, continued by sampling from the
target, is distributed as the target: for every z in V^(gamma + 1),
  sum_l P(output = z_1 .. z_l) prod_{j > l} M_b(z_j | z^{j-1}) = prod_j M_b(z_j | z^{j-1}).
Its gain: P(tau >= i | X^i) = p_i (backward induction from h_gamma = p_gamma: h_i + (1 - h_i)
E[p_{i+1} | X^i] = p_i, because E[p_{i+1} | X^i] = sum_x min(p_i M_b(x), M_s(x)) = p_i - r_i),
so E[tau] = sum_i E[p_i(X^i)] (closed form, `accepted_length_law`), and p_i >= prod_{j<=i}
min(1, M_b(X_j) / M_s(X_j)) (induction on p_i = min(p_{i-1} ratio_i, 1)): block verification
accepts at least as many tokens as token-wise verification in expectation, per draft prefix.

When the verifier is not given the drafter's distribution (draft_probs_known=False: an n-gram
drafter, vLLM's one-hot drafts), M_s is the point mass at the drafted token; the drafts still
follow the drafter's real distribution. Validity holds for every fixed draft then (a
point-mass drafter is deterministic), so for any mixture over drafts; the identity
P(tau >= i | X^{i+1}) = p_i holds too, so the closed form stays E[p_i(X^i)] over the real
drafts.

Layout (what a verifier sees for one request, as vLLM's rows): target [gamma + 1, V] with row i
= M_b(. | X^i) (row gamma: the bonus position), draft [gamma, V] with row i = M_s(. | X^i), and
the drafted tokens [gamma] (draft row i - 1 is the law X_i was drawn from). The exact laws over
every draft path (`output_law`, `accepted_length_law`) take the two models as `PrefixModel`s
(conditionals for every prefix), enumerated: for small V ** gamma.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockVerificationConfig:
    vocab_size: int  # V
    num_speculative_tokens: int  # gamma: drafts per step
    draft_probs_known: bool = True  # False: the verifier's M_s is one-hot at each drafted token


@dataclass(frozen=True)
class PrefixModel:
    """An autoregressive model over a small vocabulary given by its conditionals:
    conditional(prefix) = M(. | c, prefix) [V] float64, for prefixes of length 0 .. depth."""

    conditional: Callable[[tuple[int, ...]], torch.Tensor]

    def rows(self, xs: tuple[int, ...], n: int) -> torch.Tensor:  # [n, V]
        """The conditionals along a draft path: row i = M(. | xs[:i]), i = 0 .. n - 1."""
        return torch.stack([self.conditional(tuple(xs[:i])).double() for i in range(n)])

    def sequence_prob(self, zs: tuple[int, ...]) -> float:
        """prod_j M(z_j | z^{j-1})."""
        w = 1.0
        for j, z in enumerate(zs):
            w *= float(self.conditional(tuple(zs[:j]))[z])
        return w


# --------------------------------------------------------------------------- one request


def verifier_draft_rows(draft: torch.Tensor, xs: torch.Tensor, known: bool) -> torch.Tensor:
    """M_s as the verifier uses it [gamma, V]: the drafter's rows, or one-hot at the drafts."""
    if known:
        return draft.double()
    return torch.nn.functional.one_hot(xs.long(), draft.shape[-1]).double()


def joint_ratios(
    target: torch.Tensor,  # [gamma + 1, V] M_b(. | X^i)
    draft: torch.Tensor,  # [gamma, V] M_s(. | X^i) as the verifier uses it
    xs: torch.Tensor,  # [gamma] drafted tokens
) -> torch.Tensor:  # [gamma + 1] p_0 .. p_gamma
    gamma = draft.shape[0]
    p = torch.ones(gamma + 1, dtype=torch.float64)
    for i in range(1, gamma + 1):
        x = int(xs[i - 1])
        p[i] = min(float(p[i - 1]) * float(target[i - 1, x]) / float(draft[i - 1, x]), 1.0)
    return p


def thresholds(target: torch.Tensor, draft: torch.Tensor, xs: torch.Tensor
               ) -> torch.Tensor:  # [gamma + 1]: h_0 (unused, 1) .. h_gamma
    gamma = draft.shape[0]
    p = joint_ratios(target, draft, xs)
    h = torch.ones(gamma + 1, dtype=torch.float64)
    for i in range(1, gamma):
        r = float((p[i] * target[i] - draft[i]).clamp_min(0.0).sum())
        denom = r + 1.0 - float(p[i])
        h[i] = r / denom if denom > 0.0 else 1.0
    if gamma:
        h[gamma] = p[gamma]
    return h


def accepted_length_given_drafts(h: torch.Tensor) -> torch.Tensor:  # [gamma + 1] P(tau = i | X)
    """tau = the last i >= 1 with eta_i <= h_i, else 0: P(tau = i) = h_i prod_{l > i} (1 - h_l)."""
    gamma = h.shape[0] - 1
    law = torch.zeros(gamma + 1, dtype=torch.float64)
    later = 1.0  # prod_{l > i} (1 - h_l)
    for i in range(gamma, 0, -1):
        law[i] = float(h[i]) * later
        later *= 1.0 - float(h[i])
    law[0] = later
    return law


def residual(target: torch.Tensor, draft: torch.Tensor, xs: torch.Tensor, tau: int
             ) -> torch.Tensor:  # [V] the law of Y after tau accepted drafts
    gamma = draft.shape[0]
    if tau == gamma:
        return target[gamma].double()
    p = joint_ratios(target, draft, xs)
    res = (p[tau] * target[tau] - draft[tau]).clamp_min(0.0)
    z = float(res.sum())
    # Z = 0 has probability 0 (tau lands on i only where h_i > 0, i.e. r_i > 0, or i = 0 with
    # M_b = M_s, where h_1 = 1); the target row keeps the function total
    return res / z if z > 0.0 else target[tau].double()


def verify(target: torch.Tensor, draft: torch.Tensor, xs: torch.Tensor, eta: torch.Tensor,
           u: float) -> list[int]:
    """Algorithm 2 for one request from its uniforms: eta [gamma] for the thresholds, u for Y
    (inverse CDF). Returns the output tokens X_1 .. X_tau, Y."""
    h = thresholds(target, draft, xs)
    gamma = draft.shape[0]
    tau = 0
    for i in range(1, gamma + 1):
        if float(eta[i - 1]) <= float(h[i]):
            tau = i
    law = residual(target, draft, xs, tau)
    cum = torch.cumsum(law, 0)
    y = int(torch.searchsorted(cum, torch.tensor([u * float(cum[-1])], dtype=torch.float64),
                               right=True).clamp(max=law.shape[0] - 1))
    return [int(x) for x in xs[:tau]] + [y]


# --------------------------------------------------------------------------- exact laws


def _paths(cfg: BlockVerificationConfig, drafter: PrefixModel, length: int):
    """(xs, prod_j M_s(x_j | x^{j-1})) over every draft path of `length` with positive weight."""
    for xs in itertools.product(range(cfg.vocab_size), repeat=length):
        w = drafter.sequence_prob(xs)
        if w > 0.0:
            yield xs, w


def _request_rows(cfg, target_model, drafter, xs):
    g = cfg.num_speculative_tokens
    t = target_model.rows(xs, g + 1)  # [gamma + 1, V]
    d = verifier_draft_rows(drafter.rows(xs, g), torch.tensor(xs, dtype=torch.int64),
                            cfg.draft_probs_known)  # [gamma, V]
    return t, d, torch.tensor(xs, dtype=torch.int64)


def output_law(cfg: BlockVerificationConfig, target_model: PrefixModel, drafter: PrefixModel
               ) -> dict[tuple[int, ...], float]:
    """The exact law of the output token sequence (X_1 .. X_tau, Y) of one step: every draft
    path, every tau (accepted_length_given_drafts), every Y (residual)."""
    law: dict[tuple[int, ...], float] = {}
    for xs, w in _paths(cfg, drafter, cfg.num_speculative_tokens):
        t, d, x = _request_rows(cfg, target_model, drafter, xs)
        for tau, pt in enumerate(accepted_length_given_drafts(thresholds(t, d, x)).tolist()):
            if pt <= 0.0:
                continue
            for y, py in enumerate(residual(t, d, x, tau).tolist()):
                if py > 0.0:
                    key = (*xs[:tau], y)
                    law[key] = law.get(key, 0.0) + w * pt * py
    return law


def completed_law(cfg: BlockVerificationConfig, out_law: dict[tuple[int, ...], float],
                  target_model: PrefixModel) -> dict[tuple[int, ...], float]:
    """The law of an output continued by sampling from the target to gamma + 1 tokens."""
    n = cfg.num_speculative_tokens + 1
    law: dict[tuple[int, ...], float] = {}
    for zs, w in out_law.items():
        for tail in itertools.product(range(cfg.vocab_size), repeat=n - len(zs)):
            full = (*zs, *tail)
            c = w
            for j in range(len(zs), n):
                c *= float(target_model.conditional(full[:j])[full[j]])
            if c > 0.0:
                law[full] = law.get(full, 0.0) + c
    return law


def target_sequence_law(cfg: BlockVerificationConfig, target_model: PrefixModel
                        ) -> dict[tuple[int, ...], float]:
    """prod_j M_b(z_j | z^{j-1}) over V^(gamma + 1): what validity says completed_law equals."""
    n = cfg.num_speculative_tokens + 1
    law = {}
    for zs in itertools.product(range(cfg.vocab_size), repeat=n):
        w = target_model.sequence_prob(zs)
        if w > 0.0:
            law[zs] = w
    return law


def accepted_length_law(cfg: BlockVerificationConfig, target_model: PrefixModel,
                        drafter: PrefixModel, method: str = "block") -> torch.Tensor:
    """Closed form of P(tau = i), i = 0 .. gamma, from P(tau >= i) = E[a_i(X^i)] over draft
    prefixes: a_i = p_i for block verification, prod_{j <= i} min(1, M_b(X_j) / M_s(X_j)) for
    token-wise verification (method "token")."""
    g = cfg.num_speculative_tokens
    at_least = torch.zeros(g + 2, dtype=torch.float64)
    at_least[0] = 1.0
    for i in range(1, g + 1):
        total = 0.0
        for xs, w in _paths(cfg, drafter, i):
            t = target_model.rows(xs, i)
            d = verifier_draft_rows(drafter.rows(xs, i), torch.tensor(xs), cfg.draft_probs_known)
            x = torch.tensor(xs, dtype=torch.int64)
            if method == "block":
                a = float(joint_ratios(t, d, x)[i])
            elif method == "token":
                a = 1.0
                for j in range(i):
                    a *= min(1.0, float(t[j, xs[j]]) / float(d[j, xs[j]]))
            else:
                raise ValueError(f"unknown method {method!r}: 'block' or 'token'")
            total += w * a
        at_least[i] = total
    return at_least[:-1] - at_least[1:]


def expected_accepted_length(law: torch.Tensor) -> float:
    """E[tau] from its law [gamma + 1]."""
    return float((torch.arange(law.shape[0], dtype=torch.float64) * law).sum())


# --------------------------------------------------------------------------- Monte Carlo


def block_rejection_sample(batch, generator: torch.Generator) -> torch.Tensor:
    """A SpecBatch verified by block verification (random requests) and greedy verification
    (greedy requests: a point-mass target makes block and token-wise verification the same),
    output [B, max_k + 1] int64 as reference.speculative.rejection_sample's. Each request's
    rows are its own M_b(. | X^i) and M_s(. | X^i) along its drafts. Uniforms: a request with
    a seed draws from its own generator, the others from `generator`."""
    from reference.speculative import (
        PLACEHOLDER,
        batch_draft_probs,
        batch_target_probs,
        rejection_sample,
    )

    P = batch_target_probs(batch)  # [num_tokens + B, V]
    Q = batch_draft_probs(batch)  # [num_tokens, V] (one-hot when draft_probs is None)
    out = rejection_sample(batch, generator)  # greedy rows kept from here
    K = batch.max_spec_len
    row0 = 0
    tok0 = 0
    for r, (xs, prm) in enumerate(zip(batch.draft_token_ids, batch.params)):
        k = len(xs)
        if not prm.greedy:
            g = generator if prm.seed is None else torch.Generator().manual_seed(prm.seed)
            u = torch.rand(k + 1, dtype=torch.float64, generator=g)
            toks = verify(P[row0: row0 + k + 1], Q[tok0: tok0 + k], torch.tensor(xs), u[:k],
                          float(u[k]))
            out[r] = torch.tensor(toks + [PLACEHOLDER] * (K + 1 - len(toks)))
        row0 += k + 1
        tok0 += k
    return out
