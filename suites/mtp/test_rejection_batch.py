"""Batches as an engine builds them: greedy and random requests mixed, ragged draft lengths
(0 .. max), requests reordered; seeds per request; acceptance at position 0 vs draft depth."""

from __future__ import annotations

import pytest
import torch

from fixtures.seeds import generator, stable_seed
from reference.speculative import SamplingParams, SpecBatch
from suites.mtp.sampler_checks import (
    RandomCase,
    RequestTemplate,
    check_greedy_exact,
    check_mixed_batch,
    check_seeded_reorder,
    detect_shift,
    mixed_batch,
    position0_acceptance,
    require_law_share,
)
from suites.stats import FALSE_POSITIVE_RATE

pytestmark = pytest.mark.mtp

GREEDY = SamplingParams(temperature=0.0)
MIXED = [
    RequestTemplate(k=3, params=GREEDY, shape="random"),
    RequestTemplate(k=0, params=SamplingParams(1.0), shape="random"),
    RequestTemplate(k=2, params=SamplingParams(0.8, top_k=6), shape="peaked"),
    RequestTemplate(k=1, params=GREEDY, shape="flat"),
    RequestTemplate(k=1, params=SamplingParams(1.0), shape="flat"),
]
# Without draft probabilities acceptance is sum(q p): random templates need a drafter that puts
# its mass where the target does (peaked) for the stated power at a CI-sized batch.
MIXED_Q_ABSENT = [t if t.params.greedy else RequestTemplate(t.k, t.params, "peaked") for t in MIXED]


@pytest.mark.parametrize("draft_probs_known", [True, False], ids=["q-given", "q-absent"])
def test_mixed_batch(sampler_backend, draft_probs_known, record):
    """Greedy requests exact; each random template's law per position holds inside the mixed,
    ragged, shuffled batch (false-positive rate <= 1e-6 for the whole test)."""
    require_law_share(sampler_backend, "constraints", "mixed batch")
    seed = stable_seed("mixed batch", draft_probs_known)
    templates = MIXED if draft_probs_known else MIXED_Q_ABSENT
    results = check_mixed_batch(sampler_backend, templates, 16, seed, draft_probs_known)
    p = min(r.power for r in results)
    print(f"mixed batch: {len(results)} comparisons, false-positive rate {FALSE_POSITIVE_RATE:g}, "
          f"power >= {p:.4f} (TV and acceptance shift {detect_shift(sampler_backend)})")
    record(false_positive_rate=FALSE_POSITIVE_RATE, min_power=round(p, 5),
           n_requests=results[0].n if results else 0)


@pytest.mark.interp_ci
@pytest.mark.parametrize("draft_probs_known", [True, False], ids=["q-given", "q-absent"])
def test_seeded_requests_deterministic_and_reorderable(sampler_backend, draft_probs_known):
    """Per-request seeds: same output whatever the batch seed and the request order (a dropped
    or misaligned draft-probability row after a reorder changes the output)."""
    seed = stable_seed("seeded reorder", draft_probs_known)
    batch, _, _ = mixed_batch(MIXED, 12, 16, seed, draft_probs_known)
    batch.params = [SamplingParams(p.temperature, p.top_k, p.top_p, seed=stable_seed(seed, i))
                    for i, p in enumerate(batch.params)]
    check_seeded_reorder(sampler_backend, batch, seed)


def test_position0_acceptance_independent_of_depth(sampler_backend, record):
    """Acceptance at position 0 is Binomial(N, beta_0) for k = 1, 2, 4 and 7 speculative tokens."""
    require_law_share(sampler_backend, "verification", "position-0 acceptance by depth")
    case = RandomCase("position-0", num_spec_tokens=7)
    seed = stable_seed("position0")
    results = position0_acceptance(sampler_backend, case, (1, 2, 4, 7), seed)
    p = min(r.power for r in results)
    print(f"position-0 acceptance: n={results[0].n} per depth, false-positive rate "
          f"{FALSE_POSITIVE_RATE:g}, power >= {p:.4f} (acceptance shift {detect_shift(sampler_backend)})")
    record(false_positive_rate=FALSE_POSITIVE_RATE, min_power=round(p, 5),
           rates={r.what: round(r.statistic, 5) for r in results})


@pytest.mark.interp_ci
def test_all_requests_without_drafts_but_one(sampler_backend):
    """A batch where every request but one has no drafts: each of those emits exactly its bonus
    token (the argmax for greedy requests), the drafting one verifies normally."""
    V = 8
    logits = torch.arange(V, dtype=torch.float32).flip(0).repeat(5, 1)  # argmax token 0
    logits[1, :] = torch.arange(V, dtype=torch.float32)  # request 0's bonus argmax: V - 1
    batch = SpecBatch([[0], [], [], []], logits, [GREEDY] * 4)
    out = check_greedy_exact(sampler_backend, batch, 0, f"{sampler_backend.name}: k=[1, 0, 0, 0]")
    if out.tolist() != [[0, V - 1], [0, -1], [0, -1], [0, -1]]:
        raise AssertionError(f"{sampler_backend.name}: {out.tolist()} != hand-derived "
                             f"[[0, {V - 1}], [0, -1], [0, -1], [0, -1]]")


def test_batch_without_drafts(sampler_backend):
    """No request drafts: every row is its bonus token alone. Greedy requests, and random ones
    whose top-k is 1 or whose top-p is below their top token's probability, emit the argmax
    whatever the temperature. Nothing is verified, so no per-request value is expanded to
    draft positions (vLLM's CPU expand_batch_to_tokens, whose write is known to be lost,
    writes zero tokens here: this batch gates)."""
    V = 16
    argmax = [3, 0, V - 1, 7, 11]
    g = generator("batch without drafts")
    logits = torch.stack([torch.randperm(V, generator=g).float() / 2 for _ in argmax])
    for row, a in zip(logits, argmax):  # distinct values; the row's maximum at its argmax
        top = int(row.argmax())
        row[top], row[a] = row[a].clone(), row[top].clone()
    params = [GREEDY, SamplingParams(0.7, top_k=1), SamplingParams(1.3, top_p=0.01),
              SamplingParams(0.9, top_k=3, top_p=0.02), SamplingParams(1.0, top_k=1, seed=5)]
    batch = SpecBatch([[] for _ in argmax], logits, params)
    out = sampler_backend.sample(batch, stable_seed("batch without drafts"))
    expected = [[a] for a in argmax]
    if out.tolist() != expected:
        raise AssertionError(f"{sampler_backend.name}: batch without drafts emitted "
                             f"{out.tolist()}, expected the argmax bonus tokens {expected} "
                             f"(params {params})")
