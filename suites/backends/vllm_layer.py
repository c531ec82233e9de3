"""vLLM's MoE layer as its models call it, built outside an engine: Qwen3NextSparseMoeBlock
(vllm/model_executor/models/qwen3_next.py; Qwen3.5 uses the same block), i.e.

    gate (bf16 linear, GateLinear) -> softmax top-k routing, norm_topk_prob -> routed experts
    through FusedMoEFactory / the CPU MoE kernels -> + sigmoid(x @ shared_expert_gate.T) x
    shared expert (Qwen2MoeMLP)

Kind "moe_block": forward(cfg: MoEConfig, w: MoEWeights, x [T, H]) -> [T, H] in x.dtype.

Each shape gets a config.json (the committed tiny Qwen3-Next fixture's, with the MoE fields
replaced) and a vLLM ModelConfig/VllmConfig; the distributed state (world size 1, gloo) is set
up once per process. Each forward builds a fresh block (about a millisecond), copies the
weights in, lets the quantization method pack them (process_weights_after_loading, as the model
loader does) and runs it under a forward context. Only Qwen3-Next-family configs apply: softmax
greedy routing, SiLU, a gated shared expert, no biases; anything else is UnsupportedShape.
"""

from __future__ import annotations

import contextlib
import functools
import json
import pathlib
import socket
import tempfile
from dataclasses import dataclass

import torch

from suites.backends.base import REGISTRY, MoEBlockBackend, UnsupportedShape, vllm_build_reason

FIXTURE_CONFIG = (pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "tiny_qwen3_next"
                  / "config.json")
PREFIX = "model.layers.0.mlp"  # the block registers its experts under this name per config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VllmQwen3NextMoEBlock(MoEBlockBackend):
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)
    # Negative controls (tests/) plant wiring bugs here: a function applied to the built block.
    tamper: object = None

    def __post_init__(self) -> None:
        # vLLM state lives outside the dataclass fields: failure printers (hypothesis) walk the
        # fields, and a VllmConfig's repr is not safe to take.
        self._configs: dict = {}
        self._distributed = False
        self._tmp = pathlib.Path(tempfile.mkdtemp(prefix="vllm-moe-block-"))

    def unavailable_reason(self) -> str | None:
        reason = vllm_build_reason(self.device)
        if reason is None:
            try:
                from vllm.model_executor.models import qwen3_next  # noqa: F401
            except Exception as e:  # any import failure means: cannot run here
                return f"vllm.model_executor.models.qwen3_next does not import: {e}"
        return reason

    def check(self, cfg) -> None:
        why = []
        if cfg.topk_method != "greedy" or cfg.scoring_func != "softmax":
            why.append(f"routing {cfg.topk_method}/{cfg.scoring_func} (Qwen3-Next: softmax top-k)")
        if cfg.hidden_act != "silu":
            why.append(f"activation {cfg.hidden_act}")
        if cfg.router_bias or cfg.expert_bias:
            why.append("router/expert biases")
        if cfg.shared_expert_intermediate_size <= 0 or not cfg.shared_expert_gated:
            why.append("no gated shared expert")
        if cfg.routed_scaling_factor != 1.0:
            why.append(f"routed_scaling_factor {cfg.routed_scaling_factor}")
        if why:
            raise UnsupportedShape(f"{self.name}: Qwen3NextSparseMoeBlock cannot express "
                                   + ", ".join(why))

    def _vllm_config(self, cfg):
        key = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
               cfg.num_experts_per_tok, cfg.norm_topk_prob, cfg.shared_expert_intermediate_size)
        if key not in self._configs:
            from vllm.config import ModelConfig, VllmConfig

            base = json.loads(FIXTURE_CONFIG.read_text())
            base.update(hidden_size=cfg.hidden_size, moe_intermediate_size=cfg.moe_intermediate_size,
                        num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                        norm_topk_prob=cfg.norm_topk_prob,
                        shared_expert_intermediate_size=cfg.shared_expert_intermediate_size)
            folder = self._tmp / "-".join(str(k) for k in key)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.json").write_text(json.dumps(base))
            mc = ModelConfig(model=str(folder), skip_tokenizer_init=True, dtype="bfloat16",
                             enforce_eager=True)
            self._configs[key] = VllmConfig(model_config=mc)
        return self._configs[key]

    def _ensure_distributed(self) -> None:
        if self._distributed:
            return
        from vllm.distributed import init_distributed_environment, initialize_model_parallel
        from vllm.distributed.parallel_state import model_parallel_is_initialized

        if not model_parallel_is_initialized():
            init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                         distributed_init_method=f"tcp://127.0.0.1:{_free_port()}")
            initialize_model_parallel(1, 1)
        self._distributed = True

    def forward(self, cfg, w, x):
        from vllm.config import set_current_vllm_config
        from vllm.forward_context import set_forward_context

        self.check(cfg)
        if x.dtype not in self.dtypes:
            raise UnsupportedShape(f"{self.name}: dtype {x.dtype} (the model dtype is bfloat16)")
        vc = self._vllm_config(cfg)
        with set_current_vllm_config(vc):
            self._ensure_distributed()
            from vllm.model_executor.models.qwen3_next import Qwen3NextSparseMoeBlock

            # The block registers its experts in the config's static forward context by layer
            # name (a model has one per layer); a fresh block per call takes the name over.
            cc = vc.compilation_config
            for name in [n for n in cc.static_forward_context if n.startswith(PREFIX + ".")]:
                del cc.static_forward_context[name]
            cc.static_all_moe_layers[:] = [n for n in cc.static_all_moe_layers
                                           if not n.startswith(PREFIX + ".")]
            default = torch.get_default_dtype()
            torch.set_default_dtype(x.dtype)
            try:
                block = Qwen3NextSparseMoeBlock(vllm_config=vc, prefix=PREFIX)
            finally:
                torch.set_default_dtype(default)
            params = dict(block.named_parameters())
            wanted = {"gate.weight": w.gate, "shared_expert_gate.weight": w.shared_expert_gate,
                      "shared_expert.gate_up_proj.weight": w.shared_w13,
                      "shared_expert.down_proj.weight": w.shared_w2,
                      "experts.routed_experts.w13_weight": w.w13,
                      "experts.routed_experts.w2_weight": w.w2}
            missing = sorted(set(wanted) - set(params))
            if missing:
                raise RuntimeError(f"{self.name}: this vLLM's Qwen3NextSparseMoeBlock has no "
                                   f"{missing}; its parameters: {sorted(params)}")
            with torch.no_grad():
                for name, value in wanted.items():
                    if tuple(params[name].shape) != tuple(value.shape):
                        raise RuntimeError(f"{self.name}: {name} is {tuple(params[name].shape)} "
                                           f"in vLLM, {tuple(value.shape)} in the reference")
                    params[name].copy_(value)
            if self.tamper is not None:  # a planted loading/wiring bug, before packing
                self.tamper(block)
            for m in block.modules():
                qm = getattr(m, "quant_method", None)
                if qm is not None and hasattr(qm, "process_weights_after_loading"):
                    qm.process_weights_after_loading(m)
            with set_forward_context(None, vc), torch.no_grad():
                return block(x.clone())


@contextlib.contextmanager
def tampered(backend: VllmQwen3NextMoEBlock, fn):
    """Run with a planted bug: fn(block) after the weights are copied in, before they are
    packed (where a loader or wiring bug acts); for the negative controls."""
    old, backend.tamper = backend.tamper, fn
    try:
        yield backend
    finally:
        backend.tamper = old


REGISTRY.register("vllm.qwen3_next_moe_block", functools.partial(
    VllmQwen3NextMoEBlock, name="vllm.qwen3_next_moe_block",
    description="vLLM's Qwen3NextSparseMoeBlock (gate, routing, FusedMoE, gated shared expert) "
                "on CPU"))
