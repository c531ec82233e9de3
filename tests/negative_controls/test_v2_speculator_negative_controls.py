"""Negative controls for Model Runner V2's MTP draft loops: bugs planted in V2's own code
(vllm/v1/worker/gpu/spec_decode/target_dependent_ar/speculator.py under MTPSpeculator,
multi_module_mtp/speculator.py), caught by the draft-loop laws (suites/mtp/speculator_checks.py
check_draft_loop) run through the backends the suite uses, vllm.v2.mtp_speculator.interp and
vllm.v2.multi_module_mtp_speculator.interp, on the suite's ragged batches with k = 3.

Each bug is a one-line mutation of a Triton program (re-jitted from the mutated source, so the
interpreter runs the broken program; test_triton_negative_controls.py `planted`) or of a
speculator method (recompiled from its mutated source onto the class for the duration of the
check, `planted_method`). A mutation that no longer applies fails loudly. The clean code passes
the same checks on the same batches, and each control says which law must catch it (the
failure names the law), so a caught mutation is the mutation, not the check.

The bugs: MTPSpeculator (target_dependent_ar) - the fed-back hidden state not copied by
_update_draft_inputs_kernel (stale from step 2 on), positions not advanced there, seq_lens not
clamped at max_model_len there, step 1 fed a token other than draft 0
(_prepare_decode_inputs_kernel), a (logits state, fed-back state) pair unpacked the wrong way
round in _run_model (DeepSeek-style draft models); MultiModuleMTPSpeculator - step s run on
module s - 1, the logits of every step from module 0's head, module s fed the target's hidden
states instead of module s - 1's, the draft not shifted into the window
(_shift_input_ids_kernel). All run in CI's interpreter subset (interp_ci): ~1 s each.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import textwrap
from dataclasses import dataclass
from unittest import mock

import pytest

from suites.backends import REGISTRY
from suites.mtp.speculator_checks import DraftRequest, SpeculatorProblem, check_draft_loop
from tests.negative_controls.test_triton_negative_controls import Mutation, planted

pytestmark = [pytest.mark.triton, pytest.mark.mtp, pytest.mark.interp_ci]

AR = "vllm.v1.worker.gpu.spec_decode.target_dependent_ar.speculator"
MM = "vllm.v1.worker.gpu.spec_decode.multi_module_mtp.speculator"

ONE = SpeculatorProblem((DraftRequest(4, 10, 0), DraftRequest(3, 30, 2),
                         DraftRequest(1, 0, 0), DraftRequest(2, 47, 1)), k=3, seed=1)
ONE_PAIR = SpeculatorProblem(ONE.requests, k=3, seed=1, pair=True)
AT_CAP = SpeculatorProblem((DraftRequest(2, 61, 0), DraftRequest(1, 63, 0),
                            DraftRequest(3, 5, 1)), k=3, seed=3)
SEVERAL = SpeculatorProblem((DraftRequest(4, 10, 0), DraftRequest(3, 30, 1),
                             DraftRequest(1, 0, 0)), k=3, num_modules=3, seed=2)


@dataclass(frozen=True)
class MethodMutation:
    name: str
    cls: str  # class in `module`
    method: str
    old: str
    new: str
    count: int
    what: str
    module: str = MM


@contextlib.contextmanager
def planted_method(m: MethodMutation):
    """vLLM's method `m.cls.m.method` with one line mutated, for the duration of the block."""
    mod = importlib.import_module(m.module)
    cls = getattr(mod, m.cls)
    src = textwrap.dedent(inspect.getsource(getattr(cls, m.method)))
    found = src.count(m.old)
    assert found == m.count, (f"mutation {m.name} expects {m.count} occurrence(s) of {m.old!r} in "
                              f"vLLM's {m.cls}.{m.method}, found {found}: update the control")
    namespace: dict = {}
    exec(compile(src.replace(m.old, m.new), f"<planted {m.name} in {m.cls}.{m.method}>", "exec"),
         mod.__dict__, namespace)
    with mock.patch.object(cls, m.method, namespace[m.method]):
        yield


# (mutation, problem, backend, the law that must fail: a substring of its message)
CONTROLS = [
    (Mutation("stale_hidden_state", "_update_draft_inputs_kernel",
              "            hidden_states,\n            mask=mask,\n        )",
              "            hidden_states,\n            mask=mask & (block < 0),\n        )", 1,
              "the fed-back hidden state is not copied for the next step: step >= 2 reads the "
              "state step 1 was given", AR),
     ONE, "vllm.v2.mtp_speculator.interp", "step 2 hidden state"),
    (Mutation("positions_not_advanced", "_update_draft_inputs_kernel",
              "position = tl.minimum(position + 1, max_model_len - 1)",
              "position = tl.minimum(position + 0, max_model_len - 1)", 1,
              "positions stay put from step 2 on (seq_lens still advance)", AR),
     ONE, "vllm.v2.mtp_speculator.interp", "step 2 position"),
    (Mutation("seq_len_not_clamped", "_update_draft_inputs_kernel",
              "seq_len = tl.minimum(seq_len + 1, max_model_len)", "seq_len = seq_len + 1", 1,
              "seq_lens run past max_model_len from step 2 on (out-of-range KV slots)", AR),
     AT_CAP, "vllm.v2.mtp_speculator.interp", "step 2 seq_len"),
    (Mutation("first_decode_input_not_the_draft", "_prepare_decode_inputs_kernel",
              "tl.store(input_ids_ptr + req_idx, draft_token)",
              "tl.store(input_ids_ptr + req_idx, draft_token + 1)", 1,
              "step 1 is fed a token other than draft 0", AR),
     ONE, "vllm.v2.mtp_speculator.interp", "step 1 input id"),
    (MethodMutation("pair_unpacked_the_wrong_way", "TargetDependentARSpeculator", "_run_model",
                    "last_hidden_states, hidden_states = ret_hidden_states",
                    "hidden_states, last_hidden_states = ret_hidden_states", 1,
                    "a (logits state, fed-back state) pair read the other way round: drafts "
                    "from the fed-back state, the logits' state fed back", AR),
     ONE_PAIR, "vllm.v2.mtp_speculator.interp", "step 1 input id"),
    (MethodMutation("wrong_module_for_step", "MultiModuleMTPSpeculator", "_generate_drafts",
                    "spec_module_idx=step,", "spec_module_idx=max(step - 1, 0),", 1,
                    "step s runs module s - 1 (the previous step's layer)"),
     SEVERAL, "vllm.v2.multi_module_mtp_speculator.interp", "step 1: module 0, expected 1"),
    (MethodMutation("logits_head_of_module_0", "MultiModuleMTPSpeculator", "_generate_drafts",
                    "spec_step_idx=step,", "spec_step_idx=0,", 1,
                    "every step samples through module 0's LM head (the forward is right)"),
     SEVERAL, "vllm.v2.multi_module_mtp_speculator.interp", "step 2 input ids"),
    (MethodMutation("multi_module_stale_hidden", "MultiModuleMTPSpeculator", "_generate_drafts",
                    "self.hidden_states[:num_tokens] = hidden_states",
                    "self.hidden_states[:0] = hidden_states[:0]", 1,
                    "module s reads the target's hidden states instead of module s - 1's"),
     SEVERAL, "vllm.v2.multi_module_mtp_speculator.interp", "step 1 hidden states"),
    (Mutation("draft_not_shifted_in", "_shift_input_ids_kernel",
              "tl.store(input_ids_ptr + last_token_index, draft_token)",
              "tl.store(input_ids_ptr + last_token_index, draft_token * 0)", 1,
              "the window shifts but token 0 takes the draft's place", MM),
     SEVERAL, "vllm.v2.multi_module_mtp_speculator.interp", "step 1 input ids"),
]


def _backend(name: str):
    b = REGISTRY.get(name)
    if (why := b.unavailable_reason()) is not None:
        pytest.skip(f"{name}: {why}")
    return b


@pytest.mark.parametrize("problem,name", [(ONE, "vllm.v2.mtp_speculator.interp"),
                                          (ONE_PAIR, "vllm.v2.mtp_speculator.interp"),
                                          (AT_CAP, "vllm.v2.mtp_speculator.interp"),
                                          (SEVERAL, "vllm.v2.multi_module_mtp_speculator.interp")],
                         ids=["one", "one_pair", "at_cap", "several"])
def test_clean_v2_speculator_passes_the_control_batch(problem, name):
    f = check_draft_loop(_backend(name), problem)
    assert f.held_to_oracle + f.clamped == len(problem.requests)


@pytest.mark.parametrize("mutation,problem,name,law", CONTROLS, ids=[c[0].name for c in CONTROLS])
def test_planted_draft_loop_bug_is_caught(mutation, problem, name, law, record):
    b = _backend(name)
    plant = planted_method if isinstance(mutation, MethodMutation) else planted
    with plant(mutation), pytest.raises(AssertionError) as e:
        check_draft_loop(b, problem)
    assert law in str(e.value), f"{mutation.name} was caught by another law: {e.value}"
    record(caught=str(e.value)[:200])
