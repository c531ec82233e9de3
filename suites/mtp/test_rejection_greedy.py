"""Greedy verification is deterministic: vLLM's output must equal the oracle's exactly.

Batches are drawn bottom-up (vocabulary, max draft length, per-request draft length 0 .. max with
one request at the max, per-position argmax token including token 0 and the last id, whether the
draft matches), with tie-free logits exactly representable in float32 and bfloat16. All-greedy
and mixed batches are separate cases (parameter `batch`); random requests mixed into a batch are
checked for structure (their law is suites/mtp/test_rejection_random.py).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fixtures.seeds import generator
from reference.speculative import SamplingParams, SpecBatch
from suites.mtp.sampler_checks import check_greedy_exact

pytestmark = [pytest.mark.mtp, pytest.mark.interp_ci]

VOCABS = [2, 3, 31, 257, 8193]  # 8193: one past a multiple of the GPU kernel's 8192 block


def tie_free_logits(argmax: list[int], vocab_size: int, seed: int) -> torch.Tensor:
    """[len(argmax), V] float32: distinct multiples of 1/8 (exact in bf16 up to |x| < 32 for
    V <= 257; float32-exact for all V here), the row's maximum at argmax[row]."""
    V = vocab_size
    g = generator("tie_free_logits", V, seed)
    rows = []
    for a in argmax:
        vals = (torch.randperm(V, generator=g).double() - V / 2) / 8  # distinct
        top = int(vals.argmax())
        vals[top], vals[a] = vals[a].clone(), vals[top].clone()
        rows.append(vals)
    return torch.stack(rows).float()


BATCHES = ("all-greedy", "mixed")


@st.composite
def greedy_batches(draw, batch: str):
    """batch "all-greedy": every request greedy. "mixed": a random request (temperature 1)
    among greedy ones, and a greedy request with the maximal draft length whose target argmax
    at position 0 is not token 0. The two are separate tests because vLLM's CPU sampler is
    known to be wrong on every mixed batch and on no all-greedy one
    (suites/known_failures.py cpu-expand-batch-to-tokens-lost-write): its draft positions get
    an unwritten temperature, NaN where the adapter poisons unwritten memory, and a NaN row's
    argmax is token 0, so such a greedy request cannot agree with the oracle by chance."""
    mixed = batch == "mixed"
    V = draw(st.sampled_from(VOCABS))
    max_k = draw(st.integers(1, 6))
    B = draw(st.integers(2 if mixed else 1, 8))
    ks = draw(st.lists(st.integers(0, max_k), min_size=B, max_size=B))
    top = draw(st.integers(0, B - 1))  # a request at the maximal draft length
    ks[top] = max_k
    greedy = [True] * B
    if mixed:
        greedy = [draw(st.sampled_from([True, True, False])) for _ in range(B)]
        greedy[top] = True
        greedy[(top + draw(st.integers(1, B - 1))) % B] = False
    token = st.one_of(st.sampled_from([0, V - 1]), st.integers(0, V - 1))
    drafts, argmax, params = [], [], []
    for r, k in enumerate(ks):
        a = [draw(token) for _ in range(k + 1)]  # target argmax per position, incl. bonus
        if mixed and r == top:
            a[0] = draw(st.integers(1, V - 1))
        d = []
        for i in range(k):
            match = draw(st.booleans())
            d.append(a[i] if match or V == 1 else (a[i] + draw(st.integers(1, V - 1))) % V)
        drafts.append(d)
        argmax.extend(a)
        params.append(SamplingParams(temperature=0.0 if greedy[r] else 1.0))
    draft_probs_known = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    logits = tie_free_logits(argmax, V, seed)
    n = sum(ks)
    draft_probs = None
    if draft_probs_known:
        q = torch.softmax(torch.randn(n, V, generator=generator("q", seed), dtype=torch.float64), -1)
        # the drafted token must have q > 0 (it does: softmax) -- q is only read for random rows
        draft_probs = q.float().contiguous()
    return SpecBatch(drafts, logits, params, draft_probs, meta=dict(seed=seed)), seed


@pytest.mark.parametrize("batch", BATCHES)
@given(data=st.data())
def test_greedy_equals_oracle(sampler_backend, batch, data, record):
    """Greedy rows: accepted prefix, target argmax at the first mismatch, placeholders after it,
    argmax bonus token iff every draft matched; exactly the oracle's tokens. `batch`: all
    requests greedy, or greedy requests among random ones (checked for structure only)."""
    spec, seed = data.draw(greedy_batches(batch), label="batch")
    context = (f"{sampler_backend.name}: {batch} batch B={spec.batch_size} V={spec.vocab_size} "
               f"k={spec.num_draft_tokens} greedy={[p.greedy for p in spec.params]} "
               f"draft_probs={'given' if spec.draft_probs is not None else 'absent'} seed={seed}")
    check_greedy_exact(sampler_backend, spec, seed, context)


@pytest.mark.parametrize("vocab_size", [2, 257, 8193])
@pytest.mark.parametrize("edge", ["first", "last"])
def test_greedy_vocabulary_edges(sampler_backend, vocab_size, edge, record):
    """Token 0 and the last id as drafts, as target argmax and as bonus token; all-accepted,
    first-position-rejected and last-position-rejected requests in one batch."""
    V = vocab_size
    t = 0 if edge == "first" else V - 1
    other = V - 1 - t
    k = 4
    drafts = [[t] * k, [t] * k, [t] * k, [other] * k]
    argmax = ([t] * (k + 1)                      # all accepted, bonus = edge token
              + [other] + [t] * k                # rejected at 0, recovered = other
              + [t] * (k - 1) + [other, t]       # rejected at the last draft
              + [t] * (k + 1))                   # other-token drafts rejected at 0 -> edge token
    seed = V * 2 + (edge == "last")
    batch = SpecBatch(drafts, tie_free_logits(argmax, V, seed), [SamplingParams(0.0)] * 4)
    out = check_greedy_exact(sampler_backend, batch, seed,
                             f"{sampler_backend.name}: vocabulary edge {edge} V={V}")
    expected = [[t] * k + [t], [other] + [-1] * k, [t] * (k - 1) + [other, -1], [t] + [-1] * k]
    if out.tolist() != expected:
        raise AssertionError(f"{sampler_backend.name} V={V} edge={edge}: {out.tolist()} != "
                             f"hand-derived {expected}")
    record(vocab_size=V, edge_token=t)
