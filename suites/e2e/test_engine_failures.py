"""A broken or hung engine fails its tests with the engine's own log, and the session goes on.

Each case uses a fresh backend instance (not the session's cached engines) with a short timeout.
"""

from __future__ import annotations

import json
import time

import pytest

from suites.e2e.conftest import FIXTURE
from tools.train_tiny_mtp import CONFIG

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # starts vLLM in a child (~15 s)


def _fresh(engine_backend, **kw):
    return type(engine_backend)(name=f"{engine_backend.name}.probe", device=engine_backend.device,
                                model_runner=engine_backend.model_runner, **kw)


def test_engine_that_fails_to_start_reports_its_log(engine_backend, tmp_path):
    from suites.backends.vllm.engine import EngineConfig, EngineError, EngineRequest

    # A checkpoint whose config names an architecture vLLM does not have.
    cfg = dict(CONFIG, architectures=["NoSuchArchitectureForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").symlink_to(FIXTURE / "model.safetensors")
    b = _fresh(engine_backend, start_timeout=240.0)
    try:
        with pytest.raises(EngineError) as e:
            b.generate(EngineConfig(model=str(tmp_path)), [EngineRequest((1, 2, 3), 4)])
        msg = str(e.value)
        assert "engine failed to start" in msg and "engine log tail" in msg, msg
        assert "NoSuchArchitectureForCausalLM" in msg, msg
        # The failure is remembered: asking again fails at once instead of restarting.
        t0 = time.monotonic()
        with pytest.raises(EngineError):
            b.generate(EngineConfig(model=str(tmp_path)), [EngineRequest((1, 2, 3), 4)])
        assert time.monotonic() - t0 < 1.0
    finally:
        b.close()


def test_hung_engine_is_killed_with_its_log(engine_backend):
    from suites.backends.vllm.engine import EngineConfig, EngineError, EngineRequest

    # 1 s is far less than vLLM needs to import and start: the parent must give up, kill the
    # child's process group and raise with the log tail, without waiting longer.
    b = _fresh(engine_backend, start_timeout=1.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(EngineError) as e:
            b.generate(EngineConfig(model=str(FIXTURE)), [EngineRequest((1, 2, 3), 4)])
        assert "engine hung: no answer to start in 1s" in str(e.value)
        assert time.monotonic() - t0 < 20.0
        assert not b._engines  # nothing left running for this configuration
    finally:
        b.close()
