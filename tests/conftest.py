"""Fixtures shared by the suite's own tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def oracle_one_thread():
    """The tiny-model oracle is thousands of small fp64 ops; intra-op threads only spin on a
    shared CPU. Modules that run it use this (pytestmark usefixtures)."""
    from suites.e2e.judge import one_thread

    with one_thread():
        yield
