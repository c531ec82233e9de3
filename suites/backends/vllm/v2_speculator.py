"""Model Runner V2's MTP speculators (kind "mtp_speculator"), their draft loops under Triton's
interpreter.

vLLM 0.32 drafts with Model Runner V2 on CUDA (vllm/v1/worker/gpu/spec_decode/): for an MTP
checkpoint, init_speculator picks
  - MTPSpeculator (mtp/speculator.py over target_dependent_ar/speculator.py) when one module
    drafts every step (num_nextn_predict_layers 1, or k 1): a draft prefill over the target's
    rows (_prefill), then k - 1 one-row decode steps (_multi_step_decode -> _generate_draft)
    whose inputs its Triton programs write: _prepare_decode_inputs_kernel (step 1) and
    _update_draft_inputs_kernel (steps >= 2: the drafted token as input id, the fed-back
    hidden state copied, positions and seq_lens advanced and clamped at max_model_len);
    entry "vllm.v2.mtp_speculator.interp";
  - MultiModuleMTPSpeculator (multi_module_mtp/speculator.py) when min(num_nextn_predict_layers,
    k) > 1: module s drafts step s (spec_step_idx = s) over every row of the request, the input
    ids shifted left by one per step with the draft appended (_shift_input_ids_kernel), the
    hidden states the previous module returned, positions unchanged (_generate_drafts);
    entry "vllm.v2.multi_module_mtp_speculator.interp".
Both are driven through their public propose(), as the model runner calls it after a target
step, with vLLM's own config objects (VllmConfig from fixtures/tiny_qwen3_next's config with
num_nextn_predict_layers and a hidden size of HIDDEN, float32, enforce_eager) and vLLM's own
factory choosing the class. Greedy drafting (draft_sample_method "greedy", V2's default).

What the adapter supplies (the rest is vLLM's code as it ships):
  - the draft model: `model` (suites/mtp/speculator_checks.py ProbeModel) wrapped as an
    nn.Module with vLLM's draft-model signature (forward(input_ids, positions, hidden_states,
    inputs_embeds, [spec_step_idx]) -> one state, or with model.pair the (logits state,
    fed-back state) pair vLLM's DeepSeekMTP returns; compute_logits(hidden_states,
    [spec_step_idx])); it records what each forward was given, and the request's seq_len in
    the speculator's input buffers at that moment (read, never written);
  - no attention: the probe has none, so the speculator gets a KV-cache layout with no groups
    (KVCacheConfig with no kv_cache_groups, vLLM's BlockTables with none, no attention groups),
    exactly what load_model/set_attn leave for a draft model without attention layers; the
    slot mappings and attention metadata vLLM then builds are empty dicts. BlockTables keeps
    per-request block counts in a UvaBackedTensor, which pins host memory (refused without an
    accelerator): built with suites/backends/vllm/common.py's HostTensor (plain
    CPU tensors, the same fields; with no groups they hold nothing);
  - CUDA graphs off (init_cudagraph_manager(CUDAGraphMode.NONE): eager dispatch), world size 1;
  - the speculator's persistent input buffers poisoned before propose (hidden states NaN,
    input ids VOCAB + 1000, positions 10**6): a row vLLM forgot to write reaches the probe as a
    wrong value, not as a plausible zero.

Input mapping (SpeculatorProblem -> propose): request r is batch row r in request-state slot
B - r (idx_mapping reversed; max_num_reqs MAX_NUM_REQS, the other slots spare); an InputBatch
whose rows are the requests' query tokens back to back (query_start_loc the cumulative query
lengths, positions first_position.., seq_lens first_position + query_len); last_hidden_states
the target hidden states; num_sampled 1 and num_rejected per request; last_sampled by slot; temperature 0.

Output: SpeculatorRun (suites/backends/base.py): the drafts propose returned, and per request
the rows of each forward: forward 0 the request's accepted rows (query_start_loc[r] + 0 ..
accepted - 1); then ("one") its single decode row r, or ("several") its accepted rows again.

Not covered here (each a path with its own law): probabilistic drafting (draft_sample_method
"probabilistic": the drafter's Gumbel sample and the logits cache the verifier reads), which
Triton's interpreter cannot run: _gumbel_sample_kernel stores the cache with
mask=(block_mask & is_valid_req), and the interpreter (Triton 3.9) evaluates an i1 block & an i1
scalar to an int32 array that its masked store refuses ("mask has unsupported dtype"; a 10-line
kernel of that shape fails the same way: an interpreter defect, not vLLM's) - it needs an
interpreter stand-in (a 0/1 integer mask taken as bool in the masked store) or a GPU;
multi-module re-prefill of >= 2 rejected tokens from the previous step's cache (needs two
propose calls per request state); chunked prefill (num_sampled 0 with
next_prefill_tokens); CUDA graphs and the fused decode loop (_fused_multi_step_decode, taken
only when attention backends update draft metadata in place); multimodal embeddings;
DeepSeek-V4-style top-k index sharing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from dataclasses import dataclass

import numpy as np
import torch

from suites.backends.base import (
    REGISTRY,
    MTPSpeculatorBackend,
    SpeculatorCall,
    SpeculatorRun,
    UnsupportedShape,
)

CLASSES = {"one": "MTPSpeculator", "several": "MultiModuleMTPSpeculator"}
HIDDEN = 32
MAX_NUM_REQS, MAX_NUM_TOKENS = 8, 64  # the scheduler's max_num_seqs, max_num_batched_tokens
POISON_ID, POISON_POSITION = 1512, 10**6


@functools.cache
def _v2_reason(modules: str) -> str | None:
    """'not in this release: ...' where this release's init_speculator cannot choose the
    speculator (releases.V2_MTP_SPECULATOR: MTPSpeculator from 0.23.0, MultiModuleMTPSpeculator
    chosen from 0.28.0; 0.27.x ship its file but never choose it)."""
    from suites.backends.vllm import releases
    from suites.backends.vllm.common import release_reason

    return release_reason(releases.V2_MTP_SPECULATOR[modules])


@functools.cache
def _vllm_config(num_modules: int, k: int, max_model_len: int, max_num_reqs: int,
                 max_num_tokens: int):
    from vllm.config import (
        DeviceConfig,
        ModelConfig,
        ParallelConfig,
        SchedulerConfig,
        SpeculativeConfig,
        VllmConfig,
    )

    from suites.backends.vllm.common import write_config

    base = json.loads((_fixture_dir() / "config.json").read_text())
    hf = dict(base, num_nextn_predict_layers=num_modules, hidden_size=HIDDEN)
    folder = write_config(f"v2-speculator-{num_modules}", hf)
    mc = ModelConfig(model=str(folder), skip_tokenizer_init=True, dtype="float32",
                     enforce_eager=True, max_model_len=max_model_len)
    pc = ParallelConfig()
    spec = SpeculativeConfig(method="mtp", num_speculative_tokens=k, target_model_config=mc,
                             target_parallel_config=pc)
    sc = SchedulerConfig(max_num_seqs=max_num_reqs, max_num_batched_tokens=max_num_tokens,
                         max_model_len=max_model_len, is_encoder_decoder=False)
    return VllmConfig(model_config=mc, parallel_config=pc, speculative_config=spec,
                      scheduler_config=sc, device_config=DeviceConfig(device="cpu"))


class _DraftModel(torch.nn.Module):
    """The suite's draft model (a ProbeModel) with vLLM's draft-model signature; records the
    rows of every forward and the speculator's seq_lens at that moment."""

    def __init__(self, probe, seq_lens: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.probe, self.seq_lens, self.dtype = probe, seq_lens, dtype
        self.forwards: list[dict] = []

    def forward(self, input_ids, positions, hidden_states, inputs_embeds=None, **kw):
        layer = kw.get("spec_step_idx")
        self.forwards.append(dict(input_ids=input_ids.clone(), positions=positions.clone(),
                                  hidden_states=hidden_states.double().clone(), layer=layer,
                                  seq_lens=self.seq_lens.clone()))
        lh, fed = self.probe(input_ids.long(), hidden_states, positions, layer)
        if self.probe.pair:  # (logits state, fed-back state), as vLLM's DeepSeekMTP returns
            return lh.to(self.dtype), fed.to(self.dtype)
        return lh.to(self.dtype)

    def compute_logits(self, hidden_states, spec_step_idx=None):
        return self.probe.logits(hidden_states, spec_step_idx).to(torch.float32)


@dataclass
class VllmV2MTPSpeculator(MTPSpeculatorBackend):
    description: str = ""

    def unavailable_reason(self):
        from suites.backends.vllm.triton_kernels import triton_reason

        return triton_reason("cpu") or _v2_reason(self.modules)

    def check(self, problem) -> None:
        if problem.modules != self.modules:
            raise UnsupportedShape(f"{self.name}: {problem.modules} module(s) "
                                   f"({self.modules} here)")
        if problem.pair:
            from suites.backends.vllm import releases
            from suites.backends.vllm.common import release_reason

            why = release_reason(releases.V2_MTP_STATE_PAIR)
            if why:  # the contract did not exist yet: nothing to hold the speculator to
                import pytest

                pytest.skip(f"{self.name}: {why}")

    def _speculator(self, vc, probe):
        from unittest import mock

        import vllm.v1.worker.gpu.block_table as block_table
        from vllm.config.compilation import CUDAGraphMode
        from vllm.v1.kv_cache_interface import KVCacheConfig
        from vllm.v1.worker.gpu.spec_decode import init_speculator

        from suites.backends.vllm.common import HostTensor, ensure_distributed

        cpu = torch.device("cpu")
        ensure_distributed()
        # vLLM's own choice of speculator; from 0.32.0 it also takes the request states (read by
        # speculators other than MTP's, None here as the model runner's dummy runs pass)
        spec = init_speculator(vc, cpu, **_declared(init_speculator, req_states=None))
        if type(spec).__name__ != CLASSES[self.modules]:
            raise AssertionError(f"{self.name}: vLLM chose {type(spec).__name__} for "
                                 f"{vc.speculative_config}, not {CLASSES[self.modules]}")
        spec.model = _DraftModel(probe, spec.input_buffers.seq_lens, spec.dtype)
        spec.draft_attn_layer_names = set()
        with mock.patch.object(block_table, "UvaBackedTensor", HostTensor):
            # no groups: no block sizes, and (required up to 0.31.0) no kernel block sizes
            spec.block_tables = block_table.BlockTables(
                [], spec.max_num_reqs, spec.max_num_tokens, [], cpu,
                **_declared(block_table.BlockTables, kernel_block_sizes=[]))
        spec.kv_cache_config = KVCacheConfig(num_blocks=0, kv_cache_tensors=[],
                                             kv_cache_groups=[])
        spec.attn_groups = []
        spec.init_cudagraph_manager(CUDAGraphMode.NONE)
        spec.hidden_states.fill_(float("nan"))
        spec.input_buffers.input_ids.fill_(POISON_ID)
        spec.input_buffers.positions.fill_(POISON_POSITION)
        return spec

    def propose(self, problem, model) -> SpeculatorRun:
        from vllm.config import set_current_vllm_config
        from vllm.v1.worker.gpu.input_batch import InputBatch

        from suites.backends.vllm.triton_kernels import interpreter_context

        self.check(problem)
        reqs = problem.requests
        B = len(reqs)
        q = np.array([r.query_len for r in reqs], dtype=np.int32)
        T = int(q.sum())
        if B + 1 > MAX_NUM_REQS or T > MAX_NUM_TOKENS:
            raise UnsupportedShape(f"{self.name}: {B} requests, {T} tokens (at most "
                                   f"{MAX_NUM_REQS - 1}, {MAX_NUM_TOKENS})")
        vc = _vllm_config(problem.num_modules, problem.k, problem.max_model_len, MAX_NUM_REQS,
                          MAX_NUM_TOKENS)
        qsl = np.zeros(B + 1, dtype=np.int32)
        qsl[1:] = np.cumsum(q)
        slots = np.array([B - r for r in range(B)], dtype=np.int64)
        ids = torch.cat([t[0] for t in problem.target]).to(torch.int32)
        hidden = torch.cat([t[1] for t in problem.target]).float()
        positions = torch.cat([torch.arange(r.first_position, r.first_position + r.query_len)
                               for r in reqs])
        seq_lens = torch.tensor([r.first_position + r.query_len for r in reqs], dtype=torch.int32)
        last_sampled = torch.zeros(MAX_NUM_REQS, dtype=torch.int64)
        last_sampled[torch.from_numpy(slots)] = torch.tensor([t[2] for t in problem.target])
        num_rejected = torch.tensor([r.num_rejected for r in reqs], dtype=torch.int32)
        idx = torch.from_numpy(slots)
        batch = _input_batch(
            InputBatch, req_ids=[f"r{r}" for r in range(B)], num_reqs=B,
            num_reqs_after_padding=B,
            idx_mapping=idx, idx_mapping_np=slots, expanded_idx_mapping=idx,
            expanded_local_pos=torch.zeros(B, dtype=torch.int32), num_scheduled_tokens=q,
            num_tokens=T, num_tokens_after_padding=T, num_draft_tokens=0,
            num_draft_tokens_per_req=None, query_start_loc=torch.from_numpy(qsl),
            query_start_loc_np=qsl, seq_lens=seq_lens, seq_lens_cpu_upper_bound=seq_lens.clone(),
            dcp_local_seq_lens=None, num_computed_tokens_np=seq_lens.numpy() - q,
            prefill_len_np=np.zeros(B, dtype=np.int32),
            num_computed_prefill_tokens_np=np.zeros(B, dtype=np.int32),
            is_prefilling_np=np.zeros(B, dtype=bool), has_prefill=False,
            decode_graph_eligible=False, input_ids=ids, positions=positions,
            is_padding=torch.zeros(T, dtype=torch.bool),
            logits_indices=torch.from_numpy(qsl[1:] - 1).long(),
            cu_num_logits=torch.from_numpy(qsl), cu_num_logits_np=qsl,
            has_structured_output_reqs=False, prompt_lens=None)
        # next_prefill_tokens: [max_num_reqs] for MTPSpeculator, [lookahead, max_num_reqs] for
        # the multi-module one (chunked prefill only; num_sampled >= 1 here never reads it)
        lookahead = max(problem.k - 1, 1) if self.modules == "several" else None
        shape = (lookahead, MAX_NUM_REQS) if lookahead else (MAX_NUM_REQS,)
        next_prefill = torch.zeros(shape, dtype=torch.int32)
        with contextlib.ExitStack() as stack:
            stack.enter_context(interpreter_context())
            stack.enter_context(set_current_vllm_config(vc))
            spec = self._speculator(vc, model)
            drafts = spec.propose(
                batch, {}, {}, hidden, None, torch.ones(B, dtype=torch.int32), num_rejected,
                last_sampled, next_prefill, torch.zeros(MAX_NUM_REQS),
                torch.zeros(MAX_NUM_REQS, dtype=torch.int64))
            drafts = drafts.clone().long()
        return SpeculatorRun(drafts, self._rows(problem, qsl, spec.model.forwards))

    def _rows(self, problem, qsl, forwards) -> list[list[SpeculatorCall]]:
        out = []
        for r, req in enumerate(problem.requests):
            calls = []
            for j, f in enumerate(forwards):
                if j == 0 or self.modules == "several":
                    rows = slice(int(qsl[r]), int(qsl[r]) + req.accepted)
                else:
                    rows = slice(r, r + 1)
                calls.append(SpeculatorCall(
                    f["input_ids"][rows].long(), f["positions"][rows].long(),
                    f["hidden_states"][rows], f["layer"], int(f["seq_lens"][r])))
            out.append(calls)
        return out


def _declared(fn, **optional):
    """The keyword arguments among `optional` that this release's `fn` declares: a parameter
    one release requires and another does not have (given the value meaning "none")."""
    params = inspect.signature(fn).parameters
    return {name: value for name, value in optional.items() if name in params}


def _input_batch(cls, **fields):
    """vLLM's InputBatch from the fields this release's dataclass declares. Releases add fields
    (is_padding and prompt_lens after 0.23.0, has_prefill in 0.28.0, decode_graph_eligible in
    0.31.0) and relax some (max_seq_len_np optional from 0.31.0); the ones supplied here are the
    pin's, each with the value that means "no prefill, no padding, no pipeline parallelism". A
    field the release requires and the adapter does not supply is an adapter limit, said as
    such; one the release lacks is left out (it has no meaning there)."""
    import dataclasses

    declared = {f.name: f for f in dataclasses.fields(cls)}
    required = {n for n, f in declared.items() if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(fields) - {"max_seq_len_np"})
    if missing:
        raise TypeError(f"{cls.__module__}.InputBatch requires {', '.join(missing)}, which "
                        "this adapter does not supply (an adapter limit, not a verdict on vLLM)")
    given = {n: v for n, v in fields.items() if n in declared}
    if "max_seq_len_np" in required:  # before 0.31.0: required, None without pipeline parallel
        given["max_seq_len_np"] = None
    return cls(**given)


def _fixture_dir():
    import pathlib

    return pathlib.Path(__file__).resolve().parents[3] / "fixtures" / "tiny_qwen3_next"


REGISTRY.register("vllm.v2.mtp_speculator.interp", lambda: VllmV2MTPSpeculator(
    name="vllm.v2.mtp_speculator.interp", modules="one",
    description="vllm Model Runner V2 MTPSpeculator.propose (one MTP module chained), its "
                "Triton input programs under Triton's interpreter, around the suite's probe "
                "draft model"))
REGISTRY.register("vllm.v2.multi_module_mtp_speculator.interp", lambda: VllmV2MTPSpeculator(
    name="vllm.v2.multi_module_mtp_speculator.interp", modules="several",
    description="vllm Model Runner V2 MultiModuleMTPSpeculator.propose (module s drafts step "
                "s), its Triton input programs under Triton's interpreter, around the suite's "
                "probe draft model"))
