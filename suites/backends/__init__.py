"""The only package that imports vLLM (or any other implementation under test). Suites ask for
a backend by name:

    from suites.backends import REGISTRY
    b = REGISTRY.get("cpu_fused_moe.vec")
    if (why := b.unavailable_reason()): pytest.skip(why)

Adapters live by implementer: suites/backends/oracle.py (the fp64 oracles as backends, always
available), suites/backends/vllm/ (vLLM's kernels, layers, samplers and engine; its public
shared helpers in vllm/common.py). Importing this package imports every module below it, so an
adapter file registers its backends by existing: none can be silently absent
(tests/machinery/test_backend_seam.py checks that each adapter module registered some).
vLLM itself is imported lazily, inside the backends, so listing and skipping never needs it.
"""

import importlib
import pkgutil

from suites.backends.base import (
    REGISTRY,
    Backend,
    ExpertsBackend,
    MoEBlockBackend,
    RouterBackend,
    UnsupportedShape,
)

# Modules that hold shared code, not adapters (they register nothing)
HELPER_MODULES = frozenset({
    "suites.backends.base",
    "suites.backends.vllm.common",
    "suites.backends.vllm.cuda_op_standins",
    "suites.backends.vllm.releases",
    "suites.backends.vllm.triton_standins",
})


def adapter_modules() -> list[str]:
    """Every module under suites/backends (recursively), helpers excluded."""
    return sorted(m.name for m in pkgutil.walk_packages(__path__, prefix=__name__ + ".")
                  if not m.ispkg and m.name not in HELPER_MODULES)


for _name in adapter_modules():
    importlib.import_module(_name)

__all__ = ["REGISTRY", "Backend", "ExpertsBackend", "MoEBlockBackend", "RouterBackend",
           "UnsupportedShape", "adapter_modules"]
