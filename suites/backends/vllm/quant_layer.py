"""vLLM's MoE layers of quantized releases, built outside an engine the way the model loader
builds them (kind "quant_moe_block"): the family's block (suites/backends/vllm/layer.py) created
under the checkpoint's `quantization_config`, its routed experts loaded from checkpoint tensors
by their checkpoint names through the layer's own loader (`MoERunner.load_weights` ->
`RoutedExperts.load_weights` -> the quantization method's weight loaders; gpt-oss mxfp4: the
fused tensors through the parameters' weight_loader, as GptOssModel._load_weights_mxfp4 does at
TP 1), then packed by the quantization method's process_weights_after_loading (vLLM's oracle
picks the experts class), then called under a forward context.

  vllm.qwen3_next_moe_block.fp8    Qwen3.5-397B-A17B-FP8 / Qwen3-Next-FP8: Fp8Config with
                                   weight_block_size [128, 128]; per expert `gate_proj.weight`
                                   (e4m3) + `gate_proj.weight_scale_inv` [I/128, H/128]
  vllm.deepseek_v3_moe_block.fp8   DeepSeek-V3 (the release is this format)
  vllm.qwen3_moe_block.int8_w8a8   compressed-tensors W8A8 int8 (channel weights `weight_scale`
                                   [N, 1], dynamic per-token activations)
  vllm.qwen3_moe_block.gptq        AutoGPTQ int4 (`qweight` [K/8, N], `qzeros` [G, N/8] storing
                                   z - 1, `scales` [G, N], `g_idx`), symmetric
  vllm.qwen3_moe_block.awq         AutoAWQ int4 (`qweight` [K, N/8] in AWQ's nibble order,
                                   `qzeros` [G, N/8], `scales` [G, N])
  vllm.gpt_oss_moe_block.mxfp4     gpt-oss: `gate_up_proj_blocks` / `_scales` (e2m1 pairs,
                                   e8m0 per 32), expert biases, swigluoai

What is quantized: the routed experts only. The router, the shared expert and the expert biases
stay in the model dtype (`ignored_layers` / `ignore` name them: the releases keep the router in
bf16; the shared expert is bf16 here because vLLM's CPU fp8 linear kernels need AMX).

Selection on CPUs without AMX: vLLM's oracles offer the CPU experts classes on AMX CPUs only
(`_supports_current_device`), while the kernels run their AVX-512 path without AMX (that path is
what suites/backends/vllm/cpu_quant.py drives here). Where this CPU has no AMX, the adapter lifts
that device check for the class the format runs (`FORCED` below, nothing else) so that vLLM's
own selection, weight loading and packing run; on an AMX CPU nothing is patched. The class vLLM
picked is checked after packing: another class than the one the oracle models is an error.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from reference import quant_layouts as L
from suites.backends.base import REGISTRY, QuantMoEBlockBackend, UnsupportedShape
from suites.backends.vllm import releases
from suites.backends.vllm.common import (
    ensure_distributed,
    loaded_parameter_names,
    observing_routing,
    sgl_kernels_reason,
    vllm_version,
    write_config,
)
from suites.backends.vllm.layer import BLOCKS, COMMON_CONFIG, FAMILY_BLOCKS, PREFIX


def _has_amx() -> bool:
    return bool(torch.cpu._is_amx_tile_supported())


def _has_amx_fp8() -> bool:
    from vllm._custom_ops import cpu_has_amx_fp8

    return bool(cpu_has_amx_fp8())


@dataclass(frozen=True)
class QuantFormat:
    """One checkpoint format: its quantization_config, the checkpoint tensors of the routed
    experts, and which vLLM experts class runs it on this CPU (-> the reference scheme kind)."""

    name: str
    scheme_kinds: tuple[tuple[str, str], ...]  # (vLLM experts class, reference scheme kind), in
    #                                            the order vLLM's oracle prefers them
    fp8_blocks: tuple[tuple[int, int], ...] = ()
    zero_points: tuple[bool, ...] = (False, True)
    describe: str = ""

    def expected_class(self) -> str:
        """The experts class vLLM's CPU oracle picks for this format on this CPU."""
        if self.name == "fp8":  # W8A8 where the CPU has AMX-FP8, else W8A16
            return "CPUExpertsFp8W8A8" if _has_amx_fp8() else "CPUExpertsFp8"
        return self.scheme_kinds[0][0]

    def scheme_kind(self) -> str:
        return dict(self.scheme_kinds)[self.expected_class()]

    # -------------------------------------------------------------- quantization_config
    def config(self, scheme, unquantized: list[str]) -> dict:
        """config.json's quantization_config; unquantized: the block's non-expert linear
        layers by their full names (router, shared expert)."""
        if self.name == "fp8":
            return {"quant_method": "fp8", "activation_scheme": "dynamic",
                    "weight_block_size": list(scheme.weight_block), "ignored_layers": unquantized}
        if self.name == "int8_w8a8":
            return {"quant_method": "compressed-tensors", "format": "int-quantized",
                    "quantization_status": "compressed", "ignore": unquantized,
                    "config_groups": {"group_0": {
                        "targets": ["Linear"],
                        "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                                    "strategy": "channel", "dynamic": False},
                        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                                              "strategy": "token", "dynamic": True}}}}
        if self.name == "gptq":
            # GPTQModel's per-module switch: "-:" + a regex skips those modules
            return {"quant_method": "gptq", "bits": 4, "group_size": scheme.group_size,
                    "desc_act": False, "sym": not scheme.zero_point, "checkpoint_format": "gptq",
                    "dynamic": {f"-:{n.replace('.', '[.]')}$": {} for n in unquantized}}
        if self.name == "awq":
            return {"quant_method": "awq", "bits": 4, "group_size": scheme.group_size,
                    "zero_point": True, "version": "gemm", "modules_to_not_convert": unquantized}
        if self.name == "mxfp4":
            return {"quant_method": "mxfp4"}
        raise ValueError(f"unknown checkpoint format {self.name!r}")

    # -------------------------------------------------------------- checkpoint tensors
    def checkpoint(self, w13, w2) -> list[tuple[str, torch.Tensor]]:
        """The routed experts' checkpoint tensors, names relative to the experts module
        (`{e}.gate_proj.weight` ...; mxfp4: the fused `w13_weight` ... by vLLM's names, as
        gpt-oss's loader remaps them before calling the weight loader)."""
        E, N13, _ = w13.shape
        I = N13 // 2
        if self.name == "mxfp4":
            return [("w13_weight", L.pack_mxfp4(w13.q)), ("w13_weight_scale", w13.scale),
                    ("w2_weight", L.pack_mxfp4(w2.q)), ("w2_weight_scale", w2.scale)]
        out = []
        for e in range(E):
            for proj, w, rows in (("gate_proj", w13, slice(0, I)), ("up_proj", w13, slice(I, N13)),
                                  ("down_proj", w2, slice(None))):
                out += [(f"{e}.{proj}.{k}", v) for k, v in self._tensors(w, e, rows)]
        return out

    def _tensors(self, w, e: int, rows: slice) -> list[tuple[str, torch.Tensor]]:
        q = w.q[e, rows]  # [N, K]
        if self.name == "fp8":
            bn = w.scheme.weight_block[0]
            srows = slice(None if rows.start is None else rows.start // bn,
                          None if rows.stop is None else -(-rows.stop // bn))
            return [("weight", q.contiguous()), ("weight_scale_inv", w.scale[e, srows].contiguous())]
        if self.name == "int8_w8a8":
            return [("weight", q.contiguous()),
                    ("weight_scale", w.scale[e, rows].float().unsqueeze(1).contiguous())]
        scale = w.scale[e : e + 1, rows].to(torch.bfloat16)
        zero = (torch.full(scale.shape, 8, dtype=torch.uint8) if w.zero is None
                else w.zero[e : e + 1, rows])  # symmetric checkpoints store the middle code too
        if self.name == "gptq":
            qweight, qzeros, scales = L.pack_gptq(q.unsqueeze(0), zero, scale)
            return [("qweight", qweight[0]), ("qzeros", qzeros[0]), ("scales", scales[0]),
                    ("g_idx", (torch.arange(q.shape[1]) // w.scheme.group_size).int())]
        if self.name == "awq":
            qweight, qzeros, scales = L.pack_awq(q.unsqueeze(0), zero, scale)
            return [("qweight", qweight[0]), ("qzeros", qzeros[0]), ("scales", scales[0])]
        raise ValueError(f"unknown checkpoint format {self.name!r}")


FORMATS = {
    "fp8": QuantFormat("fp8", (("CPUExpertsFp8W8A8", "fp8_block"), ("CPUExpertsFp8", "fp8_block_w8a16")),
                       fp8_blocks=((128, 128),),
                       describe="Fp8Config, e4m3 experts with [128, 128] block scales"),
    "int8_w8a8": QuantFormat("int8_w8a8", (("CPUExpertsInt8", "int8_channel"),),
                             describe="compressed-tensors W8A8 int8, channel weights, dynamic "
                                      "per-token activations"),
    # vLLM's AutoGPTQConfig refuses 4-bit sym=False ("Unsupported quantization config")
    "gptq": QuantFormat("gptq", (("CPUExpertsInt4", "int4_w4a8"),), zero_points=(False,),
                        describe="AutoGPTQ int4 groups (symmetric)"),
    "awq": QuantFormat("awq", (("CPUExpertsInt4", "int4_w4a8"),),
                       describe="AutoAWQ int4 groups with zero points"),
    "mxfp4": QuantFormat("mxfp4", (("CPUExpertsMxfp4", "mxfp4"),),
                         describe="Mxfp4Config, gpt-oss e2m1 blocks with e8m0 scales per 32"),
}

# The experts classes whose AMX-only device check is lifted on a CPU without AMX (module docstring)
FORCED = ("CPUExpertsFp8", "CPUExpertsInt8", "CPUExpertsInt4", "CPUExpertsMxfp4")


@contextlib.contextmanager
def cpu_experts_selectable():
    """vLLM's CPU experts classes selectable on this CPU: on an AMX CPU as they are; without AMX
    the device check of FORCED lifted for the duration (the kernels' non-AMX path runs)."""
    if _has_amx():
        yield "native"
        return
    from vllm.model_executor.layers.fused_moe.experts import cpu_moe

    saved = {n: cpu_moe.__dict__[n].__dict__["_supports_current_device"] for n in FORCED}
    try:
        for n in FORCED:
            getattr(cpu_moe, n)._supports_current_device = staticmethod(lambda: True)
        yield "forced (no AMX here: vLLM offers its CPU experts classes on AMX CPUs only)"
    finally:
        for n, f in saved.items():
            getattr(cpu_moe, n)._supports_current_device = f


@dataclass
class VllmQuantMoEBlock(QuantMoEBlockBackend):
    """One family's MoE block from its vLLM model file under one quantized checkpoint format."""

    fmt: str = "fp8"  # the checkpoint format (FORMATS)
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)
    alignment: int = 32  # the CPU kernels' VNNI tiles: H and I multiples of 32
    # Negative controls (tests/) plant bugs here: on the checkpoint tensors before loading
    # (tamper_checkpoint(list) -> list) and on the block after loading, before packing.
    tamper_checkpoint: object = None
    tamper: object = None

    def __post_init__(self) -> None:
        # vLLM state lives outside the dataclass fields (failure printers walk the fields)
        cls, _ = BLOCKS[FAMILY_BLOCKS[self.family]]
        self._block = cls(name=self.name, description=self.description, device=self.device)
        self._configs: dict = {}
        self.format = FORMATS[self.fmt]
        self.fp8_blocks, self.zero_points = self.format.fp8_blocks, self.format.zero_points
        if self.fmt in ("gptq", "awq") and self.hidden_multiple == 1:
            # ledger cpu-int4-moe-layer-hidden-not-128-gpu-path: vLLM sends these layers to a
            # CUDA-only method on CPU; the repro lowers this to 32 (dataclasses.replace)
            self.hidden_multiple = 128

    def unavailable_reason(self) -> str | None:
        r = self._block.unavailable_reason() or sgl_kernels_reason()
        if r is None:  # which class vLLM picks here (AMX-FP8 or not) needs vLLM: known only now
            self.scheme_kind = self.format.scheme_kind()
        return r

    def hardware_reason(self) -> str | None:
        isa = torch.backends.cpu.get_cpu_capability()
        return None if isa.startswith(("AVX512", "AMX")) else sgl_kernels_reason()

    def check(self, cfg) -> None:
        self._block.check(cfg)

    def _unquantized(self) -> list[str]:
        names = [f"{PREFIX}.gate", f"{PREFIX}.router", f"{PREFIX}.shared_expert_gate"]
        for shared in ("shared_expert", "shared_experts"):
            names += [f"{PREFIX}.{shared}.gate_up_proj", f"{PREFIX}.{shared}.down_proj"]
        return names

    def _vllm_config(self, cfg, scheme):
        key = (cfg, scheme)
        if key not in self._configs:
            from vllm.config import ModelConfig, VllmConfig

            hf = {**COMMON_CONFIG, **self._block._hf_config(cfg),
                  "quantization_config": self.format.config(scheme, self._unquantized())}
            folder = write_config(f"{self.name}-{len(self._configs)}", hf)
            mc = ModelConfig(model=str(folder), skip_tokenizer_init=True, dtype="bfloat16",
                             enforce_eager=True)
            self._configs[key] = VllmConfig(model_config=mc)
        return self._configs[key]

    def forward(self, cfg, w, w13, w2, x):
        from vllm.config import set_current_vllm_config
        from vllm.forward_context import set_forward_context

        self.check(cfg)
        if x.dtype not in self.dtypes:
            raise UnsupportedShape(f"{self.name}: dtype {x.dtype} (the model dtype is bfloat16)")
        H, I = cfg.hidden_size, cfg.moe_intermediate_size
        if H % self.alignment or I % self.alignment:
            raise UnsupportedShape(f"{self.name}: hidden {H} and intermediate {I} must be "
                                   f"multiples of {self.alignment}")
        if H % self.hidden_multiple:
            raise UnsupportedShape(f"{self.name}: hidden {H} is not a multiple of "
                                   f"{self.hidden_multiple} (known failure "
                                   "cpu-int4-moe-layer-hidden-not-128-gpu-path)")
        vc = self._vllm_config(cfg, w13.scheme)
        with set_current_vllm_config(vc), cpu_experts_selectable():
            ensure_distributed()
            block = self._block._fresh_block(vc, x.dtype)
            params = dict(block.named_parameters())
            # router, shared expert, expert biases: copied in by vLLM's names (unquantized)
            wanted = {k: v for k, v in self._block._parameters(w).items()
                      if not k.startswith("experts.routed_experts.w")
                      or k.endswith("_bias")}
            self._block._copy_in(params, wanted)
            self._load_experts(block, self.format.checkpoint(w13, w2))
            if self.tamper is not None:  # a planted loading bug, before packing
                self.tamper(block)
            for m in block.modules():
                qm = getattr(m, "quant_method", None)
                if qm is not None and hasattr(qm, "process_weights_after_loading"):
                    qm.process_weights_after_loading(m)
            self.selected = _experts_class(block)
            want = self.format.expected_class()
            if self.selected != want:
                raise RuntimeError(f"{self.name}: vLLM picked the experts class {self.selected} "
                                   f"for {self.fmt}; the oracle models {want}")
            self.observed_routing = None
            with set_forward_context(None, vc), torch.no_grad(), observing_routing(block) as seen:
                out = block(x.clone())
            self.observed_routing = seen or None
            return out

    def _load_experts(self, block, ckpt) -> None:
        if self.tamper_checkpoint is not None:
            ckpt = self.tamper_checkpoint(ckpt)
        if self.fmt == "mxfp4":  # fused tensors through the weight loader, as gpt-oss's loader
            params = dict(block.experts.routed_experts.named_parameters())
            for name, t in ckpt:
                p = params[name]
                p.weight_loader(p, t, weight_name=f"{PREFIX}.experts.{name}", shard_id=None,
                                expert_id=None)
            return
        from vllm.model_executor.models.utils import AutoWeightsLoader

        # the model loader's path: its quant-config name mapping (GPTQ's g_idx dropped), then
        # the block's experts module's own load_weights
        loaded = loaded_parameter_names(
            AutoWeightsLoader(block).load_weights((f"experts.{n}", t) for n, t in ckpt))
        derived = ("_bias", *releases.derived_expert_parameters(vllm_version()))
        missing = {f"experts.routed_experts.{n}"
                   for n, _ in block.experts.routed_experts.named_parameters()
                   if n.startswith(("w13", "w2")) and not n.endswith(derived)} - loaded
        if missing:
            raise RuntimeError(f"{self.name}: the checkpoint left {sorted(missing)} unloaded")


@contextlib.contextmanager
def tampered(backend: VllmQuantMoEBlock, fn=None, checkpoint=None):
    """Run with a planted bug: checkpoint(list of (name, tensor)) -> list on the tensors the
    loader is handed; fn(block) after loading, before packing. For the negative controls."""
    old = backend.tamper, backend.tamper_checkpoint
    backend.tamper, backend.tamper_checkpoint = fn, checkpoint
    try:
        yield backend
    finally:
        backend.tamper, backend.tamper_checkpoint = old


def _experts_class(block) -> str:
    qm = block.experts.routed_experts.quant_method
    cls = getattr(qm, "experts_cls", None)
    if cls is None:
        kernel = getattr(qm, "moe_kernel", None) or getattr(qm, "kernel", None)
        cls = type(getattr(kernel, "fused_experts", None) or getattr(kernel, "experts", kernel))
    return getattr(cls, "__name__", str(cls))


QUANT_BLOCKS = {  # name -> (family, format)
    "vllm.qwen3_next_moe_block.fp8": ("qwen3_next", "fp8"),
    "vllm.deepseek_v3_moe_block.fp8": ("deepseek_v3", "fp8"),
    "vllm.qwen3_moe_block.int8_w8a8": ("qwen3_moe", "int8_w8a8"),
    "vllm.qwen3_moe_block.gptq": ("qwen3_moe", "gptq"),
    "vllm.qwen3_moe_block.awq": ("qwen3_moe", "awq"),
    "vllm.gpt_oss_moe_block.mxfp4": ("gpt_oss", "mxfp4"),
}
for _name, (_family, _fmt) in QUANT_BLOCKS.items():
    REGISTRY.register(_name, functools.partial(
        VllmQuantMoEBlock, name=_name, family=_family, fmt=_fmt,
        description=f"vLLM's {BLOCKS[FAMILY_BLOCKS[_family]][0].block_class} under "
                    f"{FORMATS[_fmt].describe} on CPU"))
