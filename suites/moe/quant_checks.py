"""Quantized-experts properties as plain functions: (backend, problem) -> figures, AssertionError
with the whole story on failure (the same contract as suites/moe/checks.py).

The oracle is reference.quant.quantized_fused_experts: the checkpoint's codes dequantized
exactly, activations quantized the way the scheme says, float64 arithmetic. Tolerances are
per scheme kind and dtype (suites/tolerances.py QUANT_TOLERANCES, with their derivation).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fixtures.strategies import QuantExpertsProblem, quant_experts_problems
from reference.quant import quantized_fused_experts
from suites.backends.base import QuantExpertsBackend
from suites.compare import Closeness, closeness
from suites.moe.checks import DTYPE_NAMES, _assert_self_close, expert_maps
from suites.tolerances import extra_roundings, quant_tolerance


def problems_for(b: QuantExpertsBackend, **kw):
    """Problems of backend b's scheme kind in its dtypes, within its draw_limits."""
    names = tuple(DTYPE_NAMES[str(d)] for d in b.dtypes if str(d) in DTYPE_NAMES)
    limits = {k: min(v, kw[k]) if k in kw else v for k, v in b.draw_limits.items()}
    return quant_experts_problems(b.scheme_kind, dtypes=names, alignment=b.alignment,
                                  activations=b.activations, fp8_blocks=b.fp8_blocks,
                                  zero_points=b.zero_points,
                                  **{**kw, **limits})


def _ctx(backend, p: QuantExpertsProblem, prop: str, extra: str = "") -> str:
    return f"[{prop}] backend={backend.name} problem: {p.describe()}" + (f"\n{extra}" if extra else "")


def run(backend: QuantExpertsBackend, t: dict, *, x=None, topk_weights=None, topk_ids=None,
        w13=None, w2=None, expert_map=None) -> torch.Tensor:
    """Run with a NaN-poisoned output (rows the kernel forgets to write stay NaN)."""
    x = t["x"] if x is None else x
    backend.check(dtype=x.dtype)
    handle = backend.prepare(t["w13"] if w13 is None else w13, t["w2"] if w2 is None else w2,
                             t["w13_bias"], t["w2_bias"], t["activation"])
    out = torch.full((x.shape[0], t["w2"].shape[1]), float("nan"), dtype=x.dtype)  # [T, H]
    return backend.run(handle, x, t["topk_weights"] if topk_weights is None else topk_weights,
                       t["topk_ids"] if topk_ids is None else topk_ids, out=out,
                       expert_map=expert_map)


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


def check_matches_oracle(backend: QuantExpertsBackend, p: QuantExpertsProblem) -> Closeness:
    """Output vs the dequantizing fp64 oracle; NaN-poisoned out buffer; all outputs finite."""
    from suites.moe.checks import experts_row_scale

    t = p.tensors()
    out = run(backend, t)
    ref = oracle(t, backend)
    c = closeness(out, ref, quant_tolerance(backend.scheme_kind, p.torch_dtype),
                  row_scale=experts_row_scale(t, t["activation"], t["w13"].dequantize(),
                                              t["w2"].dequantize()))
    if not c.ok:
        raise AssertionError(_ctx(backend, p, "matches_oracle", c.report()))
    return c


def check_token_permutation(backend: QuantExpertsBackend, p: QuantExpertsProblem) -> float:
    """out(x[perm]) == out(x)[perm]: dynamic activation scales travel with their token."""
    t = p.tensors()
    perm = torch.randperm(p.T, generator=torch.Generator().manual_seed(p.seed))
    base = run(backend, t)
    permuted = run(backend, t, x=t["x"][perm].contiguous(),
                   topk_weights=t["topk_weights"][perm].contiguous(),
                   topk_ids=t["topk_ids"][perm].contiguous())
    return _assert_self_close(permuted, base[perm], p.torch_dtype,
                              _ctx(backend, p, "token_permutation", f"perm[:8]={perm[:8].tolist()}"),
                              "out(x[perm]) vs out(x)[perm]")


# One tile configuration for batch sizes 1..T (valid for every scheme: BLOCK_SIZE_K <= the
# smallest fp8 block and weight-only group drawn).
FIXED_TILES = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 1,
               "SPLIT_K": 1}


def check_batch_invariance(backend: QuantExpertsBackend, p: QuantExpertsProblem) -> float:
    """A token's output does not depend on its companions, even with dynamic activation scales
    (per token / per token group: a batch-wide scale would make it depend on them). Both runs
    at one tile configuration (FIXED_TILES): vLLM picks tiles by batch size (the weight-only
    kernel's K tile is 64 at T=1 and 32 above), a different summation order by design whose
    fp16 intermediates can then move a dynamic activation code by a step; the property is
    about the scales, so the tiles are held fixed.

    A backend that cannot fix its tiling (vLLM's CPU kernels choose their path by batch size)
    on a scheme without activation quantization (W8A16, W4A16: no dynamic scale to share) is
    held to the scheme's tolerance instead of 2 ulps: the summation order legitimately
    changes with T there (nightly seed 11: fp8 W8A16, T=26 vs 1, 1.06x the 2-ulp bound), and
    nothing about scales is at stake. There the token's row, alone and embedded, is each held
    to the oracle's row at the scheme's tolerance (two outputs each within it of the oracle may
    differ from each other by up to twice it: a later nightly seed 11 found alone vs embedded
    at 1.04x the rms bound, T=31, H=I=32, each side within the bound of the oracle)."""
    t = p.tensors()
    loose = (p.scheme.activation is None
             and type(backend).tile_config is QuantExpertsBackend.tile_config)
    with backend.tile_config(FIXED_TILES):
        full = run(backend, t)
    ref = oracle(t, backend) if loose else None  # [T, H] float64
    worst = 0.0
    for r in sorted({0, p.T - 1, p.T // 2}):
        with backend.tile_config(FIXED_TILES):
            alone = run(backend, t, x=t["x"][r : r + 1].contiguous(),
                        topk_weights=t["topk_weights"][r : r + 1].contiguous(),
                        topk_ids=t["topk_ids"][r : r + 1].contiguous())
        ctx = _ctx(backend, p, "batch_invariance", f"token {r} alone (T=1) vs in the batch of {p.T}")
        if loose:
            tol = quant_tolerance(backend.scheme_kind, p.torch_dtype)
            for what, row in (("alone", alone[0]), ("embedded", full[r])):
                c = closeness(row, ref[r], tol)
                if not c.ok:
                    raise AssertionError(f"{ctx}\n{c.report(f'{what} vs the oracle')}")
            worst = max(worst, float((alone[0].double() - full[r].double()).abs().max()))
            continue
        worst = max(worst, _assert_self_close(alone[0], full[r], p.torch_dtype, ctx,
                                              "alone vs embedded"))
    return worst


def _local(w, idx: torch.Tensor):
    return replace(w, q=w.q[idx].contiguous(), scale=w.scale[idx].contiguous(),
                   zero=None if w.zero is None else w.zero[idx].contiguous())


def check_ep_sharding(backend: QuantExpertsBackend, p: QuantExpertsProblem, n_shards: int = 2
                      ) -> Closeness:
    """Sum over EP shards (local experts' codes and scales, expert_map) equals the full layer:
    scales must follow their expert into the shard."""
    t = p.tensors()
    total = torch.zeros(p.T, p.H, dtype=torch.float64)
    for m in expert_maps(p.E, n_shards):
        local = (m >= 0).nonzero().squeeze(1)
        if local.numel() == 0:
            continue
        biases = {k: None if t[k] is None else t[k][local] for k in ("w13_bias", "w2_bias")}
        total += run(backend, {**t, **biases}, w13=_local(t["w13"], local),
                     w2=_local(t["w2"], local), expert_map=m).double()
    # n_shards partials each rounded to the dtype, and their sum rounded to it again (judged
    # in the output dtype, so that a reference below its smallest normal is read as
    # unresolvable, as for one output): n_shards roundings more than the kernel's one output
    # rounding, additive (suites/tolerances.py extra_roundings)
    tol = extra_roundings(quant_tolerance(backend.scheme_kind, p.torch_dtype), p.torch_dtype,
                          n_shards, f"{n_shards} shard outputs rounded, their sum rounded")
    c = closeness(total.to(p.torch_dtype), oracle(t, backend), tol)
    if not c.ok:
        raise AssertionError(_ctx(backend, p, f"ep_sharding(shards={n_shards})", c.report()))
    return c


def check_quant_block_matches_oracle(backend, p) -> dict:
    """A quantized release's whole MoE block (suites/backends/vllm_quant_layer.py: built under
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
        from suites.backends.vllm_cpu_quant import kernel_scheme

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
