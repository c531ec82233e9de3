"""Both sides of an A/B pair in one process (suites/bench/timing.py SharedPair, Guest;
suites/bench/conftest.py SUITE_BENCH_SHARED and B's process file): the windows of A and B
alternate with the pair's first side opening each case, both sides get the same rounds and the
case's own per-round setup, B is timed the way pytest-benchmark times A (the previous output
alive during the next call), B's slowdown is B's alone, and B's process file is A's with B's
rounds. Negative controls: a Guest that drops each output at once frees it inside the timing;
a B planted 2x slower reads 2x slower, an unslowed B reads like A."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from typing import ClassVar

import pytest

from suites.bench import conftest as bench_conftest
from suites.bench import timing
from suites.bench.probes import Roofline
from suites.bench.timing import BenchSettings, Guest, SharedPair, Windows, run_case


def _interleaving(first: str, rounds: int, wr: int) -> tuple[list[str], Guest]:
    """The order in which A's and B's timed rounds run in one case, driven as run_case drives
    them (pedantic's per-round setup is Windows.setup)."""
    events: list[str] = []
    guest = Guest(lambda: events.append("B"), lambda: events.append("setup"), rounds, wr,
                  rewarm=True, timer=time.perf_counter)
    w = Windows(guest.window, lambda: events.append("warm-A"), lambda: events.append("setup"),
                wr)
    if first == "B":
        w.handover()
    for _ in range(rounds):  # pedantic, auto rule: no warm-up round
        w.setup()
        events.append("A")
    guest.finish()
    return events, guest


@pytest.mark.parametrize("first", ["A", "B"])
def test_windows_alternate_with_the_first_side_opening_the_case(first):
    events, guest = _interleaving(first, rounds=10, wr=3)
    timed = [e for e in events if e in ("A", "B")]
    # consecutive calls of one side: a window (B's opens with its untimed re-warm call)
    runs = [(side, len(list(calls))) for side, calls in itertools.groupby(timed)]
    other = "B" if first == "A" else "A"
    assert [s for s, _ in runs] == [first, other] * 4, runs
    a_rounds = sum(n for s, n in runs if s == "A")
    b_calls = sum(n for s, n in runs if s == "B")
    assert a_rounds == 10 and len(guest.data) == 10
    assert b_calls == 10 + guest.windows  # each B window: one re-warm, then its rounds
    assert [n for s, n in runs if s == "A"] == [3, 3, 3, 1]
    # the case's per-round setup (the control op's cadence) runs before every timed round of
    # both sides; A re-warms after every B window
    assert events.count("setup") == 20
    assert events.count("warm-A") == (guest.windows if first == "B" else guest.windows - 1)


def test_guest_rounds_are_capped_and_finish_completes_them():
    g = Guest(lambda: None, None, rounds=7, window_rounds=3, rewarm=False)
    g.window()
    assert len(g.data) == 3
    g.finish()
    assert len(g.data) == 7 and g.windows == 3
    g.window()  # nothing left: no empty window is counted
    assert len(g.data) == 7 and g.windows == 3


class _Output:
    """A call's output that notes when it is freed, relative to the timer's readings."""

    log: ClassVar[list[str]] = []

    def __del__(self):
        _Output.log.append("free")


def _timer():
    _Output.log.append("timer")
    return time.perf_counter()


def test_guest_frees_the_previous_output_outside_the_timing_like_pedantic():
    """pytest-benchmark's pedantic runner keeps a round's output until the next round's call
    has returned; a Guest that dropped it at once would free it between its own timer
    readings, and B's rounds would contain a free that A's do not."""
    _Output.log = []
    g = Guest(_Output, None, rounds=3, window_rounds=3, rewarm=False, timer=_timer)
    g.window()
    # each round: timer, call, timer, then the previous round's output freed; never a free
    # between a round's two readings
    log = _Output.log
    assert log == ["timer", "timer", "timer", "timer", "free", "timer", "timer", "free"], log

    # negative control: the output dropped inside the timing, as `target()` alone would
    _Output.log = []
    _timer()
    _Output()  # created and freed before the end reading
    _timer()
    assert _Output.log == ["timer", "free", "timer"]


def _settings() -> BenchSettings:
    return BenchSettings.from_options(device="cpu", tokens="1", shapes=None, dtypes=None,
                                      threads="1", time_s=None, min_rounds=None, slowdown={},
                                      include_reference=False, usable_cpus=[0],
                                      rounds_rule="auto")


def _busy(seconds: float):
    def call():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        return [0.0]
    return call


_EXTRA = {"family": "router", "dtype": "bfloat16", "tokens": 1, "flop": 1.0, "bytes": 1.0}
_ROOF = Roofline(device="cpu", matmul_flops_per_s={"bfloat16": 1e12}, copy_bytes_per_s=1e10)


@pytest.mark.parametrize("b_slowdown, low, high", [({"fake*": 1.0}, 1.6, 2.5),
                                                     ({"other": 1.0}, 0.8, 1.25)])
def test_run_case_times_both_sides_and_slows_only_b(benchmark, monkeypatch, tmp_path,
                                                    b_slowdown, low, high):
    """A shared pair's run_case: A through pytest-benchmark, B through the Guest, the same
    rounds each, B's slowdown on B only (planted 2x: B reads ~2x; a glob that does not match:
    B reads like A)."""
    shared = SharedPair(first="B", b_json=str(tmp_path / "b.json"), b_slowdown=b_slowdown)
    monkeypatch.setattr(timing, "SHARED", shared)
    run_case(benchmark, _busy(3e-4), settings=_settings(), roofline=_ROOF, group="g",
             backend="fake", extra=dict(_EXTRA))
    a = benchmark.extra_info
    rec = shared.records[benchmark.fullname]
    b = rec["extra_info"]
    assert len(rec["data"]) == a["timing"]["rounds"] == benchmark.stats.stats.rounds
    ratio = statistics.median(rec["data"]) / benchmark.stats.stats.median
    assert low < ratio < high, ratio
    assert b["median_s"] == statistics.median(rec["data"]) and "slowdown" not in a
    assert (b.get("slowdown") == 1.0) == (b_slowdown == {"fake*": 1.0})
    assert a["timing"]["shared"]["side"] == "A" and b["timing"]["shared"]["side"] == "B"
    assert b["timing"]["shared"]["windows"] >= timing.MIN_WINDOWS
    assert "baton" not in a["timing"]


def test_b_process_file_is_a_with_bs_rounds():
    shared = SharedPair(first="A", b_json="unused", b_slowdown={"x": 0.1})
    shared.records["t[1]"] = {"data": [2.0, 4.0, 3.0], "extra_info": {"median_s": 3.0}}
    a = {"machine_info": {"bench_settings": {"slowdown": {}}, "node": "n"},
         "benchmarks": [{"fullname": "t[1]", "stats": {"median": 1.0, "data": [1.0]},
                         "extra_info": {"median_s": 1.0}},
                        {"fullname": "t[2]", "stats": {"median": 1.0}, "extra_info": {}}]}
    before = json.dumps(a, sort_keys=True)
    b = bench_conftest.shared_b_json(a, shared)
    assert json.dumps(a, sort_keys=True) == before  # A's file is untouched
    assert [x["fullname"] for x in b["benchmarks"]] == ["t[1]"]  # t[2] timed no B: left out
    st = b["benchmarks"][0]["stats"]
    assert st["median"] == 3.0 and st["data"] == [2.0, 4.0, 3.0] and st["rounds"] == 3
    assert st["iterations"] == 1 and b["benchmarks"][0]["extra_info"] == {"median_s": 3.0}
    assert b["machine_info"]["bench_settings"]["slowdown"] == {"x": 0.1}
    assert b["machine_info"]["ab_shared"] == {"side": "B", "first": "A"}


def test_shared_from_env_reads_the_runner_and_refuses_the_malformed():
    assert bench_conftest.shared_from_env(None) is None
    assert bench_conftest.shared_from_env("") is None
    s = bench_conftest.shared_from_env(json.dumps({"first": "B", "b_json": "/x/b.json",
                                                   "b_slowdown": "cpu_fused_moe.vec=0.1"}))
    assert s.first == "B" and s.b_json == "/x/b.json" and s.b_slowdown == {
        "cpu_fused_moe.vec": 0.1}
    for bad in ("{", json.dumps({"first": "C", "b_json": "x"}), json.dumps({"first": "A"}),
                json.dumps({"first": "A", "b_json": "x", "b_slowdown": "nope"})):
        with pytest.raises(pytest.UsageError, match="SUITE_BENCH_SHARED: not a shared A/B"):
            bench_conftest.shared_from_env(bad)
