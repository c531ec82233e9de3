"""Model Runner V2's MTP draft loops (suites/backends/vllm/v2_speculator.py: MTPSpeculator, one
module chained; MultiModuleMTPSpeculator, module s for step s) held to reference/mtp.py's
chaining, exactly, around the suite's probe draft model (suites/mtp/speculator_checks.py):
drafts for k = 1-3, the token, hidden state, position, seq_len and module each step is given,
ragged batches (query lengths, positions and rejected counts differing per request), requests
at max_model_len.

What each law catches (tests/negative_controls/test_v2_speculator_negative_controls.py plants
each in V2's code): the fed-back hidden state not copied (stale from step 2 on), positions not
advanced, seq_lens not clamped, the wrong module (or LM head) for a step, the drafted token not
fed or not shifted in, a (logits state, fed-back state) pair read the wrong way round.

No V2 defect found: every law holds on every batch drawn (greedy drafting). interp_ci runs the
fixed ragged batches, the clamp case and the probe's sensitivity (~10 s under the interpreter
after vLLM's import); the drawn batches run in the full nox -s triton_interpret.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from suites.backends import UnsupportedShape
from suites.mtp.speculator_checks import (
    HIDDEN,
    MODULUS,
    VOCAB,
    DraftRequest,
    ProbeModel,
    SpeculatorProblem,
    check_draft_loop,
    speculator_problems,
)

pytestmark = pytest.mark.mtp


def _run(backend, p: SpeculatorProblem):
    try:
        return check_draft_loop(backend, p)
    except UnsupportedShape as e:
        pytest.skip(str(e))


def _for(backend, modules: str) -> None:
    if backend.modules != modules:
        pytest.skip(f"{backend.name} chains {backend.modules} module(s)")


# A ragged batch: query lengths 1-4, rejected 0-2, positions far apart; k = 3 so that the
# decode steps after the first (V2's _update_draft_inputs_kernel) are reached.
RAGGED_ONE = SpeculatorProblem((DraftRequest(4, 10, 0), DraftRequest(3, 30, 2),
                                DraftRequest(1, 0, 0), DraftRequest(2, 47, 1)), k=3, seed=1)
RAGGED_SEVERAL = SpeculatorProblem((DraftRequest(4, 10, 0), DraftRequest(3, 30, 1),
                                    DraftRequest(1, 0, 0)), k=3, num_modules=3, seed=2)


@pytest.mark.interp_ci
@pytest.mark.parametrize("pair", [False, True], ids=["one_state", "pair"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_one_module_ragged_batch(speculator_backend, k, pair, record):
    """MTPSpeculator, k = 1, 2, 3 on one ragged batch, a draft model returning one state
    (Qwen3-Next) or a pair (DeepSeek-V3): every law, every request."""
    _for(speculator_backend, "one")
    p = SpeculatorProblem(RAGGED_ONE.requests, k=k, seed=RAGGED_ONE.seed, pair=pair)
    f = _run(speculator_backend, p)
    assert f.held_to_oracle == len(p.requests)
    record.sum(requests_held_to_oracle=f.held_to_oracle)


@pytest.mark.interp_ci
@pytest.mark.parametrize("pair", [False, True], ids=["one_state", "pair"])
@pytest.mark.parametrize("k,modules", [(2, 2), (3, 3), (2, 3)])
def test_several_modules_ragged_batch(speculator_backend, k, modules, pair, record):
    """MultiModuleMTPSpeculator: module s for step s, every row, every request."""
    _for(speculator_backend, "several")
    p = SpeculatorProblem(RAGGED_SEVERAL.requests, k=k, num_modules=modules,
                          seed=RAGGED_SEVERAL.seed, pair=pair)
    f = _run(speculator_backend, p)
    assert f.held_to_oracle == len(p.requests)
    record.sum(requests_held_to_oracle=f.held_to_oracle)


@pytest.mark.interp_ci
def test_positions_and_seq_lens_clamp_at_max_model_len(speculator_backend, record):
    """Requests whose chain runs past max_model_len: position clamped at max_model_len - 1 and
    seq_len at max_model_len each step (V2 clamps to stay in range); a request below the cap
    beside them is still held to the oracle."""
    _for(speculator_backend, "one")
    p = SpeculatorProblem((DraftRequest(2, 61, 0), DraftRequest(1, 63, 0),
                           DraftRequest(3, 5, 1)), k=3, seed=3)
    f = _run(speculator_backend, p)
    assert (f.clamped, f.held_to_oracle) == (2, 1)
    record.sum(requests_clamped=f.clamped)


@pytest.mark.parametrize("modules", ["one", "several"])
@given(data=st.data())
def test_drawn_batches(speculator_backend, modules, data, record):
    """Drawn ragged batches (one module: MTPSpeculator; several: MultiModuleMTPSpeculator)."""
    _for(speculator_backend, modules)
    p = data.draw(speculator_problems(modules=modules), label="problem")
    f = _run(speculator_backend, p)
    assert f.held_to_oracle == len(p.requests)
    record.sum(requests_held_to_oracle=f.held_to_oracle)


@given(p=speculator_problems(modules="one", clamp=True))
def test_one_module_drawn_batches_at_the_cap(speculator_backend, p, record):
    _for(speculator_backend, "one")
    f = _run(speculator_backend, p)
    assert f.held_to_oracle + f.clamped == len(p.requests)
    record.sum(requests_clamped=f.clamped)


@pytest.mark.interp_ci
@pytest.mark.parametrize("pair", [False, True], ids=["one_state", "pair"])
def test_probe_sees_every_input(pair):
    """The laws' power: the probe's states change when any one of the token, hidden state,
    position or module changes (on every draw here), its logits differ by module, and with
    `pair` the fed-back state is not the logits' state, so a loop that feeds a wrong input, or
    feeds back the wrong one of the pair, cannot keep the oracle's rows."""
    import torch

    probe = ProbeModel(3, seed=11, pair=pair)
    g = torch.Generator().manual_seed(5)
    same_token = 0
    for _ in range(200):
        t = torch.randint(0, VOCAB, (1,), generator=g)
        h = torch.randint(0, MODULUS, (1, HIDDEN), generator=g).double()
        pos = torch.randint(0, 60, (1,), generator=g)
        s = int(torch.randint(0, 3, (1,), generator=g))
        lh, fed = probe(t, h, pos, s)
        h2 = h.clone()
        h2[0, int(torch.randint(0, HIDDEN, (1,), generator=g))] += 1
        for other in (probe((t + 1) % VOCAB, h, pos, s), probe(t, h2, pos, s),
                      probe(t, h, pos + 1, s), probe(t, h, pos, (s + 1) % 3)):
            assert not torch.equal(other[0], lh) and not torch.equal(other[1], fed)
        assert not torch.equal(probe.logits(lh, s), probe.logits(lh, (s + 1) % 3))
        assert torch.equal(lh, fed) != pair
        token = int(probe.logits(lh, s).argmax())
        same_token += sum(int(probe.logits(o[0], s).argmax()) == token for o in (
            probe((t + 1) % VOCAB, h, pos, s), probe(t, h2, pos, s), probe(t, h, pos + 1, s)))
        if pair:
            same_token += int(probe.logits(fed, s).argmax()) == token
    # a changed input keeps the drafted token rarely (~1/V for independent states)
    assert same_token <= 6, same_token
