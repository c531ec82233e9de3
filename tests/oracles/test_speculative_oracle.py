"""The speculative-sampling oracle (reference/speculative.py, reference/acceptance.py) and the
statistics (suites/stats.py) against independent computations: brute-force enumeration of every
draft sequence, the theorem (the emitted token at each position follows p), Leviathan's closed
form for the expected tokens per step, hand-derived greedy rows and top-k/top-p cases, and the
exact false-positive rate and power of the tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from fixtures.seeds import generator, stable_seed
from reference.acceptance import acceptance_stats
from reference.speculative import (
    PLACEHOLDER,
    SamplingParams,
    SpecBatch,
    acceptance_probability,
    apply_top_k_top_p,
    emitted_token_law,
    enumerate_outcomes,
    expected_tokens_per_step,
    greedy_verify,
    processed_target_probs,
    rejection_sample,
)
from suites.stats import (
    POWER,
    _binom_critical,
    binom_power,
    binom_sample_size,
    chi2_gof,
    chi2_power,
    chi2_sample_size,
    tv_gof,
)


def _laws(V: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = generator("oracle laws", V, k, seed)
    p = torch.softmax(1.5 * torch.randn(k + 1, V, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(k, V, generator=g, dtype=torch.float64), -1)
    return p, q


@pytest.mark.parametrize("known", [True, False], ids=["q-given", "q-absent"])
@pytest.mark.parametrize("V,k", [(2, 1), (3, 2), (4, 3)])
def test_enumeration_obeys_the_theorem(V, k, known):
    """Brute force over V^k drafts: probabilities sum to 1; the emitted token at every position,
    given every accepted prefix, follows p_j; acceptance at j is beta_j; closed forms agree."""
    p, q = _laws(V, k, 0)
    law = enumerate_outcomes(p, q, known)
    assert abs(sum(law.values()) - 1) < 1e-12
    beta = acceptance_probability(p[:k], q, known)
    accepted, last = emitted_token_law(p, q, known)
    for j in range(k + 1):
        # P(emitted length > j, token j = t), by prefix
        by_prefix: dict[tuple, np.ndarray] = {}
        for seq, w in law.items():
            if len(seq) > j:
                by_prefix.setdefault(seq[:j], np.zeros(V))[seq[j]] += w
        for prefix, row in by_prefix.items():
            cond = row / row.sum()
            assert np.allclose(cond, p[j].numpy(), atol=1e-12), (j, prefix, cond, p[j])
        reach_j = sum(w for s, w in law.items() if len(s) > j)
        assert math.isclose(reach_j, float(torch.prod(beta[:j])), abs_tol=1e-12)
        emitted_as_last = np.zeros(V)
        for seq, w in law.items():
            if len(seq) == j + 1:
                emitted_as_last[seq[j]] += w
        assert np.allclose(emitted_as_last, last[j].numpy(), atol=1e-12)
        if j < k:
            assert np.allclose(accepted[j].numpy() + last[j].numpy(), reach_j * p[j].numpy(),
                               atol=1e-12)
    mean_len = sum(len(s) * w for s, w in law.items())
    assert math.isclose(mean_len, expected_tokens_per_step(beta), rel_tol=1e-12)


def test_expected_tokens_matches_leviathan_closed_form():
    for beta, k in [(0.3, 1), (0.7, 4), (0.95, 7)]:
        b = torch.full((k,), beta, dtype=torch.float64)
        assert math.isclose(expected_tokens_per_step(b), (1 - beta ** (k + 1)) / (1 - beta),
                            rel_tol=1e-12)


@pytest.mark.parametrize("known", [True, False], ids=["q-given", "q-absent"])
def test_monte_carlo_oracle_matches_enumeration(known):
    """The sampler oracle's empirical law over whole emitted sequences vs the enumeration
    (chi-square, false-positive rate 1e-6)."""
    V, k, N = 3, 2, 60_000
    p, q = _laws(V, k, 1)
    logits = torch.log(p).float()
    p32 = torch.softmax(logits.double(), -1)  # what the oracle sees after the float32 round trip
    law = enumerate_outcomes(p32, q.float().double(), known)
    g = generator("mc drafts", known)
    drafts = torch.multinomial(q.float().double().repeat(N, 1), 1, True, generator=g).view(N, k)
    batch = SpecBatch(drafts.tolist(), logits.repeat(N, 1), [SamplingParams()] * N,
                      q.float().repeat(N, 1).contiguous() if known else None)
    out = rejection_sample(batch, torch.Generator().manual_seed(stable_seed("mc", known)))
    keys = sorted(law)
    index = {s: i for i, s in enumerate(keys)}
    counts = np.zeros(len(keys))
    for row in out.tolist():
        counts[index[tuple(t for t in row if t != PLACEHOLDER)]] += 1
    r = tv_gof(counts, np.array([law[s] for s in keys]), 1e-6, "whole emitted sequence")
    assert r.ok, r.message()


def test_greedy_rows_hand_derived():
    assert greedy_verify([3, 5, 7], [3, 5, 7], 9, 4) == [3, 5, 7, 9]
    assert greedy_verify([3, 5, 7], [3, 4, 7], 9, 4) == [3, 4, -1, -1]
    assert greedy_verify([3], [2], 9, 4) == [2, -1, -1, -1]
    assert greedy_verify([], [], 9, 4) == [9, -1, -1, -1]
    V = 6
    amax = [[3, 5, 1], [0, 2], [4]]
    drafts = [[3, 5], [1], []]
    rows = []
    for a in amax:
        for t in a:
            rows.append(torch.nn.functional.one_hot(torch.tensor(t), V).float() * 4)
    batch = SpecBatch(drafts, torch.stack(rows), [SamplingParams(0.0)] * 3)
    out = rejection_sample(batch, torch.Generator().manual_seed(0))
    assert out.tolist() == [[3, 5, 1], [0, -1, -1], [4, -1, -1]]


def test_batch_where_no_request_drafts():
    """Every request emits only its bonus token (the oracle used to fail on argmax over an
    empty draft dimension); greedy: the target's argmax."""
    V = 5
    rows = torch.stack([torch.nn.functional.one_hot(torch.tensor(t), V).float() * 4 for t in (2, 4)])
    batch = SpecBatch([[], []], rows, [SamplingParams(0.0)] * 2)
    out = rejection_sample(batch, torch.Generator().manual_seed(0))
    assert out.tolist() == [[2], [4]]


def test_top_k_top_p_hand_derived():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]], dtype=torch.float64))
    k2 = apply_top_k_top_p(logits, torch.tensor([2]), torch.tensor([1.0]))
    assert torch.isinf(k2[0, [0, 2]]).all() and torch.isfinite(k2[0, [1, 3]]).all()
    # top-p 0.65: ascending cumsum 0.1, 0.3, 0.6, 1.0; remove where cumsum <= 0.35 -> {0, 2}
    p65 = processed_target_probs(logits.float(), [SamplingParams(1.0, 0, 0.65)])
    assert torch.allclose(p65, torch.tensor([[0, 4 / 7, 0, 3 / 7]], dtype=torch.float64), atol=1e-6)
    # top-p tiny keeps the most likely token only
    tiny = processed_target_probs(logits.float(), [SamplingParams(1.0, 0, 1e-6)])
    assert tiny[0].tolist() == [0.0, 1.0, 0.0, 0.0]
    t2 = processed_target_probs(logits.float(), [SamplingParams(2.0)])
    ref = torch.softmax(logits / 2, -1)
    assert torch.allclose(t2, ref, atol=1e-6)


def test_seeded_requests_do_not_depend_on_batch():
    V, k = 5, 2
    p, q = _laws(V, k, 3)
    logits = torch.log(p).float()
    params = [SamplingParams(seed=11), SamplingParams(), SamplingParams(seed=12)]
    batch = SpecBatch([[0, 1], [2, 3], [4, 0]], logits.repeat(3, 1), params,
                      q.float().repeat(3, 1).contiguous())
    a = rejection_sample(batch, torch.Generator().manual_seed(1))
    b = rejection_sample(batch, torch.Generator().manual_seed(2))
    assert torch.equal(a[[0, 2]], b[[0, 2]])


def test_acceptance_metrics_vllm_definitions():
    out = torch.tensor([[5, 6, 7, 8], [5, -1, -1, -1], [5, 9, -1, -1], [3, -1, -1, -1]])
    s = acceptance_stats(out, [3, 3, 2, 0])
    assert (s.num_drafts, s.num_draft_tokens, s.num_accepted_tokens) == (3, 8, 4)
    assert s.num_accepted_tokens_per_pos == [2, 1, 1]
    assert math.isclose(s.acceptance_rate, 4 / 8)
    assert math.isclose(s.mean_acceptance_length, 1 + 4 / 3)
    assert s.per_position_rate == [2 / 3, 1 / 3, 1 / 3]
    assert s.conditional_rate(1) == 1 / 2 and s.reached(1) == 2


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n,p0,alpha", [(500, 0.3, 1e-3), (20_000, 0.8, 1e-6), (300, 0.999, 1e-6)])
def test_binomial_test_exact_false_positive_rate(n, p0, alpha):
    lo, hi = _binom_critical(n, p0, alpha)
    fpr = sps.binom.cdf(lo, n, p0) + sps.binom.sf(hi - 1, n, p0)
    assert fpr <= alpha
    # and the region is the largest such (one more point on either side would exceed alpha / 2)
    assert sps.binom.cdf(lo + 1, n, p0) > alpha / 2 and sps.binom.sf(hi - 2, n, p0) > alpha / 2


def test_sample_sizes_give_the_stated_power():
    for p0 in (0.5, 0.9):
        n = binom_sample_size(p0, 1e-7)
        assert binom_power(n, p0, 1e-7) >= POWER
        assert binom_power(int(n * 0.9), p0, 1e-7) < POWER
    for cells in (2, 8, 64):
        n = chi2_sample_size(cells, 1e-7)
        assert chi2_power(n, cells - 1, 1e-7) >= POWER > chi2_power(n - 1, cells - 1, 1e-7)


def test_chi2_gof_detects_tv_shift_and_accepts_truth():
    """At the planned n, a TV-0.02 alternative is rejected and the truth is not (one draw each,
    stable seed; the rates themselves are the exact computations above)."""
    V = 8
    p = np.full(V, 1 / V)
    alt = p.copy()
    alt[:4] += 0.01
    alt[4:] -= 0.01  # TV 0.02
    n = chi2_sample_size(V, 1e-6)
    rng = np.random.default_rng(stable_seed("chi2 power"))
    assert chi2_gof(rng.multinomial(n, p), p, 1e-6, "truth").ok
    assert not chi2_gof(rng.multinomial(n, alt), p, 1e-6, "shifted").ok
    zero = chi2_gof(np.array([5, 0, 1]), np.array([0.5, 0.5, 0.0]), 1e-6, "impossible")
    assert not zero.ok and "zero-probability" in zero.detail
