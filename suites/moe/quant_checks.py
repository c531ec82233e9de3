"""Quantized-experts properties as plain functions: (backend, problem) -> figures, AssertionError
with the whole story on failure (the same contract as suites/moe/checks.py).

The oracle is reference.quant.quantized_fused_experts: the checkpoint's codes dequantized
exactly, activations quantized the way the scheme says, float64 arithmetic. Tolerances are
per scheme kind and dtype (suites/tolerances.py QUANT_TOLERANCES, with their derivation).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from fixtures.strategies import quant_experts_problems
from reference.quant import quantized_fused_experts
from suites.backends.base import QuantExpertsBackend
from suites.closeness import closeness
from suites.moe.checks import DTYPE_NAMES
from suites.properties import experts as P
from suites.tolerances import extra_roundings, quant_tolerance


def problems_for(b: QuantExpertsBackend, **kw):
    """Problems of backend b's scheme kind in its dtypes, within its draw_limits."""
    names = tuple(DTYPE_NAMES[str(d)] for d in b.dtypes if str(d) in DTYPE_NAMES)
    limits = {k: min(v, kw[k]) if k in kw else v for k, v in b.draw_limits.items()}
    return quant_experts_problems(b.scheme_kind, dtypes=names, alignment=b.alignment,
                                  activations=b.activations, fp8_blocks=b.fp8_blocks,
                                  zero_points=b.zero_points,
                                  **{**kw, **limits})


def as_run_by(backend, w):
    """The weight with its scheme as `backend`'s kernel runs it: a backend whose kernel rounds
    or stores differently from the scheme's defaults says so (kernel_scheme: the CPU adapters'
    KERNEL_ARITHMETIC); the oracle then follows the kernel's arithmetic, not a tolerance."""
    fix = getattr(backend, "kernel_scheme", None)
    return w if fix is None else replace(w, scheme=fix(w.scheme))


def oracle(t: dict, backend=None, **over) -> torch.Tensor:
    """The dequantizing oracle, activations held in the problem's dtype between the GEMMs, with
    the scheme as `backend` runs it (as_run_by)."""
    a = {**t, **over}
    a["w13"], a["w2"] = as_run_by(backend, a["w13"]), as_run_by(backend, a["w2"])
    return quantized_fused_experts(a["x"], a["w13"], a["w2"], a["topk_weights"], a["topk_ids"],
                                   a["activation"], expert_map=a.get("expert_map"),
                                   activation_dtype=a["x"].dtype, w13_bias=a["w13_bias"],
                                   w2_bias=a["w2_bias"])


# One tile configuration for batch sizes 1..T (valid for every scheme: BLOCK_SIZE_K <= the
# smallest fp8 block and weight-only group drawn).
FIXED_TILES = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1,
               "SPLIT_K": 1}


def _loose_invariance(backend, p) -> bool:
    """A backend that cannot fix its tiling (vLLM's CPU kernels choose their path by batch size)
    on a scheme without activation quantization (W8A16, W4A16: no dynamic scale to share) is
    held to the scheme's tolerance instead of 2 ulps: the summation order legitimately changes
    with T there (nightly seed 11: fp8 W8A16, T=26 vs 1, 1.06x the 2-ulp bound), and nothing
    about scales is at stake. There the token's row, alone and embedded, is each held to the
    oracle's row at the scheme's tolerance (two outputs each within it of the oracle may differ
    from each other by up to twice it: a later nightly seed 11 found alone vs embedded at 1.04x
    the rms bound, T=31, H=I=32, each side within the bound of the oracle)."""
    return (p.scheme.activation is None
            and type(backend).tile_config is QuantExpertsBackend.tile_config)


def take_experts(w, idx: torch.Tensor):
    """The experts idx of a quantized weight: codes, scales and zero points follow them."""
    return replace(w, q=w.q[idx].contiguous(), scale=w.scale[idx].contiguous(),
                   zero=None if w.zero is None else w.zero[idx].contiguous())


def concat(w, more):
    return replace(w, q=torch.cat([w.q, more.q]), scale=torch.cat([w.scale, more.scale]),
                   zero=None if w.zero is None else torch.cat([w.zero, more.zero]))


def louder(w, factor: float):
    """The weight scaled by about `factor` through its scales (the codes stay): e8m0 scale
    codes (mxfp4) move by the nearest power of two, float scales are multiplied."""
    if w.scheme.weight == "float4_e2m1":
        step = round(math.log2(factor))
        return replace(w, scale=(w.scale.int() + step).clamp(0, 254).to(w.scale.dtype))
    return replace(w, scale=w.scale * factor)


def _sharded(backend, p, n_shards: int):
    """n_shards partials each rounded to the dtype, and their sum rounded to it again (judged
    in the output dtype, so that a reference below its smallest normal is read as
    unresolvable, as for one output): n_shards roundings more than the kernel's one output
    rounding, additive (suites/tolerances.py extra_roundings)."""
    return (extra_roundings(quant_tolerance(backend.scheme_kind, p.torch_dtype), p.torch_dtype,
                            n_shards, f"{n_shards} shard outputs rounded, their sum rounded"),
            p.torch_dtype)


def _row_scale(t, p, **over):
    from suites.moe.checks import experts_row_scale

    return experts_row_scale(t, p.activation, t["w13"].dequantize(), t["w2"].dequantize(),
                             **over)


# The quantized experts as a case of the experts properties (suites/properties/experts.py).
QUANT_EXPERTS = P.ExpertsCase(
    kind="quant_experts",
    problems=problems_for,
    oracle=lambda backend, t, p, **over: oracle(t, backend, **over),
    tolerance=lambda backend, p: quant_tolerance(backend.scheme_kind, p.torch_dtype),
    sharded_tolerance=_sharded,
    row_scale=_row_scale,
    take_experts=take_experts,
    louder=louder,
    concat=concat,
    dense=lambda w: w.dequantize(),
    invariance_tiles=lambda backend: backend.tile_config(FIXED_TILES),
    loose_invariance=_loose_invariance,
)


def check_quant_block_matches_oracle(backend, p) -> dict:
    """A quantized release's whole MoE block (suites/backends/vllm/quant_layer.py: built under
    the checkpoint's quantization config, experts loaded by its own loader from checkpoint
    tensors, packed by its quantization method) vs reference.moe.quantized_moe_block in fp64:
    the router's logits rounded to the model dtype as its gate emits them, the routed experts
    dequantized exactly with activations quantized as the scheme vLLM runs here says
    (backend.scheme_kind), the shared expert unquantized. Every row finite; the layer's own
    routing is observed and judged (suites/moe/checks.py observed_choice) and every row held to
    the oracle evaluated with that choice (unobservable: ambiguous rows excluded and counted);
    every row meets the scheme's tolerance (suites/tolerances.py QUANT_TOLERANCES: the routed experts' error
    dominates; the bf16 shared expert's is within the bf16 default, below every quantized
    bound)."""
    from reference.moe import quantized_moe_block
    from suites.moe.checks import observed_choice
    from suites.moe.routing_choice import ambiguous, gate_logit_box

    x, w, w13, w2 = p.tensors()
    cfg, dt = p.cfg, p.torch_dtype
    out = backend.forward(cfg, w, w13, w2, x)
    selected = getattr(backend, "selected", None)  # the oracle follows that class's arithmetic
    if selected:
        from suites.backends.vllm.cpu_quant import kernel_scheme

        w13, w2 = (replace(q, scheme=kernel_scheme(selected, q.scheme)) for q in (w13, w2))
    obs = observed_choice(backend, p, "quant block", x, w, cfg, dt)
    ref, tw, ids = quantized_moe_block(x, cfg, w, w13, w2, router_logits_dtype=dt,
                                       activation_dtype=dt,
                                       topk_ids=None if obs is None else obs.topk_ids)
    ctx = f"[quant block matches oracle] backend={backend.name} problem: {p.describe()}"
    if tuple(out.shape) != tuple(ref.shape):
        raise AssertionError(f"{ctx}\nshape {tuple(out.shape)} != {tuple(ref.shape)}")
    bad = (~torch.isfinite(out.double())).any(1)
    if bad.any():
        raise AssertionError(f"{ctx}\n{int(bad.sum())} / {p.T} rows not finite, first "
                             f"{int(bad.nonzero()[0])}")
    if obs is None:
        exact, delta = gate_logit_box(x, w.gate, w.gate_bias, dt)
        keep = ~ambiguous(exact, delta, cfg.router, w.e_score_correction_bias)
    else:
        keep = torch.ones(p.T, dtype=torch.bool)
    figures = {"drawn": p.T, "compared": int(keep.sum()), "observed": obs is not None}
    if keep.any():
        from suites.moe.checks import block_row_scale

        c = closeness(out[keep], ref[keep], quant_tolerance(backend.scheme_kind, dt),
                      row_scale=block_row_scale(x, cfg, w, tw, ids, w13.dequantize(),
                                                w2.dequantize())[keep])
        if not c.ok:
            raise AssertionError(f"{ctx}\nexperts class {backend.selected}; "
                                 f"{p.T - figures['compared']} ambiguous tokens excluded (routing "
                                 f"{'observed' if obs is not None else 'not observable'})\n"
                                 f"{c.report()}")
        figures.update(max_norm=c.max_norm, rms_norm=c.rms_norm)
    return figures
