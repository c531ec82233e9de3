"""Expert-parallel MoE block properties as plain functions: (backend, EPProblem) -> figures,
AssertionError with the whole story on failure. suites/moe/test_ep_layer.py calls them for
vLLM's EP blocks (suites/backends/vllm/ep_layer.py); tests/negative_controls/test_ep_negative_controls.py calls
them for deliberately broken EP layers, so a property no planted bug can violate shows up there.

  placement   every rank's expert_map is the placement vLLM documents for the strategy
              (reference/expert_parallel.py, round_robin's fallback included), the ranks' local
              experts cover every physical expert exactly once (every logical one at least
              once), and each local slot holds exactly the checkpoint weights of its expert
  block       (a) every rank's all-reduced output equals the fp64 block, (c) the sum over ranks
              of the routed experts' partial outputs equals the fp64 routed experts, (e) every
              tensor a rank reports is finite
  remote_zero (d) a token none of whose experts a rank holds gets exactly 0 from that rank's
              routed experts (bitwise)
"""

from __future__ import annotations

import torch

from reference.experts import fused_experts
from reference.moe import moe_block
from reference.routing import route, router_logits
from suites.backends.base import QuarantinedInput
from suites.closeness import closeness
from suites.moe.checks import judge_choice, sharded_tolerance
from suites.moe.routing_choice import ambiguous, gate_logit_box
from suites.properties import context as _ctx


def run(backend, p):
    """(run, x, w) for problem p; the forced routing's premise checked on the oracle's routing
    first (a problem that does not route as it says is an error of the problem, not of the
    backend)."""
    x, w = p.tensors()
    check_forced_routing(p, x, w)
    return backend.forward_ep(p.cfg, w, x, placement=p.placement,
                              num_redundant_experts=p.num_redundant_experts), x, w


def _forwarded(backend, p, out, prop: str):
    """The run's forward must have happened: a quarantined refusal is raised as such."""
    if out.refused:
        raise QuarantinedInput(_ctx(backend, p, prop, out.refused))
    return out


def oracle_routing(p, x, w):
    """(topk_weights, topk_ids) of the fp64 router on the model dtype's gate logits."""
    logits = router_logits(x, w.gate, w.gate_bias).to(p.torch_dtype).double()
    return route(logits, p.cfg.router, w.e_score_correction_bias)


def check_forced_routing(p, x, w) -> None:
    _, ids = oracle_routing(p, x, w)
    for tokens, experts in p.forced_groups():
        got = {tuple(sorted(ids[t].tolist())) for t in tokens}
        if got and got != {tuple(sorted(experts))}:
            raise ValueError(f"{p.describe()}: the forced routing does not route as intended: "
                             f"wanted experts {sorted(experts)}, the oracle chose {sorted(got)}")


def check_placement(backend, p) -> dict:
    """(b) the layout every rank reports against reference/expert_parallel.py."""
    out, _, w = run(backend, p)
    layout = p.layout()

    def fail(msg: str) -> AssertionError:
        return AssertionError(_ctx(backend, p, "ep placement", msg))

    if out.physical_to_logical != layout.p2l:
        raise fail(f"physical -> logical {out.physical_to_logical}, EPLB's initial arrangement "
                   f"is {layout.p2l}")
    if len(out.ranks) != p.ep_size:
        raise fail(f"{len(out.ranks)} ranks reported, ep_size {p.ep_size}")
    seen: list[int] = []
    maps = {}
    for rk in out.ranks:
        m = rk.expert_map.to(torch.int32)
        maps[rk.rank] = m.tolist()
        want = layout.expert_map(rk.rank)
        if rk.placement != layout.strategy:
            raise fail(f"rank {rk.rank} placed its experts {rk.placement!r}; for "
                       f"expert_placement_strategy={p.placement!r} with n_group={p.cfg.n_group} "
                       f"and {p.num_redundant_experts} redundant experts vLLM documents "
                       f"{layout.strategy!r}")
        if m.shape != want.shape or not torch.equal(m, want):
            raise fail(f"rank {rk.rank} expert_map {m.tolist()}\nexpected       "
                       f"{want.tolist()} ({layout.strategy}, ranks hold {layout.ranks})")
        local = [e for e in range(len(m)) if m[e] >= 0]
        local.sort(key=lambda e: int(m[e]))
        if [int(m[e]) for e in local] != list(range(len(local))):
            raise fail(f"rank {rk.rank} expert_map {m.tolist()}: local slots are not 0..n-1")
        seen += local
        n = len(local)
        if rk.local_w13.shape[0] != n or rk.local_w2.shape[0] != n:
            raise fail(f"rank {rk.rank} holds {rk.local_w13.shape[0]} / {rk.local_w2.shape[0]} "
                       f"expert weights for {n} local experts")
        for slot, phys in enumerate(local):
            e = layout.p2l[phys]
            for what, got, ref in (("w13", rk.local_w13[slot], w.w13[e]),
                                   ("w2", rk.local_w2[slot], w.w2[e])):
                if got.shape != ref.shape or not torch.equal(got.to(ref.dtype), ref):
                    bad = (got.double() - ref.double()).abs().max().item() \
                        if got.shape == ref.shape else float("nan")
                    raise fail(f"rank {rk.rank} local slot {slot} (physical expert {phys}, "
                               f"logical {e}): its {what} is not that expert's checkpoint weight "
                               f"(max |difference| {bad:.3e})")
    if sorted(seen) != list(range(layout.num_physical)):
        raise fail(f"the ranks' local experts {sorted(seen)} are not every physical expert "
                   f"0..{layout.num_physical - 1} exactly once")
    missing = set(range(p.cfg.num_experts)) - {layout.p2l[q] for q in seen}
    if missing:
        raise fail(f"logical experts {sorted(missing)} live on no rank")
    return {"expert_maps": maps, "placement": out.ranks[0].placement}


def observed_ids(backend, p, out, x, w) -> torch.Tensor | None:
    """[T, K] the logical experts the ranks' routers chose (every rank routes every token), or
    None when a rank's choice cannot be observed. The ranks must agree token by token, and the
    choice must be one the oracle could make at the dtype's router logits (judge_choice)."""
    from suites.backends.base import ObservedRouting

    seen = [rk.routing for rk in out.ranks]
    if not seen or any(o is None for o in seen):
        return None
    p2l = torch.tensor(out.physical_to_logical, dtype=torch.long)
    ids = [p2l[o.topk_ids.long()].sort(1).values for o in seen]
    for rk, i in zip(out.ranks[1:], ids[1:]):
        differ = (i != ids[0]).any(1)
        if differ.any():
            t = int(differ.nonzero()[0])
            raise AssertionError(_ctx(backend, p, "ep routing", (
                f"{int(differ.sum())} tokens routed differently on rank {rk.rank} than on rank "
                f"{out.ranks[0].rank}; token {t}: {i[t].tolist()} vs {ids[0][t].tolist()}")))
    o = seen[0]
    judge_choice(ObservedRouting(o.hidden_states, o.router_logits, o.topk_weights, ids[0]),
                 backend, p, "ep routing", x, w, p.cfg, p.torch_dtype)
    return ids[0]


def check_block(backend, p) -> dict:
    """(a) output vs the fp64 block, (c) sum of routed partials vs the fp64 routed experts,
    (e) finite. Every row: the ranks' own routing is observed, judged (observed_ids) and the
    oracle evaluated with it; where it cannot be observed, rows whose routing is a near-tie at
    the model dtype's router logits are excluded and counted (drawn / compared)."""
    out, x, w = run(backend, p)
    _forwarded(backend, p, out, "ep block matches oracle")
    cfg, dt = p.cfg, p.torch_dtype
    check_finite(backend, p, out)
    chosen = observed_ids(backend, p, out, x, w)
    ref, tw, ids = moe_block(x, cfg, w, router_logits_dtype=dt, topk_ids=chosen)
    ref_routed = fused_experts(x, w.w13, w.w2, tw, ids, cfg.hidden_act)
    tie = (torch.zeros(x.shape[0], dtype=torch.bool) if chosen is not None else
           ambiguous(*gate_logit_box(x, w.gate, w.gate_bias, dt), cfg.router,
                     w.e_score_correction_bias))
    keep = ~tie
    figures = {"near_ties": int(tie.sum()), "compared": int(keep.sum()), "drawn": x.shape[0],
               "experts_class": out.ranks[0].experts_class}
    if not keep.any():
        return figures
    # each rank rounds its partial to the model dtype and the all-reduce sums them in it:
    # 2 (ep_size - 1) roundings more than one kernel's output (additive, sharded_tolerance)
    tol = sharded_tolerance(dt, backend.name, p.ep_size, summed_in_dtype=True)
    for rk in out.ranks:
        if tuple(rk.out.shape) != tuple(ref.shape):
            raise AssertionError(_ctx(backend, p, "ep block matches oracle",
                                      f"rank {rk.rank} output shape {tuple(rk.out.shape)} != "
                                      f"{tuple(ref.shape)}"))
        c = closeness(rk.out[keep], ref[keep], tol)
        if not c.ok:
            raise AssertionError(_ctx(backend, p, "ep block matches oracle",
                                      f"rank {rk.rank}'s all-reduced output; {figures['near_ties']} "
                                      f"near-tie tokens excluded\n" + c.report()))
        figures["max_norm"] = max(figures.get("max_norm", 0.0), c.max_norm)
        figures["rms_norm"] = max(figures.get("rms_norm", 0.0), c.rms_norm)
    if any(rk.routed is None for rk in out.ranks):
        figures["routed_partials"] = "not reachable"
        return figures
    total = torch.stack([rk.routed.double() for rk in out.ranks]).sum(0)
    # the partials summed here in float64: only their own roundings are extra
    c = closeness(total[keep], ref_routed[keep], sharded_tolerance(dt, backend.name, p.ep_size))
    if not c.ok:
        per_rank = ", ".join(f"rank {rk.rank} max|partial| {float(rk.routed.double().abs().max()):.3e}"
                             for rk in out.ranks)
        raise AssertionError(_ctx(backend, p, "ep routed partials sum to the oracle",
                                  f"sum over ranks of the routed experts' outputs before the "
                                  f"all-reduce ({per_rank})\n" + c.report()))
    figures["routed_max_norm"] = c.max_norm
    return figures


def check_finite(backend, p, out) -> None:
    """(e) every tensor every rank reports is finite (a rank's unwritten rows show as NaN)."""
    for rk in out.ranks:
        for what in ("out", "routed", "pre_reduce"):
            t = getattr(rk, what)
            if t is None:
                continue
            bad = (~torch.isfinite(t.double())).any(1)
            if bad.any():
                raise AssertionError(_ctx(backend, p, "ep finite",
                                          f"rank {rk.rank} {what}: {int(bad.sum())} / "
                                          f"{t.shape[0]} rows not finite, first rows "
                                          f"{bad.nonzero().squeeze(1)[:8].tolist()}"))


def check_remote_zero(backend, p) -> dict:
    """(d) a rank's routed output is exactly 0 on every token none of whose top-k experts it
    holds (any replica); the forced routings make such tokens on every rank they use."""
    out, x, w = run(backend, p)
    _forwarded(backend, p, out, "ep remote tokens add zero")
    check_finite(backend, p, out)
    chosen = observed_ids(backend, p, out, x, w)
    ids = chosen if chosen is not None else oracle_routing(p, x, w)[1]
    layout = p.layout()
    tie = (torch.zeros(x.shape[0], dtype=torch.bool) if chosen is not None else
           ambiguous(*gate_logit_box(x, w.gate, w.gate_bias, p.torch_dtype), p.cfg.router,
                     w.e_score_correction_bias))
    checked = 0
    for rk in out.ranks:
        if rk.routed is None:
            raise AssertionError(_ctx(backend, p, "ep remote tokens add zero",
                                      f"rank {rk.rank} does not expose its routed output"))
        held = torch.zeros(p.cfg.num_experts, dtype=torch.bool)
        held[sorted(layout.logical_on(rk.rank))] = True
        remote = ~held[ids.long()].any(1) & ~tie  # [T] no expert of the token on this rank
        rows = remote.nonzero().squeeze(1)
        checked += rows.numel()
        if rows.numel() == 0:
            continue
        part = rk.routed[rows].double()
        nz = (part != 0).any(1)
        if nz.any():
            t = int(rows[nz.nonzero()[0]])
            raise AssertionError(_ctx(backend, p, "ep remote tokens add zero",
                                      f"rank {rk.rank} holds experts "
                                      f"{sorted(layout.logical_on(rk.rank))}; {int(nz.sum())} / "
                                      f"{rows.numel()} tokens routed only to other ranks got a "
                                      f"non-zero routed output; token {t} (experts "
                                      f"{sorted(ids[t].tolist())}): max |out| "
                                      f"{float(rk.routed[t].double().abs().max()):.3e}"))
    return {"remote_tokens_checked": checked}
