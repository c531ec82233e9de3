"""reference/mtp.py draft_chain_modules (several sequential MTP modules, DeepSeek-V3 section 2.2)
against independent computations: the single-module chain (draft_chain) where the two must agree,
and the report's recursion h_i^s = M_s(h_i^{s-1}, Emb(t_{i+s+1})) evaluated one (s, i) at a time.
"""

from __future__ import annotations

import pytest
import torch

from reference.mtp import draft_chain, draft_chain_modules

V, H = 23, 5


def _pointwise(layer: int, use_positions: bool):
    """A position-wise module (no attention): row i of the output reads only row i of the input.
    Integer-valued in float64, so every comparison below is exact."""
    g = torch.Generator().manual_seed(1000 + layer)
    w = torch.randint(1, 7, (H,), generator=g).double()
    lm = torch.randint(-3, 4, (V, H), generator=g).double()

    def step(ids, hid, pos):
        x = torch.remainder(hid.roll(1, -1) * 3 + ids[:, None].double() * w
                            + (pos[:, None].double() * 5 if use_positions else 0) + layer * 11, 97)
        return x, x @ lm.T
    return step


def _inputs(T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, V, (T,), generator=g),
            torch.randint(0, 97, (T, H), generator=g).double(),
            torch.arange(T) + int(torch.randint(0, 50, (1,), generator=g)))


@pytest.mark.parametrize("T,k", [(1, 1), (1, 3), (4, 2), (6, 3)])
def test_identical_position_free_modules_equal_the_single_module_chain(T, k):
    """With k copies of one module that ignores positions, module s at the last position reads
    draft s - 1 and the previous module's state there: the single-module chain's step s."""
    step = _pointwise(0, use_positions=False)
    ids, hid, pos = _inputs(T, seed=T * 10 + k)
    ref = draft_chain(step, ids, hid, pos, k)
    out = draft_chain_modules([step] * k, ids, hid, pos, k)
    assert out.draft_token_ids == ref.draft_token_ids
    torch.testing.assert_close(out.hidden_states, ref.hidden_states, rtol=0, atol=0)


@pytest.mark.parametrize("T,k", [(1, 2), (3, 3), (5, 2)])
def test_modules_follow_the_deepseek_recursion(T, k):
    """h_i^s = M_s(h_i^{s-1}, t_{i+s+1}) at position i, one (s, i) at a time, tokens past t_T
    being the drafts of the earlier modules (each the argmax of its module's last row)."""
    modules = [_pointwise(s, use_positions=True) for s in range(k)]
    ids, hid, pos = _inputs(T, seed=100 + T * 10 + k)
    out = draft_chain_modules(modules, ids, hid, pos, k)
    tokens = [int(t) for t in ids]  # t_1 .. t_T, then the drafts
    h_prev = [hid[i] for i in range(T)]
    for s in range(k):
        ids_s, hid_s, pos_s = out.inputs[s]
        h_next, last_logits = [], None
        for i in range(T):
            t = tokens[i + s]  # t_{i+s+1} (tokens is 0-based from t_1)
            assert int(ids_s[i]) == t and int(pos_s[i]) == int(pos[i])
            assert torch.equal(hid_s[i], h_prev[i])
            x, logits = modules[s](torch.tensor([t]), h_prev[i][None], pos[i:i + 1])
            h_next.append(x[0])
            last_logits = logits[0]
        d = int(last_logits.argmax())
        assert out.draft_token_ids[s] == d
        assert torch.equal(out.hidden_states[s], h_next[-1])
        tokens.append(d)
        h_prev = h_next


def test_more_drafts_than_modules_is_an_error():
    ids, hid, pos = _inputs(2, seed=0)
    with pytest.raises(ValueError, match="need as many modules"):
        draft_chain_modules([_pointwise(0, True)], ids, hid, pos, 2)


@pytest.mark.parametrize("modules", ["one", "several"])
def test_draft_loop_laws_hold_oracle_vs_oracle(modules):
    """suites/mtp/speculator_checks.py's laws on the oracle registered as a speculator backend
    (reference.mtp_speculator.*): the check machinery runs, and passes, without vLLM."""
    from suites.backends import REGISTRY
    from suites.mtp.speculator_checks import DraftRequest, SpeculatorProblem, check_draft_loop

    reqs = (DraftRequest(4, 10, 0), DraftRequest(3, 30, 1), DraftRequest(1, 0, 0))
    p = SpeculatorProblem(reqs, k=3, num_modules=1 if modules == "one" else 3, seed=4)
    f = check_draft_loop(REGISTRY.get(f"reference.mtp_speculator.{modules}"), p)
    assert f.held_to_oracle == len(reqs)
