"""Speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative
Decoding"; Chen et al. 2023, "Accelerating LLM Decoding with Speculative Sampling"), in float64.

One verification step for a batch of requests. Request r drafted k_r tokens x_0 .. x_{k_r-1}
from draft distributions q_0 .. q_{k_r-1}; the target model scored k_r + 1 positions, giving
target distributions p_0 .. p_{k_r} (p_i is conditioned on the drafts before position i; p_{k_r}
is the distribution of the bonus token). Verification:

  random   for i = 0, 1, ...: accept x_i with probability min(1, p_i(x_i) / q_i(x_i));
           at the first rejection emit a recovered token y ~ norm(max(0, p_i - q_i)) and stop;
           if every draft is accepted, emit a bonus token y ~ p_{k_r}.
  greedy   (temperature 0) accept x_i iff x_i == argmax p_i; at the first mismatch emit
           argmax p_i; if all match, emit argmax p_{k_r} as the bonus token.

The output row has max_k + 1 slots; slots after the last emitted token hold PLACEHOLDER (-1).
When the drafter gives no probabilities (n-gram, or a drafter whose probabilities were dropped),
q_i is taken as one-hot at x_i: accept with probability p_i(x_i), recover from p_i with x_i
removed. That is still exact in distribution, with lower acceptance (sum_x q(x) p(x) instead of
sum min(p, q)).

Target processing follows vLLM's RejectionSampler (temperature, then top-k, then top-p, on the
float32 logits; see `processed_target_probs`).

Layout follows vLLM's SpecDecodeMetadata: target rows of request r are its k_r draft positions
followed by its bonus position, requests concatenated: target_logits [num_tokens + B, V].
draft_probs, when given, is [num_tokens, V] (draft positions only, requests concatenated).

Closed forms (small vocabularies): per-position acceptance beta_i = sum_v min(p_i, q_i), the
expected number of emitted tokens sum_{j=0}^{k} prod_{i<j} beta_i, the joint law of (number
accepted, emitted token), and brute-force enumeration of every draft sequence.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

import torch

PLACEHOLDER = -1  # vLLM's PLACEHOLDER_TOKEN_ID


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling parameters, named as vLLM's SamplingParams."""

    temperature: float = 1.0  # 0.0: greedy (vLLM stores 0.0 for SamplingType.GREEDY)
    top_k: int = 0  # 0, -1 or >= V: off
    top_p: float = 1.0  # 1.0: off
    seed: int | None = None  # per-request generator (vLLM: SamplingParams.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class SpecBatch:
    """One verification step: what the rejection sampler receives. Treated as immutable: the
    layout tensors derived from it are computed once."""

    draft_token_ids: list[list[int]]  # ragged: request r drafted k_r tokens (k_r may be 0)
    target_logits: torch.Tensor  # [num_tokens + B, V] float32; per request k_r rows then bonus
    params: list[SamplingParams]  # [B]
    draft_probs: torch.Tensor | None = None  # [num_tokens, V] float32, or None (q one-hot)
    meta: dict = field(default_factory=dict)  # free-form description for failure messages

    def __post_init__(self) -> None:
        B = len(self.draft_token_ids)
        if len(self.params) != B:
            raise ValueError(f"{len(self.params)} SamplingParams for {B} requests")
        n = self.num_tokens
        if self.target_logits.shape[0] != n + B:
            raise ValueError(f"target_logits has {self.target_logits.shape[0]} rows; "
                             f"expected num_tokens + B = {n} + {B}")
        if self.draft_probs is not None and tuple(self.draft_probs.shape) != (n, self.vocab_size):
            raise ValueError(f"draft_probs {tuple(self.draft_probs.shape)} != ({n}, {self.vocab_size})")

    @property
    def batch_size(self) -> int:
        return len(self.draft_token_ids)

    @property
    def vocab_size(self) -> int:
        return self.target_logits.shape[1]

    @functools.cached_property
    def num_draft_tokens(self) -> list[int]:
        return [len(d) for d in self.draft_token_ids]

    @functools.cached_property
    def num_tokens(self) -> int:
        return sum(self.num_draft_tokens)

    @functools.cached_property
    def max_spec_len(self) -> int:
        return max(self.num_draft_tokens) if self.draft_token_ids else 0

    @functools.cached_property
    def flat_draft_token_ids(self) -> torch.Tensor:  # [num_tokens] int64
        return torch.tensor([t for d in self.draft_token_ids for t in d], dtype=torch.int64)

    @functools.cached_property
    def _k(self) -> torch.Tensor:  # [B] int64
        return torch.tensor(self.num_draft_tokens, dtype=torch.int64)

    @functools.cached_property
    def request_of_token(self) -> torch.Tensor:  # [num_tokens] request of each draft position
        return torch.repeat_interleave(torch.arange(self.batch_size), self._k)

    @functools.cached_property
    def position_of_token(self) -> torch.Tensor:  # [num_tokens] draft position within its request
        k = self._k
        first = torch.cumsum(k, 0) - k  # [B] index of each request's first draft token
        return torch.arange(self.num_tokens) - torch.repeat_interleave(first, k)

    @functools.cached_property
    def target_rows(self) -> torch.Tensor:  # [num_tokens] logits row of each draft position
        k = self._k
        row0 = torch.cumsum(k + 1, 0) - (k + 1)  # [B] first logits row of each request
        return torch.repeat_interleave(row0, k) + self.position_of_token

    @functools.cached_property
    def bonus_rows(self) -> torch.Tensor:  # [B] logits row of each bonus position
        return torch.cumsum(self._k + 1, 0) - 1


# --------------------------------------------------------------------------- target processing


def apply_top_k_top_p(
    logits: torch.Tensor,  # [n, V] float64, temperature already applied
    top_k: torch.Tensor,  # [n] int64; <= 0 or >= V: off
    top_p: torch.Tensor,  # [n] float64; 1.0: off
) -> torch.Tensor:  # [n, V] with removed tokens at -inf
    """vLLM's semantics: top-k keeps every logit >= the k-th largest; top-p sorts ascending,
    removes the tokens whose ascending cumulative probability is <= 1 - top_p, never the most
    likely one."""
    _n, V = logits.shape
    x = logits.clone()
    k_on = (top_k > 0) & (top_k < V)
    if bool(k_on.any()):
        k = torch.where(k_on, top_k, torch.full_like(top_k, V)).clamp(1, V)
        desc = torch.sort(x, dim=-1, descending=True).values  # [n, V]
        kth = desc.gather(1, (k - 1)[:, None])  # [n, 1]
        x = torch.where(k_on[:, None] & (x < kth), torch.full_like(x, float("-inf")), x)
    p_on = top_p < 1.0
    if bool(p_on.any()):
        srt, idx = torch.sort(x, dim=-1, descending=False)  # [n, V]
        cum = torch.cumsum(torch.softmax(srt, dim=-1), dim=-1)
        remove = cum <= (1.0 - top_p)[:, None]
        remove[:, -1] = False
        remove &= p_on[:, None]
        srt = srt.masked_fill(remove, float("-inf"))
        x = torch.empty_like(x).scatter_(1, idx, srt)
    return x


def processed_target_probs(
    logits: torch.Tensor,  # [n, V] (float32 as the target model returns them)
    params: list[SamplingParams],  # [n] parameters of each row's request
) -> torch.Tensor:  # [n, V] float64
    """The distribution a row is verified against: softmax(top_p(top_k(logits / T))); for a
    greedy row (T = 0) the point mass at argmax(logits) (first index among exact ties)."""
    return _processed(logits, *_param_tensors(params))


def _param_tensors(params: list[SamplingParams]) -> tuple[torch.Tensor, ...]:
    greedy = torch.tensor([p.greedy for p in params], dtype=torch.bool)
    temp = torch.tensor([1.0 if p.greedy else p.temperature for p in params], dtype=torch.float64)
    top_k = torch.tensor([p.top_k for p in params], dtype=torch.int64)
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float64)
    return greedy, temp, top_k, top_p


def _processed(logits, greedy, temp, top_k, top_p) -> torch.Tensor:  # [n, V] float64
    x = logits.double()
    probs = torch.softmax(apply_top_k_top_p(x / temp[:, None], top_k, top_p), dim=-1)
    if bool(greedy.any()):
        onehot = torch.nn.functional.one_hot(x.argmax(-1), x.shape[1]).double()
        probs = torch.where(greedy[:, None], onehot, probs)
    return probs


def batch_target_probs(batch: SpecBatch) -> torch.Tensor:  # [num_tokens + B, V] float64
    rows_per_request = batch._k + 1
    per_row = [t.repeat_interleave(rows_per_request) for t in _param_tensors(batch.params)]
    return _processed(batch.target_logits, *per_row)


def batch_draft_probs(batch: SpecBatch) -> torch.Tensor:  # [num_tokens, V] float64
    """q as the sampler must use it: the given draft_probs, or one-hot at the drafted token."""
    if batch.draft_probs is not None:
        return batch.draft_probs.double()
    return torch.nn.functional.one_hot(batch.flat_draft_token_ids, batch.vocab_size).double()


# --------------------------------------------------------------------------- Monte Carlo oracle


def _request_uniforms(batch: SpecBatch, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniforms for acceptance [num_tokens], recovery [num_tokens] and bonus [B]: from the batch
    generator, except requests with a seed, which draw from their own generator (so their
    output does not depend on their batch companions or their position in the batch)."""
    n, B = batch.num_tokens, batch.batch_size
    u_acc = torch.rand(n, dtype=torch.float64, generator=generator)
    u_rec = torch.rand(n, dtype=torch.float64, generator=generator)
    u_bon = torch.rand(B, dtype=torch.float64, generator=generator)
    start = 0
    for r, (k, prm) in enumerate(zip(batch.num_draft_tokens, batch.params)):
        if prm.seed is not None:
            g = torch.Generator().manual_seed(prm.seed)
            u = torch.rand(2 * k + 1, dtype=torch.float64, generator=g)
            u_acc[start:start + k], u_rec[start:start + k], u_bon[r] = u[:k], u[k:2 * k], u[2 * k]
        start += k
    return u_acc, u_rec, u_bon


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample index i with probability weights[i] / sum(weights), row-wise, from uniforms u."""
    cum = torch.cumsum(weights, dim=-1)  # [n, V]
    x = (u * cum[:, -1])[:, None]  # [n, 1]
    idx = torch.searchsorted(cum, x.contiguous(), right=True).squeeze(-1)
    return idx.clamp(max=weights.shape[-1] - 1)


def rejection_sample(batch: SpecBatch, generator: torch.Generator) -> torch.Tensor:
    """The oracle sampler: output_token_ids [B, max_k + 1] int64 with PLACEHOLDER after the
    last emitted token. All arithmetic in float64."""
    _B, n = batch.batch_size, batch.num_tokens
    P = batch_target_probs(batch)  # [n + B, V]
    Q = batch_draft_probs(batch)  # [n, V]
    x = batch.flat_draft_token_ids  # [n]
    rows = batch.target_rows  # [n]
    req = batch.request_of_token  # [n]
    greedy_req = torch.tensor([p.greedy for p in batch.params], dtype=torch.bool)  # [B]
    u_acc, u_rec, u_bon = _request_uniforms(batch, generator)

    Pt = P[rows]  # [n, V]
    p_x = Pt.gather(1, x[:, None]).squeeze(1)  # [n]
    q_x = Q.gather(1, x[:, None]).squeeze(1)  # [n]
    # accept with probability min(1, p/q): u < p/q  <=>  u * q < p  (q(x) > 0 for drafted x)
    accept = u_acc * q_x < p_x  # [n]
    residual = (Pt - Q).clamp_min(0.0)  # [n, V]
    # p == q leaves no residual; rejection then has probability 0 and the row is never used
    empty = residual.sum(-1) <= 0
    residual = torch.where(empty[:, None], Pt, residual)
    recovered = _inverse_cdf(residual, u_rec)  # [n]
    target_argmax = Pt.argmax(-1)  # [n] (greedy rows of P are one-hot)
    g_tok = greedy_req[req] if n else torch.zeros(0, dtype=torch.bool)
    accept = torch.where(g_tok, x == target_argmax, accept)
    recovered = torch.where(g_tok, target_argmax, recovered)
    Pb = P[batch.bonus_rows]  # [B, V]
    bonus = torch.where(greedy_req, Pb.argmax(-1), _inverse_cdf(Pb, u_bon))  # [B]

    return assemble(batch, accept, recovered, bonus)


def assemble(
    batch: SpecBatch,
    accept: torch.Tensor,  # [num_tokens] bool, per draft position
    recovered: torch.Tensor,  # [num_tokens] token emitted if that position is the first rejection
    bonus: torch.Tensor,  # [B] token emitted if every draft is accepted
) -> torch.Tensor:  # [B, max_k + 1] int64
    """Output rows: accepted drafts, then the recovered token at the first rejection or the
    bonus token after the last draft, then PLACEHOLDER."""
    B, K = batch.batch_size, batch.max_spec_len
    k = torch.tensor(batch.num_draft_tokens, dtype=torch.int64)  # [B]
    req, pos = batch.request_of_token, batch.position_of_token
    A = torch.zeros(B, K, dtype=torch.bool)
    X = torch.zeros(B, K, dtype=torch.int64)
    R = torch.zeros(B, K, dtype=torch.int64)
    A[req, pos], X[req, pos], R[req, pos] = accept, batch.flat_draft_token_ids, recovered.long()
    rejected = (~A) & (torch.arange(K)[None, :] < k[:, None])  # [B, K]
    # [B] accepted drafts (no request drafting, K = 0: none, and every row is its bonus token)
    n_acc = torch.where(rejected.any(1), rejected.int().argmax(1), k) if K else k
    last = torch.where(n_acc < k, R.gather(1, n_acc.clamp(max=max(K - 1, 0))[:, None]).squeeze(1)
                       if K else bonus.long(), bonus.long())  # [B]
    col = torch.arange(K + 1)[None, :]  # [1, K + 1]
    X1 = torch.cat([X, torch.zeros(B, 1, dtype=torch.int64)], 1)  # [B, K + 1]
    out = torch.where(col < n_acc[:, None], X1, torch.full_like(X1, PLACEHOLDER))
    return torch.where(col == n_acc[:, None], last[:, None], out)


def greedy_verify(
    draft_token_ids: list[int],  # [k]
    target_argmax: list[int],  # [k]
    bonus_token_id: int,
    width: int,  # max_k + 1
) -> list[int]:
    """Greedy verification of one request, written out position by position."""
    out = [PLACEHOLDER] * width
    for i, (d, a) in enumerate(zip(draft_token_ids, target_argmax)):
        out[i] = a
        if d != a:
            return out
    out[len(draft_token_ids)] = bonus_token_id
    return out


# --------------------------------------------------------------------------- closed forms


def acceptance_probability(
    p: torch.Tensor,  # [..., V] target distribution at a position
    q: torch.Tensor,  # [..., V] distribution the draft token was drawn from
    draft_probs_known: bool = True,
) -> torch.Tensor:  # [...] float64
    """beta = P(accept) = sum_v min(p, q) when the sampler is given q; sum_v q(v) p(v) when
    it is not (q one-hot at the drawn token: accept with probability p(x), x ~ q)."""
    p, q = p.double(), q.double()
    return torch.minimum(p, q).sum(-1) if draft_probs_known else (p * q).sum(-1)


def reach_probabilities(beta: torch.Tensor) -> torch.Tensor:  # [k] -> [k + 1]
    """P(position j is emitted) = prod_{i<j} beta_i, j = 0 .. k (position k: the bonus)."""
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(beta.double(), 0)])


def expected_tokens_per_step(beta: torch.Tensor) -> float:
    """E[emitted tokens] = sum_{j=0}^{k} prod_{i<j} beta_i (Leviathan et al. eq. 1 for equal
    beta: (1 - beta^{k+1}) / (1 - beta))."""
    return float(reach_probabilities(beta).sum())


def emitted_token_law(
    p: torch.Tensor,  # [k + 1, V] target distributions (last row: bonus)
    q: torch.Tensor,  # [k, V] draft distributions (drafts drawn from q)
    draft_probs_known: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed form of one step, position by position, for drafts drawn independently from q:
      accepted[j, v] = P(reach j, accept x_j = v)
      last[j, v]     = P(exactly j drafts accepted, token emitted at position j = v)
    With q known: accepted = reach_j * min(p_j, q_j), last = reach_j * max(0, p_j - q_j) (j < k),
    last[k] = reach_k * p_k. Without q (one-hot at the draft x ~ q): accepted = reach_j * q_j * p_j,
    and recovery emits y with probability sum_{x != y} q(x) p(y) = p_j(y) (1 - q_j(y)).
    In both cases accepted[j] + last[j] = reach_j * p_j: the emitted token at j follows p_j."""
    p, q = p.double(), q.double()
    k = q.shape[0]
    beta = acceptance_probability(p[:k], q, draft_probs_known)
    reach = reach_probabilities(beta)  # [k + 1]
    V = p.shape[1]
    accepted = torch.zeros(k, V, dtype=torch.float64)
    last = torch.zeros(k + 1, V, dtype=torch.float64)
    for j in range(k):
        if draft_probs_known:
            accepted[j] = reach[j] * torch.minimum(p[j], q[j])
            last[j] = reach[j] * (p[j] - q[j]).clamp_min(0.0)
        else:
            accepted[j] = reach[j] * q[j] * p[j]
            last[j] = reach[j] * p[j] * (1.0 - q[j])
    last[k] = reach[k] * p[k]
    return accepted, last


def enumerate_outcomes(
    p: torch.Tensor,  # [k + 1, V]
    q: torch.Tensor,  # [k, V]
    draft_probs_known: bool = True,
) -> dict[tuple[int, ...], float]:
    """Brute force over every draft sequence x in V^k (weight prod q_i(x_i)) and every branch of
    the verification: the exact probability of each emitted token sequence. For V^k small."""
    p, q = p.double(), q.double()
    k, V = q.shape
    law: dict[tuple[int, ...], float] = {}
    for xs in itertools.product(range(V), repeat=k):
        w = 1.0
        for i, xi in enumerate(xs):
            w *= float(q[i, xi])
        if w == 0.0:
            continue
        prefix_prob = w
        for j in range(k + 1):
            if j == k:
                for y in range(V):
                    key = (*xs, y)
                    law[key] = law.get(key, 0.0) + prefix_prob * float(p[k, y])
                break
            qj = q[j] if draft_probs_known else torch.nn.functional.one_hot(
                torch.tensor(xs[j]), V).double()
            pa = min(1.0, float(p[j, xs[j]]) / float(qj[xs[j]]))
            res = (p[j] - qj).clamp_min(0.0)
            tot = float(res.sum())
            if tot > 0:
                for y in range(V):
                    if res[y] > 0:
                        key = (*xs[:j], y)
                        law[key] = law.get(key, 0.0) + prefix_prob * (1 - pa) * float(res[y]) / tot
            prefix_prob *= pa
            if prefix_prob == 0.0:
                break
    return law


# --------------------------------------------------------------------------- synthetic rates


def unconditional_to_conditional_rates(rates: list[float]) -> list[float]:
    """Synthetic acceptance (vLLM's rejection_sample_method="synthetic", a benchmarking mode
    that accepts drafts at configured rates whatever p and q are): the configured rates r_i are
    unconditional, r_i = P(the first i + 1 drafts are all accepted), non-increasing; the
    verifier accepts position i, once reached, with the conditional rate c_i = r_i / r_{i-1}
    (r_{-1} = 1; c_i = 0 where r_{i-1} = 0)."""
    prev = [1.0, *rates[:-1]]
    return [r / p if p > 0.0 else 0.0 for r, p in zip(rates, prev)]


def synthetic_accepted_length_law(conditional_rates: list[float], k: int) -> torch.Tensor:
    """P(exactly j drafts accepted), j = 0 .. k, for a request with k drafts verified at the
    conditional rates c_0 .. c_{k-1}: reach_j = prod_{i<j} c_i, P(j) = reach_j (1 - c_j) for
    j < k and reach_k for j = k."""
    c = torch.tensor(conditional_rates[:k], dtype=torch.float64)
    reach = reach_probabilities(c)  # [k + 1]
    return reach - torch.cat([reach[1:], torch.zeros(1, dtype=torch.float64)])


def synthetic_rejection_sample(batch: SpecBatch, rates: list[float],
                               generator: torch.Generator) -> torch.Tensor:
    """Synthetic verification, output [B, max_k + 1] as rejection_sample's: the draft at
    position i (once reached) is accepted with the conditional rate c_i of the unconditional
    `rates` (unconditional_to_conditional_rates), whatever p and q are; the token after the
    first rejection is drawn as the standard method draws it (norm(max(0, p - q)); the target
    argmax for greedy requests), the bonus token from p (its argmax for greedy requests)."""
    c = torch.tensor(unconditional_to_conditional_rates(list(rates)), dtype=torch.float64)
    P = batch_target_probs(batch)  # [n + B, V]
    Q = batch_draft_probs(batch)  # [n, V]
    greedy_req = torch.tensor([p.greedy for p in batch.params], dtype=torch.bool)  # [B]
    u_acc, u_rec, u_bon = _request_uniforms(batch, generator)
    Pt = P[batch.target_rows]  # [n, V]
    accept = u_acc < c[batch.position_of_token]  # [n]
    residual = (Pt - Q).clamp_min(0.0)
    empty = residual.sum(-1) <= 0
    recovered = _inverse_cdf(torch.where(empty[:, None], Pt, residual), u_rec)  # [n]
    n = batch.num_tokens
    g_tok = greedy_req[batch.request_of_token] if n else torch.zeros(0, dtype=torch.bool)
    recovered = torch.where(g_tok, Pt.argmax(-1), recovered)
    Pb = P[batch.bonus_rows]  # [B, V]
    bonus = torch.where(greedy_req, Pb.argmax(-1), _inverse_cdf(Pb, u_bon))
    return assemble(batch, accept, recovered, bonus)
