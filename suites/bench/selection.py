"""Which backends a benchmark times: the implementations under test of a kind on this device
(filtered by --backend globs), the fp64 oracles only with --bench-include-reference. An
unavailable backend is still listed, marked skip with its own reason (never dropped silently)."""

from __future__ import annotations

import fnmatch

import pytest


def backends(config: pytest.Config, kind: str, include_reference: bool) -> list[tuple[str, list]]:
    from suites.backends import REGISTRY

    patterns = config.getoption("--backend", default=None) or None
    device = config.getoption("--device", default="cpu")
    out = []
    for name in REGISTRY.names(kind=kind, device=device):
        b = REGISTRY.get(name)
        if b.is_reference and not include_reference:
            continue
        if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
            continue
        marks = [pytest.mark.gpu] if b.device == "cuda" else []
        reason = b.unavailable_reason()
        if reason:
            marks.append(pytest.mark.skip(reason=f"{name}: {reason}"))
        out.append((name, marks))
    return out
