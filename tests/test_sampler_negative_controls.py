"""Negative controls: rejection samplers with planted bugs that the suite's own check functions
(suites/mtp/checks.py) must flag. Two families:

  reference-based   the oracle with one step changed (runs without vLLM)
  vLLM-planted      vLLM's rejection_sample path with one of its own functions patched
                    (skipped when vLLM is not importable)

Bugs: the recovered token drawn from p instead of norm(max(0, p - q)); draft probabilities
ignored (exact in distribution, lower acceptance: only the acceptance comparison can see it);
placeholders forgotten after the first rejection; the bonus token dropped; an acceptance rule
biased towards accepting (u < p/q + 0.05).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import pytest
import torch

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
from suites.backends.rejection_sampler import ReferenceRejectionSampler
from suites.mtp.checks import RandomCase, check_greedy_exact, check_random_verification

CASE = RandomCase("negative-control", num_spec_tokens=2)


@dataclass
class BrokenReference(ReferenceRejectionSampler):
    """The oracle's algorithm with one planted bug (see `bug`)."""

    bug: str = "none"

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
        residual = Pt if self.bug == "recovers_from_p" else (Pt - Q).clamp_min(0.0)
        residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, Pt)
        recovered = _inverse_cdf(residual, u_rec)
        greedy = torch.tensor([p.greedy for p in batch.params])[batch.request_of_token]
        amax = Pt.argmax(-1)
        accept = torch.where(greedy, x == amax, accept)
        recovered = torch.where(greedy, amax, recovered)
        Pb = P[batch.bonus_rows]
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
    from suites.backends.rejection_sampler import _vllm_cpu_reason

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
