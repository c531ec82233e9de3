"""A vLLM name an adapter reaches for that the installed release lacks is "not in this
release" (suites/backends/base.py not_in_release / reason_of), never a crash at collection and
never a pass; any other error is raised on."""

from __future__ import annotations

import types

import pytest

from suites.backends.base import Backend, not_in_release, reason_of


class _Reaching(Backend):
    def __init__(self, exc):
        super().__init__(name="vllm.fake", kind="router")
        self.exc = exc

    def unavailable_reason(self):
        raise self.exc


def test_import_of_a_missing_vllm_name_is_not_in_this_release():
    exc = ImportError("cannot import name 'cpu_has_amx_fp8' from 'vllm._custom_ops' (/x.py)",
                      name="vllm._custom_ops")
    why = reason_of(_Reaching(exc))
    assert why.startswith("not in this release: vLLM ") and "cpu_has_amx_fp8" in why


def test_missing_vllm_module_and_attribute_on_a_vllm_module():
    assert not_in_release(ModuleNotFoundError("No module named 'vllm.v1.worker.gpu'",
                                              name="vllm.v1.worker.gpu"))
    mod = types.ModuleType("vllm.model_executor.layers.fused_moe.router")
    try:
        mod.cpu_router  # noqa: B018
    except AttributeError as e:
        assert "cpu_router" in not_in_release(e)


@pytest.mark.parametrize("exc", [
    ImportError("No module named 'scipy'", name="scipy"),  # our own dependency: a real error
    AttributeError("'NoneType' object has no attribute 'shape'"),  # an adapter bug
    RuntimeError("vllm kernel crashed"),
])
def test_other_errors_are_raised_not_hidden(exc):
    """Negative control: only a missing vLLM name becomes a skip reason."""
    assert not_in_release(exc) is None
    with pytest.raises(type(exc)):
        reason_of(_Reaching(exc))
