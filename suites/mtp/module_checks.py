"""Checks for the MTP draft modules (kind "mtp_module") against reference/mtp.py, shared by
suites/mtp/test_mtp_modules.py and the negative controls in tests/.

One step: the module's fed-back hidden state, its logits and (where it exposes it) its pre-norm
hidden state against the fp64 oracle, with the convention the backend declares (feeds_back).
Chained: k draft steps, each appending the drafted token and the module's own fed-back hidden
state as a new position (a full causal recompute, equal to a KV-cache run), against the oracle's
chain; the tokens are the oracle's drafts (teacher forcing), so that a near-tie argmax cannot
send the two chains down different prompts; every draft whose oracle margin is clear must equal
the oracle's.

Routing inside the decoder layer's MoE block: the module's router sees an input that already
carries the model dtype's rounding of the fc projection, the attention and two norms, so at a
close margin it may choose other experts than the oracle. Every row is compared all the same:
the module's own choice is observed (ObservedRouting), its router input held to the oracle's
MoE input, its gate logits to the rounding box of that input's exact logits and its choice to
the choices the oracle could make there (suites/moe/checks.py observed_choice); the oracle is
then evaluated with the module's choice (reference/layers.py "topk_ids"), every row, every
chained step (a chain goes on past a close margin on the module's own choice). A module whose
choice cannot be observed falls back to excluding the ambiguous rows (judged on the boundary
experts with the input's rounding added to the box, on either trajectory of a chain), counted;
the suites fail a test whose compared share is under COMPARED_FLOOR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference.routing import route, router_logits
from suites.closeness import closeness
from suites.moe.checks import observed_choice
from suites.moe.routing_choice import ambiguous, gate_logit_box
from suites.properties import context as _ctx
from suites.tolerances import resolution, tolerance

# Without an observed choice: the router input's own rounding, in units of the dtype's
# resolution of sum |x_h W_eh|, added to the gate's rounding box (one unit for the input's
# last rounding, one for what the layers before it carried).
NEAR_TIE_UNITS = 2.0


@dataclass
class StepFigures:
    compared: int  # rows held to the oracle
    drawn: int  # rows the step produced
    own_choice: int  # rows the module routed differently from the oracle's own choice
    max_norm: float
    rms_norm: float


def _moe_cfg(inputs):
    return inputs.cfg.moe if hasattr(inputs.cfg, "moe") else inputs.weights.block.moe


def _oracle(inputs, ids, hidden, pos, normed: bool, topk_ids=None):
    """The oracle's step (fed-back, logits, pre-norm) and its trace (MoE input, routing),
    evaluated with the module's expert choice when topk_ids is given."""
    trace: dict = {} if topk_ids is None else {"topk_ids": topk_ids}
    fed, logits, pre = inputs.oracle_step(ids, hidden.double(), pos, feed_back_normed=normed,
                                          trace=trace)
    return fed, logits, pre, trace


def _judged_choice(backend, p, inputs, where: str, dtype):
    """The module's observed routing of its last step, judged (None: not observable): its
    router input must match the oracle's MoE input within the module tolerance (checked by
    the caller against the oracle's trace), its logits and choice as observed_choice says."""
    mlp = inputs.layer.mlp
    calls = backend.observed_routing
    if not calls:
        return None
    if len(calls) != 1:
        raise AssertionError(_ctx(backend, p, where, f"{len(calls)} router calls in one step "
                                  "of a one-layer module (expected 1)"))
    return observed_choice(backend, p, where, calls[0].hidden_states, mlp, _moe_cfg(inputs), dtype)


def _ambiguous_rows(inputs, moe_input, dtype) -> torch.Tensor:
    mlp = inputs.layer.mlp
    exact, delta = gate_logit_box(moe_input, mlp.gate, mlp.gate_bias, dtype)
    x, w = moe_input.double(), mlp.gate.double()
    delta = delta + NEAR_TIE_UNITS * resolution(dtype) * (x.abs() @ w.abs().T)
    return ambiguous(exact, delta, _moe_cfg(inputs).router, mlp.e_score_correction_bias)


def _routed(backend, p, inputs, ids, hid, pos, normed, dt, tol, where):
    """(oracle fed, logits, pre, keep [T] rows to compare, own-choice rows) for the module's
    last step: the oracle with the module's choice on every row, else the unambiguous rows."""
    obs = _judged_choice(backend, p, inputs, where, dt)
    if obs is None:
        fed, logits, pre, trace = _oracle(inputs, ids, hid, pos, normed)
        return fed, logits, pre, ~_ambiguous_rows(inputs, trace["moe_input"], dt), 0, trace
    fed, logits, pre, trace = _oracle(inputs, ids, hid, pos, normed, obs.topk_ids)
    _compare(backend, p, f"{where}: MoE router input", obs.hidden_states, trace["moe_input"],
             torch.ones(obs.hidden_states.shape[0], dtype=torch.bool), tol)
    mlp = inputs.layer.mlp  # the oracle's own choice at its own (exact) MoE input
    own_ids = route(router_logits(trace["moe_input"], mlp.gate, mlp.gate_bias),
                    _moe_cfg(inputs).router, mlp.e_score_correction_bias)[1]
    own = int((obs.topk_ids.long().sort(1).values != own_ids.sort(1).values).any(1).sum())
    return fed, logits, pre, torch.ones(ids.shape[0], dtype=torch.bool), own, trace


def _compare(backend, p, what: str, out, ref, keep, tol, step: int | None = None) -> tuple:
    where = f"{what}" + ("" if step is None else f" at draft step {step}")
    if tuple(out.shape) != tuple(ref.shape):
        raise AssertionError(_ctx(backend, p, where, f"shape {tuple(out.shape)} != {tuple(ref.shape)}"))
    bad = (~torch.isfinite(out.double())).any(-1)
    if bad.any():
        raise AssertionError(_ctx(backend, p, where, f"{int(bad.sum())} / {out.shape[0]} rows "
                                  f"not finite, first {int(bad.nonzero()[0])}"))
    c = closeness(out[keep], ref[keep], tol)
    if not c.ok:
        raise AssertionError(_ctx(backend, p, where, f"{int((~keep).sum())} near-tie rows "
                                  f"excluded\n" + c.report()))
    return c.max_norm, c.rms_norm


def check_mtp_step(backend, p, inputs=None, handle=None) -> StepFigures:
    """One draft step over the prompt: fed-back hidden, logits and the pre-norm hidden (where
    the module exposes it) vs the oracle under the backend's feed-back convention, every row
    (the oracle routed as the module did: module docstring)."""
    inputs = p.tensors() if inputs is None else inputs
    handle = backend.prepare(p, inputs) if handle is None else handle
    dt = p.torch_dtype
    normed = backend.feeds_back == "normed"
    tol = tolerance(dt, backend.name, "mtp")
    out = backend.step(handle, inputs.input_ids, inputs.hidden_states, inputs.positions)
    fed, logits, pre, keep, own, _ = _routed(backend, p, inputs, inputs.input_ids,
                                             inputs.hidden_states, inputs.positions, normed, dt,
                                             tol, "step")
    figs = [(0.0, 0.0)]
    if keep.any():
        figs.append(_compare(backend, p, f"fed-back hidden ({backend.feeds_back})", out.fed_back,
                             fed, keep, tol))
        figs.append(_compare(backend, p, "logits", out.logits, logits, keep, tol))
        if out.pre_norm is not None and pre is not None:
            figs.append(_compare(backend, p, "pre-norm hidden", out.pre_norm, pre, keep, tol))
    return StepFigures(int(keep.sum()), int(keep.numel()), own, max(f[0] for f in figs),
                       max(f[1] for f in figs))


@dataclass
class ChainFigures:
    steps: int  # steps compared
    stopped_at_tie: int  # 1 when an unobservable choice at a close margin ended the chain
    drafts_clear: int  # drafts with a clear oracle margin (all must agree)
    max_norm: float
    compared: int = 0  # rows held to the oracle over the steps
    drawn: int = 0  # rows the steps produced
    own_choice: int = 0  # rows routed differently from the oracle's own choice


def check_mtp_chain(backend, p, inputs=None, handle=None) -> ChainFigures:
    """p.k chained draft steps vs the oracle's chain (teacher-forced tokens), every row of every
    step held to the oracle evaluated with the module's own routing choice."""
    inputs = p.tensors() if inputs is None else inputs
    handle = backend.prepare(p, inputs) if handle is None else handle
    dt = p.torch_dtype
    normed = backend.feeds_back == "normed"
    tol = tolerance(dt, backend.name, "mtp")
    ids, pos = inputs.input_ids.clone(), inputs.positions.clone()
    hid_b = inputs.hidden_states.clone()  # the module's chain: its own fed-back states
    hid_o = inputs.hidden_states.double()  # the oracle's chain
    worst, clear, compared, drawn, own_total = 0.0, 0, 0, 0, 0
    for s in range(p.k):
        out = backend.step(handle, ids, hid_b, pos)
        fed, logits, _, keep, own, _ = _routed(backend, p, inputs, ids, hid_o, pos, normed,
                                               dt, tol, f"chain step {s}")
        observed = bool(backend.observed_routing)
        if s and not observed:  # the module's trajectory too (its own fed-back states)
            _, _, _, tr_b = _oracle(inputs, ids, hid_b, pos, normed)
            keep &= ~_ambiguous_rows(inputs, tr_b["moe_input"], dt)
        compared, drawn, own_total = compared + int(keep.sum()), drawn + keep.numel(), own_total + own
        if keep.any():
            worst = max(worst, _compare(backend, p, "logits", out.logits, logits, keep, tol, s)[0],
                        _compare(backend, p, "fed-back hidden", out.fed_back, fed, keep, tol, s)[0])
        if not keep[-1]:  # unobservable choice at a close margin on the row that feeds on
            return ChainFigures(s, 1, clear, worst, compared, drawn, own_total)
        top2 = logits[-1].topk(min(2, logits.shape[1])).values
        d = int(logits[-1].argmax())
        margin = float(top2[0] - top2[-1]) if top2.numel() > 1 else float("inf")
        if margin > 2 * tol.max_norm * float(logits.abs().max()):
            clear += 1
            got = int(out.logits[-1].double().argmax())
            if got != d:
                raise AssertionError(_ctx(backend, p, f"draft at step {s}", f"module drafts {got}, "
                                          f"oracle {d} with a clear margin {margin:.3g} (logits "
                                          f"{float(logits[-1, got]):.4g} vs {float(logits[-1, d]):.4g})"))
        ids = torch.cat([ids, torch.tensor([d], dtype=ids.dtype)])
        pos = torch.cat([pos, pos[-1:] + 1])
        hid_b = torch.cat([hid_b, out.fed_back[-1:].to(hid_b.dtype)])
        hid_o = torch.cat([hid_o, fed[-1:]])
    return ChainFigures(p.k, 0, clear, worst, compared, drawn, own_total)


def check_mtp_causal_prefix(backend, p, inputs=None, handle=None) -> tuple[float, int, int]:
    """Causality, the invariance a KV cache relies on: the first T' rows of a step over T
    positions equal a step over the first T' positions alone (module vs itself, to the
    tolerance: a different token count may take another GEMM blocking, and so at a close
    margin another admissible expert choice: those rows, seen in the two observed choices,
    are excluded and counted). Returns (max normalized error, rows compared, rows drawn)."""
    inputs = p.tensors() if inputs is None else inputs
    handle = backend.prepare(p, inputs) if handle is None else handle
    if p.T < 2:
        return 0.0, 0, 0
    cut = p.T // 2
    dt = p.torch_dtype
    full = backend.step(handle, inputs.input_ids, inputs.hidden_states, inputs.positions)
    seen_full = backend.observed_routing
    part = backend.step(handle, inputs.input_ids[:cut], inputs.hidden_states[:cut],
                        inputs.positions[:cut])
    seen_part = backend.observed_routing
    if seen_full and seen_part:
        a = seen_full[0].topk_ids[:cut].long().sort(1).values
        b = seen_part[0].topk_ids.long().sort(1).values
        keep = ~(a != b).any(1)
    else:
        trace = _oracle(inputs, inputs.input_ids[:cut], inputs.hidden_states[:cut],
                        inputs.positions[:cut], backend.feeds_back == "normed")[3]
        keep = ~_ambiguous_rows(inputs, trace["moe_input"], dt)
    if not keep.any():
        return 0.0, 0, cut
    tol = tolerance(dt, backend.name, "mtp")
    c = closeness(full.logits[:cut][keep], part.logits[keep].double(), tol)
    if not c.ok:
        raise AssertionError(_ctx(backend, p, f"causal prefix (first {cut} of {p.T} rows)",
                                  c.report()))
    return c.max_norm, int(keep.sum()), cut
