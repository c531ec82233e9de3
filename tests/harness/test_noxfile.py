"""noxfile.py holds sessions only: each a docstring and a few lines calling harness/, no reading
of VLLM_UNDER_TEST or the environment of its own, no import but nox, the standard library's
sys/pathlib and harness; the module docstring names every session. Run under a stand-in nox
(the test venv has none), `nox -s tests` still runs exactly the pytest it ran before and hands
the interp_ci-marked subset to triton_interpret; harness/ imports only the standard library."""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys
import types

import pytest

from harness import install, sessions
from harness.project import dependency_groups

ROOT = pathlib.Path(__file__).parents[2]
NOXFILE = ROOT / "noxfile.py"
SESSIONS = ("tests", "cpu", "gpu", "triton_interpret", "lint", "bench", "report", "migrate",
            "compare", "ab", "bisect", "sweep")
MAX_BODY_LINES = 10  # a session's code, its docstring and comments aside


def _tree() -> ast.Module:
    return ast.parse(NOXFILE.read_text())


def _session_functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    def is_session(d) -> bool:
        d = d.func if isinstance(d, ast.Call) else d
        return isinstance(d, ast.Attribute) and d.attr == "session"

    return {f.name: f for f in tree.body
            if isinstance(f, ast.FunctionDef) and any(map(is_session, f.decorator_list))}


def test_sessions_only():
    tree = _tree()
    found = _session_functions(tree)
    assert sorted(found) == sorted(SESSIONS)
    helpers = [f.name for f in tree.body if isinstance(f, ast.FunctionDef) and f.name not in found]
    assert not helpers, f"helpers belong in harness/: {helpers}"
    for name, f in found.items():
        assert ast.get_docstring(f), name
        code = f.body[1:]
        lines = {n.lineno for stmt in code for n in ast.walk(stmt) if hasattr(n, "lineno")}
        assert len(lines) <= MAX_BODY_LINES, f"session {name}: {len(lines)} lines of code"
    doc = ast.get_docstring(tree)
    assert all(f"nox -s {name}" in doc for name in SESSIONS)


def test_imports_only_nox_and_harness():
    allowed = {"__future__", "sys", "pathlib", "nox"}
    for node in ast.walk(_tree()):
        if isinstance(node, ast.Import):
            assert {a.name.split(".")[0] for a in node.names} <= allowed, ast.dump(node)
        elif isinstance(node, ast.ImportFrom):
            top = node.module.split(".")[0]
            assert top in allowed or top == "harness", node.module


def test_no_reading_of_the_vllm_under_test_spec():
    """VLLM_UNDER_TEST is parsed once, in harness/spec.py: the noxfile neither reads it nor
    touches os.environ (it names the variable in docstrings only)."""
    tree = _tree()
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef)) and ast.get_docstring(n)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert id(node) in docstrings or "VLLM_UNDER_TEST" not in node.value
        assert not (isinstance(node, ast.Name) and node.id in ("os", "subprocess", "environ"))
    text = NOXFILE.read_text()
    assert 'environ.get("VLLM_UNDER_TEST"' not in text and "os.environ" not in text
    for module in ("spec", "install", "sessions", "ab", "bisect", "sweep"):
        harness_text = (ROOT / "harness" / f"{module}.py").read_text()
        assert 'environ.get("VLLM_UNDER_TEST"' not in harness_text, module


def test_harness_imports_only_the_standard_library():
    code = ("import sys\n"
            "import harness.project, harness.spec, harness.options, harness.runner\n"
            "import harness.install, harness.sessions, harness.ab, harness.bisect\n"
            "import harness.sweep\n"
            "bad = [m for m in ('numpy', 'scipy', 'torch', 'vllm', 'nox') if m in sys.modules]\n"
            "sys.exit(', '.join(bad) or None)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr


class _Stop(Exception):
    pass


class _Session:
    """What the sessions ask of nox.Session, recorded."""

    def __init__(self, tmp_path, posargs=()):
        self.posargs = list(posargs)
        self.calls: list[tuple] = []
        self.virtualenv = types.SimpleNamespace(bin=str(tmp_path / "bin"), location=str(tmp_path))

    def install(self, *args, **kw):
        self.calls.append(("install", list(args), kw.get("env") or {}))

    def run_install(self, *args, **kw):
        self.calls.append(("run_install", list(args), kw.get("env") or {}))

    def run(self, *args, **kw):
        self.calls.append(("run", list(args), kw.get("env") or {}))

    def notify(self, name, posargs=None):
        self.calls.append(("notify", name, posargs))

    def log(self, line):
        self.calls.append(("log", line))

    def error(self, line):
        self.calls.append(("error", line))
        raise _Stop(line)


@pytest.fixture
def noxfile(monkeypatch):
    """noxfile.py imported under a stand-in `nox` module (decorators that return the function)."""
    nox = types.ModuleType("nox")
    nox.session = lambda f=None, **kw: f if f is not None else (lambda g: g)
    nox.options = types.SimpleNamespace()
    nox.Session = object
    monkeypatch.setitem(sys.modules, "nox", nox)
    spec = importlib.util.spec_from_file_location("noxfile_under_test", NOXFILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nox_tests_session(noxfile, monkeypatch, tmp_path):
    """The same commands as before the harness: print, groups, the pin, the media wheels out,
    the suite's vLLM plugin in, print, pytest with the CI selection and the session's environment; then the interp_ci
    subset of triton_interpret (pytest takes the last -m)."""
    monkeypatch.delenv("VLLM_UNDER_TEST", raising=False)
    s = _Session(tmp_path, ["-k", "moe"])
    noxfile.tests(s)
    env_print = ["python", "-c", sessions.ENVIRONMENT]
    groups = dependency_groups("test", "reports")
    assert s.calls == [
        ("run", env_print, {}),
        ("install", groups, {}),
        ("install", list(dependency_groups("cpu")), {}),
        ("run_install", ["python", "-m", "pip", "uninstall", "-y", "-q", "torchvision",
                         "torchaudio", "torchcodec"], {}),
        ("install", ["-q", str(install.CPU_PLUGIN)], {}),
        ("run", env_print, {}),
        # two xdist workers for all but the tests that time with pytest-benchmark (xdist turns
        # it off), then those in one serial process; pytest exit 5 (none selected) is fine there
        ("run", ["python", "-m", "pytest", "tests", "suites", "--ignore=suites/bench", "-m",
                 "not gpu and not bench and not slow", "--hypothesis-profile=ci", "-n", "2",
                 "-k", "moe"],
         {"SUITE_TIMER_TESTS": "skip", "SUITE_NOX_SESSION": "tests", "PYTHONHASHSEED": "0",
          "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2)),
          "SUITE_EXPECT_VLLM": "1", "SUITE_EXPECT_BACKENDS": sessions.EXPECTED_BACKENDS["cpu"]}),
        ("run", ["python", "-m", "pytest", "tests", "suites", "--ignore=suites/bench", "-m",
                 "not gpu and not bench and not slow", "--hypothesis-profile=ci", "-p",
                 "no:xdist", "-k", "moe"],
         {"SUITE_TIMER_TESTS": "only", "SUITE_NOX_SESSION": "tests", "PYTHONHASHSEED": "0",
          "SUITE_EXPECT_VLLM": "1", "SUITE_EXPECT_BACKENDS": sessions.EXPECTED_BACKENDS["cpu"]}),
        ("notify", "triton_interpret", ["-m", "interp_ci and not slow and not gpu and not bench"]),
    ]


def test_nox_tests_session_without_vllm(noxfile, monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_UNDER_TEST", "none")
    s = _Session(tmp_path)
    noxfile.tests(s)
    pytest_call = [c for c in s.calls if c[0] == "run" and "pytest" in c[1]]
    assert pytest_call[0][2] == {"SUITE_NOX_SESSION": "tests", "PYTHONHASHSEED": "0",
                                 "SUITE_TIMER_TESTS": "skip",
                                 "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2))}
    assert pytest_call[1][2]["SUITE_TIMER_TESTS"] == "only" and len(pytest_call) == 2
    monkeypatch.setenv("SUITE_TEST_WORKERS", "1")  # one serial run of everything
    s = _Session(tmp_path)
    noxfile.tests(s)
    pytest_call = [c for c in s.calls if c[0] == "run" and "pytest" in c[1]]
    assert len(pytest_call) == 1 and "-n" not in pytest_call[0][1]
    assert "SUITE_TIMER_TESTS" not in pytest_call[0][2]
    assert not [c for c in s.calls if c[0] == "notify"]
    assert len([c for c in s.calls if c[0] == "install"]) == 1


def test_bad_spec_stops_a_session_before_it_installs(noxfile, monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_UNDER_TEST", "/no/such/vllm")
    for name in ("tests", "cpu", "triton_interpret", "bench"):
        s = _Session(tmp_path)
        with pytest.raises(_Stop, match="VLLM_UNDER_TEST='/no/such/vllm': no such folder"):
            getattr(noxfile, name)(s)
        assert not [c for c in s.calls if c[0] in ("install", "run_install")], name
    monkeypatch.setenv("VLLM_UNDER_TEST", "none")
    s = _Session(tmp_path)
    with pytest.raises(_Stop, match="VLLM_UNDER_TEST=none leaves nothing to test"):
        noxfile.triton_interpret(s)
    assert not [c for c in s.calls if c[0] in ("install", "run_install")]


def test_triton_interpret_session_selection(noxfile, monkeypatch, tmp_path):
    """The default paths unless posargs name tests; the interp_ci -m after the session's own."""
    monkeypatch.delenv("VLLM_UNDER_TEST", raising=False)
    monkeypatch.setattr(sessions, "OUT", tmp_path / "out")
    s = _Session(tmp_path, list(sessions.TRITON_INTERPRET_CI))
    noxfile.triton_interpret(s)
    cmd, env = next((c[1], c[2]) for c in s.calls if c[0] == "run" and "pytest" in c[1])
    paths = cmd[3:3 + len(sessions.TRITON_INTERPRET_PATHS)]
    assert tuple(paths) == sessions.TRITON_INTERPRET_PATHS
    assert cmd[-2:] == ["-m", "interp_ci and not slow and not gpu and not bench"]
    marks = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-m" and i > 1]
    assert marks == ["not slow and not gpu and not bench", sessions.TRITON_INTERPRET_CI[1]]
    assert env["TRITON_INTERPRET"] == "1" and env["SUITE_EXPECT_BACKENDS"] == "*.interp"
    assert [c[1] for c in s.calls if c[0] == "install"][-1] == ["--no-deps",
                                                                 *dependency_groups("gpu")]
    s = _Session(tmp_path, ["suites/mtp/test_rejection_greedy.py"])
    noxfile.triton_interpret(s)
    cmd = next(c[1] for c in s.calls if c[0] == "run" and "pytest" in c[1])
    assert "suites/moe/test_router.py" not in cmd and cmd[-1].endswith("greedy.py")


def test_bench_session_options(noxfile, monkeypatch, tmp_path):
    monkeypatch.delenv("VLLM_UNDER_TEST", raising=False)
    monkeypatch.setattr(sessions, "has_gpu", lambda: False)
    s = _Session(tmp_path, ["--bench-processes=0"])
    with pytest.raises(_Stop, match=r"--bench-processes / SUITE_BENCH_PROCESSES: '0'"):
        noxfile.bench(s)
    assert not s.calls[:-1]
