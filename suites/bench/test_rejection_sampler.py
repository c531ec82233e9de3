"""Rejection sampler per batch size and draft length (one verification step).

Inputs: target logits N(0, 1) x 4 (peaked, like a trained model's), draft distributions q =
softmax(target logits + N(0, 1)) (a drafter that mostly agrees), drafts sampled from q, q given
to the sampler, temperature 1. The timed call is the backend's sample(batch, seed), adapter
included (it builds vLLM's SpecDecodeMetadata and SamplingMetadata, as the engine does each step).
On a GPU the logits and draft probabilities are on the device before timing (an engine's are);
the timed call copies the small metadata built from host lists to the device and the sampled
ids ([B, k + 1] int64) back to the host, as an engine step does: extra_info.timing.region lists
both copies.
Acceptance per draft position (vLLM's unconditional definition, reference/acceptance.py) is
measured on one untimed call and recorded with the timings; it is not asserted.

Backends of kind "rejection_sampler" come from suites/backends/vllm/rejection_sampler.py; while that
module is absent the benchmark skips saying so.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from fixtures.seeds import generator, stable_seed
from suites.bench.conftest import settings_of
from suites.bench.selection import backends
from suites.bench.timing import run_case

pytestmark = [pytest.mark.bench, pytest.mark.mtp]

CPU_VOCAB, GPU_VOCAB = 32768, 151936  # GPU: Qwen3.5/Qwen3-Next vocabulary
CPU_BATCHES, GPU_BATCHES = (1, 4, 16, 64), (1, 4, 16, 64, 256)
DRAFT_LENGTHS = (1, 2, 3)


def _missing_reason() -> str | None:
    if importlib.util.find_spec("suites.backends.vllm.rejection_sampler") is None:
        return ("no rejection-sampler backend: suites/backends/vllm/rejection_sampler.py is not in "
                "this checkout")
    from suites.backends import REGISTRY

    if not REGISTRY.names(kind="rejection_sampler"):
        return "no backend of kind 'rejection_sampler' is registered"
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "sampler_case" not in metafunc.fixturenames:
        return
    s = settings_of(metafunc.config)
    cuda = s.device == "cuda"
    vocab, batches = (GPU_VOCAB, GPU_BATCHES) if cuda else (CPU_VOCAB, CPU_BATCHES)
    reason = _missing_reason()
    if reason:
        metafunc.parametrize("sampler_case", [pytest.param(
            None, marks=pytest.mark.skip(reason=reason), id="vllm.rejection_sampler-missing")])
        return
    params = [pytest.param((name, vocab, k, b), marks=marks, id=f"{name}-V{vocab}-k{k}-B{b}")
              for name, marks in backends(metafunc.config, "rejection_sampler",
                                          s.include_reference)
              for k in DRAFT_LENGTHS for b in batches]
    metafunc.parametrize("sampler_case", params)


def make_batch(batch_size: int, k: int, vocab: int):
    from reference.speculative import SamplingParams, SpecBatch

    g = generator("bench-rejection", batch_size, k, vocab)
    n = batch_size * k
    target_logits = torch.randn(n + batch_size, vocab, generator=g) * 4.0  # [n + B, V]
    rows = torch.arange(n + batch_size).view(batch_size, k + 1)[:, :k].reshape(-1)  # draft rows
    draft_probs = torch.softmax(target_logits[rows] + torch.randn(n, vocab, generator=g), -1)
    drafts = torch.multinomial(draft_probs, 1, generator=g).view(batch_size, k)
    return SpecBatch(draft_token_ids=drafts.tolist(), target_logits=target_logits.float(),
                     params=[SamplingParams(temperature=1.0)] * batch_size,
                     draft_probs=draft_probs.float().contiguous(),
                     meta={"bench": f"B{batch_size} k{k} V{vocab}"})


def test_rejection_sampler(benchmark, sampler_case, bench_settings, roofline):
    from reference.acceptance import acceptance_stats
    from suites.backends import REGISTRY

    name, vocab, k, batch_size = sampler_case
    backend = REGISTRY.get(name)
    batch = make_batch(batch_size, k, vocab)
    seed = stable_seed("bench-rejection-seed", batch_size, k)
    if backend.device == "cuda":
        batch = dataclasses.replace(
            batch, target_logits=batch.target_logits.cuda(),
            draft_probs=None if batch.draft_probs is None else batch.draft_probs.cuda())
    stats = acceptance_stats(backend.sample(batch, seed), batch.num_draft_tokens)
    positions = batch.num_tokens + batch_size  # scored positions: k drafts + 1 bonus a request
    nbytes = 4.0 * positions * vocab + 4.0 * batch.num_tokens * vocab + 8.0 * positions
    extra = {
        "family": "rejection_sampler", "dtype": "float32", "tokens": positions,
        "flop": 0.0, "bytes": nbytes,
        "shape": {"name": f"k{k}-V{vocab}", "B": batch_size, "k": k, "V": vocab},
        "cost_model": "flop 0 (sampling); bytes 4(n+B)V target + 4nV draft probs + 8(n+B)",
        "mtp_k": k,
        "acceptance_per_position": stats.per_position_rate,
        "acceptance_rate": stats.acceptance_rate,
        "num_draft_tokens": batch.num_tokens,  # the trials behind acceptance_rate
        "mean_acceptance_length": stats.mean_acceptance_length,
        "note": "times include the adapter's metadata construction (as an engine step does)",
    }
    run_case(benchmark, lambda: backend.sample(batch, seed), settings=bench_settings,
             roofline=roofline, group=f"rejection_sampler k{k} V{vocab}", backend=name,
             extra=extra, inputs=(batch.target_logits, batch.draft_probs),
             copies={"d2h": "a verification step hands its sampled ids to the host (the "
                            "engine reads them to extend the requests); the adapter returns "
                            "them there"})
