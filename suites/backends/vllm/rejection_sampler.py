"""Rejection samplers for speculative decoding (kind "rejection_sampler").

One signature:

  sample(batch: reference.speculative.SpecBatch, seed: int) -> output_token_ids [B, max_k + 1]
      int64 on the CPU; per request the accepted drafts, then the recovered or bonus token, then
      PLACEHOLDER (-1). `seed` drives every request without its own SamplingParams.seed; a
      request with a seed draws from its own generator (vLLM: SamplingMetadata.generators).
      Target rows follow SpecDecodeMetadata: request r's k_r draft positions, then its bonus
      position; batch.draft_probs is None when the drafter gives no probabilities.

and one diagnostic, deterministic, used to localize a distribution failure:

  target_probs(batch) -> [num_tokens, V] float64: the distributions the sampler verifies the
      draft positions against (after temperature, top-k, top-p); rows of greedy requests are
      not meaningful.

Backends:
  reference.rejection_sampler   fp64 oracle (reference/speculative.py; suites/backends/oracle.py)
  vllm.rejection_sampler        RejectionSampler.forward, the engine's path: the bonus token from
                                vLLM's Sampler, apply_sampling_constraints (temperature, top-k,
                                top-p expanded per draft token), rejection_sample. On CPU vLLM
                                swaps its Triton kernels for C++ ones (0.31+:
                                register_triton_kernel_overrides; 0.20-0.30: the CPU model
                                runner's _postprocess_triton; releases.py)
  vllm.rejection_sample         the same kernels and sampler, but temperature/top-k/top-p are
                                expanded per token by this adapter (torch.repeat_interleave) and
                                applied with vLLM's apply_top_k_top_p: isolates the verification
                                kernels from expand_batch_to_tokens.
  vllm.rejection_sampler.cuda   RejectionSampler.forward on a CUDA device (Triton kernels).
  vllm.rejection_sampler.interp RejectionSampler.forward with vLLM's own Triton kernels
                                (expand, greedy, random, recovered) run by Triton's interpreter
                                on CPU tensors (TRITON_INTERPRET=1, vLLM's CUDA wheel:
                                nox -s triton_interpret)
  vllm.rejection_sample.interp  the "kernels" entry likewise

Unwritten memory (poison_unwritten, the CPU backends): vLLM runs inside
poisoned_unwritten_memory(), PyTorch's own fill of uninitialised allocations (NaN for floating
dtypes, the max for integers). vLLM computes the same values either way; a read of memory it
never wrote (suites/known_failures.py cpu-expand-batch-to-tokens-lost-write) gives the same
wrong value every run instead of whatever the allocator left there, which may by chance be
right. The adapter does no work for vLLM: it only decides what garbage is.

Interpreted shares: vllm.rejection_sampler.interp runs the statistical laws of constrained
requests and mixed batches, vllm.rejection_sample.interp the rest (law_share); both run every
deterministic check.

Sensitivity: the statistical checks size their samples so that a total-variation or acceptance
shift of `detect_shift` is found with power POWER at a false-positive rate <= 1e-6 per test. The
interpreter runs a Triton program per request in Python (~15 ms a request here), so its backends
declare a coarser shift (INTERPRETER_SHIFT): same false-positive rate, ~36x fewer requests.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.utils.deterministic

from reference.speculative import SpecBatch
from suites.backends.base import REGISTRY, RejectionSamplerBackend, vllm_build_reason

INTERPRETER_SHIFT = 0.12


# --------------------------------------------------------------------------- vLLM


@functools.cache
def _vllm_cpu_reason() -> str | None:
    reason = vllm_build_reason("cpu")
    if reason is None:
        import vllm

        from suites.backends.vllm.releases import NotInRelease, install_cpu_sampler_kernels

        # Outside an engine the C++ replacements of the Triton kernels must be put in place
        # once, the way this release does it (releases.py: 0.31+ the platform's
        # register_triton_kernel_overrides, 0.20-0.30 the CPU model runner's
        # _postprocess_triton); before 0.20 the sampler's kernels are Triton-only.
        try:
            install_cpu_sampler_kernels(vllm.__version__)
        except NotInRelease as e:
            return str(e)
    return reason


def _spec_decode_metadata(batch: SpecBatch, device: torch.device):
    from vllm.v1.spec_decode.metadata import SpecDecodeMetadata

    from suites.backends.vllm import releases
    from suites.backends.vllm.common import vllm_version

    k = torch.tensor(batch.num_draft_tokens, dtype=torch.int64)
    i32 = dict(dtype=torch.int32, device=device)
    fields = dict(
        draft_token_ids=batch.flat_draft_token_ids.to(**i32),
        num_draft_tokens=batch.num_draft_tokens,
        cu_num_draft_tokens=torch.cumsum(k, 0).to(**i32),
        cu_num_sampled_tokens=torch.cumsum(k + 1, 0).to(**i32),
        target_logits_indices=batch.target_rows.to(**i32),
        bonus_logits_indices=batch.bonus_rows.to(**i32),
        logits_indices=torch.arange(batch.num_tokens + batch.batch_size, **i32),
    )
    if "cu_num_sampled_tokens" not in releases.spec_decode_metadata_fields(vllm_version()):
        del fields["cu_num_sampled_tokens"]  # releases.SPEC_DECODE_METADATA: 0.11.0
    return SpecDecodeMetadata(**fields)


def _sampling_metadata(batch: SpecBatch, device: torch.device):
    """What vLLM's InputBatch hands the sampler: temperature float32 (0.0 for greedy requests,
    None when all are greedy), top_k int32 (V where off; None when no request uses it), top_p
    float32 (None when no request uses it), one generator per seeded request."""
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    V, B, params = batch.vocab_size, batch.batch_size, batch.params
    all_greedy = all(p.greedy for p in params)
    all_random = not any(p.greedy for p in params)
    top_k = [p.top_k if 0 < p.top_k < V else V for p in params]
    top_p = [p.top_p for p in params]
    generators = {i: torch.Generator(device=device).manual_seed(p.seed)
                  for i, p in enumerate(params) if p.seed is not None}
    f32 = dict(dtype=torch.float32, device=device)
    return SamplingMetadata(
        temperature=None if all_greedy else torch.tensor([p.temperature for p in params], **f32),
        all_greedy=all_greedy,
        all_random=all_random,
        top_p=None if all(p >= 1.0 for p in top_p) else torch.tensor(top_p, **f32),
        top_k=None if all(k == V for k in top_k) else torch.tensor(top_k, dtype=torch.int32,
                                                                   device=device),
        generators=generators,
        max_num_logprobs=None,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=torch.zeros(B, **f32),
        presence_penalties=torch.zeros(B, **f32),
        repetition_penalties=torch.ones(B, **f32),
        output_token_ids=[[] for _ in range(B)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors(),
    )


@contextlib.contextmanager
def poisoned_unwritten_memory():
    """Inside, every tensor allocated uninitialised (torch.empty, new_empty, empty_like, ... in
    Python or C++) is filled with NaN (floating dtypes) or the dtype's max (integers):
    torch.utils.deterministic.fill_uninitialized_memory, which PyTorch applies under
    torch.use_deterministic_algorithms(True). warn_only: an op without a deterministic variant
    runs as it is and warns; on CPU tensors the mode changes no result of the sampler's ops."""
    det = torch.utils.deterministic
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        det.fill_uninitialized_memory = saved[2]


@dataclass
class VllmRejectionSampler(RejectionSamplerBackend):
    """entry: "forward" (RejectionSampler.forward) or "kernels" (rejection_sample with the
    per-token sampling constraints applied by this adapter)."""

    entry: str = "forward"
    interpreted: bool = False  # vLLM's Triton kernels under Triton's interpreter (CPU tensors)
    # Run vLLM inside poisoned_unwritten_memory() (see the module docstring). CPU tensors only:
    # on CUDA the deterministic mode would also swap kernels for their deterministic variants.
    poison_unwritten: bool = True

    def __post_init__(self):
        if self.device == "cuda":
            self.poison_unwritten = False

    def unavailable_reason(self):
        if self.device == "cuda":
            return vllm_build_reason("cuda")
        if self.interpreted:
            from suites.backends.vllm import releases
            from suites.backends.vllm.common import release_reason
            from suites.backends.vllm.triton_kernels import triton_reason

            return triton_reason("cpu") or release_reason(releases.V1_REJECTION_SAMPLER)
        return _vllm_cpu_reason()

    @functools.cached_property
    def _styles(self) -> tuple[str, str]:
        """(entry, target) styles of the installed release (releases.V1_REJECTION_SAMPLER,
        V1_TARGET_CONSTRAINTS): who samples the bonus tokens, and whether rejection_sample
        verifies against processed logits or probabilities."""
        from suites.backends.vllm import releases
        from suites.backends.vllm.common import vllm_version

        return releases.v1_rejection_sampler_styles(vllm_version())

    @functools.cached_property
    def _bonus_sampler(self):
        from vllm.v1.sample.sampler import Sampler

        return Sampler()

    @functools.cached_property
    def _sampler(self):
        from vllm.v1.sample.rejection_sampler import RejectionSampler

        if self._styles[0] == "bonus_outside":
            return RejectionSampler()
        return RejectionSampler(self._bonus_sampler)

    def _bonus(self, logits, md, sm):
        """The bonus tokens [B, 1], sampled as `bonus_outside` releases' model runner and
        `bonus_inside` releases' forward sample them."""
        from dataclasses import replace

        bonus_logits = logits[md.bonus_logits_indices]
        if self._styles[0] == "bonus_outside":
            return self._bonus_sampler(logits=bonus_logits, sampling_metadata=sm).sampled_token_ids
        return self._bonus_sampler(logits=bonus_logits,
                                   sampling_metadata=replace(sm, max_num_logprobs=-1),
                                   predict_bonus_token=True,
                                   logprobs_mode_override="raw_logits").sampled_token_ids

    @property
    def _device(self) -> torch.device:
        return torch.device("cuda" if self.device == "cuda" else "cpu")

    def _constrained(self, target_logits, md, sm, batch):
        """Target logits after temperature/top-k/top-p, as the chosen entry point does it; for
        the forward entry of a "compute_probs" release, the probabilities compute_probs gives
        (the logits when every request is greedy)."""
        import vllm.v1.sample.rejection_sampler as rs

        if self.entry == "forward":
            if self._styles[1] == "compute_probs":
                return rs.compute_probs(target_logits, md.cu_num_draft_tokens, sm)
            return rs.apply_sampling_constraints(target_logits, md.cu_num_draft_tokens, sm)
        if sm.all_greedy:
            return target_logits
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

        k = torch.tensor(batch.num_draft_tokens, device=self._device)
        temp = torch.where(sm.temperature == 0, torch.ones_like(sm.temperature), sm.temperature)
        target_logits = target_logits / torch.repeat_interleave(temp, k)[:, None]
        top_k = None if sm.top_k is None else torch.repeat_interleave(sm.top_k, k)
        top_p = None if sm.top_p is None else torch.repeat_interleave(sm.top_p, k)
        return apply_top_k_top_p(target_logits, top_k, top_p)

    def _inputs(self, batch):
        dev = self._device
        md = _spec_decode_metadata(batch, dev)
        sm = _sampling_metadata(batch, dev)
        draft_probs = None if batch.draft_probs is None else batch.draft_probs.to(dev).contiguous()
        return md, sm, draft_probs, batch.target_logits.to(dev).contiguous()

    @contextlib.contextmanager
    def _launch_context(self):
        with contextlib.ExitStack() as stack:
            if self.interpreted:
                from suites.backends.vllm.triton_kernels import interpreter_context

                stack.enter_context(interpreter_context())
            if self.poison_unwritten:
                stack.enter_context(poisoned_unwritten_memory())
            yield

    def sample(self, batch, seed):
        with self._launch_context():
            return self._sample(batch, seed)

    def _sample(self, batch, seed):
        md, sm, draft_probs, logits = self._inputs(batch)
        devices = [self._device.index or 0] if self.device == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if self.entry == "forward" and self._styles[0] == "bonus_outside":
                bonus = self._bonus(logits, md, sm)
                out = self._sampler(md, draft_probs, logits[md.target_logits_indices], bonus, sm)
            elif self.entry == "forward":
                out = self._sampler(md, draft_probs, logits, sm).sampled_token_ids
            else:
                out = self._kernels(batch, md, sm, draft_probs, logits)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return out.long().cpu()

    def _kernels(self, batch, md, sm, draft_probs, logits):
        """RejectionSampler.forward with apply_sampling_constraints replaced (see _constrained);
        where the release verifies against probabilities, they are its forward's fp32 softmax."""
        import vllm.v1.sample.rejection_sampler as rs

        bonus = self._bonus(logits, md, sm)
        target = self._constrained(logits[md.target_logits_indices].float(), md, sm, batch)
        if self._styles[1] != "logits":
            target = target.softmax(dim=-1, dtype=torch.float32)
        return rs.rejection_sample(md.draft_token_ids, md.num_draft_tokens, md.max_spec_len,
                                   md.cu_num_draft_tokens, draft_probs, target, bonus, sm)

    def target_probs(self, batch):
        md, sm, _, logits = self._inputs(batch)
        with self._launch_context():
            target = self._constrained(logits[md.target_logits_indices].float(), md, sm, batch)
        if self.entry == "forward" and self._styles[1] == "compute_probs" and not sm.all_greedy:
            return target.double().cpu()  # compute_probs' own probabilities
        return target.softmax(-1, dtype=torch.float32).double().cpu()


REGISTRY.register("vllm.rejection_sampler", lambda: VllmRejectionSampler(
    name="vllm.rejection_sampler", description="vllm RejectionSampler.forward (CPU C++ kernels)"))
REGISTRY.register("vllm.rejection_sample", lambda: VllmRejectionSampler(
    name="vllm.rejection_sample", entry="kernels",
    description="vllm rejection_sample + Sampler + apply_top_k_top_p, constraints expanded by "
                "the adapter (CPU C++ kernels)"))
REGISTRY.register("vllm.rejection_sampler.cuda", lambda: VllmRejectionSampler(
    name="vllm.rejection_sampler.cuda", device="cuda",
    description="vllm RejectionSampler.forward (Triton kernels)"))
REGISTRY.register("vllm.rejection_sampler.interp", lambda: VllmRejectionSampler(
    name="vllm.rejection_sampler.interp", interpreted=True, detect_shift=INTERPRETER_SHIFT,
    law_share="constraints", law_partner="vllm.rejection_sample.interp",
    description="vllm RejectionSampler.forward, Triton kernels under Triton's interpreter "
                "(top-k/top-p by vLLM's PyTorch apply_top_k_top_p_pytorch: its Triton kernel "
                "does not run interpreted)"))
REGISTRY.register("vllm.rejection_sample.interp", lambda: VllmRejectionSampler(
    name="vllm.rejection_sample.interp", entry="kernels", interpreted=True,
    detect_shift=INTERPRETER_SHIFT, law_share="verification",
    law_partner="vllm.rejection_sampler.interp",
    description="vllm rejection_sample with constraints expanded by the adapter, Triton kernels "
                "under Triton's interpreter (top-k/top-p by vLLM's PyTorch path)"))
