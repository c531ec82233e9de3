"""vLLM's MoE layers as its model files build them, outside an engine, one backend per family:

    vllm.qwen3_next_moe_block   Qwen3NextSparseMoeBlock (qwen3_next.py; Qwen3.5 uses it): bf16
                                gate -> softmax top-k, norm_topk_prob -> FusedMoE -> + sigmoid(
                                x @ shared_expert_gate.T) x shared expert
    vllm.qwen3_moe_block        Qwen3MoeSparseMoeBlock (qwen3_moe.py): the same routing, no
                                shared expert
    vllm.mixtral_moe_block      MixtralMoE (mixtral.py): softmax top-k, renormalize hard-wired
    vllm.deepseek_v3_moe_block  DeepseekV2MoE (deepseek_v2.py) with a DeepSeek-V3 config:
                                sigmoid scores, e_score_correction_bias, grouped top-k,
                                routed_scaling_factor, ungated shared experts
    vllm.gpt_oss_moe_block      MLPBlock (gpt_oss.py): router with a bias, softmax over the
                                top-k, expert biases, interleaved clamped SwiGLU (swigluoai)

Kind "moe_block": forward(cfg: MoEConfig, w: MoEWeights, x [T, H]) -> [T, H] in x.dtype; each
backend's `family` names the block family (fixtures/strategies.py BlockProblem.for_family).

Each shape gets a config.json in the family's format (Qwen3-Next: the committed tiny fixture's
with the MoE fields replaced) and a vLLM ModelConfig/VllmConfig; the distributed state (world
size 1, gloo) is set up once per process. Each forward builds a fresh block as the family's
decoder layer does (about a millisecond), copies the weights in by vLLM's parameter names, lets
the quantization method pack them (process_weights_after_loading, as the model loader does) and
runs it under a forward context. A config the family's block cannot express (another routing,
activation, biases, shared-expert layout) is UnsupportedShape.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import json
import pathlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from suites.backends.base import REGISTRY, MoEBlockBackend, UnsupportedShape
from suites.backends.vllm.common import (
    ensure_distributed,
    model_file_reason,
    observing_routing,
    write_config,
)

FIXTURE_CONFIG = (pathlib.Path(__file__).resolve().parents[3] / "fixtures" / "tiny_qwen3_next"
                  / "config.json")
PREFIX = "model.layers.0.mlp"  # the block registers its experts under this name per config


# The parts of a model's config.json every family's file needs to build a ModelConfig (the
# block itself reads only its MoE fields; attention and vocabulary are a token size).
COMMON_CONFIG = dict(dtype="bfloat16", torch_dtype="bfloat16", hidden_act="silu", num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, head_dim=64, vocab_size=512,
               max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False,
               bos_token_id=0, eos_token_id=4)


@dataclass
class VllmMoEBlock(MoEBlockBackend):
    """One family's MoE block from its vLLM model file, built per shape outside an engine."""

    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)
    # Negative controls (tests/) plant wiring bugs here: a function applied to the built block.
    tamper: object = None
    module: ClassVar[str] = ""  # vllm.model_executor.models.<module>
    block_class: ClassVar[str] = ""

    def __post_init__(self) -> None:
        # vLLM state lives outside the dataclass fields: failure printers (hypothesis) walk the
        # fields, and a VllmConfig's repr is not safe to take.
        self._configs: dict = {}

    def unavailable_reason(self) -> str | None:
        return model_file_reason(self.device, self.module)

    # ------------------------------------------------------------------ per family
    @abc.abstractmethod
    def _refusals(self, cfg) -> list[str]:
        """What of cfg this family's block cannot express (empty: it can)."""

    @abc.abstractmethod
    def _hf_config(self, cfg) -> dict:
        """config.json for cfg in this family's format."""

    @abc.abstractmethod
    def _build(self, vc, hf, prefix: str):
        """The block, as the family's decoder layer constructs it."""

    def _shared_parameters(self, w) -> dict:
        """vLLM parameter name -> reference tensor for the family's shared expert, if any."""
        return {}

    def _parameters(self, w) -> dict:
        """vLLM parameter name -> the reference tensor that goes there (vLLM 0.32 registers
        every family's routed experts under experts.routed_experts)."""
        return {"gate.weight": w.gate, "experts.routed_experts.w13_weight": w.w13,
                "experts.routed_experts.w2_weight": w.w2, **self._shared_parameters(w)}

    # ------------------------------------------------------------------ shared
    def check(self, cfg) -> None:
        why = self._refusals(cfg)
        if cfg.hidden_act != "silu":
            why.append(f"activation {cfg.hidden_act}")
        if cfg.router_bias or cfg.expert_bias:
            why.append("router/expert biases")
        if why:
            raise UnsupportedShape(f"{self.name}: {self.block_class} cannot express "
                                   + ", ".join(why))

    def _vllm_config(self, cfg):
        if cfg not in self._configs:
            from vllm.config import ModelConfig, VllmConfig

            hf = {**COMMON_CONFIG, **self._hf_config(cfg)}
            folder = write_config(f"{self.name}-{len(self._configs)}", hf)
            mc = ModelConfig(model=str(folder), skip_tokenizer_init=True, dtype="bfloat16",
                             enforce_eager=True)
            self._configs[cfg] = VllmConfig(model_config=mc)
        return self._configs[cfg]

    def forward(self, cfg, w, x):
        from vllm.config import set_current_vllm_config
        from vllm.forward_context import set_forward_context

        self.check(cfg)
        if x.dtype not in self.dtypes:
            raise UnsupportedShape(f"{self.name}: dtype {x.dtype} (the model dtype is bfloat16)")
        vc = self._vllm_config(cfg)
        with set_current_vllm_config(vc):
            ensure_distributed()
            block = self._fresh_block(vc, x.dtype)
            self._copy_in(dict(block.named_parameters()), self._parameters(w))
            if self.tamper is not None:  # a planted loading/wiring bug, before packing
                self.tamper(block)
            for m in block.modules():
                qm = getattr(m, "quant_method", None)
                if qm is not None and hasattr(qm, "process_weights_after_loading"):
                    qm.process_weights_after_loading(m)
            self.observed_routing = None
            with set_forward_context(None, vc), torch.no_grad(), observing_routing(block) as seen:
                out = block(x.clone())
            self.observed_routing = seen or None
            return out

    def _fresh_block(self, vc, dtype: torch.dtype):
        """A new block of this family under vc (call inside set_current_vllm_config): it
        registers its experts in the config's static forward context by layer name (a model
        has one per layer); the fresh block takes the name over."""
        cc = vc.compilation_config
        for name in [n for n in cc.static_forward_context if n.startswith(PREFIX + ".")]:
            del cc.static_forward_context[name]
        cc.static_all_moe_layers[:] = [n for n in cc.static_all_moe_layers
                                       if not n.startswith(PREFIX + ".")]
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            return self._build(vc, vc.model_config.hf_text_config, PREFIX)
        finally:
            torch.set_default_dtype(default)

    def _copy_in(self, params: dict, wanted: dict) -> None:
        """Copy reference tensors into vLLM's parameters by name, shapes checked."""
        missing = sorted(set(wanted) - set(params))
        if missing:
            raise RuntimeError(f"{self.name}: this vLLM's {self.block_class} has no "
                               f"{missing}; its parameters: {sorted(params)}")
        with torch.no_grad():
            for name, value in wanted.items():
                if tuple(params[name].shape) != tuple(value.shape):
                    raise RuntimeError(f"{self.name}: {name} is {tuple(params[name].shape)} "
                                       f"in vLLM, {tuple(value.shape)} in the reference")
                params[name].copy_(value)


def _softmax_refusals(cfg, *, renormalizes: bool | None = None) -> list[str]:
    why = []
    if cfg.topk_method != "greedy" or cfg.scoring_func != "softmax":
        why.append(f"routing {cfg.topk_method}/{cfg.scoring_func} (softmax top-k)")
    if renormalizes is not None and cfg.norm_topk_prob != renormalizes:
        why.append(f"norm_topk_prob={cfg.norm_topk_prob} (always {renormalizes})")
    if cfg.routed_scaling_factor != 1.0:
        why.append(f"routed_scaling_factor {cfg.routed_scaling_factor}")
    return why


@dataclass
class VllmQwen3NextMoEBlock(VllmMoEBlock):
    """Qwen3NextSparseMoeBlock (qwen3_next.py; Qwen3.5 uses the same block)."""

    family: str = "qwen3_next"
    module: ClassVar[str] = "qwen3_next"
    block_class: ClassVar[str] = "Qwen3NextSparseMoeBlock"

    def _refusals(self, cfg):
        why = _softmax_refusals(cfg)
        if cfg.shared_expert_intermediate_size <= 0 or not cfg.shared_expert_gated:
            why.append("no gated shared expert")
        return why

    def _hf_config(self, cfg):
        base = json.loads(FIXTURE_CONFIG.read_text())
        base.update(hidden_size=cfg.hidden_size, moe_intermediate_size=cfg.moe_intermediate_size,
                    num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                    norm_topk_prob=cfg.norm_topk_prob,
                    shared_expert_intermediate_size=cfg.shared_expert_intermediate_size)
        return base

    def _build(self, vc, hf, prefix):
        from vllm.model_executor.models.qwen3_next import Qwen3NextSparseMoeBlock

        return Qwen3NextSparseMoeBlock(vllm_config=vc, prefix=prefix)

    def _shared_parameters(self, w):
        return {"shared_expert_gate.weight": w.shared_expert_gate,
                "shared_expert.gate_up_proj.weight": w.shared_w13,
                "shared_expert.down_proj.weight": w.shared_w2}


@dataclass
class VllmQwen3MoeBlock(VllmMoEBlock):
    """Qwen3MoeSparseMoeBlock (qwen3_moe.py): Qwen3-30B-A3B / 235B-A22B, no shared expert."""

    family: str = "qwen3_moe"
    module: ClassVar[str] = "qwen3_moe"
    block_class: ClassVar[str] = "Qwen3MoeSparseMoeBlock"

    def _refusals(self, cfg):
        why = _softmax_refusals(cfg)
        if cfg.shared_expert_intermediate_size:
            why.append("a shared expert (Qwen3-MoE has none)")
        return why

    def _hf_config(self, cfg):
        return dict(architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe",
                    hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
                    moe_intermediate_size=cfg.moe_intermediate_size,
                    num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                    norm_topk_prob=cfg.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=[],
                    rope_theta=10000.0)

    def _build(self, vc, hf, prefix):
        from vllm.model_executor.models.qwen3_moe import Qwen3MoeSparseMoeBlock

        return Qwen3MoeSparseMoeBlock(vllm_config=vc, prefix=prefix)


@dataclass
class VllmMixtralMoE(VllmMoEBlock):
    """MixtralMoE (mixtral.py): softmax top-k, renormalized (hard-wired), no shared expert."""

    family: str = "mixtral"
    module: ClassVar[str] = "mixtral"
    block_class: ClassVar[str] = "MixtralMoE"

    def _refusals(self, cfg):
        why = _softmax_refusals(cfg, renormalizes=True)
        if cfg.shared_expert_intermediate_size:
            why.append("a shared expert (Mixtral has none)")
        return why

    def _hf_config(self, cfg):
        return dict(architectures=["MixtralForCausalLM"], model_type="mixtral",
                    hidden_size=cfg.hidden_size, intermediate_size=cfg.moe_intermediate_size,
                    num_local_experts=cfg.num_experts,
                    num_experts_per_tok=cfg.num_experts_per_tok, rope_theta=1e6)

    def _build(self, vc, hf, prefix):
        from vllm.model_executor.models.mixtral import MixtralMoE

        # as MixtralDecoderLayer constructs it
        return MixtralMoE(num_experts=hf.num_local_experts, top_k=hf.num_experts_per_tok,
                          hidden_size=hf.hidden_size, intermediate_size=hf.intermediate_size,
                          quant_config=vc.quant_config, prefix=prefix)


@dataclass
class VllmDeepseekV3MoE(VllmMoEBlock):
    """DeepseekV2MoE with a DeepSeek-V3 config (deepseek_v2.py): sigmoid scores, the
    e_score_correction_bias steering a group-limited top-k (noaux_tc), routed_scaling_factor on
    the routed part, n_shared_experts ungated shared experts."""

    family: str = "deepseek_v3"
    module: ClassVar[str] = "deepseek_v2"
    block_class: ClassVar[str] = "DeepseekV2MoE"

    def _refusals(self, cfg):
        why = []
        if cfg.topk_method != "noaux_tc" or cfg.scoring_func != "sigmoid":
            why.append(f"routing {cfg.topk_method}/{cfg.scoring_func} (DeepSeek-V3: noaux_tc, "
                       "sigmoid)")
        Is, I = cfg.shared_expert_intermediate_size, cfg.moe_intermediate_size
        if not Is or Is % I or cfg.shared_expert_gated:
            why.append(f"shared expert width {Is}, gated={cfg.shared_expert_gated} (DeepSeek: "
                       f"n_shared_experts ungated experts of width {I})")
        return why

    def _hf_config(self, cfg):
        return dict(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
                    hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size,
                    moe_intermediate_size=cfg.moe_intermediate_size,
                    n_routed_experts=cfg.num_experts,
                    n_shared_experts=cfg.shared_expert_intermediate_size
                    // cfg.moe_intermediate_size,
                    num_experts_per_tok=cfg.num_experts_per_tok, n_group=cfg.n_group,
                    topk_group=cfg.topk_group, topk_method="noaux_tc", scoring_func="sigmoid",
                    norm_topk_prob=cfg.norm_topk_prob,
                    routed_scaling_factor=cfg.routed_scaling_factor, first_k_dense_replace=0,
                    moe_layer_freq=1, num_key_value_heads=2, kv_lora_rank=32, q_lora_rank=None,
                    qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32,
                    rope_theta=10000.0)

    def _build(self, vc, hf, prefix):
        from vllm.model_executor.models.deepseek_v2 import DeepseekV2MoE

        return DeepseekV2MoE(config=hf, parallel_config=vc.parallel_config,
                             quant_config=vc.quant_config, prefix=prefix)

    def _shared_parameters(self, w):
        return {"gate.e_score_correction_bias": w.e_score_correction_bias,
                "shared_experts.gate_up_proj.weight": w.shared_w13,
                "shared_experts.down_proj.weight": w.shared_w2}


@dataclass
class VllmGptOssMoE(VllmMoEBlock):
    """gpt-oss's MLPBlock (gpt_oss.py): a router with a bias (GateLinear), FusedMoE with
    renormalize=True (softmax over the top-k logits), expert biases and the interleaved clamped
    SwiGLU (activation swigluoai, swiglu_limit 7), no shared expert."""

    family: str = "gpt_oss"
    module: ClassVar[str] = "gpt_oss"
    block_class: ClassVar[str] = "MLPBlock"

    def check(self, cfg) -> None:  # the base refuses biases and non-silu: this block has them
        why = []
        if cfg.topk_method != "topk_softmax":
            why.append(f"routing {cfg.topk_method}/{cfg.scoring_func} (softmax over the top-k)")
        if cfg.hidden_act != "swigluoai" or not (cfg.router_bias and cfg.expert_bias):
            why.append(f"activation {cfg.hidden_act}, router_bias={cfg.router_bias}, "
                       f"expert_bias={cfg.expert_bias} (gpt-oss: swigluoai with both biases)")
        if cfg.shared_expert_intermediate_size or cfg.routed_scaling_factor != 1.0:
            why.append("a shared expert or routed scaling (gpt-oss has neither)")
        if why:
            raise UnsupportedShape(f"{self.name}: {self.block_class} cannot express " + ", ".join(why))

    def _refusals(self, cfg):
        return []

    def _hf_config(self, cfg):
        return dict(architectures=["GptOssForCausalLM"], model_type="gpt_oss",
                    hidden_size=cfg.hidden_size, intermediate_size=cfg.moe_intermediate_size,
                    num_local_experts=cfg.num_experts,
                    num_experts_per_tok=cfg.num_experts_per_tok, swiglu_limit=7.0,
                    sliding_window=128, layer_types=["full_attention"], rope_theta=150000.0,
                    max_position_embeddings=131072)

    def _build(self, vc, hf, prefix):
        from vllm.model_executor.models.gpt_oss import MLPBlock

        return MLPBlock(vllm_config=vc, layer_idx=0, prefix=prefix)

    def _parameters(self, w):
        return {"router.weight": w.gate, "router.bias": w.gate_bias,
                "experts.routed_experts.w13_weight": w.w13,
                "experts.routed_experts.w13_bias": w.w13_bias,
                "experts.routed_experts.w2_weight": w.w2,
                "experts.routed_experts.w2_bias": w.w2_bias}


@contextlib.contextmanager
def tampered(backend: VllmQwen3NextMoEBlock, fn):
    """Run with a planted bug: fn(block) after the weights are copied in, before they are
    packed (where a loader or wiring bug acts); for the negative controls."""
    old, backend.tamper = backend.tamper, fn
    try:
        yield backend
    finally:
        backend.tamper = old


BLOCKS = {
    "vllm.qwen3_next_moe_block": (VllmQwen3NextMoEBlock, "vLLM's Qwen3NextSparseMoeBlock (gate, "
                                  "softmax top-k, FusedMoE, gated shared expert) on CPU"),
    "vllm.qwen3_moe_block": (VllmQwen3MoeBlock, "vLLM's Qwen3MoeSparseMoeBlock (gate, softmax "
                             "top-k, FusedMoE) on CPU"),
    "vllm.mixtral_moe_block": (VllmMixtralMoE, "vLLM's MixtralMoE (gate, softmax top-k "
                               "renormalized, FusedMoE) on CPU"),
    "vllm.gpt_oss_moe_block": (VllmGptOssMoE, "vLLM's gpt-oss MLPBlock (router with bias, "
                               "softmax over the top-k, expert biases, clamped interleaved "
                               "SwiGLU) on CPU"),
    "vllm.deepseek_v3_moe_block": (VllmDeepseekV3MoE, "vLLM's DeepseekV2MoE with a DeepSeek-V3 "
                                   "config (grouped sigmoid top-k with correction bias, routed "
                                   "scaling, shared experts) on CPU"),
}
# family -> its block backend (the MoE block suites and tools pick a family's backend from here)
FAMILY_BLOCKS = {cls.family: name for name, (cls, _) in BLOCKS.items()}
for _name, (_cls, _description) in BLOCKS.items():
    REGISTRY.register(_name, functools.partial(_cls, name=_name, description=_description))
