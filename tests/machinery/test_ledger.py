"""The known-failure ledger predicts exactly what fails (suites/known_failures.py, its
docstring): every entry names its failure, every mark is a strict xfail with that
failure as `raises`, a different failure in a ledgered case fails, and cases outside an entry's
conditions gate. Each test here fails if the corresponding rule is taken away."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

import suites.known_failures as kf
from conftest import ledger_entry
from suites.backends.base import QuarantinedInput, UnsupportedShape
from suites.backends.vllm.engine import EngineError
from suites.known_failures import LEDGER, KnownFailure, ledger_problems, marking
from suites.mtp.test_rejection_random import RANDOM_CASES
from suites.properties import experts as experts_properties

if sys.version_info < (3, 11):  # pragma: no cover (pytest's own backport on 3.10)
    from exceptiongroup import ExceptionGroup

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENTRIES = {e.id: e for e in LEDGER}
CASES = {c.name: c for c in RANDOM_CASES}
VALID = dict(id="x", kind="wrong", backends=("b",), summary="s", vllm="v", raises=AssertionError,
             tests=("test_x",))


# ----------------------------------------------------------------------------- invariants


def test_every_entry_names_its_failure_and_marks_strict():
    assert LEDGER
    for e in LEDGER:
        assert ledger_problems(e) == [], e.id
        assert e.raises and all(issubclass(t, BaseException) for t in e.raises), e.id
        mark = e.xfail().mark
        assert mark.kwargs["strict"] is True, e.id
        assert isinstance(mark.kwargs["raises"], pytest.RaisesExc), e.id
        assert e.id in mark.kwargs["reason"], e.id
    assert len({e.id for e in LEDGER}) == len(LEDGER)


@pytest.mark.parametrize(("change", "complaint"), [
    (dict(raises=()), "no `raises`"),
    (dict(raises=Exception), "accepts any failure"),
    (dict(raises=BaseException), "accepts any failure"),
    (dict(raises=ValueError), "would also accept the suite's own refusals"),
    (dict(raises=UnsupportedShape), "would also accept the suite's own refusals"),
    (dict(raises=(AssertionError, ExceptionGroup)), "exception group"),
    (dict(raises="AssertionError"), "not an exception type"),
    (dict(kind="flaky"), "kind 'flaky'"),
    (dict(match="(unclosed"), "is not a regex"),
    (dict(kind="region", tests=()), "names the check region"),
    (dict(params={"k": [1, 2]}), "tuple of values or a predicate"),
], ids=lambda v: v if isinstance(v, str) else ",".join(v))
def test_an_entry_that_cannot_predict_exactly_is_refused(change, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        KnownFailure(**{**VALID, **change})


def test_a_generic_type_that_covers_refusals_needs_vllms_message():
    e = KnownFailure(**{**VALID, "raises": ValueError, "match": r"^vLLM says no$"})
    assert e.predicts(ValueError("vLLM says no"))
    assert not e.predicts(UnsupportedShape("backend: dtype not supported"))
    assert not e.predicts(ValueError("vLLM says something else"))


def test_prediction_of_groups_and_messages():
    e = KnownFailure(**{**VALID, "raises": (AssertionError, QuarantinedInput)})
    assert e.predicts(AssertionError()) and e.predicts(QuarantinedInput())
    assert not e.predicts(RuntimeError()) and not e.predicts(KeyError())
    assert e.predicts(ExceptionGroup("2 distinct", [AssertionError(), QuarantinedInput()]))
    assert not e.predicts(ExceptionGroup("2 distinct", [AssertionError(), TypeError()]))
    crash = dataclasses.replace(e, raises=RuntimeError, match=kf.UNWRITTEN_TOP_K)
    assert crash.predicts(RuntimeError("selected index k out of range"))
    assert not crash.predicts(RuntimeError("out of memory"))
    assert crash.expected.matches(RuntimeError("selected index k out of range"))
    assert not crash.expected.matches(RuntimeError("out of memory"))


def test_two_entries_predicting_one_case_is_an_error(monkeypatch):
    entry = ENTRIES["cpu-expand-batch-to-tokens-lost-write"]
    monkeypatch.setattr(kf, "LEDGER", (*LEDGER, dataclasses.replace(entry, id="duplicate")))
    with pytest.raises(ValueError, match="both predict it"):
        marking("vllm.rejection_sampler", {"batch": "mixed"}, "test_greedy_equals_oracle")


def test_every_repro_is_strict_with_raises():
    """suites/test_known_failures.py: each repro's xfail names its failure."""
    import suites.test_known_failures as repros

    tests = [f for n, f in vars(repros).items() if n.startswith("test_") and callable(f)]
    assert len(tests) >= 9
    for f in tests:
        inactive = [m for m in getattr(f, "pytestmark", []) if m.name == "ledger_inactive"]
        if inactive:  # its entries' releases exclude the vLLM installed
            assert not any(ENTRIES[i].applies_to(kf.installed_release())
                           for i in inactive[0].args), f.__name__
            continue
        marks = [m for m in getattr(f, "pytestmark", []) if m.name == "xfail"]
        assert len(marks) == 1, f.__name__
        assert marks[0].kwargs.get("strict") is True, f.__name__
        assert isinstance(marks[0].kwargs.get("raises"), pytest.RaisesExc), f.__name__


@pytest.mark.parametrize("releases, version, applies", [
    (("0.30.0",), "0.30.0", True), (("0.30.0",), "0.30.0.post1", True),
    (("0.30.0",), "0.30.1", False), (("0.30.0",), "0.31.0rc1", False),
    (("0.27.0..0.30.0", "0.31.0.."), "0.29.0", True),
    (("0.27.0..0.30.0", "0.31.0.."), "0.30.0", False),
    (("0.27.0..0.30.0", "0.31.0.."), "0.33.1.dev4+gabcdef", True),
    (("0.27.0..0.30.0", "0.31.0.."), "0.26.0", False),
    ((), "0.1.0", True), (("0.30.0",), None, True),
])
def test_an_entry_applies_to_the_releases_a_sweep_saw_it_in(releases, version, applies):
    assert KnownFailure(**VALID, releases=releases).applies_to(version) is applies


@pytest.mark.parametrize("releases, complaint", [
    ("0.30.0", "a tuple of ranges"), (("0.31.0..0.30.0",), "empty range"),
    (("zero..",), "not a version"),
])
def test_malformed_release_ranges_are_refused(releases, complaint):
    with pytest.raises(ValueError, match=complaint):
        KnownFailure(**VALID, releases=releases)


@pytest.mark.parametrize("release, expected", [
    ("0.29.0", "cpu-expand-batch-to-tokens-lost-write"),
    ("0.30.0", "cpu-v1-sampler-dispatchers-skip-cpu-kernels"),
    ("0.31.0", "cpu-expand-batch-to-tokens-lost-write"),
])
def test_the_release_installed_picks_the_entry_that_predicts_a_case(monkeypatch, release,
                                                                    expected):
    """0.30.0's sampler raises before the lost write can show: one prediction per release."""
    monkeypatch.setattr(kf, "installed_release", lambda: release)
    found = marking("vllm.rejection_sampler", {"batch": "mixed"}, "test_greedy_equals_oracle")
    assert found is not None and found.id == expected


def test_outside_its_releases_an_entry_marks_nothing(monkeypatch):
    """Negative control: a defect fixed in 0.31.0 must not make 0.32.0's cases xfail (they
    gate), and a defect that came in with 0.31.0 must not excuse 0.30.0's failures."""
    monkeypatch.setattr(kf, "installed_release", lambda: "0.32.0")
    assert marking("vllm.rejection_sample", {}, "test_batch_without_drafts") is None
    monkeypatch.setattr(kf, "installed_release", lambda: "0.26.0")
    assert marking("vllm.rejection_sampler", {"batch": "mixed"},
                   "test_greedy_equals_oracle") is None


# ----------------------------------------------------------------------------- narrowing


def _item(test: str, **params) -> SimpleNamespace:
    """What the root conftest's ledger_entry reads from a collected item."""
    return SimpleNamespace(callspec=SimpleNamespace(params=params), originalname=test, name=test,
                           nodeid=f"x::{test}", get_closest_marker=lambda name: None)


def test_an_empty_parametrization_reaches_no_ledger_lookup():
    """`nox -s triton_interpret -- -m moe` stopped at collection with an INTERNALERROR
    (TypeError: expected str ... not NotSetType in known_failures.matches): a kind whose
    selection is empty parametrizes its fixture with NOTSET, which reached the ledger."""
    from _pytest.compat import NOTSET

    assert ledger_entry(_item("test_matches_oracle", experts_backend=NOTSET)) is None
    assert ledger_entry(_item("test_matches_oracle", experts_backend=None)) is None


def test_a_selection_that_matches_no_backend_collects_cleanly(tmp_path):
    """Through pytest itself: every suite collected with a --backend glob that matches no
    backend (every kind's parametrization empty) collects without an internal error."""
    r = subprocess.run([sys.executable, "-m", "pytest", "suites", "--collect-only", "-q",
                        "-m", "moe", "--backend=no-such-backend*", "-p", "no:cacheprovider"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "SUITE_EXPECT_VLLM": "0"})
    out = r.stdout + r.stderr
    assert "INTERNALERROR" not in out and r.returncode in (0, 5), out[-3000:]


UNTOUCHED = [  # what the lost write cannot touch: all greedy, or no draft token at all
    ("test_greedy_equals_oracle", {"batch": "all-greedy"}),
    ("test_greedy_vocabulary_edges", {"vocab_size": 257, "edge": "last"}),
    ("test_all_requests_without_drafts_but_one", {}),
    ("test_batch_without_drafts", {}),
]
TOUCHED = [  # every batch holds a non-greedy request and a draft token
    ("test_greedy_equals_oracle", {"batch": "mixed"}, AssertionError),
    ("test_random_verification_law", {"case": CASES["q-given"]}, AssertionError),
    ("test_random_verification_law", {"case": CASES["top-p"]}, AssertionError),
    ("test_random_verification_law", {"case": CASES["top-k"]}, RuntimeError),
    ("test_target_processing", {"case": CASES["top-p"]}, AssertionError),
    ("test_target_processing", {"case": CASES["temperature-top-k-top-p"]}, RuntimeError),
    ("test_position0_acceptance_independent_of_depth", {}, AssertionError),
    ("test_mixed_batch", {"draft_probs_known": True}, RuntimeError),
    ("test_seeded_requests_deterministic_and_reorderable", {"draft_probs_known": False},
     RuntimeError),
]


@pytest.mark.parametrize(("test", "params"), UNTOUCHED, ids=[t for t, _ in UNTOUCHED])
def test_sampler_cases_the_lost_write_cannot_touch_gate(test, params):
    assert ledger_entry(_item(test, sampler_backend="vllm.rejection_sampler", **params)) is None


@pytest.mark.parametrize(("test", "params", "raises"), TOUCHED,
                         ids=[f"{t}-{next(iter(p.values()), '')}" for t, p, _ in TOUCHED])
def test_sampler_cases_the_lost_write_touches_are_predicted(test, params, raises):
    e = ledger_entry(_item(test, sampler_backend="vllm.rejection_sampler", **params))
    assert e is not None and e.raises == (raises,), e
    assert e.id.startswith("cpu-expand-batch-to-tokens-lost-write")
    for other in ("vllm.rejection_sample", "vllm.rejection_sampler.interp",
                  "vllm.rejection_sampler.cuda"):  # only the CPU forward path has the bug
        assert ledger_entry(_item(test, sampler_backend=other, **params)) is None


def test_new_tests_of_a_ledgered_backend_gate():
    """An entry marks the tests it names, nothing else: a test added later gates."""
    for backend in ("vllm.rejection_sampler", "vllm.qwen3_next_moe_block.ep2", "vllm.engine",
                    "cpu_fused_moe.vec", "cpu_router"):
        assert ledger_entry(_item("test_added_later", x_backend=backend, layout="tp2-ep")) is None


@pytest.mark.parametrize("routing", ["one_rank", "router", "split"])
def test_ep_layer_forwards_are_predicted_wrong_or_refused(routing):
    for test in ("test_ep_block_matches_oracle", "test_ep_remote_tokens_add_zero"):
        e = ledger_entry(_item(test, ep_block_backend="vllm.deepseek_v3_moe_block.ep2",
                               placement="round_robin", routing=routing))
        assert e is not None and set(e.raises) == {AssertionError, QuarantinedInput}, e
        assert not e.predicts(RuntimeError("an EP worker died")), e  # EPWorkerError
        assert not e.predicts(UnsupportedShape("refused by the adapter")), e
    # the layout is right (placement), EPLB does not build on CPU (redundant experts skip),
    # the CUDA blocks are not ledgered
    for test, backend in (("test_ep_placement", "vllm.deepseek_v3_moe_block.ep2"),
                          ("test_ep_redundant_experts", "vllm.deepseek_v3_moe_block.ep2"),
                          ("test_ep_block_matches_oracle", "vllm.deepseek_v3_moe_block.ep2.cuda")):
        assert ledger_entry(_item(test, ep_block_backend=backend, placement="linear",
                                  routing=routing)) is None, (test, backend)


# ----------------------------------------------------------------------------- pytest's verdicts

GENERATED = '''
import pytest

from suites.backends.base import UnsupportedShape
from suites.backends.vllm.engine import EngineError
from suites.mtp.test_rejection_random import RANDOM_CASES

CASES = {c.name: c for c in RANDOM_CASES}
SEGFAULT = ("engine raised: vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered "
            "an issue\\n--- crash lines ---\\n!!!!!!! Segfault encountered !!!!!!!\\n"
            'File "/tmp/vllm/csrc/cpu/cpu_fused_moe.cpp", line 242, in fused_moe_impl')


@pytest.mark.parametrize("fake_backend", ["vllm.rejection_sampler"])
@pytest.mark.parametrize("batch", ["all-greedy", "mixed"])
def test_greedy_equals_oracle(fake_backend, batch):
    raise AssertionError("3 / 4 greedy requests differ from the oracle")


@pytest.mark.parametrize("fake_backend", ["vllm.rejection_sampler"])
@pytest.mark.parametrize("what", ["wrong", "renamed", "refused", "fixed", "group", "mixed-group"])
def test_position0_acceptance_independent_of_depth(fake_backend, what):
    if what == "wrong":
        raise AssertionError("acceptance at position 0 vs closed form rejected")
    if what == "renamed":
        raise ImportError("cannot import name 'expand_batch_to_tokens'")
    if what == "refused":
        raise UnsupportedShape("vllm.rejection_sampler: refused by the suite")
    if what == "group":
        raise ExceptionGroup("Hypothesis found 2 distinct failures", [AssertionError("a"),
                                                                      AssertionError("b")])
    if what == "mixed-group":
        raise ExceptionGroup("Hypothesis found 2 distinct failures", [AssertionError("a"),
                                                                      TypeError("b")])


@pytest.mark.parametrize("fake_backend", ["vllm.rejection_sampler"])
@pytest.mark.parametrize("case", [CASES["top-k"]], ids=["top-k"])
@pytest.mark.parametrize("what", ["unwritten-top-k", "other-runtime-error"])
def test_target_processing(fake_backend, case, what):
    if what == "unwritten-top-k":
        raise RuntimeError("selected index k out of range")
    raise RuntimeError("Expected all tensors to be on the same device")


@pytest.mark.parametrize("fake_backend", ["vllm.engine"])
@pytest.mark.parametrize("layout", ["tp2-ep", "tp2"])
@pytest.mark.parametrize("what", ["segfault", "hung"])
def test_engine_runs_the_layout_asked_for(fake_backend, layout, what):
    if what == "segfault":
        raise EngineError(SEGFAULT)
    raise EngineError("engine hung: no answer to generate in 600s")
'''

EXPECTED = {
    "test_greedy_equals_oracle[mixed-vllm.rejection_sampler]": "XFAIL",
    "test_greedy_equals_oracle[all-greedy-vllm.rejection_sampler]": "FAILED",  # gates
    "test_position0_acceptance_independent_of_depth[wrong-vllm.rejection_sampler]": "XFAIL",
    "test_position0_acceptance_independent_of_depth[renamed-vllm.rejection_sampler]": "FAILED",
    "test_position0_acceptance_independent_of_depth[refused-vllm.rejection_sampler]": "FAILED",
    "test_position0_acceptance_independent_of_depth[fixed-vllm.rejection_sampler]": "FAILED",
    "test_position0_acceptance_independent_of_depth[group-vllm.rejection_sampler]": "XFAIL",
    "test_position0_acceptance_independent_of_depth[mixed-group-vllm.rejection_sampler]":
        "FAILED",
    "test_target_processing[unwritten-top-k-top-k-vllm.rejection_sampler]": "XFAIL",
    "test_target_processing[other-runtime-error-top-k-vllm.rejection_sampler]": "FAILED",
    "test_engine_runs_the_layout_asked_for[segfault-tp2-ep-vllm.engine]": "XFAIL",
    "test_engine_runs_the_layout_asked_for[hung-tp2-ep-vllm.engine]": "FAILED",
    "test_engine_runs_the_layout_asked_for[segfault-tp2-vllm.engine]": "FAILED",  # gates
    "test_engine_runs_the_layout_asked_for[hung-tp2-vllm.engine]": "FAILED",
}


def test_pytest_fails_every_case_but_the_predicted_failure():
    """Generated tests named like ledgered ones, run through pytest with this repo's conftest
    (its collection hook marks them from the real ledger): the predicted failure is xfail; an
    unexpected pass, another exception (an API rename, the suite's own refusal, another
    runtime error, another engine failure, a group with another exception) fails, and so does
    every case outside the entry's conditions."""
    folder = ROOT / "tests" / f"_generated_ledger_{os.getpid()}"
    folder.mkdir()
    try:
        (folder / "test_ledger_generated.py").write_text(textwrap.dedent(GENERATED))
        r = subprocess.run([sys.executable, "-m", "pytest", str(folder), "-q", "-rA", "-p",
                            "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "SUITE_EXPECT_VLLM": "0"}, timeout=300)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = r.stdout + r.stderr
    got = dict(m.group(2, 1) for m in re.finditer(
        r"^(PASSED|FAILED|XFAIL|XPASS|ERROR|SKIPPED)\S* \S+::(test_\S+)", out, re.M))
    assert got == EXPECTED, out[-6000:]
    assert "[XPASS(strict)]" in out, out[-6000:]  # "fixed" fails as an unexpected pass


# ----------------------------------------------------------------------------- determinism


def test_poisoned_unwritten_memory_makes_a_lost_write_wrong_every_run():
    """A lost write like expand_batch_to_tokens' (the result written to a converted copy) reads
    NaN / int max inside the poison, never leftovers that happen to be right; the global
    deterministic settings come back as they were."""
    from suites.backends.vllm.rejection_sampler import poisoned_unwritten_memory

    def lost_write(x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty(x.numel())
        out.to(torch.int64).copy_(x)  # written to the copy only
        return out

    before = (torch.are_deterministic_algorithms_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    for _ in range(3):
        with poisoned_unwritten_memory():
            assert torch.isnan(lost_write(torch.arange(5.0))).all()
            assert (lost_write(torch.arange(5, dtype=torch.int32))
                    == torch.iinfo(torch.int32).max).all()
    assert (torch.are_deterministic_algorithms_enabled(),
            torch.utils.deterministic.fill_uninitialized_memory) == before


def test_cpu_sampler_backends_poison_and_cuda_does_not():
    from suites.backends import REGISTRY

    for name in REGISTRY.names(kind="rejection_sampler"):
        b = REGISTRY.get(name)
        if b.is_reference:
            continue
        assert b.poison_unwritten == (b.device != "cuda"), name


# ----------------------------------------------------------------------------- engine failures


def test_engine_error_carries_the_crash_from_the_whole_log(tmp_path):
    """The engine quotes its log's tail, which a worker's segfault report has scrolled out of;
    the parallel-engine tests add the crash lines of the whole log, and only with them is the
    error the one cpu-ep-engine-crashes-at-first-forward predicts."""
    from suites.e2e.test_parallel_engine import crash_excerpt

    log = tmp_path / "engine.log"
    log.write_text("\n".join([
        "(VllmWorker TP1 pid=1) INFO loading",
        "!!!!!!! Segfault encountered !!!!!!!",
        '  File "/tmp/vllm/csrc/cpu/cpu_fused_moe.cpp", line 242, in fused_moe_impl<...>',
        "(EngineCore pid=2) ERROR [multiproc_executor.py:315] Worker proc VllmWorker-0 died "
        "unexpectedly (exit code: None), shutting down executor.",
        *["(EngineCore pid=2) INFO filler"] * 500,
        "(EngineCore pid=2) ERROR [core.py:1512] RuntimeError: cancelled"]))
    error = (f"[tp2-ep] engine raised:\nvllm.v1.engine.exceptions.EngineDeadError: EngineCore "
             f"encountered an issue.\n--- engine log tail ({log}) ---\n...filler\nRuntimeError: "
             f"cancelled")
    entry = ENTRIES["cpu-ep-engine-crashes-at-first-forward"]
    assert not entry.predicts(EngineError(error))
    enriched = error + crash_excerpt(error)
    assert "cpu_fused_moe.cpp" in enriched and "died unexpectedly" in enriched
    assert entry.predicts(EngineError(enriched))
    assert not ENTRIES["cpu-dp-ep-all-gatherv-not-implemented"].predicts(EngineError(enriched))


# ----------------------------------------------------------------------------- no emulated EP


def test_cpu_experts_kernels_refuse_an_expert_map_rather_than_apply_it():
    """cpu_fused_moe and fused_experts_cpu take no expert_map: the adapters have no
    expert-parallel mode and refuse a map; applying it in Python would make EP sharding green
    for an op vLLM never shards (its CPU layer hands the kernel global ids)."""
    from fixtures.strategies import ExpertsProblem
    from suites.backends import REGISTRY
    from suites.moe import checks

    p = ExpertsProblem(T=9, H=64, I=64, E=4, K=2, dtype="bfloat16", routing="uniform", seed=1)
    ran = []
    for name in ("cpu_fused_moe.vec", "fused_experts_cpu"):
        b = REGISTRY.get(name)
        assert not b.supports_expert_map, name
        if b.unavailable_reason() is None:
            with pytest.raises(UnsupportedShape, match="takes no expert_map"):
                experts_properties.ep_sharding(checks.FLOAT_EXPERTS, b, p, 2)
            ran.append(name)
    if not ran:
        pytest.skip(f"cpu_fused_moe.vec: {REGISTRY.get('cpu_fused_moe.vec').unavailable_reason()}")
