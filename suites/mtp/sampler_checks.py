"""The rejection-sampler checks, as plain functions of a backend (anything with
`sample(batch, seed)` and `target_probs(batch)`), so that the suite (suites/mtp/test_*.py) and the
negative controls (tests/negative_controls/test_sampler_negative_controls.py) run the very same code.

Every check raises AssertionError with the case, the seed and how far off; statistical checks
return their StatResults (false-positive rate, power, statistic) so tests can record them.

Case construction is here too: target/draft distributions of a named shape, batches of many
identical requests (statistics) or of mixed requests (greedy, random, ragged draft lengths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import stats as sps

from fixtures.seeds import generator, stable_seed
from reference.acceptance import num_accepted
from reference.speculative import (
    PLACEHOLDER,
    SamplingParams,
    SpecBatch,
    acceptance_probability,
    batch_target_probs,
    processed_target_probs,
    reach_probabilities,
    rejection_sample,
)
from suites.stats import (
    FALSE_POSITIVE_RATE,
    POWER,
    TV_SHIFT,
    StatResult,
    binom_power,
    binom_sample_size,
    binom_test,
    bonferroni,
    require_power,
    tv_gof,
    tv_plan,
    tv_plan_power,
)

MAX_REQUESTS = 400_000  # a design needing more is a case too weak for the stated power
# P(a position is reached by fewer rows than its comparison was sized for), per comparison:
# negligible against 1 - POWER, so the planned power holds at the rows a run actually gets.
SHORTFALL = 1e-6


def requests_for(need: int, reach: float, shortfall: float = SHORTFALL) -> int:
    """Smallest N with P(Binomial(N, reach) < need) <= shortfall: N identical requests give a
    comparison at a position reached with probability `reach` its planned `need` rows."""
    if reach >= 1.0:
        return int(need)
    r = float(reach)
    z = float(sps.norm.isf(shortfall)) * math.sqrt(r * (1.0 - r))
    hi = max(int(need), math.ceil(((z + math.sqrt(z * z + 4.0 * r * need)) / (2.0 * r)) ** 2))
    while sps.binom.cdf(need - 1, hi, r) > shortfall:
        hi = math.ceil(hi * 1.01) + 1
    lo = int(need) - 1  # too few: P(Binomial(N, r) < need) = 1 for N < need
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if sps.binom.cdf(need - 1, mid, r) <= shortfall:
            hi = mid
        else:
            lo = mid
    return hi


def _capped(n: int, what: str) -> int:
    if n > MAX_REQUESTS:
        raise ValueError(f"{what}: the stated power needs {n} requests > MAX_REQUESTS "
                         f"{MAX_REQUESTS}; choose distributions with higher acceptance")
    return n


# --------------------------------------------------------------------------- distributions

SHAPES = ("random", "peaked", "flat", "edges", "extreme-peaked", "uniform", "masked",
          "tile-edges")


def target_and_draft(shape: str, vocab_size: int, k: int, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logits [k + 1, V] float32 and draft probabilities [k, V] float32 of a shape:
      random  logits ~ N(0, 1.5^2); q = softmax of the logits plus N(0, 1) noise (a drafter that
              is close but not equal to the target)
      peaked  one token holds ~0.99 of the target; q puts ~0.9 on it
      flat    target logits in [-0.05, 0.05]; q nearly flat too
      edges   target and draft mass concentrated on token 0 and token V - 1
      extreme-peaked  logits 60 above the rest on one token (the rest ~1e-26 in float32);
              q puts ~0.9 on it (a drafter whose other tokens the target all but excludes)
      uniform target logits all exactly 0 (every token tied); q exactly uniform too
      masked  target logits -inf on ~40% of the tokens (never the drafter's favourite),
              q exactly 0 on another ~30% (-inf draft logits): logits-processor masks
      tile-edges  every token -inf (target) / 0 (q) but those at the edges of Model Runner
              V2's vocabulary tiles (0, 1023, 1024, 8191, 8192, V - 1): mass in the last,
              partial tile and across tile boundaries, few cells
    """
    V = vocab_size
    g = generator("target_and_draft", shape, V, k, seed)
    base = torch.randn(k + 1, V, generator=g, dtype=torch.float64)
    noise = torch.randn(k + 1, V, generator=g, dtype=torch.float64)
    if shape == "random":
        logits = 1.5 * base
        qlog = logits + noise
    elif shape == "peaked":
        top = torch.randint(0, V, (k + 1,), generator=g)
        logits = 0.5 * base
        logits[torch.arange(k + 1), top] += 4.6 + float(np.log(V))
        qlog = 0.5 * noise
        qlog[torch.arange(k + 1), top] += 2.2 + float(np.log(V))
    elif shape == "flat":
        logits = 0.05 * torch.tanh(base)
        qlog = 0.05 * torch.tanh(noise)
    elif shape == "edges":
        logits = 0.3 * base - 3.0
        logits[:, 0] += 3.5 + 0.5 * noise[:, 0]
        logits[:, V - 1] += 3.0 + 0.5 * noise[:, 1]
        qlog = 0.3 * noise - 3.0
        qlog[:, 0] += 2.8
        qlog[:, V - 1] += 3.6
    elif shape == "extreme-peaked":
        top = torch.randint(0, V, (k + 1,), generator=g)
        logits = 0.5 * base
        logits[torch.arange(k + 1), top] += 60.0
        qlog = 0.5 * noise
        qlog[torch.arange(k + 1), top] += 2.2 + float(np.log(V))
    elif shape == "uniform":
        logits = torch.zeros(k + 1, V, dtype=torch.float64)
        qlog = torch.zeros(k + 1, V, dtype=torch.float64)
    elif shape == "masked":
        logits = 1.5 * base
        qlog = logits + 0.5 * noise
        fav = qlog.argmax(-1)  # [k + 1] the drafter's favourite stays possible for the target
        u = torch.rand(k + 1, V, generator=g, dtype=torch.float64)
        t_mask = u < 0.4
        t_mask[torch.arange(k + 1), fav] = False
        q_mask = (u >= 0.4) & (u < 0.7)
        q_mask[torch.arange(k + 1), fav] = False
        logits = logits.masked_fill(t_mask, float("-inf"))
        qlog = qlog.masked_fill(q_mask, float("-inf"))
    elif shape == "tile-edges":
        keep = torch.full((V,), float("-inf"), dtype=torch.float64)
        keep[sorted({t for t in (0, 1023, 1024, 8191, 8192, V - 1) if t < V})] = 0.0
        logits = base + keep
        qlog = base + 0.5 * noise + keep
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    q = torch.softmax(qlog[:k], dim=-1).float()
    q = q / q.sum(-1, keepdim=True)
    return logits.float(), q


def robust_top_p(logits: torch.Tensor, temperature: float, top_k: int, target: float,
                 margin: float = 1e-3) -> float:
    """A top_p near `target` that is at least `margin` away from every row's cumulative
    (descending) probability: the set of kept tokens is then the same in float32 and float64
    (no boundary near-tie between the oracle and the implementation)."""
    cums = []
    for row in logits.double():
        p = processed_target_probs(row[None], [SamplingParams(temperature, top_k)])[0]
        cums.append(torch.sort(p, descending=True).values.cumsum(0))
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cat(cums).sort().values,
                       torch.ones(1, dtype=torch.float64)])
    mids = 0.5 * (edges[1:] + edges[:-1])
    gaps = edges[1:] - edges[:-1]
    ok = (gaps >= 2 * margin) & (mids < 1.0 - margin)
    if not bool(ok.any()):
        raise ValueError(f"no top_p at distance >= {margin} from every cumulative probability")
    cand = mids[ok]
    return float(cand[(cand - target).abs().argmin()])


# --------------------------------------------------------------------------- random cases


@dataclass(frozen=True)
class RandomCase:
    """Many identical requests: the same target/draft distributions, drafts drawn from q."""

    name: str
    vocab_size: int = 16
    num_spec_tokens: int = 3  # k
    shape: str = "random"
    draft_probs_known: bool = True  # False: the sampler gets draft_probs=None (q one-hot)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0  # < 1: a top_p near this value, away from near-ties (robust_top_p)
    draft_dtype: torch.dtype = torch.float32

    def __str__(self) -> str:
        return (f"{self.name}(V={self.vocab_size}, k={self.num_spec_tokens}, shape={self.shape}, "
                f"draft_probs={'given' if self.draft_probs_known else 'absent'}, "
                f"T={self.temperature}, top_k={self.top_k}, top_p~{self.top_p})")


@dataclass
class Plan:
    """Expected per-position laws and the sample size that gives the stated power."""

    case: RandomCase
    logits: torch.Tensor  # [k + 1, V] float32
    q: torch.Tensor  # [k, V] float32 (what the drafter sampled from)
    params: SamplingParams
    p: torch.Tensor  # [k + 1, V] float64 processed target distributions
    beta: torch.Tensor  # [k] acceptance probability per position
    reach: torch.Tensor  # [k + 1] P(position j verified/emitted)
    alpha: float  # per comparison
    n_requests: int
    n_needed: list[int] = field(default_factory=list)  # per comparison, rows it needs
    power: list[float] = field(default_factory=list)  # per comparison, at n_needed (>= POWER)

    @property
    def num_comparisons(self) -> int:
        k = self.case.num_spec_tokens
        return 2 * k + 1


def plan(case: RandomCase, seed: int, budget: float = FALSE_POSITIVE_RATE,
         power: float = POWER, shift: float = TV_SHIFT) -> Plan:
    """Sample size for power `power` against a TV shift / acceptance shift of `shift` at the
    false-positive `budget` (Bonferroni over the 2k + 1 comparisons). Each comparison's power
    at the rows it is sized for is asserted (require_power), and N is large enough that every
    position gets those rows but with probability SHORTFALL."""
    k = case.num_spec_tokens
    logits, q = target_and_draft(case.shape, case.vocab_size, k, seed)
    top_p = 1.0
    if case.top_p < 1.0:
        top_p = robust_top_p(logits, case.temperature, case.top_k, case.top_p)
    params = SamplingParams(case.temperature, case.top_k, top_p)
    p = processed_target_probs(logits, [params] * (k + 1))  # [k + 1, V]
    qd = q.to(case.draft_dtype).double()
    beta = acceptance_probability(p[:k], qd, case.draft_probs_known)  # [k]
    reach = reach_probabilities(beta)
    m = 2 * k + 1  # k + 1 distribution tests, k acceptance tests
    alpha = bonferroni(m, budget)
    needed, powers = [], []
    n = 1
    for j in range(k + 1):
        nd, pw = _sized(p[j].numpy(), None, alpha, power, shift, f"{case} position {j}")
        needed.append(nd)
        powers.append(pw)
        n = max(n, requests_for(nd, float(reach[j])))
        if j < k:
            na, pw = _sized(None, float(beta[j]), alpha, power, shift, f"{case} position {j}")
            needed.append(na)
            powers.append(pw)
            n = max(n, requests_for(na, float(reach[j])))
    return Plan(case, logits, q, params, p, beta, reach, alpha, _capped(n, str(case)), needed,
                powers)


def _sized(probs, rate: float | None, alpha: float, power: float, shift: float, what: str
           ) -> tuple[int, float]:
    """(rows, power at those rows) of one comparison: the distribution test on probs (rate
    None) or the acceptance test of `rate`; the power is asserted, not only recorded."""
    if rate is None:
        n = tv_plan(probs, alpha, power, tv=shift)
        return n, require_power(tv_plan_power(probs, n, alpha, shift),
                                f"{what}: emitted-token law vs TV shift {shift}", power)
    n = binom_sample_size(rate, alpha, power, delta=shift)
    return n, require_power(binom_power(n, rate, alpha, shift),
                            f"{what}: acceptance {rate:.4f} vs shift {shift}", power)


def identical_requests_batch(pl: Plan, seed: int) -> SpecBatch:
    """n_requests copies of one request; drafts drawn from q with a stable generator."""
    N, k, _V = pl.n_requests, pl.case.num_spec_tokens, pl.case.vocab_size
    g = generator("drafts", str(pl.case), seed)
    qd = pl.q.to(pl.case.draft_dtype)
    drafts = torch.multinomial(qd.double().repeat(N, 1), 1, replacement=True, generator=g).view(N, k)
    logits = pl.logits.repeat(N, 1)  # [N (k + 1), V]
    draft_probs = qd.repeat(N, 1).contiguous() if pl.case.draft_probs_known else None
    return SpecBatch(drafts.tolist(), logits, [pl.params] * N, draft_probs,
                     meta=dict(case=str(pl.case), seed=seed))


# --------------------------------------------------------------------------- structural check


def require_law_share(backend, share: str, what: str) -> None:
    """Skip a statistical law that this backend leaves to its partner (law_share: the two
    interpreted entries split the laws; both run the same Triton programs)."""
    import pytest

    mine = getattr(backend, "law_share", "all")
    if mine not in ("all", share):
        pytest.skip(f"{what}: a '{share}' law; under the interpreter it runs on "
                    f"{backend.law_partner} (same Triton kernels), {backend.name} runs the "
                    f"'{mine}' laws")


def detect_shift(backend) -> float:
    """The TV / acceptance shift this backend's statistical checks are sized to detect."""
    shift = getattr(backend, "detect_shift", None)
    return TV_SHIFT if shift is None else float(shift)


def check_structure(batch: SpecBatch, out: torch.Tensor, context: str) -> None:
    """Every row: accepted drafts, then exactly one emitted (recovered or bonus) token, then
    placeholders. The emitted token after m accepted drafts is never the draft at position m
    (a rejected draft cannot be recovered: its residual max(0, p - q) is 0), so a row whose
    tokens all equal the drafts and that stops without a bonus token is a dropped bonus."""
    B, K, V = batch.batch_size, batch.max_spec_len, batch.vocab_size
    if tuple(out.shape) != (B, K + 1):
        raise AssertionError(f"{context}: output shape {tuple(out.shape)} != (B={B}, max_k+1={K + 1})")
    k = torch.tensor(batch.num_draft_tokens)
    X = torch.full((B, K + 1), PLACEHOLDER - 1, dtype=torch.int64)  # never equal to a token or -1
    X[batch.request_of_token, batch.position_of_token] = batch.flat_draft_token_ids
    col = torch.arange(K + 1)[None, :]
    match = (out == X) & (col < k[:, None])
    m = torch.where((~match).any(1), (~match).int().argmax(1), torch.full_like(k, K + 1))  # [B]
    problems = []
    emitted = out.gather(1, m.clamp(max=K)[:, None]).squeeze(1)
    bad_emit = (m > k) | (emitted < 0) | (emitted >= V)
    for r in bad_emit.nonzero().flatten()[:3].tolist():
        kind = ("all drafts appear accepted but no bonus token follows (a dropped bonus token, "
                "or a recovered token equal to the rejected draft, which a correct residual "
                "max(0, p - q) never gives)" if int(m[r]) >= int(k[r])
                and int(emitted[r]) == PLACEHOLDER else "missing or out-of-range emitted token")
        problems.append(f"request {r} (k={int(k[r])}): {kind}: row {out[r].tolist()}, "
                        f"drafts {batch.draft_token_ids[r]}")
    tail = (col > m[:, None]) & (out != PLACEHOLDER)
    for r in tail.any(1).nonzero().flatten()[:3].tolist():
        problems.append(f"request {r} (k={int(k[r])}): tokens after the emitted token at "
                        f"position {int(m[r])} are not placeholders: row {out[r].tolist()}, "
                        f"drafts {batch.draft_token_ids[r]}")
    n_bad = int((bad_emit | tail.any(1)).sum())
    if n_bad:
        raise AssertionError(f"{context}: {n_bad} / {B} rows malformed "
                             f"(placeholder {PLACEHOLDER}, vocab {V}):\n  " + "\n  ".join(problems))


# --------------------------------------------------------------------------- greedy


def check_greedy_exact(backend, batch: SpecBatch, seed: int, context: str,
                       sample=None) -> torch.Tensor:
    """Greedy requests: output equals the oracle's exactly (argmax verification, first mismatch
    replaced by the target argmax, placeholders after it, the argmax bonus token iff every
    draft matched). Random requests in the same batch are checked for structure only.
    `sample(batch, seed)`: the verification method to drive (default backend.sample)."""
    out = (sample or backend.sample)(batch, seed)
    check_structure(batch, out, context)
    ref = rejection_sample(batch, torch.Generator().manual_seed(seed))
    greedy = torch.tensor([p.greedy for p in batch.params])
    diff = ((out != ref) & greedy[:, None]).any(1).nonzero().flatten().tolist()
    if diff:
        rows = [f"request {r}: out {out[r].tolist()} ref {ref[r].tolist()} drafts "
                f"{batch.draft_token_ids[r]}" for r in diff[:4]]
        raise AssertionError(f"{context}: {len(diff)} / {int(greedy.sum())} greedy requests differ "
                             f"from the oracle (V={batch.vocab_size}, seed={seed}):\n  "
                             + "\n  ".join(rows))
    return out


# --------------------------------------------------------------------------- random


def position_results(out: torch.Tensor, p: torch.Tensor, beta: torch.Tensor, alpha: float,
                     label: str, acceptance: bool = True, distribution: bool = True,
                     shift: float = TV_SHIFT) -> list[StatResult]:
    """Per position j (rows of identical requests with k drafts): the emitted token among rows
    that reached j follows p_j (suites.stats.tv_gof); acceptance at j among rows that reached j
    is Binomial(reached, beta_j) (exact binomial)."""
    k = beta.shape[0]
    V = p.shape[1]
    acc = num_accepted(out)  # [N]
    results = []
    for j in range(k + 1):
        reached = acc >= j
        if distribution:
            counts = torch.bincount(out[reached, j].clamp(0, V - 1), minlength=V)[:V].numpy()
            # tokens outside [0, V) are counted by check_structure; here clamped into range
            results.append(tv_gof(counts, p[j].numpy(), alpha,
                                  f"{label}: emitted token at position {j} vs target p_{j}",
                                  tv=shift))
        if acceptance and j < k:
            results.append(binom_test(int((acc >= j + 1).sum()), int(reached.sum()),
                                      float(beta[j]), alpha,
                                      f"{label}: acceptance at position {j} vs closed form",
                                      shift))
    return results


def raise_on_rejections(results: list[StatResult], context: str) -> None:
    bad = [r for r in results if not r.ok]
    if bad:
        raise AssertionError(
            f"{context}: {len(bad)} of {len(results)} statistical comparisons rejected "
            f"(each at its false-positive rate; all together <= {FALSE_POSITIVE_RATE:g}):\n  "
            + "\n  ".join(r.message() for r in bad)
            + "\n  passing: " + "; ".join(f"{r.what.split(': ', 1)[-1]} p={r.p_value:.3g}"
                                         for r in results if r.ok))


def check_random_verification(backend, case: RandomCase, seed: int,
                              ) -> tuple[Plan, list[StatResult]]:
    """The emitted token at every position follows the target distribution, and acceptance
    at every position equals sum(min(p, q)) (or sum(p q) when draft probabilities are absent),
    with false-positive rate <= 1e-6 for the whole check and power POWER per comparison
    against a TV shift of TV_SHIFT / an acceptance shift of RATE_SHIFT."""
    shift = detect_shift(backend)
    pl = plan(case, seed, shift=shift)
    batch = identical_requests_batch(pl, seed)
    context = (f"{backend.name} on {case} seed={seed} N={pl.n_requests} "
               f"beta={[round(float(b), 4) for b in pl.beta]} (sized for shift {shift:g})")
    out = backend.sample(batch, seed)
    check_structure(batch, out, context)
    results = position_results(out, pl.p, pl.beta, pl.alpha, str(case.name), shift=shift)
    raise_on_rejections(results, context)
    return pl, results


def check_target_processing(backend, case: RandomCase, seed: int, n_requests: int = 4,
                            atol: float = 1e-5) -> float:
    """Deterministic: the distributions the backend verifies drafts against equal the oracle's
    processed target distributions (temperature, top-k, top-p) to float32 accuracy."""
    pl = plan(case, seed)
    pl = replace(pl, n_requests=n_requests)
    batch = identical_requests_batch(pl, seed)
    ref = batch_target_probs(batch)[batch.target_rows]
    out = backend.target_probs(batch)
    d = (out.double() - ref).abs()
    worst = float(d.max()) if d.numel() else 0.0
    if not (worst <= atol and torch.isfinite(out).all()):
        r, v = divmod(int(torch.nan_to_num(d, nan=float("inf")).argmax()), batch.vocab_size)
        raise AssertionError(
            f"{backend.name} on {case} seed={seed}: processed target probabilities differ from "
            f"the oracle by {worst:.3e} > {atol:g} (row {r}, token {v}: {float(out[r, v]):.6g} vs "
            f"{float(ref[r, v]):.6g}); non-finite: {int((~torch.isfinite(out)).sum())}; "
            f"params {pl.params}")
    return worst


def position0_acceptance(backend, case: RandomCase, depths: tuple[int, ...], seed: int
                         ) -> list[StatResult]:
    """Position-0 acceptance with k = each of `depths` speculative tokens (the same p_0, q_0)
    is Binomial(N, beta_0) for every k: acceptance at position 0 does not depend on the draft
    depth. One binomial comparison per depth, Bonferroni over depths."""
    kmax = max(depths)
    logits, q = target_and_draft(case.shape, case.vocab_size, kmax, seed)
    params = SamplingParams(case.temperature, case.top_k)
    p = processed_target_probs(logits, [params] * (kmax + 1))
    beta = acceptance_probability(p[:kmax], q.double(), case.draft_probs_known)
    alpha = bonferroni(len(depths))
    beta0 = float(beta[0])
    shift = detect_shift(backend)
    n, _ = _sized(None, beta0, alpha, POWER, shift, f"position-0 acceptance {case}")
    n = _capped(n, f"position-0 acceptance {case}")
    results = []
    for k in depths:
        pl = Plan(replace(case, num_spec_tokens=k), logits[: k + 1], q[:k], params, p[: k + 1],
                  beta[:k], reach_probabilities(beta[:k]), alpha, n)
        batch = identical_requests_batch(pl, stable_seed(seed, k))
        out = backend.sample(batch, stable_seed(seed, k))
        check_structure(batch, out, f"{backend.name} {case} k={k}")
        acc = num_accepted(out)
        results.append(binom_test(int((acc >= 1).sum()), n, beta0, alpha,
                                  f"position-0 acceptance with k={k}", shift))
    raise_on_rejections(results, f"{backend.name} on {case} seed={seed} depths={depths} "
                                 f"beta_0={beta0:.4f}")
    return results


# --------------------------------------------------------------------------- mixed batches


@dataclass(frozen=True)
class RequestTemplate:
    """One kind of request in a mixed batch."""

    k: int
    params: SamplingParams
    shape: str = "random"


def mixed_batch(templates: list[RequestTemplate], copies: int, vocab_size: int, seed: int,
                draft_probs_known: bool = True, shuffle: bool = True
                ) -> tuple[SpecBatch, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """`copies` requests of every template, interleaved in a stable random order.
    Returns (batch, template index of each request [B], [(logits [k+1, V], q [k, V])] per
    template). Drafts are drawn from each template's q."""
    V = vocab_size
    laws = [target_and_draft(t.shape, V, t.k, stable_seed(seed, i)) for i, t in enumerate(templates)]
    which = torch.arange(len(templates)).repeat(copies)
    if shuffle:
        which = which[torch.randperm(len(which), generator=generator("mixed order", seed))]
    g = generator("mixed drafts", seed)
    per_template = []
    for t, (_, q) in zip(templates, laws):
        d = (torch.multinomial(q.double().repeat(copies, 1), 1, True, generator=g).view(copies, t.k)
             if t.k else torch.zeros(copies, 0, dtype=torch.int64))
        per_template.append(d.tolist())
    taken = [0] * len(templates)
    drafts, logits, dprobs, params = [], [], [], []
    for t_idx in which.tolist():
        t = templates[t_idx]
        lg, q = laws[t_idx]
        drafts.append(per_template[t_idx][taken[t_idx]])
        taken[t_idx] += 1
        logits.append(lg)
        dprobs.append(q)
        params.append(t.params)
    draft_probs = torch.cat(dprobs, 0).contiguous() if draft_probs_known else None
    batch = SpecBatch(drafts, torch.cat(logits, 0).contiguous(), params, draft_probs,
                      meta=dict(seed=seed))
    return batch, which, laws


def permute_batch(batch: SpecBatch, perm: list[int]) -> SpecBatch:
    """The same requests in another order (draft probabilities and logits rows move with them)."""
    k = batch.num_draft_tokens
    row0 = np.cumsum([0] + [x + 1 for x in k])
    tok0 = np.cumsum([0, *k])
    rows = [i for r in perm for i in range(row0[r], row0[r + 1])]
    toks = [i for r in perm for i in range(tok0[r], tok0[r + 1])]
    return SpecBatch([batch.draft_token_ids[r] for r in perm], batch.target_logits[rows].contiguous(),
                     [batch.params[r] for r in perm],
                     None if batch.draft_probs is None else batch.draft_probs[toks].contiguous(),
                     meta=dict(batch.meta, permuted=True))


def mixed_plan(templates: list[RequestTemplate], vocab_size: int, seed: int,
               draft_probs_known: bool = True, shift: float = TV_SHIFT
               ) -> tuple[int, float, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """(copies per template, alpha per comparison, {template index: (p [k + 1, V], beta [k])}
    of each random template) for check_mixed_batch: every comparison of every random template
    gets the rows it needs (power asserted), Bonferroni over all of them."""
    random_t = [(i, t) for i, t in enumerate(templates) if not t.params.greedy]
    alpha = bonferroni(sum(2 * t.k + 1 for _, t in random_t))
    copies = 1
    expected = {}
    for i, t in random_t:
        lg, q = target_and_draft(t.shape, vocab_size, t.k, stable_seed(seed, i))
        p = processed_target_probs(lg, [t.params] * (t.k + 1))
        beta = acceptance_probability(p[: t.k], q.double(), draft_probs_known)
        reach = reach_probabilities(beta)
        expected[i] = (p, beta)
        for j in range(t.k + 1):
            what = f"mixed batch template {i} (k={t.k}, {t.params}) position {j}"
            need, _ = _sized(p[j].numpy(), None, alpha, POWER, shift, what)
            copies = max(copies, requests_for(need, float(reach[j])))
            if j < t.k:
                need, _ = _sized(None, float(beta[j]), alpha, POWER, shift, what)
                copies = max(copies, requests_for(need, float(reach[j])))
    _capped(copies * len(templates), f"mixed batch {templates}")
    return copies, alpha, expected


def check_mixed_batch(backend, templates: list[RequestTemplate], vocab_size: int, seed: int,
                      draft_probs_known: bool = True) -> list[StatResult]:
    """A batch mixing greedy and random requests with ragged draft lengths (0 .. max): greedy
    requests exactly equal the oracle; each random template's emitted tokens and acceptance
    per position follow its own closed form. Copies per template are sized for the stated
    power on the hardest template; Bonferroni over every comparison of every template."""
    random_t = [(i, t) for i, t in enumerate(templates) if not t.params.greedy]
    shift = detect_shift(backend)
    copies, alpha, expected = mixed_plan(templates, vocab_size, seed, draft_probs_known, shift)
    batch, which, _ = mixed_batch(templates, copies, vocab_size, seed, draft_probs_known)
    context = (f"{backend.name} mixed batch seed={seed} V={vocab_size} copies={copies} "
               f"templates={[(t.k, t.params.temperature) for t in templates]} "
               f"draft_probs={'given' if draft_probs_known else 'absent'}")
    out = check_greedy_exact(backend, batch, seed, context)
    results = []
    for i, t in random_t:
        rows = (which == i).nonzero().flatten()
        p, beta = expected[i]
        results += position_results(out[rows][:, : t.k + 1], p, beta, alpha,
                                    f"template {i} (k={t.k}, {t.params})", shift=shift)
    raise_on_rejections(results, context)
    return results


def check_seeded_reorder(backend, batch: SpecBatch, seed: int) -> None:
    """With a seed per request, the output of a request depends on neither the batch seed nor
    its position in the batch: sampling twice gives the same rows, and a permuted batch gives
    the permuted rows."""
    context = f"{backend.name} seeded batch B={batch.batch_size} seed={seed}"
    out1 = backend.sample(batch, seed)
    check_structure(batch, out1, context)
    out2 = backend.sample(batch, stable_seed(seed, "other batch seed"))
    if not torch.equal(out1, out2):
        r = (out1 != out2).any(1).nonzero().flatten().tolist()
        raise AssertionError(f"{context}: seeded requests {r[:8]} changed with the batch seed: "
                             f"{out1[r[0]].tolist()} vs {out2[r[0]].tolist()}")
    perm = torch.randperm(batch.batch_size, generator=generator("perm", seed)).tolist()
    out3 = backend.sample(permute_batch(batch, perm), seed)
    if not torch.equal(out3, out1[perm]):
        bad = (out3 != out1[perm]).any(1).nonzero().flatten().tolist()
        raise AssertionError(
            f"{context}: after reordering the batch, {len(bad)} requests changed; first: request "
            f"{perm[bad[0]]} (now at {bad[0]}) gave {out3[bad[0]].tolist()} instead of "
            f"{out1[perm[bad[0]]].tolist()}")


__all__ = [
    "POWER", "SHAPES", "TV_SHIFT", "Plan", "RandomCase", "RequestTemplate", "check_greedy_exact",
    "check_mixed_batch", "check_random_verification", "check_seeded_reorder", "check_structure",
    "check_target_processing", "identical_requests_batch", "mixed_batch", "mixed_plan",
    "permute_batch", "plan", "position0_acceptance", "position_results", "raise_on_rejections",
    "requests_for", "target_and_draft",
]
