"""Quantized MoE experts per backend over token counts at catalogue shapes, beside the bf16
experts of test_moe_experts.py (same groups' shapes and tokens, family "moe_quant_experts").

One scheme per backend kind, the production recipe where the shape allows it: fp8 [128, 128]
blocks (DeepSeek-V3, Qwen3.5-FP8), int8 per channel, int4 groups of 128 (GPTQ/AWQ; the largest
of 128/64/32 that divides H and I at shrunk CPU shapes), mxfp4 (gpt-oss). Bytes moved are the
checkpoint's quantized sizes (suites/bench/workloads.py quantized_expert_bytes). The compute
fraction is against the peak of the arithmetic the kernel does (workloads.quantized_compute_dtype,
measured in the same run, suites/bench/probes.py): int8 for int8 W8A8 and int4 W4A8 kernels (activations
quantized to int8, int8 dot products), float8_e4m3fn for fp8 W8A8, the activation dtype for
weight-only kernels (w4a16, fp8 w8a16, mxfp4 w4a16: weights dequantized, bf16/fp16 products).
Against the bf16 peak an int8 kernel read above 1. Where this run has no peak of that arithmetic
(fp8 on a CPU) the compute fraction is unavailable and the roofline fraction is the memory
roof's alone (extra_info.roofline_basis).
"""

from __future__ import annotations

import pytest

from fixtures.catalogue import get as get_shape
from reference import quant as Q
from suites.bench import workloads
from suites.bench.probes import DTYPES
from suites.bench.selection import parametrize_cases
from suites.bench.timing import run_case

pytestmark = [pytest.mark.bench, pytest.mark.moe]

_PREPARED: dict[tuple, object] = {}


def _group(H: int, I: int) -> int | None:
    return next((g for g in (128, 64, 32) if H % g == 0 and I % g == 0), None)


def scheme_for(kind: str, H: int, I: int):
    """The benchmarked recipe of a scheme kind at (H, I), or None where none fits."""
    g = _group(H, I)
    if kind in ("fp8_block", "fp8_block_w8a16"):
        if kind == "fp8_block" and (H % 128 or I % 128):
            return None  # per-token-group activations need K a multiple of the block
        return Q.fp8_block(128, 128, quantize_activations=kind == "fp8_block")
    if kind == "int8_channel":
        return Q.INT8_W8A8_CHANNEL
    if g is None:
        return None
    if kind == "int_weight_only":
        return Q.int_weight_only(4, g, False)
    if kind == "int4_w4a8":
        return Q.int4_w4a8(g, False)
    if kind == "mxfp4":
        return Q.MXFP4 if g >= Q.MX_BLOCK else None
    raise ValueError(f"no benchmark scheme for kind {kind!r}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_cases(metafunc, "quant_case", "quant_experts")


def _prepared(backend, shape: str, scheme):
    key = (backend.name, shape, scheme.name)
    if key not in _PREPARED:
        _PREPARED.clear()
        w13, w2 = workloads.quantized_weights(get_shape(shape), scheme)
        _PREPARED[key] = (backend.prepare(w13, w2), workloads.quantized_expert_bytes(w13, w2))
    return _PREPARED[key]


def test_moe_quant_experts(benchmark, quant_case, bench_settings, roofline):
    from suites.backends import REGISTRY, UnsupportedShape

    name, shape, dtype_name, tokens = quant_case
    backend = REGISTRY.get(name)
    cfg = get_shape(shape)
    H, I, E, K = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
                  cfg.num_experts_per_tok)
    dtype = DTYPES[dtype_name]
    scheme = scheme_for(backend.scheme_kind, H, I)
    if scheme is None:
        pytest.skip(f"{name}: no {backend.scheme_kind} recipe fits H={H}, I={I}")
    try:
        backend.check(dtype=dtype)
        if backend.alignment > 1 and (H % backend.alignment or I % backend.alignment):
            raise UnsupportedShape(f"{name}: H={H}, I={I} not multiples of {backend.alignment}")
        handle, expert_bytes = _prepared(backend, shape, scheme)
    except UnsupportedShape as e:
        pytest.skip(str(e))
    p = workloads.experts_problem(cfg, tokens, dtype)
    x, tw, ti = p.x, p.topk_weights, p.topk_ids
    if backend.device == "cuda":
        x, tw, ti = x.cuda(), tw.cuda(), ti.cuda()
    flop = 6.0 * tokens * K * H * I
    nbytes = p.n_active * expert_bytes + 2.0 * tokens * H * dtype.itemsize + 8.0 * tokens * K
    extra = {
        "family": "moe_quant_experts", "scheme": scheme.name,
        "shape": {"name": shape, "T": tokens, "H": H, "I": I, "E": E, "K": K,
                  "n_active": p.n_active},
        "dtype": dtype_name, "compute_dtype": workloads.quantized_compute_dtype(scheme, dtype_name),
        "tokens": tokens, "flop": flop, "bytes": nbytes, "expert_bytes": expert_bytes, "bf16_expert_bytes": 3.0 * H * I * 2,
        "cost_model": "flop 6TKHI; bytes n_active*B_expert(quantized) + 2TH*s + 8TK",
    }
    run_case(benchmark, lambda: backend.run(handle, x, tw, ti), settings=bench_settings,
             roofline=roofline, group=f"moe_quant_experts {shape} {dtype_name}", backend=name,
             extra=extra, inputs=(x, tw, ti, handle))
