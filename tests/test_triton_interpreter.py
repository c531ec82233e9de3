"""The Triton interpreter session's own guards and canaries.

- Guard: under TRITON_INTERPRET=1 (nox -s triton_interpret) every interpreted backend must be
  available; a session whose Triton backends all skipped would have tested nothing, so this
  fails (not skips) with the backends' own reasons.
- Canaries (strict xfail): the two interpreter limitations the Triton backends work around.
  When a Triton release fixes one, its canary passes unexpectedly and fails the run: then lift
  the workaround (suites/backends/vllm_triton.py: INTERPRETER_BF16, interpreter_context).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET", "") != "1" or importlib.util.find_spec("triton") is None,
    reason="Triton interpreter checks: run under TRITON_INTERPRET=1 (nox -s triton_interpret)")

INTERPRETED = ["triton.fused_experts.interp", "triton.router.interp",
               "vllm.rejection_sampler.interp", "vllm.rejection_sample.interp"]


def test_interpreted_backends_are_available():
    from suites.backends import REGISTRY

    reasons = {n: REGISTRY.get(n).unavailable_reason() for n in INTERPRETED}
    missing = {n: r for n, r in reasons.items() if r is not None}
    assert not missing, f"interpreted Triton backends unavailable under TRITON_INTERPRET=1: {missing}"


def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def dot_kernel(a_ptr, b_ptr, c_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        a = tl.load(a_ptr + i[:, None] * N + i[None, :])
        b = tl.load(b_ptr + i[:, None] * N + i[None, :])
        tl.store(c_ptr + i[:, None] * N + i[None, :], tl.dot(a, b))

    @triton.jit
    def range_kernel(x_ptr, y_ptr, ROWS: tl.constexpr):
        pid = tl.program_id(0)
        for row in tl.range(pid, ROWS, tl.num_programs(0)):
            r = row.to(tl.int64)  # what vLLM's topk_topp_triton kernel does
            tl.store(y_ptr + r, tl.load(x_ptr + r) * 2.0)

    return dot_kernel, range_kernel


@pytest.mark.xfail(strict=True, reason="Triton 3.9 interpreter: bf16 is stored as uint16 and "
                                       "tl.dot multiplies the raw bit patterns")
def test_interpreter_bf16_dot():
    dot_kernel, _ = _kernels()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 16, generator=g).bfloat16()
    b = torch.randn(16, 16, generator=g).bfloat16()
    c = torch.empty(16, 16, dtype=torch.float32)
    dot_kernel[(1,)](a, b, c, 16)
    torch.testing.assert_close(c, a.float() @ b.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.xfail(strict=True, reason="Triton 3.9 interpreter: tl.range yields Python ints, so "
                                       "`row.to(tl.int64)` raises (vLLM's top-k/top-p kernel)")
def test_interpreter_range_values_are_tensors():
    _, range_kernel = _kernels()
    x = torch.arange(6, dtype=torch.float32)
    y = torch.zeros(6)
    range_kernel[(2,)](x, y, 6)
    torch.testing.assert_close(y, 2 * x)
