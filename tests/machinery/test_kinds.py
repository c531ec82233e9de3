"""suites/kinds.py is the one table of kinds: everything it names exists, every backend's kind
is in it, every kind is tested by some suite, and the generic fixture and the selection follow
it (no kind silently without tests, no backend silently without a kind)."""

from __future__ import annotations

import importlib
import pathlib

import pytest

from suites.backends import REGISTRY
from suites.kinds import BY_FIXTURE, FAMILIES, KINDS, kind, select_backends

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _resolve(ref: str):
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


@pytest.mark.parametrize("k", KINDS, ids=lambda k: k.name)
def test_everything_a_kind_names_exists(k):
    for ref in (k.base, k.problems, k.oracle, *k.properties):
        if ":" in ref and " " not in ref:
            assert _resolve(ref) is not None, (k.name, ref)
    if ":" in k.tolerance and " " not in k.tolerance:
        _resolve(k.tolerance)


def test_every_backend_has_a_kind_and_derives_from_its_base():
    for name in REGISTRY.names():
        b = REGISTRY.get(name)
        k = kind(b.kind)
        assert isinstance(b, _resolve(k.base)), (name, k.base)


@pytest.mark.parametrize("k", KINDS, ids=lambda k: k.name)
def test_every_kind_is_tested_by_a_suite(k):
    """Some test under suites/ asks for the kind's fixture (or a family holding the kind)."""
    names = [k.fixture] + [f for f, kinds in FAMILIES.items() if k.name in kinds]
    text = "\n".join(p.read_text() for p in (ROOT / "suites").rglob("test_*.py"))
    assert any(f"({n}" in text or f" {n}," in text or f"{n})" in text for n in names), names


def test_every_backend_states_its_kinds_capabilities():
    for name in REGISTRY.names():
        b = REGISTRY.get(name)
        missing = [c for c in kind(b.kind).capabilities if not hasattr(b, c)]
        assert not missing, (name, missing)


def test_a_kinds_tests_carry_its_markers(tmp_path):
    """A test that asks for a kind's fixture is selected by the kind's markers (-m moe) though
    its module names none: the root conftest adds them from the table."""
    import os
    import shutil
    import subprocess
    import sys

    folder = ROOT / "tests" / f"_generated_kinds_{os.getpid()}"
    folder.mkdir()
    try:
        (folder / "test_unmarked.py").write_text(
            "def test_uses_a_router(router_backend):\n    pass\n\n"
            "def test_uses_no_backend():\n    pass\n")
        r = subprocess.run([sys.executable, "-m", "pytest", str(folder), "--collect-only", "-q",
                            "-m", "moe", "-p", "no:cacheprovider"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = r.stdout + r.stderr
    assert "test_uses_a_router[" in out and "test_uses_no_backend" not in out, out[-2000:]


def test_fixture_names_are_unique_and_families_name_kinds():
    assert len(BY_FIXTURE) == len(KINDS)
    for fixture, kinds in FAMILIES.items():
        assert fixture.endswith("_backend")  # the ledger and the run counter read *_backend
        for name in kinds:
            kind(name)


def test_unknown_kind_is_an_error_not_an_empty_selection():
    with pytest.raises(KeyError, match="unknown kind 'experst'"):
        select_backends("experst", patterns=None, device="cpu")


def test_selection_leaves_reference_and_interpreter_backends_to_who_asks(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    plain = [n for n, _ in select_backends("experts", patterns=None, device="cpu")]
    assert plain and not any(n.startswith("reference.") or n.endswith(".interp") for n in plain)
    asked = [n for n, _ in select_backends("experts", patterns=["*.interp"], device="cpu")]
    assert asked and all(n.endswith(".interp") for n in asked)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    on = [n for n, _ in select_backends("experts", patterns=None, device="cpu")]
    assert set(asked) <= set(on)
    ref = [n for n, _ in select_backends("experts", patterns=None, device="cpu",
                                         include_reference=True)]
    assert "reference.experts" in ref


def test_an_unavailable_backend_is_listed_with_its_reason(monkeypatch):
    """Never dropped silently: a skip mark carrying the backend's own one-line reason."""
    b = REGISTRY.get("cpu_fused_moe.vec")
    monkeypatch.setattr(type(b), "unavailable_reason", lambda self: "planted: no such kernel")
    marks = dict(select_backends("experts", patterns=["cpu_fused_moe.vec"], device="cpu"))
    (skip,) = [m for m in marks["cpu_fused_moe.vec"] if m.name == "skip"]
    assert skip.kwargs["reason"] == "cpu_fused_moe.vec: planted: no such kernel"
