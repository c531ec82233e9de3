"""Model Runner V2's rejection sampler along its own structure: per-request seeds through its
counter RNG (murmur3 keyed by seed and position) under every verification method, the float64
Gumbel path (use_fp64), vocabularies around its kernels' tiles (8192-token statistics blocks,
1024-token resampling blocks), extreme target and draft distributions, and requests with no
drafts beside requests with several.

Deterministic checks (seeds, tile edges under greedy verification, fp64 acceptance) are in CI's
interpreter subset (interp_ci); the statistical laws (the standard output and acceptance law of
suites/mtp/sampler_checks.py, false-positive rate <= 1e-6 per test, power >= 0.99 per
comparison against the backend's detect_shift) run in the full session.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fixtures.seeds import generator, stable_seed
from reference.acceptance import num_accepted
from reference.speculative import SamplingParams, SpecBatch
from suites.mtp.sampler_checks import (
    RandomCase,
    check_greedy_exact,
    check_random_verification,
    check_structure,
    detect_shift,
    identical_requests_batch,
    plan,
)
from suites.mtp.v2_method_checks import (
    BlockCase,
    SyntheticCase,
    block_batch,
    check_seeded_independence,
    methods,
    ragged,
    synthetic_batch,
)
from suites.stats import FALSE_POSITIVE_RATE

pytestmark = pytest.mark.mtp

_V2_TILES = pytest.mark.backend_filter(lambda b, params: hasattr(b, "vocab_block_sizes"),
                                       "V2's vocabulary-tiled kernels")
_FP64 = pytest.mark.backend_filter(lambda b, params: hasattr(b, "use_fp64"),
                                   "has rejection_sample's use_fp64 path")


# --------------------------------------------------------------------------- seeds

KS = [0, 2, 1, 2, 0, 1, 2, 2, 1, 0, 2, 1]  # zero drafts beside one and two


def _seeded(batch: SpecBatch, tag: str) -> SpecBatch:
    params = [replace(p, seed=stable_seed(tag, r)) for r, p in enumerate(batch.params)]
    return SpecBatch(batch.draft_token_ids, batch.target_logits, params, batch.draft_probs,
                     meta=dict(batch.meta, seeded=True))


def _method_batch(method: str) -> tuple[SpecBatch, tuple[float, ...]]:
    if method == "block":
        case = BlockCase("seeded", vocab_size=3, num_spec_tokens=2, scale=2.0, seed=22)
        batch = ragged(block_batch(case, len(KS), stable_seed("seeded block")), KS)
        return _seeded(batch, "block"), ()
    case = SyntheticCase("seeded", (0.9, 0.6))
    batch = ragged(synthetic_batch(case, len(KS), stable_seed("seeded synthetic")), KS)
    return _seeded(batch, "synthetic"), case.rates


@pytest.mark.interp_ci
@pytest.mark.parametrize("method", ["block", "synthetic"])
@pytest.mark.backend_filter(lambda b, params: params["method"] in methods(b),
                            "drives this rejection_sample_method")
def test_seeded_requests_are_independent_of_their_batch(sampler_backend, method):
    """Block and synthetic verification, requests with 0, 1 and 2 drafts, each with its own
    seed: the same tokens whatever the batch seed, the order and the neighbours (the standard
    method's twin: suites/mtp/test_rejection_batch.py)."""
    batch, rates = _method_batch(method)
    check_seeded_independence(sampler_backend, method, batch, stable_seed("seeded", method),
                              rates)


# --------------------------------------------------------------------------- use_fp64

FP64_CASE = RandomCase("fp64-q-given", num_spec_tokens=2)


@_FP64
def test_fp64_gumbel_path_law(sampler_backend, record):
    """use_fp64=True (53-bit uniforms, float64 Gumbel noise for the resampled tokens): the same
    output and acceptance law as the float32 path."""
    b = replace(sampler_backend, name=f"{sampler_backend.name}[use_fp64]", use_fp64=True)
    pl, results = check_random_verification(b, FP64_CASE, stable_seed("fp64 law"))
    record(false_positive_rate=FALSE_POSITIVE_RATE, n_requests=pl.n_requests,
           min_power=round(min(r.power for r in results), 5))


@pytest.mark.interp_ci
@_FP64
def test_fp64_path_changes_only_the_resampled_tokens(sampler_backend):
    """Acceptance draws its uniforms from the request's seed and position in both paths; only
    the resampling noise changes with use_fp64: the same accepted drafts in both, every row
    well formed, and the fp64 path reproducible."""
    pl = replace(plan(FP64_CASE, 5, shift=detect_shift(sampler_backend)), n_requests=48)
    batch = _seeded(identical_requests_batch(pl, 5), "fp64")
    b64 = replace(sampler_backend, name=f"{sampler_backend.name}[use_fp64]", use_fp64=True)
    out32, out64 = sampler_backend.sample(batch, 5), b64.sample(batch, 5)
    check_structure(batch, out32, "use_fp64=False")
    check_structure(batch, out64, "use_fp64=True")
    a32, a64 = num_accepted(out32), num_accepted(out64)
    assert torch.equal(a32, a64), (f"use_fp64 changed acceptance of requests "
                                   f"{(a32 != a64).nonzero().flatten().tolist()[:8]}")
    assert torch.equal(out64, b64.sample(batch, 5)), "use_fp64 path not reproducible"


# --------------------------------------------------------------------------- vocabulary tiles

EDGE_VOCABS = [1023, 1024, 1025, 8191, 8192, 8193]


def _tile_edge_batch(V: int) -> SpecBatch:
    """Greedy requests, k = 2, whose target argmax sits at tile edges (0, 1023, 1024, 8191,
    8192, V - 1, as far as V reaches); even requests draft the argmax, odd ones miss at
    position 1."""
    spots = sorted({s for s in (0, 1023, 1024, 8191, 8192, V - 1) if s < V})
    g = generator("tile edges", V)
    rows, drafts = [], []
    for r, spot in enumerate(spots * 2):
        lg = torch.randn(3, V, generator=g)
        lg[:, spot] = lg.max() + 1.0 + 0.25 * torch.arange(3)  # the argmax of all three rows
        rows.append(lg)
        drafts.append([spot, spot] if r % 2 == 0 else [spot, (spot + 1) % V])
    return SpecBatch(drafts, torch.cat(rows).contiguous(),
                     [SamplingParams(temperature=0.0)] * len(drafts), None)


@pytest.mark.interp_ci
@_V2_TILES
@pytest.mark.parametrize("V", EDGE_VOCABS)
def test_greedy_at_vocabulary_tile_edges(sampler_backend, V):
    check_greedy_exact(sampler_backend, _tile_edge_batch(V), 3, f"greedy at tile edges V={V}")


# --------------------------------------------------------------------------- statistical laws

EDGE_AND_EXTREME_CASES = [
    RandomCase("tile-edges-1025", shape="tile-edges", vocab_size=1025, num_spec_tokens=2),
    RandomCase("tile-edges-8193", shape="tile-edges", vocab_size=8193, num_spec_tokens=2),
    RandomCase("extreme-peaked", shape="extreme-peaked", num_spec_tokens=2),
    RandomCase("uniform", shape="uniform", num_spec_tokens=2),
    RandomCase("masked", shape="masked", num_spec_tokens=1),
]


@_V2_TILES
@pytest.mark.parametrize("case", EDGE_AND_EXTREME_CASES, ids=[c.name for c in EDGE_AND_EXTREME_CASES])
def test_random_law_at_tile_edges_and_extreme_logits(sampler_backend, case, record):
    """Mass in the last, partial tile of the vocabulary; a target 60 nats peaked; exact ties
    everywhere; -inf target logits and zero draft probabilities (logits-processor masks)."""
    pl, results = check_random_verification(sampler_backend, case,
                                            stable_seed("v2 edges", case.name))
    record(false_positive_rate=FALSE_POSITIVE_RATE, n_requests=pl.n_requests,
           min_power=round(min(r.power for r in results), 5),
           min_p_value=min(r.p_value for r in results))
