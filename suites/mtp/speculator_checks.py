"""A speculator's draft loop held to the oracle's chaining (kind "mtp_speculator").

The loop is what Model Runner V2 adds around an MTP module (vllm/v1/worker/gpu/spec_decode/:
mtp/ over target_dependent_ar/, multi_module_mtp/): which token, which hidden state, which
position and which module each draft step gets, per request, in a batch. To hold that
bookkeeping and nothing else, the draft model is a probe the suite supplies (ProbeModel): a
seeded position-wise function of (token, hidden state, position, module) that gives integers,
exact in float32, so every law below is exact equality. Position-wise means no attention: a
KV-cached loop and the oracle's full causal recompute (reference/mtp.py) then give the same
rows, and the draft loop is all that is under test.

The problem: a batch of requests, each after a target step that ran `query_len` tokens at
positions first_position.. of which the last `num_rejected` were rejected drafts; the target
emitted `last_sampled`. The oracle's inputs for request r (reference/mtp.py's convention:
hidden at position i with token i + 1): the accepted target tokens shifted by one then
last_sampled, the target hidden states of the accepted rows, their positions.

Laws (check_draft_loop), each exact, per request and step s = 0 .. k-1:
  drafts     equal the oracle chain's (draft_chain for one module, draft_chain_modules for
             several);
  "one" (one module chained, KV cache): forward 0 gets the request's accepted rows as the
             oracle's inputs; forward s >= 1 gets one row: token = draft s - 1, hidden = the
             state the module fed back at step s - 1, position = last position + s (clamped at
             max_model_len - 1), seq_len = accepted length + s (clamped at max_model_len), and
             no module index other than 0;
  "several": forward s gets module s (spec_step_idx = s) and every accepted row: the tokens
             shifted left by s with the first s drafts appended, the hidden states module s - 1
             fed back at each row, the positions unchanged, seq_len the target's.

Where a request's chain reaches max_model_len the oracle (which has no length cap) is not the
truth: those requests are held to the position / seq_len clamp laws only, and their count is
returned, so a test states how many were held to the oracle.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from reference.mtp import draft_chain, draft_chain_modules

HIDDEN = 32  # draft hidden size of the speculator under test (its buffers)
VOCAB = 512  # fixtures/tiny_qwen3_next's vocabulary
MODULUS = 97  # the probe's states are integers in [0, MODULUS)
MAX_MODEL_LEN = 64


@dataclass(frozen=True)
class DraftRequest:
    query_len: int  # tokens of the target's last step for this request
    first_position: int
    num_rejected: int  # of those, rejected drafts at the tail (0 .. query_len - 1)

    @property
    def accepted(self) -> int:
        return self.query_len - self.num_rejected


@dataclass(frozen=True)
class SpeculatorProblem:
    requests: tuple[DraftRequest, ...]
    k: int  # num_speculative_tokens
    num_modules: int = 1  # num_nextn_predict_layers
    max_model_len: int = MAX_MODEL_LEN
    seed: int = 0
    pair: bool = False  # the draft model returns (logits state, fed-back state): ProbeModel

    @property
    def modules(self) -> str:
        return "one" if self.num_modules == 1 else "several"

    def reaches_cap(self, r: int) -> bool:
        q = self.requests[r]
        return self.modules == "one" and q.first_position + q.accepted - 1 + (self.k - 1) \
            > self.max_model_len - 1

    @functools.cached_property
    def target(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """Per request: the target's input ids [q], hidden states [q, H] (float64 integers)
        and the token it emitted last."""
        g = torch.Generator().manual_seed(self.seed)
        out = []
        for q in self.requests:
            out.append((torch.randint(0, VOCAB, (q.query_len,), generator=g),
                        torch.randint(0, MODULUS, (q.query_len, HIDDEN), generator=g).double(),
                        int(torch.randint(0, VOCAB, (1,), generator=g))))
        return out

    def oracle_inputs(self, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids [a], hidden [a, H], positions [a]) of request r for the draft model."""
        q, (ids, hid, last) = self.requests[r], self.target[r]
        a = q.accepted
        return (torch.cat([ids[1:a], torch.tensor([last])]), hid[:a],
                torch.arange(q.first_position, q.first_position + a))

    @functools.cached_property
    def probe(self) -> ProbeModel:
        return ProbeModel(self.num_modules, seed=self.seed + 7919, pair=self.pair)


class ProbeModel:
    """The draft model under the loop: for module s, row-wise
        u        = (roll(h, 1) * 3 + token * w_s + position * 5 + 11 s) mod 97,
        x        = (mix_s @ u) mod 97   (a change in any input moves every entry),
        logits   = (x - 48) @ lm_s.T   (centred: the argmax follows x, not lm's largest row),
        fed_back = x, or with `pair` (DeepSeek-V3's MTP layer in vLLM 0.32, which returns the
                   pre-norm state for the logits and the normed one to feed back)
                   (7 x + 3) mod 97,
    with seeded integer w_s [H] in 1..6, mix_s [H, H] in 0..96 and lm_s [V, H] in -3..3:
    integers below 2^24, exact in float32 (the speculator's dtype). Every input moves the
    states and, nearly always, the drafted token: test_probe_sees_every_input holds it to
    that."""

    def __init__(self, num_modules: int, seed: int, pair: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randint(1, 7, (num_modules, HIDDEN), generator=g).double()
        self.lm = torch.randint(-3, 4, (num_modules, VOCAB, HIDDEN), generator=g).double()
        self.mix = torch.randint(0, MODULUS, (num_modules, HIDDEN, HIDDEN), generator=g).double()
        self.pair = pair

    def __call__(self, input_ids, hidden_states, positions, layer: int | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the state the logits read [n, H], the state fed back [n, H]), float64."""
        s = layer or 0
        u = torch.remainder(hidden_states.double().roll(1, -1) * 3
                            + input_ids[:, None].double() * self.w[s]
                            + positions[:, None].double() * 5 + 11 * s, MODULUS)
        x = torch.remainder(u @ self.mix[s].T, MODULUS)
        return x, (torch.remainder(7 * x + 3, MODULUS) if self.pair else x)

    def logits(self, logits_hidden: torch.Tensor, layer: int | None) -> torch.Tensor:
        return (logits_hidden.double() - MODULUS // 2) @ self.lm[layer or 0].T

    def step(self, layer: int):
        """reference/mtp.py MTPStep of module `layer`."""
        def run(ids, hid, pos):
            lh, fed = self(ids, hid, pos, layer)
            return fed, self.logits(lh, layer)
        return run


def oracle_chain(p: SpeculatorProblem, r: int):
    ids, hid, pos = p.oracle_inputs(r)
    if p.modules == "one":
        return draft_chain(p.probe.step(0), ids, hid, pos, p.k)
    return draft_chain_modules([p.probe.step(s) for s in range(p.k)], ids, hid, pos, p.k)


@st.composite
def speculator_problems(draw, modules: str = "one", max_requests: int = 4, clamp: bool = False):
    """Ragged batches (a draft model returning one state or a pair): 1..max_requests requests
    with their own query length, position and rejected count; k 1..3 ("one") or 2..3 over k..3 modules ("several", whose re-prefill of
    >= 2 rejected tokens reads an earlier step's cache: num_rejected <= 1 here). clamp: some
    requests end at max_model_len."""
    k = draw(st.integers(1, 3) if modules == "one" else st.integers(2, 3))
    num_modules = 1 if modules == "one" else draw(st.integers(k, 3))
    B = draw(st.integers(1, max_requests))
    reqs = []
    for _ in range(B):
        q = draw(st.integers(1, 4))
        n = draw(st.integers(0, q - 1 if modules == "one" else min(1, q - 1)))
        top = MAX_MODEL_LEN - q if clamp else MAX_MODEL_LEN - 1 - (q - n) - k
        lo = max(0, top - 3) if clamp else 0
        reqs.append(DraftRequest(q, draw(st.integers(lo, top)), n))
    return SpeculatorProblem(tuple(reqs), k, num_modules, seed=draw(st.integers(0, 2**16)),
                             pair=draw(st.booleans()))


@dataclass
class LoopFindings:
    held_to_oracle: int  # requests whose drafts and rows were compared with the oracle chain
    clamped: int  # requests held to the clamp laws only


def _same(what: str, out, ref) -> None:
    out, ref = torch.as_tensor(out), torch.as_tensor(ref)
    if out.shape != ref.shape or not torch.equal(out.double(), ref.double()):
        raise AssertionError(f"{what}: got {out.tolist()}, the oracle's {ref.tolist()}")


def check_draft_loop(backend, p: SpeculatorProblem) -> LoopFindings:
    run = backend.propose(p, p.probe)
    if tuple(run.drafts.shape) != (len(p.requests), p.k):
        raise AssertionError(f"drafts shape {tuple(run.drafts.shape)}, expected "
                             f"{(len(p.requests), p.k)}")
    held = clamped = 0
    for r, q in enumerate(p.requests):
        calls = run.calls[r]
        where = f"request {r} ({q}, k={p.k}, {p.num_modules} module(s), pair={p.pair})"
        if len(calls) != p.k:
            raise AssertionError(f"{where}: {len(calls)} draft-model forwards, expected {p.k}")
        ids0, hid0, pos0 = p.oracle_inputs(r)
        cap = p.reaches_cap(r)
        chain = None if cap else oracle_chain(p, r)
        if p.modules == "one":
            _same(f"{where} forward 0 input ids", calls[0].input_ids, ids0)
            _same(f"{where} forward 0 positions", calls[0].positions, pos0)
            _same(f"{where} forward 0 hidden states", calls[0].hidden_states, hid0)
            seq_acc = q.first_position + q.accepted
            for s in range(1, p.k):
                c = calls[s]
                if c.layer not in (None, 0):
                    raise AssertionError(f"{where} step {s}: module {c.layer} (one module)")
                _same(f"{where} step {s} position",
                      c.positions, [min(int(pos0[-1]) + s, p.max_model_len - 1)])
                _same(f"{where} step {s} seq_len", c.seq_len, min(seq_acc + s, p.max_model_len))
                if chain is not None:
                    _same(f"{where} step {s} input id (draft {s - 1})", c.input_ids,
                          [chain.draft_token_ids[s - 1]])
                    _same(f"{where} step {s} hidden state (fed back at step {s - 1})",
                          c.hidden_states, chain.hidden_states[s - 1:s])
        else:
            for s in range(p.k):
                c = calls[s]
                if c.layer != s:
                    raise AssertionError(f"{where} step {s}: module {c.layer}, expected {s}")
                ids_s, hid_s, pos_s = chain.inputs[s]
                _same(f"{where} step {s} input ids", c.input_ids, ids_s)
                _same(f"{where} step {s} positions", c.positions, pos_s)
                _same(f"{where} step {s} hidden states", c.hidden_states, hid_s)
                _same(f"{where} step {s} seq_len", c.seq_len, q.first_position + q.query_len)
        if chain is None:
            clamped += 1
            continue
        _same(f"{where} drafts", run.drafts[r], chain.draft_token_ids)
        held += 1
    return LoopFindings(held, clamped)
