"""Which backends a benchmark times: the implementations under test of a kind on this device
(filtered by --backend globs), the fp64 oracles only with --bench-include-reference. An
unavailable backend is still listed, marked skip with its own reason (never dropped silently)."""

from __future__ import annotations

import pytest


def backends(config: pytest.Config, kind: str, include_reference: bool) -> list[tuple[str, list]]:
    """(name, marks) per backend a benchmark times: suites/kinds.py select_backends, the one
    selection the suites use too."""
    from suites.kinds import select_backends

    return select_backends(kind, patterns=config.getoption("--backend", default=None) or None,
                           device=config.getoption("--device", default="cpu"),
                           include_reference=include_reference)


def parametrize_cases(metafunc: pytest.Metafunc, argname: str, kind: str) -> None:
    """One case (backend, shape, dtype, tokens) per backend of `kind` x the bench settings'
    shapes, dtypes and token counts, tokens innermost (consecutive cases share packed weights)."""
    from suites.bench.conftest import settings_of

    if argname not in metafunc.fixturenames:
        return
    s = settings_of(metafunc.config)
    params = [pytest.param((name, shape, dtype, tokens), marks=marks,
                           id=f"{name}-{shape}-{dtype}-T{tokens}")
              for name, marks in backends(metafunc.config, kind, s.include_reference)
              for shape in s.shapes for dtype in s.dtypes for tokens in s.tokens]
    metafunc.parametrize(argname, params)
