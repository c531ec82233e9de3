"""Checks of the verification methods Model Runner V2 adds to the rejection sampler (vLLM's
`rejection_sample_method`): "block" (Sun et al. 2024, reference/block_verification.py) and
"synthetic" (acceptance at configured rates), as plain functions of a backend, shared by the
suites (suites/mtp/test_v2_*.py) and the negative controls
(tests/negative_controls/test_v2_method_negative_controls.py).

A backend takes part when it lists the method in `verification_methods` (vLLM V2's adapter,
suites/backends/vllm/v2_rejection_sampler.py; the fp64 oracle as a backend) and offers
`sample_block(batch, seed)` / `sample_synthetic(batch, seed, rates)`. Also here: the
seeded-independence check for every method (run_method, check_seeded_independence) and
ragged batches cut from identical ones (ragged: requests with zero drafts beside k).

Statistical laws follow suites/stats.py: false-positive rate <= FALSE_POSITIVE_RATE (1e-6) per
check (Bonferroni over its comparisons, each a subset test or an exact binomial test whose
rate is proven, not asymptotic), power >= POWER per comparison against the backend's
detect_shift (TV on the test's cells / absolute acceptance shift); the sample sizes follow from
those and the power at them is asserted (require_power).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from fixtures.seeds import generator
from reference.block_verification import (
    BlockVerificationConfig,
    PrefixModel,
    accepted_length_law,
    completed_law,
    expected_accepted_length,
    output_law,
    target_sequence_law,
)
from reference.speculative import (
    PLACEHOLDER,
    SamplingParams,
    SpecBatch,
    processed_target_probs,
)
from suites.mtp.sampler_checks import (
    _capped,
    check_greedy_exact,
    check_structure,
    detect_shift,
    raise_on_rejections,
)
from suites.stats import (
    FALSE_POSITIVE_RATE,
    POWER,
    StatResult,
    bonferroni,
    require_power,
    tv_gof,
    tv_plan,
    tv_plan_power,
)


def methods(backend) -> tuple[str, ...]:
    """The rejection_sample_method values a backend drives ("standard" for every sampler)."""
    return tuple(getattr(backend, "verification_methods", ("standard",)))


# --------------------------------------------------------------------------- block cases


@dataclass(frozen=True)
class BlockCase:
    """Many requests of one autoregressive target and drafter over a small vocabulary, whose
    conditionals depend on the whole prefix (tables drawn from `seed`): each request's rows
    are M_b(. | X^i), M_s(. | X^i) along its own drafts, as an engine computes them."""

    name: str
    vocab_size: int = 4
    num_spec_tokens: int = 2  # gamma
    scale: float = 2.0  # logits ~ N(0, scale^2) per prefix, target and drafter independent
    seed: int = 22
    draft_probs_known: bool = True
    temperature: float = 1.0

    def __str__(self) -> str:
        return (f"{self.name}(V={self.vocab_size}, gamma={self.num_spec_tokens}, "
                f"scale={self.scale}, tables={self.seed}, draft_probs="
                f"{'given' if self.draft_probs_known else 'absent'}, T={self.temperature})")

    @property
    def config(self) -> BlockVerificationConfig:
        return BlockVerificationConfig(self.vocab_size, self.num_spec_tokens,
                                       self.draft_probs_known)

    @property
    def params(self) -> SamplingParams:
        return SamplingParams(self.temperature)


def _table(case: BlockCase, who: str, prefix: tuple[int, ...]) -> torch.Tensor:  # [V] float32
    g = generator("block case", who, case.seed, case.vocab_size, prefix)
    return (case.scale * torch.randn(case.vocab_size, generator=g, dtype=torch.float64)).float()


def target_logits(case: BlockCase, prefix: tuple[int, ...]) -> torch.Tensor:
    """The target's float32 logits after `prefix` (what the sampler is given)."""
    return _table(case, "target", prefix)


def draft_probs(case: BlockCase, prefix: tuple[int, ...]) -> torch.Tensor:
    """The drafter's float32 probabilities after `prefix` (what it sampled from)."""
    q = torch.softmax(_table(case, "draft", prefix).double(), -1).float()
    return q / q.sum()


def block_models(case: BlockCase) -> tuple[PrefixModel, PrefixModel]:
    """(target, drafter) as the oracle sees them: the target's processed distribution of its
    float32 logits (temperature), the drafter's float32 probabilities, in float64."""
    cache: dict = {}

    def target(prefix):
        if ("t", prefix) not in cache:
            cache["t", prefix] = processed_target_probs(target_logits(case, prefix)[None],
                                                        [case.params])[0]
        return cache["t", prefix]

    def drafter(prefix):
        if ("d", prefix) not in cache:
            q = draft_probs(case, prefix).double()  # the law drafts are drawn from:
            cache["d", prefix] = q / q.sum()  # the float32 row, normalized in float64
        return cache["d", prefix]

    return PrefixModel(target), PrefixModel(drafter)


def block_batch(case: BlockCase, n: int, seed: int, params: SamplingParams | None = None
                ) -> SpecBatch:
    """n requests: drafts drawn sequentially from the drafter (stable generator), each with
    its own rows along its drafts."""
    g = generator("block drafts", str(case), seed)
    k = case.num_spec_tokens
    drafts, logits, dprobs = [], [], []
    for _ in range(n):
        xs: list[int] = []
        for _i in range(k):
            q = draft_probs(case, tuple(xs))
            dprobs.append(q)
            xs.append(int(torch.multinomial(q.double(), 1, generator=g)))
        drafts.append(xs)
        logits += [target_logits(case, tuple(xs[:i])) for i in range(k + 1)]
    return SpecBatch(drafts, torch.stack(logits).contiguous(), [params or case.params] * n,
                     torch.stack(dprobs).contiguous() if case.draft_probs_known else None,
                     meta=dict(case=str(case), seed=seed))


def _all_outputs(V: int, gamma: int) -> list[tuple[int, ...]]:
    """Every possible output (X_1 .. X_tau, Y): lengths 1 .. gamma + 1."""
    return [xs for n in range(1, gamma + 2) for xs in itertools.product(range(V), repeat=n)]


@dataclass
class BlockPlan:
    case: BlockCase
    outputs: list[tuple[int, ...]]  # cells of the output law
    output_probs: np.ndarray  # [len(outputs)] exact law of the output (oracle)
    sequences: list[tuple[int, ...]]  # V^(gamma + 1)
    target_probs: np.ndarray  # [V^(gamma + 1)] the target's sequence law
    tau_probs: np.ndarray  # [gamma + 1] closed form P(tau = i), block verification
    token_tau_probs: np.ndarray  # [gamma + 1] the same for token-wise verification
    alpha: float
    n_requests: int
    power: list[float]

    @property
    def expected_block(self) -> float:
        return expected_accepted_length(torch.from_numpy(self.tau_probs))

    @property
    def expected_token(self) -> float:
        return expected_accepted_length(torch.from_numpy(self.token_tau_probs))


def block_plan(case: BlockCase, shift: float, budget: float = FALSE_POSITIVE_RATE,
               power: float = POWER) -> BlockPlan:
    """Exact laws of the case and the requests that give every comparison `power` against a
    TV shift of `shift` on its cells (Bonferroni over three comparisons)."""
    cfg = case.config
    target, drafter = block_models(case)
    out_law = output_law(cfg, target, drafter)
    tgt_law = target_sequence_law(cfg, target)
    # the oracle's own guarantee, before anything is held to it (tests/oracles checks it widely)
    done = completed_law(cfg, out_law, target)
    gap = max(abs(done.get(z, 0.0) - tgt_law.get(z, 0.0)) for z in set(done) | set(tgt_law))
    assert gap < 1e-12, f"{case}: the oracle's completed output law is off the target by {gap}"
    outputs = _all_outputs(case.vocab_size, case.num_spec_tokens)
    sequences = list(itertools.product(range(case.vocab_size), repeat=case.num_spec_tokens + 1))
    out_p = np.array([out_law.get(z, 0.0) for z in outputs])
    tgt_p = np.array([tgt_law.get(z, 0.0) for z in sequences])
    tau = accepted_length_law(cfg, target, drafter).numpy()
    tok = accepted_length_law(cfg, target, drafter, "token").numpy()
    alpha = bonferroni(3, budget)
    n, powers = 1, []
    for what, probs in (("output law", out_p), ("completed law", tgt_p),
                        ("accepted length", tau)):
        need = tv_plan(probs, alpha, power, tv=shift)
        powers.append(require_power(tv_plan_power(probs, need, alpha, shift),
                                    f"{case}: {what} vs TV shift {shift}", power))
        n = max(n, need)
    return BlockPlan(case, outputs, out_p, sequences, tgt_p, tau, tok, alpha,
                     _capped(n, str(case)), powers)


def output_rows(out: torch.Tensor) -> list[tuple[int, ...]]:
    """Each row's emitted tokens (up to the first placeholder)."""
    rows = []
    for row in out.tolist():
        n = row.index(PLACEHOLDER) if PLACEHOLDER in row else len(row)
        rows.append(tuple(row[:n]))
    return rows


def complete(case: BlockCase, rows: list[tuple[int, ...]], seed: int) -> list[tuple[int, ...]]:
    """Each output continued to gamma + 1 tokens by sampling from the target (the test's own
    generator): validity says the result follows the target's sequence law."""
    target, _ = block_models(case)
    g = generator("block completion", str(case), seed)
    n = case.num_spec_tokens + 1
    done = []
    for zs in rows:
        zs = list(zs)
        while len(zs) < n:
            zs.append(int(torch.multinomial(target.conditional(tuple(zs)), 1, generator=g)))
        done.append(tuple(zs))
    return done


def _counts(rows: list[tuple[int, ...]], cells: list[tuple[int, ...]]) -> np.ndarray:
    """Counts over cells; a row that is no cell (malformed) counts in a zero-probability
    extra cell, so the test fails on it."""
    index = {z: i for i, z in enumerate(cells)}
    c = np.zeros(len(cells) + 1)
    for z in rows:
        c[index.get(z, len(cells))] += 1
    return c


def check_block_verification(backend, case: BlockCase, seed: int
                             ) -> tuple[BlockPlan, list[StatResult], float]:
    """Block verification's laws on N requests of `case`: the output (X_1 .. X_tau, Y) follows
    the oracle's exact law; each output continued by target sampling follows the target's
    sequence law (validity: the emitted tokens are target samples); the accepted length tau
    follows the closed form P(tau >= i) = E[p_i(X^i)]. Subset tests, false-positive rate <= 1e-6
    for the three together, power POWER each against a TV shift of the backend's detect_shift.
    Returns (plan, results, observed mean accepted length)."""
    shift = detect_shift(backend)
    pl = block_plan(case, shift)
    batch = block_batch(case, pl.n_requests, seed)
    context = (f"{backend.name} block verification on {case} seed={seed} N={pl.n_requests} "
               f"E[tau] block {pl.expected_block:.4f} vs token-wise {pl.expected_token:.4f} "
               f"(sized for shift {shift:g})")
    out = backend.sample_block(batch, seed)
    check_structure(batch, out, context)
    rows = output_rows(out)
    taus = np.array([len(z) - 1 for z in rows])
    results = [
        tv_gof(_counts(rows, pl.outputs), np.append(pl.output_probs, 0.0), pl.alpha,
               "output law (X_1..X_tau, Y) vs the oracle's exact law", shift),
        tv_gof(_counts(complete(case, rows, seed), pl.sequences), np.append(pl.target_probs, 0.0),
               pl.alpha, "output continued by target sampling vs the target's sequence law",
               shift),
        tv_gof(np.bincount(taus, minlength=case.num_spec_tokens + 1).astype(float),
               pl.tau_probs, pl.alpha, "accepted length vs P(tau >= i) = E[p_i]", shift),
    ]
    raise_on_rejections(results, context)
    return pl, results, float(taus.mean())


def block_greedy_batch(case: BlockCase, n: int, seed: int) -> SpecBatch:
    """Greedy requests (temperature 0) of the case: block verification of a point-mass target
    is greedy verification (p_i is 1 up to the first mismatch and 0 after)."""
    return block_batch(case, n, seed, SamplingParams(temperature=0.0))


def check_block_greedy_exact(backend, batch: SpecBatch, seed: int, context: str) -> torch.Tensor:
    """Every greedy request verified with the block method equals the oracle's greedy row
    (reference.speculative.rejection_sample) exactly."""
    out = check_greedy_exact(backend, batch, seed, context, sample=backend.sample_block)
    n_bonus = int((out[:, -1] != PLACEHOLDER).sum())
    if not 0 < n_bonus < batch.batch_size:
        raise AssertionError(f"{context}: the batch does not exercise both outcomes "
                             f"({n_bonus} / {batch.batch_size} rows got a bonus token)")
    return out


# --------------------------------------------------------------------------- synthetic rates


@dataclass(frozen=True)
class SyntheticCase:
    """Many identical requests verified at configured rates (vLLM's synthetic_acceptance_rates:
    unconditional, one per position, non-increasing), with target and draft distributions of
    a named shape (sampler_checks.target_and_draft) that the rates must not depend on."""

    name: str
    rates: tuple[float, ...]  # unconditional P(first i + 1 drafts accepted); k = len(rates)
    vocab_size: int = 16
    shape: str = "random"
    temperature: float = 1.0  # 0.0: greedy requests
    draft_probs_known: bool = True

    def __str__(self) -> str:
        return (f"{self.name}(rates={list(self.rates)}, V={self.vocab_size}, shape={self.shape}, "
                f"T={self.temperature}, draft_probs="
                f"{'given' if self.draft_probs_known else 'absent'})")


@dataclass
class SyntheticPlan:
    case: SyntheticCase
    conditional: list[float]  # c_i the verifier must accept position i with
    reach: list[float]  # P(position i reached) = r_{i-1}
    alpha: float
    n_requests: int
    power: list[float]


def synthetic_plan(case: SyntheticCase, shift: float, budget: float = FALSE_POSITIVE_RATE,
                   power: float = POWER) -> SyntheticPlan:
    """Requests giving each position's acceptance test (exact binomial, Bonferroni over the
    positions that can be reached) `power` against an absolute shift `shift`, and enough
    requests that every position is reached that often but with probability SHORTFALL."""
    from reference.speculative import unconditional_to_conditional_rates
    from suites.mtp.sampler_checks import _sized, requests_for

    c = unconditional_to_conditional_rates(list(case.rates))
    reach = [1.0, *case.rates[:-1]]
    live = [i for i, r in enumerate(reach) if r > 0.0]
    alpha = bonferroni(len(live), budget)
    n, powers = 1, []
    for i in live:
        need, pw = _sized(None, c[i], alpha, power, shift, f"{case} position {i}")
        powers.append(pw)
        n = max(n, requests_for(need, reach[i]))
    return SyntheticPlan(case, c, reach, alpha, _capped(n, str(case)), powers)


def synthetic_batch(case: SyntheticCase, n: int, seed: int) -> SpecBatch:
    from suites.mtp.sampler_checks import target_and_draft

    k = len(case.rates)
    logits, q = target_and_draft(case.shape, case.vocab_size, k, seed)
    g = generator("synthetic drafts", str(case), seed)
    drafts = torch.multinomial(q.double().repeat(n, 1), 1, replacement=True, generator=g)
    return SpecBatch(drafts.view(n, k).tolist(), logits.repeat(n, 1).contiguous(),
                     [SamplingParams(case.temperature)] * n,
                     q.repeat(n, 1).contiguous() if case.draft_probs_known else None,
                     meta=dict(case=str(case), seed=seed))


def check_counted_structure(batch: SpecBatch, out: torch.Tensor, context: str) -> None:
    """Every row is its first L - 1 drafts, one token in [0, V), then placeholders, with
    1 <= L <= k + 1 (L counted as the non-placeholder tokens). Synthetic acceptance does not
    look at p and q, so the token after a rejection may equal the rejected draft (the residual
    max(0, p - q) is positive there, or the greedy argmax is the draft): unlike
    check_structure, the accepted count is read from L, not from where drafts stop matching."""
    B, K, V = batch.batch_size, batch.max_spec_len, batch.vocab_size
    if tuple(out.shape) != (B, K + 1):
        raise AssertionError(f"{context}: output shape {tuple(out.shape)} != ({B}, {K + 1})")
    problems = []
    for r, (row, xs) in enumerate(zip(out.tolist(), batch.draft_token_ids)):
        L = sum(t != PLACEHOLDER for t in row)
        ok = (1 <= L <= len(xs) + 1 and all(t != PLACEHOLDER for t in row[:L])
              and row[: L - 1] == xs[: L - 1] and 0 <= row[L - 1] < V)
        if not ok:
            problems.append(f"request {r}: row {row}, drafts {xs}")
    if problems:
        raise AssertionError(f"{context}: {len(problems)} / {B} rows malformed (placeholder "
                             f"{PLACEHOLDER}, vocab {V}):\n  " + "\n  ".join(problems[:4]))


def check_synthetic_rates(backend, case: SyntheticCase, seed: int
                          ) -> tuple[SyntheticPlan, list[StatResult]]:
    """Synthetic verification: at every position i that can be reached, the share of the
    requests reaching i that accept draft i is Binomial(reached, c_i), c_i the configured
    conditional rate (exact two-sided binomial tests, false-positive rate <= 1e-6 for them
    together, power POWER each against the backend's detect_shift); a position the rates make
    unreachable is never reached; greedy requests emit the target argmax after the first
    rejection and as the bonus token (exact)."""
    from reference.acceptance import num_accepted
    from suites.stats import binom_test

    shift = detect_shift(backend)
    pl = synthetic_plan(case, shift)
    batch = synthetic_batch(case, pl.n_requests, seed)
    k = len(case.rates)
    context = (f"{backend.name} synthetic rates on {case} seed={seed} N={pl.n_requests} "
               f"conditional={[round(x, 4) for x in pl.conditional]} (sized for shift {shift:g})")
    out = backend.sample_synthetic(batch, seed, list(case.rates))
    check_counted_structure(batch, out, context)
    acc = num_accepted(out)
    results = []
    for i in range(k):
        reached = int((acc >= i).sum())
        if pl.reach[i] == 0.0:
            if reached:
                raise AssertionError(f"{context}: {reached} requests reached position {i}, "
                                     f"which rates {list(case.rates)} make unreachable")
            continue
        results.append(binom_test(int((acc >= i + 1).sum()), reached, pl.conditional[i],
                                  pl.alpha, f"acceptance at position {i} vs c_{i}", shift))
    raise_on_rejections(results, context)
    if case.temperature == 0.0:
        amax = batch.target_logits[: k + 1].argmax(-1)  # [k + 1] every request's rows
        last = out.gather(1, acc[:, None]).squeeze(1)
        bad = (last != amax[acc]).nonzero().flatten().tolist()
        if bad:
            r = bad[0]
            raise AssertionError(f"{context}: {len(bad)} greedy requests emitted a token other "
                                 f"than the target argmax after {int(acc[r])} accepted drafts: "
                                 f"row {out[r].tolist()}, argmax {amax.tolist()}")
    return pl, results


# --------------------------------------------------------------------------- seeds


def run_method(backend, method: str, batch: SpecBatch, seed: int,
               rates: tuple[float, ...] = ()) -> torch.Tensor:
    """The backend's verification of `batch` by `method` ("standard", "block", "synthetic":
    then `rates` are the unconditional rates, cut to the batch's num_speculative_steps)."""
    if method == "standard":
        return backend.sample(batch, seed)
    if method == "block":
        return backend.sample_block(batch, seed)
    if method == "synthetic":
        return backend.sample_synthetic(batch, seed, list(rates[: max(1, batch.max_spec_len)]))
    raise ValueError(f"unknown method {method!r}")


def ragged(batch: SpecBatch, ks: list[int]) -> SpecBatch:
    """Request r cut to its first ks[r] drafts: its target rows 0 .. ks[r] (row ks[r], M_b(. |
    X^{ks[r]}), is then its bonus position) and draft rows 0 .. ks[r] - 1."""
    k = batch.num_draft_tokens
    row0 = np.cumsum([0] + [x + 1 for x in k])
    tok0 = np.cumsum([0, *k])
    rows = [i for r, n in enumerate(ks) for i in range(row0[r], row0[r] + n + 1)]
    toks = [i for r, n in enumerate(ks) for i in range(tok0[r], tok0[r] + n)]
    return SpecBatch([d[:n] for d, n in zip(batch.draft_token_ids, ks)],
                     batch.target_logits[rows].contiguous(), list(batch.params),
                     None if batch.draft_probs is None else batch.draft_probs[toks].contiguous(),
                     meta=dict(batch.meta, ragged=ks))


def subset(batch: SpecBatch, keep: list[int]) -> SpecBatch:
    """Requests `keep` of the batch, in that order (their rows move with them)."""
    from suites.mtp.sampler_checks import permute_batch

    return permute_batch(batch, keep)


def check_seeded_independence(backend, method: str, batch: SpecBatch, seed: int,
                              rates: tuple[float, ...] = ()) -> torch.Tensor:
    """Every request has its own seed: its output is the same whatever the batch seed, wherever
    it stands in the batch (a permutation), and whoever its neighbours are (every other request
    alone, in a batch whose draft depth may be smaller)."""
    from fixtures.seeds import stable_seed as _stable
    from suites.mtp.sampler_checks import permute_batch

    assert all(p.seed is not None for p in batch.params), "every request needs a seed"
    context = f"{backend.name} {method} seeded batch B={batch.batch_size} seed={seed}"
    structure = check_counted_structure if method == "synthetic" else check_structure
    out = run_method(backend, method, batch, seed, rates)
    structure(batch, out, context)

    def same(other: torch.Tensor, rows: list[int], how: str) -> None:
        width = min(other.shape[1], out.shape[1])
        ref = out[rows]
        pad_ok = bool((ref[:, width:] == PLACEHOLDER).all()) and bool(
            (other[:, width:] == PLACEHOLDER).all())
        diff = (other[:, :width] != ref[:, :width]).any(1).nonzero().flatten().tolist()
        if diff or not pad_ok:
            i = diff[0] if diff else 0
            raise AssertionError(
                f"{context}: {how}: {len(diff)} requests changed; first: request {rows[i]} gave "
                f"{other[i].tolist()} instead of {ref[i].tolist()} (drafts "
                f"{batch.draft_token_ids[rows[i]]})")

    B = batch.batch_size
    same(run_method(backend, method, batch, _stable(seed, "other batch seed"), rates),
         list(range(B)), "with another batch seed")
    perm = torch.randperm(B, generator=generator("seeded perm", seed)).tolist()
    same(run_method(backend, method, permute_batch(batch, perm), seed, rates), perm,
         "after reordering the batch")
    keep = list(range(1, B, 2))
    same(run_method(backend, method, subset(batch, keep), seed, rates), keep,
         "without its neighbours (every other request alone)")
    return out


__all__ = [
    "BlockCase", "BlockPlan", "SyntheticCase", "SyntheticPlan", "block_batch",
    "block_greedy_batch", "block_models", "block_plan", "check_block_greedy_exact",
    "check_block_verification", "check_counted_structure", "check_seeded_independence",
    "check_synthetic_rates", "complete", "methods", "output_rows", "ragged", "run_method",
    "subset", "synthetic_batch", "synthetic_plan",
]
