"""Model Runner V2's rejection sampler (kind "rejection_sampler"), under Triton's interpreter.

Drives `vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils.rejection_sample`, the verification
step of vLLM's Model Runner V2 (`vllm/v1/worker/gpu/`); sample() is its "standard" method: the
probability-ratio test of Leviathan et al. (use_block_verification=False, no synthetic acceptance
rates, no watermarking, use_fp64 as the entry's field, False), on CPU tensors with its Triton programs
(_compute_local_logits_stats_kernel, _rejection_kernel, _resample_kernel,
_insert_resampled_kernel) run by Triton's interpreter (TRITON_INTERPRET=1, vLLM's CUDA wheel:
nox -s triton_interpret). The signature and the laws are those of
suites/backends/vllm/rejection_sampler.py.

Older releases (releases.V2_REJECTION_SAMPLE): 0.19.0-0.21.0 verify by the same standard method
in probabilistic_rejection_sample (the same leading parameters; no use_fp64, no synthetic rates
in it, and before 0.21.0 draft logits required: a drafter without logits goes to the "strict"
method, not driven here, said as an adapter limit); before 0.19.0 V2's verification is another
method or layout and the backend says "not in this release".

Input mapping (SpecBatch -> rejection_sample), as V2's RejectionSampler.__call__ / _verify and
InputBatch build it:

  request r            the r-th request of the batch; its persistent state slot is B - r
                       (idx_mapping [B] int32, reversed, slot 0 a spare whose temperature is NaN
                       and whose draft logits are NaN: a read through a wrong slot shows)
  cu_num_logits        [B + 1] int32: request r owns k_r + 1 logits rows (its k_r draft positions,
                       then the bonus position), exactly the SpecBatch's target_logits row layout
  expanded_idx_mapping,
  expanded_local_pos   [num_logits] int32, from V2's own expand_idx_mapping (Triton) over
                       idx_mapping and cu_num_logits: slot and 0 .. k_r per row
  draft_sampled        [num_logits] int32: V2's gather_draft_sampled gives each logits row the
                       input token at that row's position, so row 0 of a request is the token it
                       sampled last step (not verified; here token 0) and row j >= 1 is its
                       draft j - 1: the kernels verify the draft at row i + 1 against the
                       target logits of row i
  pos                  [num_logits] int64: the sequence position of each row,
                       POS0 + local position (the same prompt length for every request; the
                       random draws are keyed by (request seed, position), so a request's draws
                       do not depend on its place in the batch)
  temperature          [B + 1] float32 by slot: SamplingParams.temperature (0.0: greedy)
  seed                 [B + 1] int64 by slot: the request's SamplingParams.seed when it has one
                       (V2's SamplingStates.add_request), else a full-range int64 drawn from
                       numpy's default_rng(`seed`) by request index (where V2 draws
                       np.random.randint(int64 min, int64 max))
  target_logits        [num_logits, V]: V2 verifies against *processed* logits:
                       RejectionSampler._verify runs Sampler.apply_sampling_params first (fp32
                       copy, temperature, min_p, top-k/top-p) and the kernels use them as they
                       are (only draft logits are divided by the temperature in the kernels).
                       This adapter runs the part of that step the suite's SamplingParams reach
                       with V2's own SamplingStates (add_request, apply_temperature: V2's
                       Triton _temperature_kernel; apply_top_k_top_p: vLLM's apply_top_k_top_p,
                       whose PyTorch path runs under the interpreter), gated as V2 gates it (releases.V2_SAMPLING_GATE: before 0.31.0 every batch is processed)
                       (untouched logits when no request needs processing)
  draft_logits         [B + 1, S, V] float32 by slot and draft step, or None when the SpecBatch
                       has no draft probabilities (V2's one-hot drafter, e.g. n-gram). V2 stores
                       the drafter's logits *before* temperature and verifies against
                       softmax(draft_logits / T), so the drafter that sampled from q is given
                       T * log(q) (log(q) for greedy requests, which never read it); steps past
                       k_r and the spare slot are NaN
  num_speculative_steps S = max(1, max_k): the engine's configured depth is at least 1; requests
                       with fewer drafts (ragged k, k = 0) are shorter rows of cu_num_logits

Output: (sampled [B, S + 1] int64, num_sampled [B] int32); the first num_sampled[r] entries of
row r are the request's tokens and the rest is never written (an uninitialised buffer), so the
suite's [B, max_k + 1] rows are sampled[r, :num_sampled[r]] then PLACEHOLDER (-1); a
num_sampled past k_r + 1 shows as a malformed row (check_structure), not hidden.

Interpreter stand-ins (the rest is vLLM's code as it ships): V2's SamplingStates keeps its
per-slot values in UvaBackedTensor buffers, which pin host memory (refused without an
accelerator): here plain CPU tensors with the same fields (HostTensor). _resample_kernel's
residual calls libdevice `log1p`, which Triton's interpreter does not have (the call yields
None): a plain-Triton log1p with libdevice's semantics (_libdevice_standins), as
suites/backends/vllm/triton_standins.py does for libdevice `round`. vLLM runs inside
poisoned_unwritten_memory() (suites/backends/vllm/rejection_sampler.py): its uninitialised
buffers read NaN / the integer max, so a read of an unwritten value gives the same wrong
answer every run.

The other verification methods (suites/mtp/v2_method_checks.py, each with its own law):
  - sample_block: rejection_sample_method="block" (use_block_verification=True; Sun et al.
    2024, oracle reference/block_verification.py): whole-prefix acceptance, residual scaled
    by the running joint ratio; suites/mtp/test_v2_block_verification.py;
  - sample_synthetic: rejection_sample_method="synthetic" (synthetic_conditional_rates from
    SpeculativeConfig.synthetic_acceptance_rates through vLLM's own
    unconditional_to_conditional_rates): acceptance at configured rates, not a sampler of
    the target; suites/mtp/test_v2_synthetic_rates.py;
  - use_fp64 (a field: a variant of this entry with it on): the resampling Gumbel noise from
    53-bit uniforms in float64; suites/mtp/test_v2_sampler_paths.py.

Not covered yet (each a separate V2 path with its own law, left for later increments):
  - adaptive verification (compacted logits, device-side cu_num_logits) and
    _verify_in_chunks' chunking (> 1 GiB of fp32 logits): engine bookkeeping around the same
    kernels, reachable only through RejectionSampler.__call__ with an InputBatch;
  - watermarking, logprobs, min_p, penalties and logits processors (the rest of
    apply_sampling_params); prefill placeholders (-1 drafts) from gather_draft_sampled;
  - the MTP speculator that produces draft_logits in the engine (drafter-side Gumbel noise,
    the logits cache): this backend takes the drafter's distribution as given.

Sensitivity: every logits row is one or more interpreted Triton programs (~4 launches per row
and request), so the backend declares the interpreter's coarser shift (INTERPRETER_SHIFT, the
same false-positive rate, ~36x fewer requests) like the V1 *.interp entries. It runs every law
(law_share "all"): no other backend runs V2's kernels.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
from dataclasses import dataclass

import numpy as np
import torch

from reference.speculative import PLACEHOLDER, SpecBatch
from suites.backends.base import REGISTRY, RejectionSamplerBackend
from suites.backends.vllm.common import HostTensor
from suites.backends.vllm.rejection_sampler import INTERPRETER_SHIFT, poisoned_unwritten_memory

V2_MODULE = "vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils"
# The V2 modules whose Triton programs may call libdevice `log1p` (tldevice), by release:
# rejection_sampler_utils (0.25.0 .., the residual) and sample/gumbel.py (0.24.0 - 0.26.0, the
# Gumbel noise); 0.22.0 - 0.23.0 call none; before 0.22.0 the kernels live in
# probabilistic_rejection_sampler_utils (0.20.0 - 0.21.0) or rejection_sampler (0.19.0). Each
# of these that this release has and that imports tldevice gets the stand-in.
LIBDEVICE_USERS = (V2_MODULE, "vllm.v1.worker.gpu.sample.gumbel",
                   "vllm.v1.worker.gpu.spec_decode.probabilistic_rejection_sampler_utils",
                   "vllm.v1.worker.gpu.spec_decode.rejection_sampler")
POS0 = 4096  # the sequence position of every request's first logits row (its prompt length)
_I64 = np.iinfo(np.int64)


@functools.cache
def _v2_reason() -> str | None:
    """None when this vLLM has Model Runner V2's rejection_sample (releases.V2_REJECTION_SAMPLE),
    else one line."""
    from suites.backends.vllm import releases
    from suites.backends.vllm.common import release_reason

    return release_reason(releases.V2_REJECTION_SAMPLE)


def _style() -> str:
    from suites.backends.vllm import releases
    from suites.backends.vllm.common import vllm_version

    return releases.v2_rejection_sample_style(vllm_version())


def _draft_logits_argument(draft_logits):
    """rejection_sample's draft-logits argument for the installed release: the [max_num_reqs,
    steps, V] tensor, or from 0.34.0 a replicated DraftLogitsCache holding it as .values
    (releases.V2_REJECTION_SAMPLE "cache")."""
    if draft_logits is None or _style() != "cache":
        return draft_logits
    from vllm.v1.worker.gpu.spec_decode.draft_logits import DraftLogitsCache

    cache = DraftLogitsCache(draft_logits.shape[0], draft_logits.shape[1],
                             draft_logits.shape[2], dtype=draft_logits.dtype,
                             fill=float("nan"), device=draft_logits.device)
    cache.values.copy_(draft_logits)
    return cache


def _sampling_states(max_num_reqs: int, vocab_size: int):
    """V2's SamplingStates (its own add_request, apply_temperature, apply_top_k_top_p), its
    per-slot buffers HostTensor."""
    from unittest import mock

    import vllm.v1.worker.gpu.sample.states as states

    with mock.patch.object(states, "UvaBackedTensor", HostTensor):
        return states.SamplingStates(max_num_reqs, vocab_size)


@functools.cache
def _libdevice_standins():
    """The device-library calls of V2's rejection kernels that Triton's interpreter cannot run
    (it has no libdevice: `tldevice.log1p` there yields None), as plain Triton with libdevice's
    semantics. The residual of _resample_kernel is log(p) + log1p(-q/p): log1p here is formed
    in float64 with Goldberg's correction (exact for |x| far below float32's epsilon, where
    log(1 + x) in float32 would be 0) and rounded once to the argument's dtype."""
    import types

    import triton
    import triton.language as tl

    @triton.jit
    def log1p(x):
        x64 = x.to(tl.float64)
        u = 1.0 + x64
        r = tl.where(u == 1.0, x64, tl.log(u) * (x64 / (u - 1.0)))
        return r.to(x.dtype)

    return types.SimpleNamespace(log1p=log1p)


@dataclass
class _Inputs:
    num_reqs: int
    steps: int  # num_speculative_steps
    idx_mapping: torch.Tensor  # [B] int32
    cu_num_logits: torch.Tensor  # [B + 1] int32
    expanded_idx_mapping: torch.Tensor  # [num_logits] int32
    expanded_local_pos: torch.Tensor  # [num_logits] int32
    draft_sampled: torch.Tensor  # [num_logits] int32
    pos: torch.Tensor  # [num_logits] int64
    states: object  # V2's SamplingStates (temperature, top_k, top_p, min_p, seeds by slot)
    needs_processing: bool
    draft_logits: torch.Tensor | None  # [B + 1, steps, V] float32


@dataclass
class VllmV2RejectionSampler(RejectionSamplerBackend):
    """rejection_sample of vLLM's Model Runner V2, standard method, Triton under the interpreter."""

    detect_shift: float | None = INTERPRETER_SHIFT
    law_share: str = "all"
    poison_unwritten: bool = True  # a CPU backend: vLLM runs in poisoned_unwritten_memory()
    # rejection_sample_method values this adapter drives (suites/mtp/v2_method_checks.py):
    # "standard" is sample(), "block" sample_block(), "synthetic" sample_synthetic()
    verification_methods: tuple[str, ...] = ("standard", "block", "synthetic")
    # rejection_sample(use_fp64=...): the resampling Gumbel noise from 53-bit uniforms in
    # float64 (SamplerConfig's use_fp64_gumbel) instead of float32; a variant of this entry
    # with it on is what suites/mtp/test_v2_sampler_paths.py holds to the same laws
    use_fp64: bool = False
    # the kernels' vocabulary tiles: statistics per 8192 tokens (VOCAB_BLOCK_SIZE), resampling
    # per 1024 (RESAMPLE_BLOCK_SIZE); suites/mtp/test_v2_sampler_paths.py draws vocabularies
    # around them
    vocab_block_sizes: tuple[int, ...] = (8192, 1024)

    def unavailable_reason(self):
        from suites.backends.vllm.triton_kernels import triton_reason

        return triton_reason("cpu") or _v2_reason()

    # ------------------------------------------------------------------ inputs

    def _inputs(self, batch: SpecBatch, seed: int) -> _Inputs:
        from vllm.sampling_params import SamplingParams as VllmParams
        from vllm.v1.worker.gpu.input_batch import expand_idx_mapping

        B, V = batch.batch_size, batch.vocab_size
        ks = list(batch.num_draft_tokens)
        steps = max(1, batch.max_spec_len)
        max_num_reqs = B + 1
        slots = [B - r for r in range(B)]
        idx_mapping = torch.tensor(slots, dtype=torch.int32)
        cu = torch.tensor(np.cumsum([0] + [k + 1 for k in ks]), dtype=torch.int32)
        num_logits = int(cu[-1])
        expanded_idx_mapping, expanded_local_pos = expand_idx_mapping(
            idx_mapping, num_logits, cu, steps + 1)

        draft_sampled = torch.zeros(num_logits, dtype=torch.int32)
        for r, drafts in enumerate(batch.draft_token_ids):
            start = int(cu[r])
            draft_sampled[start + 1: start + 1 + len(drafts)] = torch.tensor(drafts,
                                                                            dtype=torch.int32)
        pos = POS0 + expanded_local_pos.to(torch.int64)

        # V2's per-slot sampling state, filled as the engine fills it (add_request), then the
        # random seeds of unseeded requests replaced by reproducible ones.
        states = _sampling_states(max_num_reqs, V)
        states.temperature.np[:] = np.nan  # the spare slot: any read of it shows
        needs = []
        fallback = np.random.default_rng(seed).integers(_I64.min, _I64.max, size=B,
                                                        dtype=np.int64)
        for r, p in enumerate(batch.params):
            vp = VllmParams(temperature=p.temperature, top_k=p.top_k if p.top_k > 0 else 0,
                            top_p=p.top_p, seed=p.seed)
            needs.append(states.add_request(slots[r], vp))
            if p.seed is None:
                states.seeds.np[slots[r]] = fallback[r]
        states.apply_staged_writes()

        draft_logits = None
        if batch.draft_probs is not None:
            draft_logits = torch.full((max_num_reqs, steps, V), float("nan"), dtype=torch.float32)
            tok0 = np.cumsum([0, *ks])
            logq = batch.draft_probs.double().log()
            for r, p in enumerate(batch.params):
                q_rows = logq[tok0[r]: tok0[r + 1]]
                T = p.temperature
                draft_logits[slots[r], : ks[r]] = (q_rows if p.greedy else T * q_rows).float()
        from suites.backends.vllm import releases
        from suites.backends.vllm.common import vllm_version

        gate, _ = releases.resolve(releases.V2_SAMPLING_GATE, vllm_version())
        needs_processing = any(needs) if gate.style == "gated" else True
        return _Inputs(B, steps, idx_mapping, cu, expanded_idx_mapping, expanded_local_pos,
                       draft_sampled, pos, states, needs_processing, draft_logits)

    def _processed_logits(self, batch: SpecBatch, x: _Inputs) -> torch.Tensor:
        """What Sampler.apply_sampling_params hands rejection_sample, for the suite's params:
        the logits untouched when no request needs processing, else an fp32 copy with V2's
        temperature and top-k/top-p applied."""
        logits = batch.target_logits.contiguous()
        if not x.needs_processing:
            return logits
        logits = torch.empty_like(logits, dtype=torch.float32).copy_(logits)
        idx_np = x.idx_mapping.numpy().astype(np.intp)
        x.states.apply_temperature(logits, x.expanded_idx_mapping, idx_np)
        x.states.apply_min_p(logits, x.expanded_idx_mapping, idx_np)
        return x.states.apply_top_k_top_p(logits, x.expanded_idx_mapping, idx_np)

    @contextlib.contextmanager
    def _launch_context(self):
        from unittest import mock

        from suites.backends.vllm.triton_kernels import interpreter_context

        with contextlib.ExitStack() as stack:
            stack.enter_context(interpreter_context())
            for name in LIBDEVICE_USERS:
                if importlib.util.find_spec(name) is None:  # not in this release
                    continue
                module = importlib.import_module(name)
                if hasattr(module, "tldevice"):  # this release's kernels there call libdevice
                    stack.enter_context(mock.patch.object(module, "tldevice",
                                                          _libdevice_standins()))
            if self.poison_unwritten:
                stack.enter_context(poisoned_unwritten_memory())
            yield

    # ------------------------------------------------------------------ the seam

    def sample(self, batch, seed):
        return self._verify(batch, seed, use_fp64=self.use_fp64)

    def sample_block(self, batch, seed):
        """rejection_sample_method="block": Sun et al.'s block verification
        (reference/block_verification.py); each request's rows are its own M_b(. | X^i) and
        M_s(. | X^i) along its drafts, as the engine computes them."""
        return self._verify(batch, seed, use_block_verification=True, use_fp64=self.use_fp64)

    def sample_synthetic(self, batch, seed, rates):
        """rejection_sample_method="synthetic": `rates` are SpeculativeConfig's
        synthetic_acceptance_rates (unconditional, one per speculative step; the engine's
        num_speculative_tokens is len(rates)), turned into the kernels' conditional rates by
        vLLM's own unconditional_to_conditional_rates, as V2's RejectionSampler.__init__ does."""
        import pytest

        from suites.backends.vllm import releases
        from suites.backends.vllm.common import vllm_version

        version = vllm_version()
        if releases.v2_rejection_sample_style(version).startswith("probabilistic"):
            pytest.skip(f"adapter limit: vLLM {version} verifies synthetic rates in "
                        "synthetic_rejection_sample, a function of its own (0.19.0-0.21.0) "
                        "that this adapter does not drive; one function from 0.22.0")
        _, unconditional_to_conditional_rates = releases.resolve(releases.CONDITIONAL_RATES,
                                                                 version)
        if len(rates) != max(1, batch.max_spec_len):
            raise ValueError(f"{len(rates)} synthetic rates for num_speculative_steps "
                             f"{max(1, batch.max_spec_len)}")
        conditional = torch.tensor(unconditional_to_conditional_rates(list(rates)),
                                   dtype=torch.float32)
        return self._verify(batch, seed, synthetic_conditional_rates=conditional,
                            use_fp64=self.use_fp64)

    def _verify(self, batch, seed, *, use_block_verification: bool = False,
                synthetic_conditional_rates: torch.Tensor | None = None,
                use_fp64: bool = False):
        import pytest

        from suites.backends.vllm import releases
        from suites.backends.vllm.common import vllm_version

        version = vllm_version()
        _, rejection_sample = releases.resolve(releases.V2_REJECTION_SAMPLE, version)
        style = releases.v2_rejection_sample_style(version)
        method, extra = {}, ()
        if style in ("block", "cache"):
            method = dict(use_block_verification=use_block_verification)
        elif use_block_verification:
            pytest.skip(f"not in this release: vLLM {version}'s V2 rejection_sample "
                        "has no block verification (use_block_verification: first in 0.25.0)")
        if style.startswith("probabilistic"):
            if use_fp64:
                pytest.skip(f"not in this release: vLLM {version}'s V2 verification has no "
                            "use_fp64 (first in 0.22.0)")
            if batch.draft_probs is None and style == "probabilistic_needs_draft_logits":
                pytest.skip(f"adapter limit: vLLM {version} verifies a drafter without logits "
                            "by its 'strict' method (strict_rejection_sample over the target's "
                            "own samples), which this adapter does not drive")
        else:
            extra = (synthetic_conditional_rates,)
            method["use_fp64"] = use_fp64
        with self._launch_context():
            x = self._inputs(batch, seed)
            logits = self._processed_logits(batch, x)
            sampled, num_sampled = rejection_sample(
                logits, _draft_logits_argument(x.draft_logits), x.draft_sampled,
                x.cu_num_logits, x.pos, x.idx_mapping, x.expanded_idx_mapping,
                x.expanded_local_pos, x.states.temperature.gpu, x.states.seeds.gpu, x.steps,
                *extra, **method)
        width = batch.max_spec_len + 1
        sampled = sampled.long()[:, :width]
        col = torch.arange(width)[None, :]
        keep = col < num_sampled.long()[:, None]
        return torch.where(keep, sampled, torch.full_like(sampled, PLACEHOLDER))

    def target_probs(self, batch):
        with self._launch_context():
            x = self._inputs(batch, 0)
            logits = self._processed_logits(batch, x)
        return logits[batch.target_rows].float().softmax(-1).double()


REGISTRY.register("vllm.v2.rejection_sample.interp", lambda: VllmV2RejectionSampler(
    name="vllm.v2.rejection_sample.interp",
    description="vllm Model Runner V2 rejection_sample (standard method), its Triton programs "
                "under Triton's interpreter; temperature and top-k/top-p by V2's SamplingStates "
                "(top-k/top-p by vLLM's PyTorch path)"))
