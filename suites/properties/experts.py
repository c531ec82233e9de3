"""The routed-experts properties, written once for every kind of experts backend.

Each property is one function (case, backend, problem) -> figures that raises AssertionError
with the whole story (property, backend, drawn problem, figures) when it does not hold. A kind
takes part by supplying an ExpertsCase: how to draw its problems, its oracle and tolerance, and
the few operations on its weights the properties need (take some experts, make one louder).
The float experts (suites/moe/checks.py FLOAT_EXPERTS) and the quantized experts
(suites/moe/quant_checks.py QUANT_EXPERTS) are the two cases today; a third implementation's
experts (another library's MoE kernel) is one more backend of one of these kinds, a new kind of
experts one more case. suites/properties/test_experts.py runs every property on every backend
of both kinds; tests/negative_controls/ plant a bug per property that it must catch.

Metamorphic properties compare the implementation with itself (same dtype, same kernel): only
summation order may differ, so their bound is METAMORPHIC_ULPS units of the dtype's resolution
relative to the output's scale, far tighter than the oracle bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from suites.backends.base import QuarantinedInput
from suites.closeness import Closeness, closeness
from suites.properties import context
from suites.tolerances import Tolerance, resolution

METAMORPHIC_ULPS = 2.0


@dataclass(frozen=True)
class ExpertsCase:
    """What a kind of experts backend supplies so that the properties run on it."""

    kind: str  # Backend.kind
    problems: Callable[..., Any]  # (backend, **bounds) -> hypothesis strategy of problems
    oracle: Callable[..., torch.Tensor]  # (backend, t, p, **over) -> [T, H] float64
    tolerance: Callable[[Any, Any], Tolerance]  # (backend, p)
    # (backend, p, n_shards) -> (tolerance, dtype the shard sum is judged in or None: fp64)
    sharded_tolerance: Callable[[Any, Any, int], tuple[Tolerance, torch.dtype | None]]
    row_scale: Callable[..., torch.Tensor]  # (t, p, **over) -> [T] accumulated magnitude
    take_experts: Callable[[Any, torch.Tensor], Any]  # (weight, ids) -> those experts' weight
    louder: Callable[[Any, float], Any]  # (one expert's weight [1, ...], factor) -> scaled
    concat: Callable[[Any, Any], Any]  # (weight, more experts' weight) -> all of them, in order
    dense: Callable[[Any], torch.Tensor]  # a weight as float64 values (dequantized)
    # (backend, p) -> a context in which batch invariance is judged (fixed tiles), and whether
    # it is judged against the oracle instead of 2 ulps (backend, p) -> bool
    invariance_tiles: Callable[[Any], Any] = lambda backend: contextlib.nullcontext()
    loose_invariance: Callable[[Any, Any], bool] = lambda backend, p: False
    # (backend, H, I) -> a problem of this kind at that shape (refused-shape property)
    shaped_problem: Callable[[Any, int, int], Any] | None = None
    # (backend, x_scale) -> a fixed problem for the finite-output property
    finite_problem: Callable[[Any, float], Any] | None = None


def run(backend, t: dict, p=None, *, x=None, topk_weights=None, topk_ids=None, w13=None, w2=None,
        w13_bias=None, w2_bias=None, expert_map=None, use_bias: bool = True) -> torch.Tensor:
    """Run the backend into a NaN-poisoned output (rows it forgets to write stay NaN); the
    activation is the problem's (or t["activation"] without one)."""
    x = t["x"] if x is None else x
    activation = t["activation"] if p is None else p.activation
    b13 = (t["w13_bias"] if w13_bias is None else w13_bias) if use_bias else None
    b2 = (t["w2_bias"] if w2_bias is None else w2_bias) if use_bias else None
    handle = backend.prepare(t["w13"] if w13 is None else w13, t["w2"] if w2 is None else w2,
                             b13, b2, activation)
    out = torch.full((x.shape[0], t["w2"].shape[1]), float("nan"), dtype=x.dtype)  # [T, H]
    return backend.run(handle, x, t["topk_weights"] if topk_weights is None else topk_weights,
                       t["topk_ids"] if topk_ids is None else topk_ids, out=out,
                       expert_map=expert_map)


def self_bound(ref: torch.Tensor, dtype: torch.dtype) -> float:
    return METAMORPHIC_ULPS * resolution(dtype) * max(float(ref.double().abs().max()), 1e-30)


def assert_self_close(a: torch.Tensor, b: torch.Tensor, dtype, ctx: str, what: str) -> float:
    """a and b (two runs of one kernel) agree to METAMORPHIC_ULPS ulps of b's scale; the largest
    difference, else AssertionError naming where and by how much."""
    d = (a.double() - b.double()).abs()
    bound = self_bound(b, dtype)
    worst = float(d.max()) if d.numel() else 0.0
    if not torch.isfinite(d).all() or worst > bound:
        idx = torch.unravel_index(torch.argmax(torch.nan_to_num(d, nan=float("inf"))), d.shape)
        raise AssertionError(
            f"{ctx}\n{what}: max |difference| {worst:.3e} at {tuple(int(i) for i in idx)} exceeds "
            f"{METAMORPHIC_ULPS:g} x eps({dtype}) x max|out| = {bound:.3e}")
    return worst


def expert_maps(E: int, n_shards: int) -> list[torch.Tensor]:
    """Contiguous EP placement like vLLM's: shard s owns experts [s*E/S, (s+1)*E/S)."""
    maps = []
    bounds = [round(s * E / n_shards) for s in range(n_shards + 1)]
    for s in range(n_shards):
        m = torch.full((E,), -1, dtype=torch.int32)
        lo, hi = bounds[s], bounds[s + 1]
        m[lo:hi] = torch.arange(hi - lo, dtype=torch.int32)
        maps.append(m)
    return maps


def _take(case: ExpertsCase, t: dict, idx: torch.Tensor) -> dict:
    """The weights and biases of experts idx (in that order)."""
    out = {k: case.take_experts(t[k], idx) for k in ("w13", "w2")}
    for k in ("w13_bias", "w2_bias"):
        out[k] = None if t[k] is None else t[k][idx].contiguous()
    return out


# ------------------------------------------------------------------------------- properties


def matches_oracle(case: ExpertsCase, backend, p) -> Closeness:
    """Output vs the kind's fp64 oracle under its tolerance, every row against its own
    accumulated magnitude; NaN-poisoned out buffer."""
    t = p.tensors()
    out = run(backend, t, p)
    c = closeness(out, case.oracle(backend, t, p), case.tolerance(backend, p),
                  row_scale=case.row_scale(t, p))
    if not c.ok:
        raise AssertionError(context(backend, p, "matches_oracle", c.report()))
    return c


def token_permutation(case: ExpertsCase, backend, p) -> float:
    """out(x[perm]) == out(x)[perm], routing permuted with the tokens: nothing of a token
    (its dynamic activation scale included) is read from another row."""
    t = p.tensors()
    perm = torch.randperm(p.T, generator=torch.Generator().manual_seed(p.seed))
    base = run(backend, t, p)
    permuted = run(backend, t, p, x=t["x"][perm].contiguous(),
                   topk_weights=t["topk_weights"][perm].contiguous(),
                   topk_ids=t["topk_ids"][perm].contiguous())
    return assert_self_close(permuted, base[perm], p.torch_dtype,
                             context(backend, p, "token_permutation", f"perm[:8]={perm[:8].tolist()}"),
                             "out(x[perm]) vs out(x)[perm]")


def batch_invariance(case: ExpertsCase, backend, p, n_probe: int = 3) -> float:
    """A token's output does not depend on its batch companions: run it alone (T=1) and compare
    with its row in the full batch, both under the kind's invariance tiles (a kernel that picks
    tiles by batch size changes its summation order by design; the property is about what a
    token reads). Where the case says the comparison is loose (no dynamic scale to share and
    no way to fix the tiling), each side is held to the oracle's row instead."""
    t = p.tensors()
    loose = case.loose_invariance(backend, p)
    with case.invariance_tiles(backend):
        full = run(backend, t, p)
    ref = case.oracle(backend, t, p) if loose else None  # [T, H] float64
    worst = 0.0
    for r in sorted({0, p.T - 1, p.T // 2})[:n_probe]:
        with case.invariance_tiles(backend):
            alone = run(backend, t, p, x=t["x"][r : r + 1].contiguous(),
                        topk_weights=t["topk_weights"][r : r + 1].contiguous(),
                        topk_ids=t["topk_ids"][r : r + 1].contiguous())
        ctx = context(backend, p, "batch_invariance", f"token {r} alone (T=1) vs in the batch of {p.T}")
        if loose:
            tol = case.tolerance(backend, p)
            for what, row in (("alone", alone[0]), ("embedded", full[r])):
                c = closeness(row, ref[r], tol)
                if not c.ok:
                    raise AssertionError(f"{ctx}\n{c.report(f'{what} vs the oracle')}")
            worst = max(worst, float((alone[0].double() - full[r].double()).abs().max()))
            continue
        worst = max(worst, assert_self_close(alone[0], full[r], p.torch_dtype, ctx,
                                             "alone vs embedded"))
    return worst


def expert_relabeling(case: ExpertsCase, backend, p) -> float:
    """Renaming experts (permuting the experts' weights, scales and biases, and mapping the ids)
    leaves the output unchanged: a kernel that reads another expert's weights or scales, or
    ties anything to the id rather than the expert, is caught."""
    t = p.tensors()
    # one random E-cycle: every expert gets a new id (a random permutation leaves each id in
    # place with probability 1/E, and a bug tied to that id unseen)
    order = torch.randperm(p.E, generator=torch.Generator().manual_seed(p.seed + 1))
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)  # new slot j holds old expert perm[j]; perm[j] != j for E > 1
    inv = torch.argsort(perm)
    relabeled = {**t, **_take(case, t, perm),
                 "topk_ids": inv[t["topk_ids"].long()].int().contiguous()}
    base = run(backend, t, p)
    out = run(backend, relabeled, p)
    return assert_self_close(out, base, p.torch_dtype,
                             context(backend, p, "expert_relabeling", f"perm={perm[:8].tolist()}..."),
                             "relabeled vs original")


def ep_sharding(case: ExpertsCase, backend, p, n_shards: int = 2) -> Closeness:
    """The sum over EP shards, each with its local experts (weights, scales, biases) and
    expert_map, equals the full layer: scales follow their expert into the shard and remote
    slots add nothing."""
    t = p.tensors()
    total = torch.zeros(p.T, p.H, dtype=torch.float64)
    for m in expert_maps(p.E, n_shards):
        local = (m >= 0).nonzero().squeeze(1)
        if local.numel() == 0:
            continue
        total += run(backend, {**t, **_take(case, t, local)}, p, expert_map=m).double()
    tol, judged_in = case.sharded_tolerance(backend, p, n_shards)
    c = closeness(total if judged_in is None else total.to(judged_in),
                  case.oracle(backend, t, p), tol)
    if not c.ok:
        raise AssertionError(context(backend, p, f"ep_sharding(shards={n_shards})", c.report()))
    return c


def zero_weight_slots(case: ExpertsCase, backend, p) -> float:
    """A slot with weight 0 contributes nothing, whichever expert it names: every token's last
    slot gets weight 0 and names, in one run, an extra 'loud' expert (expert 0's weights scaled
    up, named by no other slot) and, in the other, expert 0; the two outputs must agree on
    every row. The extra expert makes the property hold on every problem (K = 1: the token's
    only slot is the zero one; E = 1; routings that send every token to the same experts)."""
    from reference.experts import expert_mlp

    t = p.tensors()
    tw = t["topk_weights"].clone()
    tw[:, -1] = 0.0  # last slot of every token: weight 0
    loud = p.E  # a new expert id, E
    first = _take(case, t, torch.tensor([0]))
    # As loud as the dtype allows while the expert's own output stays finite: any leak is
    # glaring, and 0 * inf = NaN cannot be blamed on the kernel.
    limit = torch.finfo(p.torch_dtype).max / 64
    for factor in (30.0, 8.0, 2.0, 1.0):
        loud_w13 = case.louder(first["w13"], factor)
        dense13 = case.dense(loud_w13)[0]
        y = expert_mlp(t["x"], dense13, case.dense(first["w2"])[0], p.activation)
        if bool(torch.isfinite(dense13).all()) and float(y.abs().max()) < limit:
            break
    more = {"w13": case.concat(t["w13"], loud_w13), "w2": case.concat(t["w2"], first["w2"])}
    for k in ("w13_bias", "w2_bias"):
        if t[k] is not None:
            more[k] = torch.cat([t[k], t[k][:1] * 8])
    ids_a, ids_b = t["topk_ids"].clone(), t["topk_ids"].clone()
    ids_a[:, -1] = loud
    ids_b[:, -1] = 0  # zero slots may repeat a real slot's expert, as vLLM's padded routing does
    a = run(backend, t, p, topk_weights=tw, topk_ids=ids_a.contiguous(), **more)
    b = run(backend, t, p, topk_weights=tw, topk_ids=ids_b.contiguous(), **more)
    return assert_self_close(a, b, p.torch_dtype,
                             context(backend, p, "zero_weight_slots", f"loud expert {loud} "
                                     f"(expert 0's weights x {factor:g})"),
                             "zero-weight slot on the loud expert vs on expert 0")


def finite_output(case: ExpertsCase, backend, p) -> None:
    """Finite inputs give a finite output with every row written (NaN-poisoned buffer)."""
    t = p.tensors()
    out = run(backend, t, p)
    bad = (~torch.isfinite(out)).any(1).nonzero().squeeze(1)
    if bad.numel():
        raise AssertionError(context(backend, p, "finite_output",
                                     f"{bad.numel()} of {p.T} rows not finite (NaN poison left "
                                     f"or overflow), first rows {bad[:8].tolist()}"))


def refuses_unsupported_shape(case: ExpertsCase, backend, H: int, I: int) -> str:
    """A shape the kernel does not take raises a clear one-line exception (not a crash, not
    garbage), or it is accepted and correct."""
    p = case.shaped_problem(backend, H, I)
    t = p.tensors()
    try:
        out = run(backend, t, p)
    except QuarantinedInput:
        raise  # refused by the adapter because the kernel would crash: not a clean refusal
    except (RuntimeError, ValueError) as e:
        msg = str(e).strip()
        if not msg:
            raise AssertionError(f"{backend.name}: H={H}, I={I} refused with an empty message") from e
        return msg.splitlines()[0]
    c = closeness(out, case.oracle(backend, t, p), case.tolerance(backend, p))
    if not c.ok:
        raise AssertionError(f"{backend.name}: unsupported H={H}, I={I} neither refused nor "
                             f"correct:\n{c.report()}")
    return "accepted and correct"


def invariants(case: ExpertsCase, backend, p, n_shards: int = 2) -> None:
    """The oracle and every metamorphic property the backend has, on one problem."""
    matches_oracle(case, backend, p)
    token_permutation(case, backend, p)
    batch_invariance(case, backend, p)
    expert_relabeling(case, backend, p)
    if backend.supports_expert_map:  # an op that takes no expert_map has no EP sharding to hold
        ep_sharding(case, backend, p, n_shards)
    zero_weight_slots(case, backend, p)
