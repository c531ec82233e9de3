"""harness/options.py: the one parser of the sessions' options among pytest's arguments (either
form, anywhere, the last one winning, the rest left in order), defaults from the environment
checked like given values, and the one slowdown parser; errors are one line naming the option."""

from __future__ import annotations

import pytest

from harness.options import OPTIONS, OptionError, parse, slowdown


def test_both_forms_anywhere_and_the_rest_in_order():
    p = parse(["-k", "moe", "--bench-processes", "3", "-x", "--bench-processes=4", "tests/a.py"],
              "--bench-processes", environ={})
    assert p.bench_processes == 4 and p["--bench-processes"] == 4
    assert p.rest == ["-k", "moe", "-x", "tests/a.py"] and p.given == {"--bench-processes"}


def test_options_not_asked_for_stay_with_pytest():
    argv = ["--perf", "--ab-pairs=3", "--baseline", "latest", "-k", "moe"]
    top = parse(argv, "--versions", "--good")
    assert top.versions is None and top.good is None and top.rest == argv
    check = parse(top.rest, "--perf", "--baseline", "--processes", "--ab-pairs")
    assert (check.perf, check.baseline, check.processes, check.ab_pairs) == (True, "latest", 5, 3)
    assert check.rest == ["-k", "moe"]


def test_defaults_come_from_the_environment_and_are_checked():
    assert parse([], "--bench-processes", environ={}).bench_processes == 5
    assert parse([], "--bench-processes",
                 environ={"SUITE_BENCH_PROCESSES": "7"}).bench_processes == 7
    with pytest.raises(OptionError, match=r"SUITE_BENCH_PROCESSES: 'x', expected 1\.\.50"):
        parse([], "--bench-processes", environ={"SUITE_BENCH_PROCESSES": "x"})
    # a given value beats the environment
    assert parse(["--bench-processes=2"], "--bench-processes",
                 environ={"SUITE_BENCH_PROCESSES": "x"}).bench_processes == 2


@pytest.mark.parametrize("argv,names,says", [
    (["--bench-processes=0"], ("--bench-processes",), "expected 1..50"),
    (["--bench-processes=51"], ("--bench-processes",), "expected 1..50"),
    (["--versions"], ("--versions",), "--versions needs a value"),
    (["--good"], ("--good",), "--good needs a value"),
    (["--perf=yes"], ("--perf",), "--perf takes no value"),
    (["--ab-pairs", "0"], ("--ab-pairs",), "--ab-pairs '0': expected a whole number of pairs"),
    (["--ab-pairs=x"], ("--ab-pairs",), "expected a whole number of pairs, 1..100"),
    (["--ab-interleave=sometimes"], ("--ab-interleave",),
     "expected one of auto, window, process, shared"),
    (["--ab-slowdown-b=cpu_fused_moe.vec"], ("--ab-slowdown-b",), "expected GLOB=FRACTION"),
    (["--processes=0"], ("--processes",), "--processes '0'"),
    (["--device=tpu"], ("--device",), "expected one of cpu, cuda"),
])
def test_bad_options_are_one_line(argv, names, says):
    with pytest.raises(OptionError) as e:
        parse(argv, *names, environ={})
    assert says in str(e.value) and "\n" not in str(e.value)


def test_refused_options_and_unknown_names():
    with pytest.raises(OptionError, match="--bench-processes: not here"):
        parse(["--bench-processes=2"], "--ab-pairs", refuse={"--bench-processes": "not here"})
    with pytest.raises(KeyError):
        parse([], "--no-such-option")


def test_every_option_is_documented():
    for name, opt in OPTIONS.items():
        assert name.startswith("--") and opt.help, name
        assert not (opt.flag and opt.convert), name


@pytest.mark.parametrize("value,want", [
    ("cpu_fused_moe.vec=0.10", "cpu_fused_moe.vec=0.10"),
    (" cpu_*=0.1 , triton.*=2,", "cpu_*=0.1,triton.*=2"),
    ("a=10", "a=10"),
])
def test_slowdown_accepts_globs_with_fractions(value, want):
    assert slowdown(value) == want


@pytest.mark.parametrize("value", ["", "cpu", "=0.1", "cpu=0", "cpu=-1", "cpu=11", "cpu=x",
                                   "cpu=nan", "a=0.1,b"])
def test_slowdown_refuses_the_rest(value):
    with pytest.raises(OptionError, match="GLOB=FRACTION with 0 < FRACTION <= 10"):
        slowdown(value, "--ab-slowdown-b")
