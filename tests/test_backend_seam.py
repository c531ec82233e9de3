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
