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


def parametrize_cases(metafunc: pytest.Metafunc, argname: str, kind: str) -> None:
    """One case (backend, shape, dtype, tokens) per backend of `kind` x the bench settings'
    shapes, dtypes and token counts, tokens innermost (consecutive cases share packed weights)."""
    from suites.bench.conftest import settings

    if argname not in metafunc.fixturenames:
        return
    s = settings(metafunc.config)
    params = [pytest.param((name, shape, dtype, tokens), marks=marks,
                           id=f"{name}-{shape}-{dtype}-T{tokens}")
              for name, marks in backends(metafunc.config, kind, s.include_reference)
              for shape in s.shapes for dtype in s.dtypes for tokens in s.tokens]
    metafunc.parametrize(argname, params)
