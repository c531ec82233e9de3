"""Negative controls for vLLM's Triton MoE path: bugs planted in vLLM's own code, caught.

Each bug is a one-line mutation of the source of a vLLM function, compiled back in place for
the duration of one call: the Triton program itself (`fused_moe_kernel`, re-jitted from the
mutated source, so the interpreter or the GPU runs the broken program) or the Python launch
code around it (`invoke_fused_moe_triton_kernel`, `fused_experts_impl`). A mutation that no
longer applies (vLLM's source changed) fails loudly instead of passing silently.

Runs wherever triton.fused_experts(.interp) runs: `nox -s triton_interpret` (CPU, Triton's
interpreter), `nox -s gpu`; elsewhere it skips with the backend's reason.
"""

from __future__ import annotations

import contextlib
import inspect
import textwrap
from dataclasses import dataclass
from unittest import mock

import pytest
import torch

from fixtures.strategies import ExpertsProblem
from suites.backends import REGISTRY
from suites.moe import checks
from suites.properties import experts as experts_properties

pytestmark = [pytest.mark.triton, pytest.mark.interp_ci]


@dataclass(frozen=True)
class Mutation:
    name: str
    function: str  # attribute of `module`
    old: str
    new: str
    count: int  # occurrences of `old` the mutation must find
    what: str
    module: str = "vllm.model_executor.layers.fused_moe.fused_moe"


MUTATIONS = [
    Mutation("k_tail_mask_off_by_one", "fused_moe_kernel",
             "offs_k[:, None] < K - k * BLOCK_SIZE_K,",
             "offs_k[:, None] < K - k * BLOCK_SIZE_K - 1,", 1,
             "the weight load's K mask drops the last element of the reduction"),
    Mutation("n_tail_store_mask_off_by_one", "fused_moe_kernel",
             "c_mask = token_mask[:, None] & (offs_cn[None, :] < N)",
             "c_mask = token_mask[:, None] & (offs_cn[None, :] < N - 1)", 1,
             "the output store skips the last column"),
    Mutation("routed_weight_applied_twice", "fused_moe_kernel",
             "accumulator *= moe_weight[:, None]",
             "accumulator *= moe_weight[:, None] * moe_weight[:, None]", 1,
             "the routed weight multiplies the expert output twice"),
    Mutation("small_batch_em_shortcut_without_topk", "invoke_fused_moe_triton_kernel",
             'sorted_token_ids.size(0), A.size(0) * top_k * config["BLOCK_SIZE_M"]',
             'sorted_token_ids.size(0), A.size(0) * config["BLOCK_SIZE_M"]', 1,
             "the small-batch EM bound forgets top_k: M blocks past M x BLOCK_SIZE_M are skipped"),
    Mutation("router_weight_never_applied", "fused_experts_impl",
             "        not apply_router_weight_on_input,\n",
             "        apply_router_weight_on_input,\n", 1,
             "the second GEMM is told not to multiply by the routed weight"),
]


def _backend():
    b = REGISTRY.get("triton.fused_experts.interp")
    if b.unavailable_reason() is not None:
        cuda = REGISTRY.get("triton.fused_experts")
        if cuda.unavailable_reason() is None:
            return cuda
        pytest.skip(f"{b.name}: {b.unavailable_reason()}")
    return b


@contextlib.contextmanager
def planted(m: Mutation):
    """vLLM's function `m.function` with one line mutated, for the duration of the block."""
    import importlib

    fm = importlib.import_module(m.module)

    obj = getattr(fm, m.function)
    fn = getattr(obj, "fn", obj)  # a Triton JITFunction keeps the Python function in .fn
    src = textwrap.dedent(inspect.getsource(fn))
    found = src.count(m.old)
    assert found == m.count, (f"mutation {m.name} expects {m.count} occurrence(s) of {m.old!r} in "
                              f"vLLM's {m.function}, found {found}: update the control")
    namespace: dict = {}
    exec(compile(src.replace(m.old, m.new), f"<planted {m.name} in {m.function}>", "exec"),
         fm.__dict__, namespace)
    new = namespace[m.function]
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(fm, m.function, new))
        # vLLM binds some kernels into launch dispatchers at import time (objects whose
        # `.kernel` is the JITFunction, e.g. the rejection sampler's warm-up dispatchers).
        for holder in list(vars(fm).values()):
            if getattr(holder, "kernel", None) is obj:
                stack.enter_context(mock.patch.object(holder, "kernel", new))
        yield


# T=5 < BLOCK_SIZE_M (16): the small-batch EM shortcut; T*K*4 > E: the aligned (not the naive)
# block assignment; H and I are not multiples of any tile (masked tails in N and K).
PROBLEM = ExpertsProblem(T=5, H=33, I=17, E=8, K=2, dtype="float32", routing="uniform", seed=5)


def test_clean_kernel_passes():
    experts_properties.matches_oracle(checks.FLOAT_EXPERTS, _backend(), PROBLEM)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_planted_bug_is_caught(mutation, record):
    b = _backend()
    with planted(mutation), pytest.raises(AssertionError) as e:
        experts_properties.matches_oracle(checks.FLOAT_EXPERTS, b, PROBLEM)
    record(caught=str(e.value).splitlines()[1][:160] if "\n" in str(e.value) else str(e.value))


def test_planted_kernel_bug_caught_by_metamorphic_property():
    """A bug only on the ragged N tail also breaks EP sharding against the oracle (not only the
    plain oracle comparison): the property suite sees it from more than one side."""
    b = _backend()
    with planted(MUTATIONS[1]), pytest.raises(AssertionError):
        experts_properties.ep_sharding(checks.FLOAT_EXPERTS, b, PROBLEM, 2)


# ----------------------------------------------------------------------------- rejection sampler

SAMPLER = "vllm.v1.sample.rejection_sampler"
SAMPLER_MUTATIONS = [
    Mutation("greedy_bonus_never_appended", "rejection_greedy_sample_kernel",
             "    if not rejected:\n        # If all tokens are accepted, append the bonus token.",
             "    if False:\n        # If all tokens are accepted, append the bonus token.", 1,
             "a greedy request whose drafts all match gets no bonus token", SAMPLER),
    Mutation("recovered_from_target_not_residual", "sample_recovered_tokens_kernel",
             "prob = tl.maximum(target_prob - draft_prob, 0.0)", "prob = target_prob", 1,
             "the recovered token is drawn from p instead of max(0, p - q)", SAMPLER),
    Mutation("acceptance_biased_upwards", "rejection_random_sample_kernel",
             "target_prob / draft_prob >= uniform_prob",
             "target_prob / draft_prob + 0.25 >= uniform_prob", 1,
             "a draft is accepted when u <= p/q + 0.25", SAMPLER),
]
# The planted sampler bugs are large: their law checks are sized for a shift of 0.15 (fewer
# requests than the suite's 0.1) to keep this file fast; still caught, at the same 1e-6 rate.
CONTROL_SHIFT = 0.15


def _sampler():
    from dataclasses import replace

    b = REGISTRY.get("vllm.rejection_sampler.interp")
    if (why := b.unavailable_reason()) is not None:
        pytest.skip(f"{b.name}: {why}")
    return replace(b, name=f"{b.name}[control]", detect_shift=CONTROL_SHIFT)


def _greedy_batch():
    from reference.speculative import SamplingParams, SpecBatch

    V, k = 16, 3
    logits = torch.randn(8 * (k + 1), V, generator=torch.Generator().manual_seed(1))
    amax = logits.argmax(-1).view(8, k + 1)
    drafts = [amax[r, :k].tolist() if r % 2 == 0 else [int(amax[r, 0]), (int(amax[r, 1]) + 1) % V,
              0] for r in range(8)]  # even rows: every draft matches (bonus token follows)
    return SpecBatch(drafts, logits, [SamplingParams(temperature=0.0)] * 8, None)


def test_clean_sampler_passes_the_controls_checks():
    from suites.mtp.sampler_checks import RandomCase, check_greedy_exact, check_random_verification

    b = _sampler()
    check_greedy_exact(b, _greedy_batch(), 3, "clean greedy")
    check_random_verification(b, RandomCase("control", num_spec_tokens=2), 7)


@pytest.mark.parametrize("mutation", SAMPLER_MUTATIONS, ids=[m.name for m in SAMPLER_MUTATIONS])
def test_planted_sampler_bug_is_caught(mutation, record):
    from suites.mtp.sampler_checks import RandomCase, check_greedy_exact, check_random_verification

    b = _sampler()
    with planted(mutation), pytest.raises(AssertionError) as e:
        if mutation.function == "rejection_greedy_sample_kernel":
            check_greedy_exact(b, _greedy_batch(), 3, f"planted {mutation.name}")
        else:
            check_random_verification(b, RandomCase("control", num_spec_tokens=2), 7)
    record(caught=str(e.value)[:200])
