"""The MoE properties as plain functions: (backend, problem) -> figures, AssertionError with the
whole story on failure. The suites call them for vLLM's backends; tests/ call them for the
reference and for deliberately broken backends (negative controls), so a property that no
planted bug can violate shows up there.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fixtures.strategies import ExpertsProblem, RouterProblem, experts_problems
from reference.experts import expert_mlp, fused_experts, fused_experts_magnitude
from reference.routing import route, routing_weights, selection_margin
from suites.backends.base import ExpertsBackend, RouterBackend
from suites.closeness import Closeness, closeness
from suites.properties import context as _ctx
from suites.properties import experts as P
from suites.tolerances import tolerance

DTYPE_NAMES = {"torch.bfloat16": "bfloat16", "torch.float16": "float16", "torch.float32": "float32"}


def problems_for(b: ExpertsBackend, dtypes: tuple[str, ...] | None = None, **kw):
    """Experts problems backend b accepts (its dtypes, activations, biases, alignment), within
    its draw_limits and the bounds given."""
    names = tuple(DTYPE_NAMES[str(d)] for d in b.dtypes if str(d) in DTYPE_NAMES)
    if dtypes is not None:
        names = tuple(d for d in names if d in dtypes)
    acts = tuple(a for a in ("silu", "swigluoai") if a in b.activations)
    limits = {k: min(v, kw[k]) if k in kw else v for k, v in b.draw_limits.items()}
    return experts_problems(dtypes=names, alignment=b.alignment, activations=acts,
                            bias=b.supports_bias, **{**kw, **limits})


def oracle(t: dict, p: ExpertsProblem, **over) -> torch.Tensor:
    a = {**t, **over}
    return fused_experts(a["x"], a["w13"], a["w2"], a["topk_weights"], a["topk_ids"], p.activation,
                         a["w13_bias"], a["w2_bias"], a.get("expert_map"))


def experts_row_scale(t: dict, activation: str, w13=None, w2=None, topk_ids=None,
                      topk_weights=None) -> torch.Tensor:
    """[T] the accumulated magnitude of each token's routed output (fused_experts_magnitude):
    the scale a row's rounding error is judged against where its terms cancel."""
    return fused_experts_magnitude(
        t["x"], t["w13"] if w13 is None else w13, t["w2"] if w2 is None else w2,
        t["topk_weights"] if topk_weights is None else topk_weights,
        t["topk_ids"] if topk_ids is None else topk_ids, activation, t.get("w13_bias"),
        t.get("w2_bias"))


def block_row_scale(x: torch.Tensor, cfg, w, topk_weights, topk_ids, w13=None,
                    w2=None) -> torch.Tensor:
    """[T] the accumulated magnitude of each token's block output: routed experts plus the
    (gated) shared expert."""
    t = {"x": x, "w13_bias": w.w13_bias, "w2_bias": w.w2_bias, "topk_weights": topk_weights,
         "topk_ids": topk_ids, "w13": w.w13 if w13 is None else w13,
         "w2": w.w2 if w2 is None else w2}
    mag = experts_row_scale(t, cfg.hidden_act)
    if w.shared_w13 is not None:
        g = (torch.sigmoid(x.double() @ w.shared_expert_gate.double().T)
             if w.shared_expert_gate is not None else torch.ones(x.shape[0], 1, dtype=torch.float64))
        mag = mag + fused_experts_magnitude(x, w.shared_w13[None], w.shared_w2[None], g,
                                            torch.zeros_like(g, dtype=torch.long), "silu")
    return mag


def sharded_tolerance(dtype: torch.dtype, backend: str, n_shards: int, *,
                      summed_in_dtype: bool = False):
    """The table's tolerance for a sum of n_shards partial outputs, each rounded to dtype by its
    shard, where the kernel alone rounds its output once: n_shards - 1 more roundings, each of
    at most half an ulp of a partial (suites/tolerances.py extra_roundings: additive, the
    kernel's own error does not scale with the shard count). summed_in_dtype: the sum itself is
    taken in dtype (an all-reduce), n_shards - 1 more roundings of its running sums."""
    from suites.tolerances import extra_roundings

    extra = (n_shards - 1) * (2 if summed_in_dtype else 1)
    how = "partials rounded" + (", summed in the dtype" if summed_in_dtype else "")
    return extra_roundings(tolerance(dtype, backend), dtype, extra,
                           f"{n_shards} shard outputs, {how}")


def _sharded(backend, p, n_shards: int):
    """n_shards partial outputs, each rounded to the dtype by its shard, summed in fp64 here."""
    return sharded_tolerance(p.torch_dtype, backend.name, n_shards), None


def _shaped_problem(backend, H: int, I: int) -> ExpertsProblem:
    return ExpertsProblem(T=3, H=H, I=I, E=4, K=2, dtype="bfloat16", routing="uniform", seed=7)


def _finite_problem(backend, x_scale: float) -> ExpertsProblem:
    return ExpertsProblem(T=33, H=64, I=64, E=8, K=2, dtype=DTYPE_NAMES[str(backend.dtypes[0])],
                          routing="hot_expert", seed=11, x_scale=x_scale)


# The float experts as a case of the experts properties (suites/properties/experts.py).
FLOAT_EXPERTS = P.ExpertsCase(
    kind="experts",
    problems=problems_for,
    oracle=lambda backend, t, p, **over: oracle(t, p, **over),
    tolerance=lambda backend, p: tolerance(p.torch_dtype, backend.name),
    sharded_tolerance=_sharded,
    row_scale=lambda t, p, **over: experts_row_scale(t, p.activation, **over),
    take_experts=lambda w, idx: w[idx].contiguous(),
    louder=lambda w, factor: (w.double() * factor).to(w.dtype),
    concat=lambda w, more: torch.cat([w, more]).contiguous(),
    dense=lambda w: w.double(),
    shaped_problem=_shaped_problem,
    finite_problem=_finite_problem,
)


def check_topk_equals_dense(backend: ExpertsBackend, p: ExpertsProblem) -> Closeness:
    """With top-k = E the layer is the dense softmax mixture sum_e p_e * expert_e(x), computed
    here expert by expert over all tokens (no grouping), independently of the oracle's code."""
    p = replace(p, K=p.E)
    t = p.tensors()
    out = P.run(backend, t, p)
    probs = torch.softmax(t["logits"].double(), -1)  # [T, E]
    dense = torch.zeros(p.T, p.H, dtype=torch.float64)
    for e in range(p.E):
        b13 = None if t["w13_bias"] is None else t["w13_bias"][e]
        b2 = None if t["w2_bias"] is None else t["w2_bias"][e]
        dense += probs[:, e : e + 1] * expert_mlp(t["x"], t["w13"][e], t["w2"][e], p.activation, b13, b2)
    c = closeness(out, dense, tolerance(p.torch_dtype, backend.name))
    if not c.ok:
        raise AssertionError(_ctx(backend, p, "topk_equals_dense", c.report()))
    return c


# ----------------------------------------------------------------------------- routers


def near_tie_threshold(scale: torch.Tensor) -> torch.Tensor:
    """Score gaps below this are within rounding of the scores a kernel compares. Kernels score
    in fp32 from the very logits the oracle upcasts (the input dtype's rounding is shared), so
    the bound is 16 units of fp32 roundoff of the score scale. A kernel that scores in a coarser
    dtype gets no extra allowance: that is a defect to report, not a near-tie."""
    return 16 * torch.finfo(torch.float32).eps * scale.clamp_min(1.0)


def check_router(backend: RouterBackend, rp: RouterProblem, weights_dtype_tol=torch.float32) -> dict:
    """Ids exact except at near-ties (within fp32 rounding of the selection scores, counted),
    weights close (fp32 table) on every token: at a near-tie, to the oracle's weights for the
    router's own choice."""
    logits, bias = rp.tensors()
    cfg = rp.cfg
    out_w, out_ids = backend.route(logits.clone(), cfg, None if bias is None else bias.clone())
    ref_w, ref_ids = route(logits.double(), cfg, bias)
    T, K = ref_ids.shape
    if out_ids.shape != (T, K) or out_w.shape != (T, K):
        raise AssertionError(_ctx(backend, rp, "router", f"shapes {tuple(out_ids.shape)}, "
                                  f"{tuple(out_w.shape)} != {(T, K)}"))
    if out_ids.dtype != torch.int32 or out_w.dtype != torch.float32:
        raise AssertionError(_ctx(backend, rp, "router", f"dtypes ids {out_ids.dtype} weights "
                                  f"{out_w.dtype}; vLLM's contract is int32 / float32"))
    o_ids, o_ord = torch.sort(out_ids.long(), 1)
    r_ids, r_ord = torch.sort(ref_ids.long(), 1)
    o_w = out_w.double().gather(1, o_ord)
    r_w = ref_w.gather(1, r_ord)
    margin = selection_margin(logits.double(), cfg, bias)
    if cfg.topk_method in ("greedy", "topk_softmax"):
        scale = logits.double().abs().amax(1)
    else:
        scale = torch.ones(T, dtype=torch.float64) * (1 + (0 if bias is None else float(bias.abs().max())))
    tie = margin <= near_tie_threshold(scale)
    differ = (o_ids != r_ids).any(1)
    hard = differ & ~tie
    if hard.any():
        r = int(hard.nonzero()[0])
        raise AssertionError(_ctx(backend, rp, "router ids",
                                  f"{int(hard.sum())} / {T} tokens chose different experts with a clear "
                                  f"margin; token {r}: out {o_ids[r].tolist()} vs ref {r_ids[r].tolist()}, "
                                  f"margin {float(margin[r]):.3e}"))
    agree = ~differ
    # Tokens where fp32 renormalization is 0 / 0 (see renorm_underflow): either reference's
    # answer is accepted, a non-finite weight never (unless ledgered for this backend: counted).
    under = renorm_underflow(logits, cfg, r_ids) & agree
    known, known_id = 0, None
    if under.any():
        ow, rw = o_w[under], r_w[under]
        finite = torch.isfinite(ow).all(1)
        tol = tolerance(weights_dtype_tol, backend.name, "router_weights")
        exact = finite & ((ow - rw).abs() <= tol.atol + tol.rtol * rw.abs()).all(1)
        guarded = finite & (ow == 0).all(1)
        bad = ~(exact | guarded)
        if bad.any():
            from suites.known_failures import lookup

            entry = lookup(backend.name, {"method": cfg.topk_method}, kind="region",
                           test="renorm_underflow")
            r = int(under.nonzero()[int(bad.nonzero()[0])])
            msg = (f"{int(bad.sum())} / {int(under.sum())} tokens whose selected fp32 sigmoid "
                   f"scores are all 0 (renormalization 0/0) got weights {o_w[r].tolist()}; "
                   f"accepted: the exact renormalization {r_w[r].tolist()} or 0 (transformers' "
                   f"+1e-20); token {r}, logits at the chosen experts "
                   f"{logits.double()[r].gather(0, r_ids[r]).tolist()}")
            if entry is None or not bool((~torch.isfinite(ow[bad])).any(1).all()):
                raise AssertionError(_ctx(backend, rp, "router weights", msg))
            known, known_id = int(bad.sum()), entry.id
    # every other token's weights: at a near-tie the router's own (admissible) choice is held
    # to the oracle's formula at that choice (routing_weights), as the agreeing ones are
    own_w = routing_weights(logits.double(), cfg, o_ids, bias)
    r_w = torch.where(differ[:, None], own_w, r_w)
    checked = ~under
    c = closeness(o_w[checked], r_w[checked],
                  tolerance(weights_dtype_tol, backend.name, "router_weights"))
    if not c.ok:
        raise AssertionError(_ctx(backend, rp, "router weights", c.report("topk_weights")))
    return {"near_ties": int((differ & tie).sum()), "near_tie_candidates": int(tie.sum()),
            "tokens": T, "compared": T, "weights_max_norm": c.max_norm,
            "renorm_underflow_tokens": int(under.sum()),
            "known_defect_tokens": known, "known_defect": known_id}


def renorm_underflow(logits: torch.Tensor, cfg, ids: torch.Tensor) -> torch.Tensor:
    """[T] bool: tokens whose K selected sigmoid scores are all exactly 0 in fp32, so that an
    fp32 renormalization divides 0 by 0. torch's fp32 sigmoid is 1 / (1 + exp(-x)) and exp
    overflows for x < about -88.72; every selected logit must lie below that (a dead expert
    that the aux-loss-free correction bias keeps selecting). The references disagree there:
    exact arithmetic (the oracle; DeepSeek-V3's inference code, which divides by the plain sum)
    keeps the true ratio of the weights, transformers' DeepseekV3TopkRouter divides by
    sum + 1e-20 and gives 0. Both are finite; the router's fp32 inputs decide the region."""
    if cfg.scoring_func != "sigmoid" or not cfg.norm_topk_prob:
        return torch.zeros(ids.shape[0], dtype=torch.bool)
    return (torch.sigmoid(logits.float()).gather(1, ids.long()) == 0).all(1)


# ----------------------------------------------------------------------------- whole block


# Rows a test must hold to the oracle (compared / drawn), below which it has judged too little to
# pass ("nothing to judge"): with the implementation's routing observed every row is compared,
# so anything short of all is a defect of the check; where the choice cannot be observed and
# rows are excluded as ambiguous, the same floor applies.
COMPARED_FLOOR = 0.99


def observed_choice(backend, p, prop: str, x_gate: torch.Tensor, w, cfg, dtype: torch.dtype):
    """The routing the implementation chose in its last forward (ObservedRouting), judged: the
    logits its router received must lie in the rounding box of the exact logits of x_gate (the
    router's input) and its choice must be admissible there (suites/moe/routing_choice.py),
    every token. None when the backend cannot show its choice."""

    calls = getattr(backend, "observed_routing", None)
    if not calls:
        return None
    if len(calls) != 1:
        raise AssertionError(_ctx(backend, p, prop, f"{len(calls)} router calls in one forward "
                                  "of a one-layer block (expected 1)"))
    return judge_choice(calls[0], backend, p, prop, x_gate, w, cfg, dtype)


def judge_choice(o, backend, p, prop: str, x_gate: torch.Tensor, w, cfg, dtype: torch.dtype):
    """observed_choice's judgement of one ObservedRouting o (returned when it holds)."""
    from suites.moe.routing_choice import admissible, gate_logit_box

    T, E, K = x_gate.shape[0], cfg.num_experts, cfg.num_experts_per_tok
    if (tuple(o.router_logits.shape) != (T, E) or tuple(o.topk_ids.shape) != (T, K)
            or tuple(o.topk_weights.shape) != (T, K)):
        raise AssertionError(_ctx(backend, p, prop, f"router saw logits "
                                  f"{tuple(o.router_logits.shape)} and chose ids "
                                  f"{tuple(o.topk_ids.shape)}, weights "
                                  f"{tuple(o.topk_weights.shape)}; expected [{T}, {E}] / "
                                  f"[{T}, {K}]"))
    exact, delta = gate_logit_box(x_gate, w.gate, w.gate_bias, dtype)
    seen = o.router_logits.double()
    off = (seen - exact).abs() > delta
    if off.any() or not torch.isfinite(seen).all():
        t, e = (int(i) for i in (off | ~torch.isfinite(seen)).nonzero()[0])
        raise AssertionError(_ctx(backend, p, f"{prop}: gate", (
            f"{int(off.sum())} / {off.numel()} router logits outside the {dtype} rounding of the "
            f"exact gate: token {t}, expert {e}: {float(seen[t, e]):.6g} vs exact "
            f"{float(exact[t, e]):.6g} (allowed +-{float(delta[t, e]):.3g})")))
    v = admissible(exact, delta, cfg.router, o.topk_ids, w.e_score_correction_bias)
    t = v.first_bad()
    if t is not None:
        from reference.routing import route

        ref_ids = route(exact, cfg.router, w.e_score_correction_bias)[1][t].sort().values
        raise AssertionError(_ctx(backend, p, f"{prop}: routing choice", (
            f"{int((~v.admissible).sum())} / {T} tokens routed to a set no rounding of the "
            f"logits to {dtype} can select; token {t}: chose {o.topk_ids[t].sort().values.tolist()}"
            f", the oracle {ref_ids.tolist()}: {v.reason[t]}")))
    return o


def own_choice_rows(logits: torch.Tensor, cfg, bias, topk_ids: torch.Tensor) -> int:
    """Tokens whose observed choice differs from the oracle's own (as sets)."""
    from reference.routing import route

    ref = route(logits.double(), cfg.router, bias)[1].sort(1).values
    return int((topk_ids.long().sort(1).values != ref).any(1).sum())


def check_block_matches_oracle(backend, bp) -> dict:
    """The whole MoE block vs reference/moe.py in fp64 (gate, routing, experts, gated shared
    expert; router logits rounded to the model dtype as the model's gate emits them), every
    row. The block's own routing is observed (ObservedRouting): its gate logits must lie in the
    dtype's rounding of the exact ones and its choice must be one the oracle could make under
    that rounding (admissible, judged on the boundary experts); the output is then held to the
    oracle evaluated with that choice on every row, finite everywhere. A block whose choice
    cannot be observed is compared on the tokens whose routing is unambiguous, counted, and a
    test below COMPARED_FLOOR fails as having judged nothing."""
    from reference.moe import moe_block
    from reference.routing import router_logits
    from suites.moe.routing_choice import ambiguous, gate_logit_box

    x, w = bp.tensors()
    cfg, dt = bp.cfg, bp.torch_dtype
    out = backend.forward(cfg, w, x)
    shape = (bp.T, cfg.hidden_size)
    if tuple(out.shape) != shape:
        raise AssertionError(_ctx(backend, bp, "block", f"shape {tuple(out.shape)} != {shape}"))
    bad = (~torch.isfinite(out.double())).any(1)
    if bad.any():
        raise AssertionError(_ctx(backend, bp, "block", f"{int(bad.sum())} / {bp.T} rows not "
                                  f"finite, first {int(bad.nonzero()[0])}"))
    obs = observed_choice(backend, bp, "block", x, w, cfg, dt)
    logits = router_logits(x, w.gate, w.gate_bias).to(dt).double()  # the oracle's gate
    if obs is not None:
        ref, tw, ids = moe_block(x, cfg, w, router_logits_dtype=dt, topk_ids=obs.topk_ids)
        keep = torch.ones(bp.T, dtype=torch.bool)
        own = own_choice_rows(logits, cfg, w.e_score_correction_bias, obs.topk_ids)
    else:
        ref, tw, ids = moe_block(x, cfg, w, router_logits_dtype=dt)
        exact, delta = gate_logit_box(x, w.gate, w.gate_bias, dt)
        keep = ~ambiguous(exact, delta, cfg.router, w.e_score_correction_bias)
        own = 0
    figures = {"drawn": bp.T, "compared": int(keep.sum()), "own_choice": own,
               "observed": obs is not None}
    if keep.any():
        c = closeness(out[keep], ref[keep], tolerance(dt, backend.name),
                      row_scale=block_row_scale(x, cfg, w, tw, ids)[keep])
        if not c.ok:
            raise AssertionError(_ctx(backend, bp, "block matches oracle", (
                f"routing observed: every row held to the oracle with the block's own choice "
                f"({own} tokens chose differently from the oracle's own, admissibly)\n"
                if obs is not None else
                f"routing not observable: {bp.T - int(keep.sum())} ambiguous tokens excluded\n")
                + c.report()))
        figures.update(max_norm=c.max_norm, rms_norm=c.rms_norm)
    return figures
