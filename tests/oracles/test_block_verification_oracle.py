"""The block-verification oracle (reference/block_verification.py) against independent
computations: the paper's validity (an output continued by target sampling is a target sample)
checked exactly over every sequence; one draft (gamma = 1), where block verification is
token-wise verification, against reference/speculative.py's brute force; the closed form of
the accepted length (P(tau >= i) = E[p_i]) against the enumeration of the thresholds h_i;
block's expected accepted length >= token-wise's, per prefix and in expectation, the
token-wise closed form against Leviathan's prod beta; and an independent Monte Carlo
implementation of Algorithm 2 (written here from the paper, its own random numbers) against the
exact output law, as the fp64 sampler the suite registers as a backend."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from fixtures.seeds import stable_seed
from reference.block_verification import (
    BlockVerificationConfig,
    PrefixModel,
    accepted_length_law,
    completed_law,
    expected_accepted_length,
    joint_ratios,
    output_law,
    target_sequence_law,
    verifier_draft_rows,
)
from reference.speculative import acceptance_probability, enumerate_outcomes, reach_probabilities
from suites.stats import bonferroni, tv_gof


def _model(V: int, who: str, seed: int, scale: float = 1.5, zeros: bool = False) -> PrefixModel:
    """Conditionals drawn per prefix; zeros: some tokens impossible (probability exactly 0)."""
    cache: dict = {}

    def cond(prefix):
        if prefix not in cache:
            g = torch.Generator().manual_seed(stable_seed("block oracle", who, seed, V, prefix))
            x = scale * torch.randn(V, generator=g, dtype=torch.float64)
            if zeros:
                x[torch.rand(V, generator=g) < 0.3] = float("-inf")
                x[int(torch.randint(V, (1,), generator=g))] = 0.0  # at least one possible
            cache[prefix] = torch.softmax(x, 0)
        return cache[prefix]

    return PrefixModel(cond)


CASES = [(2, 1, True), (3, 2, True), (4, 2, True), (3, 3, True), (2, 4, True), (3, 2, False),
         (4, 3, False)]


def _tau_marginal(law: dict, gamma: int) -> torch.Tensor:
    tau = torch.zeros(gamma + 1, dtype=torch.float64)
    for zs, w in law.items():
        tau[len(zs) - 1] += w
    return tau


@pytest.mark.parametrize("zeros", [False, True], ids=["dense", "with-impossible-tokens"])
@pytest.mark.parametrize("V,gamma,known", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_output_continued_by_the_target_is_a_target_sample(V, gamma, known, seed, zeros):
    """Validity (the paper's Definition 1), exactly: for every z in V^(gamma + 1),
    sum_l P(output = z_1..z_l) prod_{j > l} M_b(z_j | z^{j-1}) = prod_j M_b(z_j | z^{j-1});
    the output law is a distribution."""
    cfg = BlockVerificationConfig(V, gamma, known)
    target, drafter = _model(V, "t", seed, zeros=zeros), _model(V, "d", seed, zeros=zeros)
    law = output_law(cfg, target, drafter)
    assert abs(sum(law.values()) - 1.0) < 1e-12
    done, want = completed_law(cfg, law, target), target_sequence_law(cfg, target)
    gap = max(abs(done.get(z, 0.0) - want.get(z, 0.0)) for z in set(done) | set(want))
    assert gap < 1e-12, gap


@pytest.mark.parametrize("known", [True, False], ids=["q-given", "q-absent"])
@pytest.mark.parametrize("V", [2, 3, 5])
def test_one_draft_is_token_wise_verification(V, known):
    """gamma = 1: h_1 = p_1 = min(1, M_b / M_s) and the residual is max(M_b - M_s, 0): the
    output law equals reference/speculative.py's brute force (a bonus row that does not
    depend on the draft, as that oracle's layout has it)."""
    g = torch.Generator().manual_seed(stable_seed("gamma 1", V, known))
    p = torch.softmax(1.5 * torch.randn(2, V, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(1, V, generator=g, dtype=torch.float64), -1)
    target = PrefixModel(lambda pre: p[len(pre)])
    drafter = PrefixModel(lambda pre: q[len(pre)])
    law = output_law(BlockVerificationConfig(V, 1, known), target, drafter)
    ref = enumerate_outcomes(p, q, known)
    gap = max(abs(law.get(z, 0.0) - ref.get(z, 0.0)) for z in set(law) | set(ref))
    assert gap < 1e-12, gap


@pytest.mark.parametrize("V,gamma,known", CASES)
def test_closed_form_accepted_length_equals_the_enumerated_thresholds(V, gamma, known):
    """P(tau = i) from P(tau >= i) = E[p_i(X^i)] (no thresholds) equals the tau marginal of the
    output law enumerated through h_i = r_i / (r_i + 1 - p_i) and tau = last i with eta_i <= h_i."""
    cfg = BlockVerificationConfig(V, gamma, known)
    for seed in range(3):
        target, drafter = _model(V, "t", seed), _model(V, "d", seed)
        closed = accepted_length_law(cfg, target, drafter)
        enumerated = _tau_marginal(output_law(cfg, target, drafter), gamma)
        assert torch.allclose(closed, enumerated, rtol=0, atol=1e-12), (closed, enumerated)


@pytest.mark.parametrize("V,gamma,known", CASES)
def test_block_accepts_at_least_as_much_as_token_wise(V, gamma, known):
    """Per draft prefix p_i >= prod_{j<=i} min(1, ratio_j), hence P(tau_block >= i) >=
    P(tau_token >= i) for every i and E[tau_block] >= E[tau_token]; with the drafter's
    probabilities absent (one-hot M_s) the two coincide (p_i = prod M_b(X_j))."""
    cfg = BlockVerificationConfig(V, gamma, known)
    for seed in range(4):
        target, drafter = _model(V, "t", seed), _model(V, "d", seed)
        for xs in itertools.product(range(V), repeat=gamma):
            t, d = target.rows(xs, gamma + 1), drafter.rows(xs, gamma)
            x = torch.tensor(xs)
            d = verifier_draft_rows(d, x, known)
            p = joint_ratios(t, d, x)
            tok = torch.cumprod(torch.tensor([min(1.0, float(t[j, xs[j]] / d[j, xs[j]]))
                                              for j in range(gamma)], dtype=torch.float64), 0)
            assert bool((p[1:] >= tok - 1e-15).all()), (xs, p, tok)
        block = accepted_length_law(cfg, target, drafter)
        token = accepted_length_law(cfg, target, drafter, "token")
        tail_b = block.flip(0).cumsum(0).flip(0)
        tail_t = token.flip(0).cumsum(0).flip(0)
        assert bool((tail_b >= tail_t - 1e-12).all())
        eb, et = expected_accepted_length(block), expected_accepted_length(token)
        assert eb >= et - 1e-12
        if not known:
            assert abs(eb - et) < 1e-12


def test_block_gains_on_a_drafter_that_is_right_jointly_but_not_per_token():
    """A hand case: M_b(X_1) = (1/2, 1/2), M_b(. | 0) = (0.9, 0.1); the drafter puts 0.9 on
    X_1 = 0 and then (1/2, 1/2). Token-wise accepts X_1 = 0 with 0.5 / 0.9; block verification
    accepts the pair (0, 0) outright (p_2 = min(5/9 * 1.8, 1) = 1)."""
    tb = {(): [0.5, 0.5], (0,): [0.9, 0.1], (1,): [0.5, 0.5]}
    ts = {(): [0.9, 0.1], (0,): [0.5, 0.5], (1,): [0.5, 0.5]}
    target = PrefixModel(lambda pre: torch.tensor(tb.get(pre, [0.5, 0.5]), dtype=torch.float64))
    drafter = PrefixModel(lambda pre: torch.tensor(ts.get(pre, [0.5, 0.5]), dtype=torch.float64))
    cfg = BlockVerificationConfig(2, 2)
    p = joint_ratios(target.rows((0, 0), 3), drafter.rows((0, 0), 2), torch.tensor([0, 0]))
    assert p.tolist() == pytest.approx([1.0, 5 / 9, 1.0])
    block = accepted_length_law(cfg, target, drafter)
    token = accepted_length_law(cfg, target, drafter, "token")
    # P(tau >= 2) block: E[p_2] = 0.45 * 1 + 0.45 * min(5/9 * 0.2, 1) + 0.05 * 1 + 0.05 * 1
    assert float(block[2]) == pytest.approx(0.45 + 0.45 * 1 / 9 + 0.1, abs=1e-12)
    assert expected_accepted_length(block) > expected_accepted_length(token) + 0.2


@pytest.mark.parametrize("V,k", [(3, 2), (4, 3)])
def test_token_wise_closed_form_is_leviathans(V, k):
    """For prefix-independent target and drafter, the token-wise law of accepted_length_law is
    P(tau >= i) = prod_{j < i} beta_j with beta_j = sum min(p_j, q_j)."""
    g = torch.Generator().manual_seed(stable_seed("leviathan", V, k))
    p = torch.softmax(torch.randn(k + 1, V, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(k, V, generator=g, dtype=torch.float64), -1)
    target = PrefixModel(lambda pre: p[len(pre)])
    drafter = PrefixModel(lambda pre: q[len(pre)])
    law = accepted_length_law(BlockVerificationConfig(V, k), target, drafter, "token")
    reach = reach_probabilities(acceptance_probability(p[:k], q))  # P(tau >= i), i = 0..k
    assert torch.allclose(law, reach - torch.cat([reach[1:], torch.zeros(1, dtype=torch.float64)]),
                          atol=1e-12)


# --------------------------------------------------------------------------- Monte Carlo


def _algorithm_2(target: PrefixModel, drafter: PrefixModel, gamma: int, known: bool,
                 rng: random.Random) -> tuple[int, ...]:
    """Algorithm 2 of Sun et al. 2024, written from the paper with plain floats: draw the
    drafts, then eta, tau, Y."""
    def probs(m, pre):
        return [float(v) for v in m.conditional(tuple(pre))]

    def draw(w):
        u, c = rng.random() * sum(w), 0.0
        for i, wi in enumerate(w):
            c += wi
            if u < c:
                return i
        return max(i for i, wi in enumerate(w) if wi > 0)

    xs = []
    for _ in range(gamma):
        xs.append(draw(probs(drafter, xs)))

    def ms(i):  # M_s(. | X^i) as the verifier sees it
        if known:
            return probs(drafter, xs[:i])
        return [1.0 if v == xs[i] else 0.0 for v in range(len(probs(drafter, [])))]

    p = [1.0]
    for i in range(1, gamma + 1):
        mb, m = probs(target, xs[: i - 1]), ms(i - 1)
        p.append(min(p[-1] * mb[xs[i - 1]] / m[xs[i - 1]], 1.0))
    tau = 0
    for i in range(1, gamma + 1):
        if i < gamma:
            mb, m = probs(target, xs[:i]), ms(i)
            r = sum(max(p[i] * a - b, 0.0) for a, b in zip(mb, m))
            h = r / (r + 1 - p[i]) if r + 1 - p[i] > 0 else 1.0
        else:
            h = p[gamma]
        if rng.random() <= h:
            tau = i
    if tau == gamma:
        y = draw(probs(target, xs))
    else:
        mb, m = probs(target, xs[:tau]), ms(tau)
        y = draw([max(p[tau] * a - b, 0.0) for a, b in zip(mb, m)])
    return (*xs[:tau], y)


@pytest.mark.parametrize("V,gamma,known", [(3, 2, True), (2, 3, True), (3, 2, False)])
def test_independent_monte_carlo_follows_the_exact_output_law(V, gamma, known):
    """20 000 runs of the paper's algorithm (written above, its own random numbers) against
    output_law: subset test at false-positive rate 1e-6 (the whole test); power 0.99 against a
    TV shift of 0.05 on the cells (asserted)."""
    cfg = BlockVerificationConfig(V, gamma, known)
    target, drafter = _model(V, "t", 11), _model(V, "d", 11)
    law = output_law(cfg, target, drafter)
    cells = sorted(law)
    rng = random.Random(stable_seed("algorithm 2", V, gamma, known))
    n = 20_000
    index = {z: i for i, z in enumerate(cells)}
    counts = np.zeros(len(cells) + 1)
    for _ in range(n):
        counts[index.get(_algorithm_2(target, drafter, gamma, known, rng), len(cells))] += 1
    r = tv_gof(counts, np.append([law[z] for z in cells], 0.0), bonferroni(1),
               "Algorithm 2 (independent) vs output_law", tv=0.05)
    assert r.power >= 0.99, r.message()
    assert r.ok, r.message()


def test_reference_backend_block_sampler_follows_the_laws():
    """The fp64 sampler the suite registers (reference.rejection_sampler's sample_block, its
    SpecBatch rows per request) passes the suite's own block laws at a coarse shift."""
    from suites.backends import REGISTRY
    from suites.mtp.v2_method_checks import BlockCase, check_block_verification

    b = replace(REGISTRY.get("reference.rejection_sampler"), detect_shift=0.25)
    check_block_verification(b, BlockCase("oracle", 3, 2, 2.0, 22), 5)
