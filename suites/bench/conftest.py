"""Benchmark options, thread pinning, the roofline probes and the machine fingerprint.

Options (each also read from an environment variable, so `nox -s bench -- ...` and CI agree;
the command-line forms exist when suites/bench is named on the command line, as `nox -s bench`
does; with `pytest suites` use the environment variables):
  --bench-tokens LIST      token counts, e.g. 1,2,4,8 (SUITE_BENCH_TOKENS; default 1..1024 on
                           cpu, 1..8192 on cuda, powers of two)
  --bench-shapes LIST      catalogue shapes (SUITE_BENCH_SHAPES; default: CPU variants on cpu,
                           the real shapes on cuda)
  --bench-dtypes LIST      bfloat16,float32 (SUITE_BENCH_DTYPES; default bfloat16)
  --bench-threads N        CPU threads, pinned to the first N usable CPUs (SUITE_BENCH_THREADS;
                           default all usable CPUs)
  --bench-time S           timed seconds per case and process, before the round bounds
                           (SUITE_BENCH_TIME; default 0.3 on cpu, 0.2 on cuda)
  --bench-min-rounds N     at least N timed rounds per case (SUITE_BENCH_MIN_ROUNDS; default 10)
  --bench-slowdown G=F     deliberately slow backends matching glob G by fraction F (e.g.
                           cpu_fused_moe.vec=0.1): a demonstration that `nox -s compare` flags a
                           regression (SUITE_BENCH_SLOWDOWN)
  --bench-rounds RULE      time: rounds that fill --bench-time (default); auto: rounds from
                           the case's own variance, an adaptive warm-up and fewer control ops
                           (timing.py; SUITE_BENCH_ROUNDS; what an A/B run's processes use)
  --bench-include-reference  also time the fp64 oracles (off: they are not under test)

In an interleaved A/B pair (`nox -s ab`), harness/ab.py sets SUITE_BENCH_BATON and
SUITE_BENCH_BATON_SIDE: the process takes the baton when its first benchmark is set up (before
thread pinning and the roofline probes; the two sides' imports and collection, which time
nothing, run at once) and from then on computes only while holding it; run_case hands it to the
other side every ~50 ms of timed rounds (reports/baton.py). SUITE_BENCH_ROOFLINE (set by an A/B
run to a file in its folder) lets the run's later processes reuse the first one's roofline
probes (probes.measure_or_reuse) instead of spending ~3 s a process on them.
When A and B are one environment (`--ab-interleave shared`, the default then), harness/ab.py
runs a pair as one process with SUITE_BENCH_SHARED set instead: run_case times both sides in
alternating windows (timing.SharedPair) and this process writes B's records beside A's.

Performance runs never assert numerics; they only time and record. `nox -s bench` runs this
suite in several processes (--bench-processes, a nox option) and merges them (reports/merge.py).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib

import pytest
import torch
from pytest_benchmark.stats import Stats

from reports import baton as _baton
from suites.bench import probes as _roofline
from suites.bench import timing as _timing
from suites.bench.fingerprint import fingerprint
from suites.bench.timing import BenchSettings, parse_slowdown

# The CPUs this process may use before any pinning (the fingerprint describes the machine).
_AFFINITY_AT_START = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
_SETTINGS_KEY = pytest.StashKey[BenchSettings]()
_ROOFLINE_KEY = pytest.StashKey[_roofline.Roofline]()
_THREADS_KEY = pytest.StashKey[dict]()
SHARED_ENV = "SUITE_BENCH_SHARED"  # both sides of an A/B pair in this process (harness/ab.py)

_OPTIONS = (
    ("--bench-tokens", "SUITE_BENCH_TOKENS", "token counts, comma-separated"),
    ("--bench-shapes", "SUITE_BENCH_SHAPES", "catalogue shapes, comma-separated"),
    ("--bench-dtypes", "SUITE_BENCH_DTYPES", "dtypes, comma-separated (bfloat16, float32)"),
    ("--bench-threads", "SUITE_BENCH_THREADS", "CPU threads, pinned"),
    ("--bench-time", "SUITE_BENCH_TIME", "timed seconds per case"),
    ("--bench-min-rounds", "SUITE_BENCH_MIN_ROUNDS", "minimum timed rounds per case"),
    ("--bench-slowdown", "SUITE_BENCH_SLOWDOWN", "GLOB=FRACTION: slow matching backends"),
    ("--bench-rounds", "SUITE_BENCH_ROUNDS", "time (fill --bench-time) or auto (from each "
     "case's own variance; an A/B run's default)"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("moe-mtp-suite benchmarks")
    for opt, env, help_ in _OPTIONS:
        g.addoption(opt, default=os.environ.get(env), help=f"{help_} (env {env})")
    g.addoption("--bench-include-reference", action="store_true", default=False,
                help="also time the fp64 oracle backends")


def pytest_configure(config: pytest.Config) -> None:
    """In an interleaved A/B pair (harness/ab.py sets SUITE_BENCH_BATON), find the baton; it
    is taken (hello) by bench_machine, before anything is measured."""
    try:
        _timing.BATON = _baton.Baton.from_env()
    except _baton.BatonError as e:
        raise pytest.UsageError(f"interleaved A/B: {e}") from None
    _timing.SHARED = shared_from_env(os.environ.get(SHARED_ENV))


def shared_from_env(value: str | None) -> _timing.SharedPair | None:
    """SUITE_BENCH_SHARED (harness/ab.py, --ab-interleave shared): a JSON object with `first`
    (A or B), `b_json` (where B's records go) and `b_slowdown` (B's --ab-slowdown-b, or null).
    Unset or empty: None. Malformed: a UsageError saying what is wrong."""
    if not value:
        return None
    try:
        d = json.loads(value)
        return _timing.SharedPair(first=d["first"], b_json=str(d["b_json"]),
                                  b_slowdown=parse_slowdown(d.get("b_slowdown")))
    except (ValueError, KeyError, TypeError) as e:
        raise pytest.UsageError(f"{SHARED_ENV}: not a shared A/B pair ({type(e).__name__}: "
                                f"{e})") from None


def shared_b_json(output_json: dict, shared: _timing.SharedPair) -> dict:
    """B's process file of a shared pair: A's --benchmark-json with each benchmark's stats and
    extra_info replaced by B's (SharedPair.records; a benchmark without B's record, one that
    did not time B, is left out) and B's slowdown in the bench settings."""
    b = copy.deepcopy(output_json)
    kept = []
    for bench in b.get("benchmarks", []):
        rec = shared.records.get(bench.get("fullname"))
        if rec is None:
            continue
        stats = Stats()
        for dt in rec["data"]:
            stats.update(dt)
        bench["stats"] = {**stats.as_dict(), "data": list(rec["data"]), "iterations": 1}
        bench["extra_info"] = rec["extra_info"]
        kept.append(bench)
    b["benchmarks"] = kept
    mi = b.setdefault("machine_info", {})
    if isinstance(mi.get("bench_settings"), dict):
        mi["bench_settings"]["slowdown"] = dict(shared.b_slowdown)
    mi["ab_shared"] = {"side": "B", "first": shared.first}
    return b


def pytest_unconfigure(config: pytest.Config) -> None:
    if _timing.BATON is not None:
        _timing.BATON.finish()  # passes the baton for good; exits with the other side


def _opt(config: pytest.Config, name: str):
    # This conftest may be registered after the command line was parsed (pytest tests suites),
    # in which case its options are absent; the environment variable still applies.
    env = dict((o, e) for o, e, _ in _OPTIONS).get(name)
    value = config.getoption(name, default=None)
    if value is None and env:
        value = os.environ.get(env)
    return value


def settings_of(config: pytest.Config) -> BenchSettings:
    if _SETTINGS_KEY not in config.stash:
        device = config.getoption("--device", default="cpu")
        try:
            config.stash[_SETTINGS_KEY] = BenchSettings.from_options(
                device=device,
                tokens=_opt(config, "--bench-tokens"),
                shapes=_opt(config, "--bench-shapes"),
                dtypes=_opt(config, "--bench-dtypes"),
                threads=_opt(config, "--bench-threads"),
                time_s=_opt(config, "--bench-time"),
                min_rounds=_opt(config, "--bench-min-rounds"),
                slowdown=parse_slowdown(_opt(config, "--bench-slowdown")),
                include_reference=bool(config.getoption("--bench-include-reference",
                                                        default=False)),
                rounds_rule=_opt(config, "--bench-rounds"),
                usable_cpus=sorted(_AFFINITY_AT_START) if _AFFINITY_AT_START else None,
            )
        except ValueError as e:
            raise pytest.UsageError(f"benchmark options: {e}") from None
    return config.stash[_SETTINGS_KEY]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On cuda, time with CUDA events (pytest-benchmark's timer hook) instead of the host clock,
    except where a benchmark brings its own timer (suites/bench/test_e2e.py)."""
    if config.getoption("--device", default="cpu") != "cuda":
        return
    timer = _roofline.CudaEventTimer()
    for item in items:
        if not (item.get_closest_marker("bench")
                and "benchmark" in getattr(item, "fixturenames", ())):
            continue
        own = item.get_closest_marker("benchmark")
        if own is not None and "timer" in own.kwargs:  # e2e: times replayed from the engine
            continue
        item.add_marker(pytest.mark.benchmark(timer=timer))


@pytest.fixture(scope="session")
def bench_settings(request) -> BenchSettings:
    return settings_of(request.config)


@pytest.fixture(scope="session", autouse=True)
def bench_machine(request, bench_settings):
    """Take the A/B baton (if any), pin threads, then measure the roofline with those threads
    (once a session)."""
    config = request.config
    if _timing.BATON is not None:
        try:
            _timing.BATON.hello()  # blocks until this side may compute
        except _baton.BatonError as e:
            pytest.exit(f"interleaved A/B: {e}", returncode=3)
    threads: dict = {"device": bench_settings.device}
    if bench_settings.device == "cpu":
        cpus = bench_settings.pinned_cpus
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)
        torch.set_num_threads(bench_settings.threads)
        threads.update(torch_num_threads=torch.get_num_threads(), pinned_cpus=cpus,
                       omp_num_threads_env=os.environ.get("OMP_NUM_THREADS"),
                       interop_threads=torch.get_num_interop_threads())
    config.stash[_THREADS_KEY] = threads
    config.stash[_ROOFLINE_KEY] = _roofline.measure_or_reuse(
        os.environ.get("SUITE_BENCH_ROOFLINE"), bench_settings.device,
        bench_settings.roofline_dtypes)
    return config.stash[_ROOFLINE_KEY]


@pytest.fixture
def roofline(bench_machine) -> _roofline.Roofline:
    return bench_machine


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    s = settings_of(config)
    machine_info.update(fingerprint(_AFFINITY_AT_START))
    machine_info["device"] = s.device
    machine_info["threads"] = config.stash.get(_THREADS_KEY, {"device": s.device})
    if _ROOFLINE_KEY not in config.stash:  # benchmarks outside suites/bench ran without probes
        config.stash[_ROOFLINE_KEY] = _roofline.measure(s.device, s.roofline_dtypes)
    machine_info["roofline"] = config.stash[_ROOFLINE_KEY].as_dict()
    machine_info["bench_settings"] = s.as_dict()
    if _timing.SHARED is not None:
        machine_info["ab_shared"] = {"side": "A", "first": _timing.SHARED.first}
    if _timing.BATON is not None:
        b = _timing.BATON
        machine_info["ab_baton"] = {"side": b.side, "passes": b.passes,
                                    "waited_s": round(b.waited_s, 2)}


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    from reports.schema import SCHEMA_VERSION

    output_json["suite_schema"] = SCHEMA_VERSION
    if _timing.SHARED is not None:  # B's process file beside A's (atomic: whole or absent)
        path = pathlib.Path(_timing.SHARED.b_json)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(shared_b_json(output_json, _timing.SHARED), indent=4))
        os.replace(tmp, path)
