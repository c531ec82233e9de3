"""The only package that imports vLLM. Suites ask for a backend by name:

    from suites.backends import REGISTRY
    b = REGISTRY.get("cpu_fused_moe.vec")
    if (why := b.unavailable_reason()): pytest.skip(why)

Importing this package registers every backend; vLLM itself is imported lazily, inside the
backends, so listing and skipping never needs it.
"""

from suites.backends import (  # noqa: F401  (registration)
    engine,
    reference,
    rejection_sampler,
    vllm_cpu,
    vllm_cpu_quant,
    vllm_ep_layer,
    vllm_layer,
    vllm_mtp,
    vllm_quant_layer,
    vllm_triton,
)
from suites.backends.base import (
    REGISTRY,
    Backend,
    ExpertsBackend,
    MoEBlockBackend,
    RouterBackend,
    UnsupportedShape,
)

__all__ = ["REGISTRY", "Backend", "ExpertsBackend", "MoEBlockBackend", "RouterBackend",
           "UnsupportedShape"]
