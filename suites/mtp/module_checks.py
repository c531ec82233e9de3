"""Checks for the MTP draft modules (kind "mtp_module") against reference/mtp.py, shared by
suites/mtp/test_mtp_modules.py and the negative controls in tests/.

One step: the module's fed-back hidden state, its logits and (where it exposes it) its pre-norm
hidden state against the fp64 oracle, with the convention the backend declares (feeds_back).
Chained: k draft steps, each appending the drafted token and the module's own fed-back hidden
state as a new position (a full causal recompute, equal to a KV-cache run), against the oracle's
chain; the tokens are the oracle's drafts (teacher forcing), so that a near-tie argmax cannot
send the two chains down different prompts; every draft whose oracle margin is clear must equal
the oracle's.

Near-ties: the decoder layer's MoE router sees an input that already carries the model dtype's
rounding of the fc projection, the attention and two norms; rows whose routing margin (oracle)
is within NEAR_TIE_UNITS units of those logits (2: one for the gate GEMM, one for its input) (suites/moe/checks.py block_near_ties) may route
differently in the module and are excluded and counted. A near-tie on the last row of a step
ends the chain comparison there (its fed-back state feeds every later position). In a chain the
appended rows' inputs are the module's own fed-back states, which differ from the oracle's by
the previous step's error (a few bf16 units): a row is a near-tie when it is one on either
trajectory (the oracle's router on the oracle's chain, or on the module's), or when the two
trajectories route it to different experts (found by the nightly profile: DeepSeek-V3, a
margin of 0.016 on the oracle's chain and 0.003 on the module's, one flipped expert).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference.routing import route, router_logits
from suites.compare import closeness
from suites.moe.checks import block_near_ties
from suites.tolerances import tolerance

NEAR_TIE_UNITS = 2.0


def _ctx(backend, p, prop: str, extra: str = "") -> str:
    return f"[{prop}] backend={backend.name} problem: {p.describe()}" + (f"\n{extra}" if extra else "")


@dataclass
class StepFigures:
    compared: int  # rows compared
    near_ties: int  # rows excluded (routing near-tie)
    max_norm: float
    rms_norm: float


def _moe_cfg(inputs):
    return inputs.cfg.moe if hasattr(inputs.cfg, "moe") else inputs.weights.block.moe


def _oracle(inputs, ids, hidden, pos, normed: bool, dtype):
    """The oracle's step: fed-back, logits, pre-norm, near-tie rows and the router logits."""
    trace: dict = {}
    fed, logits, pre = inputs.oracle_step(ids, hidden.double(), pos, feed_back_normed=normed,
                                          trace=trace)
    mlp = inputs.layer.mlp
    lg = router_logits(trace["moe_input"], mlp.gate)
    ties = block_near_ties(lg, _moe_cfg(inputs), dtype, mlp.e_score_correction_bias,
                           units=NEAR_TIE_UNITS)
    return fed, logits, pre, ties, lg


def _chain_ties(inputs, ids, hid_b, pos, normed: bool, dtype, ties_o, lg_o) -> torch.Tensor:
    """Near-ties on the module's trajectory (its own fed-back states as the appended rows'
    inputs), or rows the two trajectories route to different experts."""
    _, _, _, ties_b, lg_b = _oracle(inputs, ids, hid_b, pos, normed, dtype)
    moe, bias = _moe_cfg(inputs).router, inputs.layer.mlp.e_score_correction_bias
    ids_o = route(lg_o, moe, bias)[1].sort(-1).values
    ids_b = route(lg_b, moe, bias)[1].sort(-1).values
    return ties_o | ties_b | (ids_o != ids_b).any(-1)


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
    the module exposes it) vs the oracle under the backend's feed-back convention."""
    inputs = p.tensors() if inputs is None else inputs
    handle = backend.prepare(p, inputs) if handle is None else handle
    dt = p.torch_dtype
    normed = backend.feeds_back == "normed"
    out = backend.step(handle, inputs.input_ids, inputs.hidden_states, inputs.positions)
    fed, logits, pre, ties, _ = _oracle(inputs, inputs.input_ids, inputs.hidden_states,
                                        inputs.positions, normed, dt)
    keep = ~ties
    figs = [(0.0, 0.0)]
    if keep.any():
        tol = tolerance(dt, backend.name, "mtp")
        figs.append(_compare(backend, p, f"fed-back hidden ({backend.feeds_back})", out.fed_back,
                             fed, keep, tol))
        figs.append(_compare(backend, p, "logits", out.logits, logits, keep, tol))
        if out.pre_norm is not None and pre is not None:
            figs.append(_compare(backend, p, "pre-norm hidden", out.pre_norm, pre, keep, tol))
    return StepFigures(int(keep.sum()), int(ties.sum()), max(f[0] for f in figs),
                       max(f[1] for f in figs))


@dataclass
class ChainFigures:
    steps: int  # steps compared
    stopped_at_tie: int  # 1 when a last-row near-tie ended the comparison early
    drafts_clear: int  # drafts with a clear oracle margin (all must agree)
    max_norm: float


def check_mtp_chain(backend, p, inputs=None, handle=None) -> ChainFigures:
    """p.k chained draft steps vs the oracle's chain (teacher-forced tokens)."""
    inputs = p.tensors() if inputs is None else inputs
    handle = backend.prepare(p, inputs) if handle is None else handle
    dt = p.torch_dtype
    normed = backend.feeds_back == "normed"
    tol = tolerance(dt, backend.name, "mtp")
    ids, pos = inputs.input_ids.clone(), inputs.positions.clone()
    hid_b = inputs.hidden_states.clone()  # the module's chain: its own fed-back states
    hid_o = inputs.hidden_states.double()  # the oracle's chain
    worst, clear = 0.0, 0
    for s in range(p.k):
        out = backend.step(handle, ids, hid_b, pos)
        fed, logits, _, ties, lg = _oracle(inputs, ids, hid_o, pos, normed, dt)
        if s:  # step 0: both trajectories are the prompt
            ties = _chain_ties(inputs, ids, hid_b, pos, normed, dt, ties, lg)
        keep = ~ties
        if keep.any():
            worst = max(worst, _compare(backend, p, "logits", out.logits, logits, keep, tol, s)[0],
                        _compare(backend, p, "fed-back hidden", out.fed_back, fed, keep, tol, s)[0])
        if ties[-1]:
            return ChainFigures(s, 1, clear, worst)
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
    return ChainFigures(p.k, 0, clear, worst)


def check_mtp_causal_prefix(backend, p, inputs=None, handle=None) -> float:
    """Causality, the invariance a KV cache relies on: the first T' rows of a step over T
    positions equal a step over the first T' positions alone (module vs itself, to the
    tolerance: a different token count may take another GEMM blocking)."""
    inputs = p.tensors() if inputs is None else inputs
    handle = backend.prepare(p, inputs) if handle is None else handle
    if p.T < 2:
        return 0.0
    cut = p.T // 2
    full = backend.step(handle, inputs.input_ids, inputs.hidden_states, inputs.positions)
    part = backend.step(handle, inputs.input_ids[:cut], inputs.hidden_states[:cut],
                        inputs.positions[:cut])
    ties = _oracle(inputs, inputs.input_ids[:cut], inputs.hidden_states[:cut],
                   inputs.positions[:cut], backend.feeds_back == "normed", p.torch_dtype)[3]
    if ties.all():
        return 0.0
    tol = tolerance(p.torch_dtype, backend.name, "mtp")
    c = closeness(full.logits[:cut][~ties], part.logits[~ties].double(), tol)
    if not c.ok:
        raise AssertionError(_ctx(backend, p, f"causal prefix (first {cut} of {p.T} rows)",
                                  c.report()))
    return c.max_norm
