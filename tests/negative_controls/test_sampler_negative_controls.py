"""Negative controls: rejection samplers with planted bugs that the suite's own check functions
(suites/mtp/sampler_checks.py) must flag. Two families:

  reference-based   the oracle with one step changed (runs without vLLM)
  vLLM-planted      vLLM's rejection_sample path with one of its own functions patched
                    (skipped when vLLM is not importable)

Bugs: the recovered token drawn from p instead of norm(max(0, p - q)); draft probabilities
ignored (exact in distribution, lower acceptance: only the acceptance comparison can see it);
placeholders forgotten after the first rejection; the bonus token dropped; an acceptance rule
biased towards accepting (u < p/q + 0.05).

And two biases of exactly the size the suite claims to detect (suites.stats: power >= 0.99
against a TV shift of TV_SHIFT and an acceptance shift of RATE_SHIFT): the bonus token drawn
from a law at total variation exactly TV_SHIFT from p_k, the mass moved into the set of tokens
where the test's power is lowest; acceptance at position 0 raised by exactly RATE_SHIFT. One
run misses such a bias with probability <= 1%, so each runs on SHIFT_SEEDS (fixed: the outcome
is deterministic) and may miss once: a suite whose power claim holds fails this with probability
<= P(Binomial(6, 0.01) >= 2) = 1.5e-3 over a fresh choice of seeds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy import special
from scipy import stats as sps

from fixtures.seeds import stable_seed
from reference.speculative import (
    PLACEHOLDER,
    SamplingParams,
    SpecBatch,
    _inverse_cdf,
    _request_uniforms,
    assemble,
    batch_draft_probs,
    batch_target_probs,
)
from suites.backends.oracle import ReferenceRejectionSampler
from suites.mtp.sampler_checks import (
    RandomCase,
    check_greedy_exact,
    check_random_verification,
    plan,
    position0_acceptance,
)
from suites.stats import (
    MIN_EXPECTED,
    POWER,
    RATE_SHIFT,
    TV_SHIFT,
    _binom_critical,
    binom_sample_size,
    bonferroni,
    tv_cells,
    tv_critical,
    x_crit,
)

CASE = RandomCase("negative-control", num_spec_tokens=2)


@dataclass
class BrokenReference(ReferenceRejectionSampler):
    """The oracle's algorithm with one planted bug (see `bug`)."""

    bug: str = "none"
    shift: float = 0.0  # tv_shift_bonus / rate_shift_position0: the size of the planted bias
    tilt: tuple[int, ...] = ()  # tv_shift_bonus: the tokens the shifted mass moves into

    def sample(self, batch: SpecBatch, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        P = batch_target_probs(batch)
        Q = batch_draft_probs(batch)
        if self.bug == "ignores_draft_probs":
            Q = torch.nn.functional.one_hot(batch.flat_draft_token_ids, batch.vocab_size).double()
        x, rows = batch.flat_draft_token_ids, batch.target_rows
        u_acc, u_rec, u_bon = _request_uniforms(batch, g)
        Pt = P[rows]
        p_x = Pt.gather(1, x[:, None]).squeeze(1)
        q_x = Q.gather(1, x[:, None]).squeeze(1)
        bias = 0.05 if self.bug == "biased_acceptance" else 0.0
        accept = u_acc * q_x < p_x + bias * q_x  # u < p/q (+ 0.05 when biased)
        if self.bug == "rate_shift_position0":
            # a rejected draft at position 0 is accepted anyway with probability
            # shift / (1 - beta): P(accept) = beta + shift exactly
            beta = torch.minimum(Pt, Q).sum(-1)
            v = torch.rand(x.shape[0], generator=g, dtype=torch.float64)
            accept |= (batch.position_of_token == 0) & (v * (1.0 - beta) < self.shift)
        residual = Pt if self.bug == "recovers_from_p" else (Pt - Q).clamp_min(0.0)
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, Pt)
        recovered = _inverse_cdf(residual, u_rec)
        greedy = torch.tensor([p.greedy for p in batch.params])[batch.request_of_token]
        amax = Pt.argmax(-1)
        accept = torch.where(greedy, x == amax, accept)
        recovered = torch.where(greedy, amax, recovered)
        Pb = P[batch.bonus_rows]
        if self.bug == "tv_shift_bonus":
            # mass `shift` moved into `tilt`, proportionally on both sides: TV exactly `shift`
            into = torch.zeros(Pb.shape[1], dtype=torch.bool)
            into[list(self.tilt)] = True
            pa = Pb[:, into].sum(-1, keepdim=True)
            Pb = torch.where(into, Pb * (1 + self.shift / pa), Pb * (1 - self.shift / (1 - pa)))
        g_req = torch.tensor([p.greedy for p in batch.params])
        bonus = torch.where(g_req, Pb.argmax(-1), _inverse_cdf(Pb, u_bon))
        if self.bug == "drops_bonus":
            bonus = torch.full_like(bonus, PLACEHOLDER)
        out = assemble(batch, accept, recovered, bonus)
        if self.bug == "forgets_placeholders":
            # keeps writing: every slot after the emitted token repeats the recovered token
            filled = out.clone()
            for c in range(1, out.shape[1]):
                hole = filled[:, c] == PLACEHOLDER
                filled[hole, c] = filled[hole, c - 1].clamp_min(0)
            out = filled
        return out


# --------------------------------------------------------------------------- vLLM-planted


def _vllm_reason() -> str | None:
    from suites.backends.vllm.rejection_sampler import _vllm_cpu_reason

    return _vllm_cpu_reason()


@contextlib.contextmanager
def planted_in_vllm(bug: str):
    """Patch one function of vllm.v1.sample.rejection_sampler for the duration."""
    import vllm.v1.sample.rejection_sampler as rs

    name, orig = None, None
    if bug == "recovers_from_p":
        name, orig = "sample_recovered_tokens", rs.sample_recovered_tokens

        def patched(max_spec_len, num_draft_tokens, cu, draft_ids, draft_probs, *a, **kw):
            zeros = None if draft_probs is None else torch.zeros_like(draft_probs)
            return orig(max_spec_len, num_draft_tokens, cu, draft_ids, zeros, *a, **kw)
    elif bug in ("ignores_draft_probs", "drops_bonus", "forgets_placeholders"):
        name, orig = "rejection_sample", rs.rejection_sample

        def patched(draft_ids, num_draft, max_len, cu, draft_probs, target, bonus, sm, **kw):
            if bug == "ignores_draft_probs":
                draft_probs = None
            if bug == "drops_bonus":
                bonus = torch.full_like(bonus, PLACEHOLDER)
            out = orig(draft_ids, num_draft, max_len, cu, draft_probs, target, bonus, sm, **kw)
            if bug == "forgets_placeholders":
                out = torch.where(out == PLACEHOLDER, torch.zeros_like(out), out)
            return out
    elif bug == "biased_acceptance":
        name, orig = "generate_uniform_probs", rs.generate_uniform_probs

        def patched(*a, **kw):
            return orig(*a, **kw) * 0.9  # accept when p/q >= 0.9 u: more often than min(1, p/q)
    else:
        raise ValueError(bug)
    setattr(rs, name, patched)
    try:
        yield
    finally:
        setattr(rs, name, orig)


# --------------------------------------------------------------------------- the controls

# bug -> (which check, what its message must say)
CONTROLS = {
    "recovers_from_p": ("random", r"emitted token at position 0 vs target|recovered token equal "
                                  r"to the rejected draft"),
    "ignores_draft_probs": ("random", r"acceptance at position 0 vs closed form"),
    "biased_acceptance": ("random", r"acceptance at position \d vs closed form"),
    "forgets_placeholders": ("greedy", r"are not placeholders"),
    "drops_bonus": ("greedy", r"no bonus token follows"),
}


def _greedy_batch() -> SpecBatch:
    V, k = 16, 3
    g = torch.Generator().manual_seed(stable_seed("negative-control greedy"))
    logits = torch.randn(4 * (k + 1), V, generator=g)
    amax = logits.argmax(-1).view(4, k + 1)
    drafts = [amax[0, :k].tolist(),  # all accepted -> bonus
              amax[1, :k].tolist(),
              [int(amax[2, 0]), (int(amax[2, 1]) + 1) % V, int(amax[2, 2])],  # rejected at 1
              [(int(amax[3, 0]) + 1) % V, *amax[3, 1:k].tolist()]]  # rejected at 0
    return SpecBatch(drafts, logits, [SamplingParams(0.0)] * 4)


def _run_check(backend, check: str) -> None:
    if check == "random":
        check_random_verification(backend, CASE, stable_seed("negative control", CASE.name))
    else:
        check_greedy_exact(backend, _greedy_batch(), 7, f"{backend.name} greedy control")


def test_unbroken_controls_pass():
    """The harness itself: the unbroken variant passes both checks (so a caught bug is the
    bug, not the harness)."""
    ok = BrokenReference(name="reference.unbroken", bug="none")
    _run_check(ok, "random")
    _run_check(ok, "greedy")


@pytest.mark.parametrize("bug", list(CONTROLS))
def test_reference_based_control_is_caught(bug):
    check, pattern = CONTROLS[bug]
    broken = BrokenReference(name=f"reference.broken.{bug}", bug=bug)
    with pytest.raises(AssertionError, match=pattern):
        _run_check(broken, check)


@pytest.mark.parametrize("bug", list(CONTROLS))
def test_vllm_planted_control_is_caught(bug):
    reason = _vllm_reason()
    if reason:
        pytest.skip(reason)
    from suites.backends import REGISTRY

    backend = REGISTRY.get("vllm.rejection_sample")
    check, pattern = CONTROLS[bug]
    with planted_in_vllm(bug), pytest.raises(AssertionError, match=pattern):
        _run_check(backend, check)


# --------------------------------------------------------------------------- at the claimed shift

SHIFT_SEEDS = [stable_seed("exact-shift control", i) for i in range(6)]
ALLOWED_MISSES = 1  # of 6: P(Binomial(6, 1 - POWER) > 1) = 1.5e-3 when the power claim holds


def _weakest_tilt(case: RandomCase, seed: int) -> tuple[tuple[int, ...], float, float]:
    """(tokens, expected rows, detection bound) for a TV_SHIFT bias of the bonus position: among
    tokens frequent enough to be cells of their own at the rows the plan sizes the position for
    (so the shift is exactly TV_SHIFT on the cells the check pools), the set whose mass makes
    the subset test's power lowest; the bound is P(Binomial(n, pi + TV_SHIFT) >= x_crit(pi))."""
    pl = plan(case, seed)
    k = case.num_spec_tokens
    p = pl.p[k].numpy()
    need = pl.n_needed[2 * k]  # rows the position-k distribution comparison is sized for
    n = int(pl.n_requests * float(pl.reach[k]))
    tokens = [int(i) for i in np.nonzero(p * need >= MIN_EXPECTED)[0]]
    c = tv_critical(len(tv_cells(p, n)), pl.alpha)
    codes = np.arange(1, 2 ** len(tokens) - 1)
    masks = (codes[:, None] >> np.arange(len(tokens))[None, :]) & 1 == 1  # [sets, tokens]
    pi = masks.astype(np.float64) @ p[tokens]
    pi = np.where(pi <= 1 - TV_SHIFT, pi, np.nan)  # no room to move TV_SHIFT into the set
    power = special.bdtrc(x_crit(n, np.nan_to_num(pi), c) - 1, n, np.minimum(pi + TV_SHIFT, 1))
    w = int(np.nanargmin(np.where(np.isnan(pi), np.nan, power)))
    best = (float(power[w]), tuple(t for t, m in zip(tokens, masks[w]) if m))
    # the planted law on the cells the check pools at n rows: TV exactly TV_SHIFT
    into = np.zeros(len(p), dtype=bool)
    into[list(best[1])] = True
    pa = p[into].sum()
    alt = np.where(into, p * (1 + TV_SHIFT / pa), p * (1 - TV_SHIFT / (1 - pa)))
    cells = tv_cells(p, min(n, need))
    assert 0.5 * sum(abs(alt[cl].sum() - p[cl].sum()) for cl in cells) == pytest.approx(
        TV_SHIFT, abs=1e-12)
    return best[1], n, best[0]


def test_tv_shift_of_exactly_the_claimed_size_is_caught():
    """The bonus token from a law at TV exactly TV_SHIFT from p_k (the weakest direction for
    the test): the suite's random-verification check rejects the position-k comparison on at
    least 5 of the 6 fixed seeds."""
    caught, bounds = [], []
    for seed in SHIFT_SEEDS:
        tilt, n, bound = _weakest_tilt(CASE, seed)
        bounds.append(round(bound, 4))
        assert bound >= POWER, (seed, tilt, n, bound)
        broken = BrokenReference(name="reference.broken.tv_shift_bonus", bug="tv_shift_bonus",
                                 shift=TV_SHIFT, tilt=tilt)
        try:
            check_random_verification(broken, CASE, seed)
            caught.append(False)
        except AssertionError as e:
            caught.append(f"emitted token at position {CASE.num_spec_tokens} vs target" in str(e))
    assert caught.count(False) <= ALLOWED_MISSES, (caught, bounds)


def test_rate_shift_of_exactly_the_claimed_size_is_caught():
    """Acceptance at position 0 raised by exactly RATE_SHIFT: the suite's position-0 check (one
    depth, so one comparison sized to power POWER exactly) rejects on at least 5 of the 6 fixed
    seeds; the exact probability of catching it is printed by the assertion."""
    case = RandomCase("rate-control", num_spec_tokens=2)
    caught, powers = [], []
    for seed in SHIFT_SEEDS:
        pl = plan(case, seed)
        beta0, alpha = float(pl.beta[0]), bonferroni(1)
        n = binom_sample_size(beta0, alpha, delta=RATE_SHIFT)
        lo, hi = _binom_critical(n, beta0, alpha)
        powers.append(round(float(sps.binom.sf(hi - 1, n, beta0 + RATE_SHIFT)
                                  + sps.binom.cdf(lo, n, beta0 + RATE_SHIFT)), 4))
        assert powers[-1] >= POWER
        broken = BrokenReference(name="reference.broken.rate_shift_position0",
                                 bug="rate_shift_position0", shift=RATE_SHIFT)
        try:
            position0_acceptance(broken, case, (2,), seed)
            caught.append(False)
        except AssertionError as e:
            caught.append("position-0 acceptance with k=2" in str(e))
    assert caught.count(False) <= ALLOWED_MISSES, (caught, powers)


def test_exact_shift_controls_are_unbiased_at_zero():
    """The same planted code paths with a zero shift pass both checks (the shift, not the
    plumbing, is what gets caught)."""
    seed = SHIFT_SEEDS[0]
    tilt, _, _ = _weakest_tilt(CASE, seed)
    check_random_verification(BrokenReference(name="reference.tilt0", bug="tv_shift_bonus",
                                              shift=0.0, tilt=tilt), CASE, seed)
    position0_acceptance(BrokenReference(name="reference.rate0", bug="rate_shift_position0",
                                         shift=0.0), RandomCase("rate-control", num_spec_tokens=2),
                         (2,), seed)
