"""The benchmark machinery (suites/bench) without timing anything: cost models against an
independent FLOP counter, roofline arithmetic, the fingerprint's machine id, options, and the
deliberately slowed wrapper."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fixtures.catalogue import get as get_shape
from reports.schema import MACHINE_ID_RE
from suites.bench import fingerprint as fp
from suites.bench import workloads
from suites.bench.probes import Roofline
from suites.bench.timing import BenchSettings, ReplayClock, Slowed, parse_slowdown


def test_experts_flop_model_matches_flop_counter():
    cfg = get_shape("mixtral-8x7b-cpu-experts")
    H, I, K = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts_per_tok
    p = workloads.experts_problem(cfg, 5, torch.float32)
    w13, w2 = workloads.expert_weights(cfg, torch.float32)
    with FlopCounterMode(display=False) as counter:
        for t in range(5):  # the loop a dense implementation runs, one GEMV pair per route
            for e in p.topk_ids[t].tolist():
                gu = p.x[t : t + 1] @ w13[e].T  # [1, 2I]
                act = torch.nn.functional.silu(gu[:, :I]) * gu[:, I:]
                _ = act @ w2[e].T  # [1, H]
    flop, nbytes = workloads.experts_cost(tokens=5, H=H, I=I, K=K, n_active=p.n_active,
                                          act_bytes=4, weight_bytes=4)
    assert flop == counter.get_total_flops()
    assert p.n_active == len(set(p.topk_ids.flatten().tolist()))
    assert nbytes == p.n_active * 3 * H * I * 4 + 2 * 5 * H * 4 + 8 * 5 * K


def test_experts_problem_routes_k_distinct_experts():
    cfg = get_shape("qwen3.5-397b-a17b-cpu-experts")
    p = workloads.experts_problem(cfg, 64, torch.bfloat16)
    assert p.topk_ids.shape == (64, cfg.num_experts_per_tok) and p.topk_ids.dtype == torch.int32
    assert all(len(set(row)) == cfg.num_experts_per_tok for row in p.topk_ids.tolist())
    torch.testing.assert_close(p.topk_weights.sum(-1), torch.ones(64))
    again = workloads.experts_problem(cfg, 64, torch.bfloat16)
    assert torch.equal(p.topk_ids, again.topk_ids)  # stable seeds


def test_roofline_fractions():
    rl = Roofline(device="cpu", matmul_flops_per_s={"bfloat16": 1e11}, copy_bytes_per_s=1e10)
    # Intensity 1 FLOP/byte: memory-bound, attainable 1e10 FLOP/s.
    f = rl.figures(dtype="bfloat16", flop=1e6, nbytes=1e6, seconds=1e-3)
    assert f["bound"] == "memory" and f["roofline_fraction"] == pytest.approx(0.1)
    # Intensity 100: compute-bound, attainable 1e11.
    f = rl.figures(dtype="bfloat16", flop=1e8, nbytes=1e6, seconds=1e-3)
    assert f["bound"] == "compute" and f["roofline_fraction"] == pytest.approx(1.0)
    # No FLOP model: against bandwidth.
    f = rl.figures(dtype="float32", flop=0.0, nbytes=5e6, seconds=1e-3)
    assert f["roofline_fraction"] == pytest.approx(0.5) and f["achieved_flops_per_s"] == 0


def test_machine_id_is_hardware_only_and_valid(monkeypatch):
    monkeypatch.delenv("SUITE_MACHINE_ID", raising=False)
    cpu = fp.cpu_fingerprint()
    a = fp.machine_id(cpu, None)
    assert MACHINE_ID_RE.match(a) and a.startswith("cpu-")
    assert fp.machine_id(dict(cpu), None) == a
    assert fp.machine_id({**cpu, "model": "Other CPU"}, None) != a
    gpu = {"name": "NVIDIA H200", "count": 1, "sm_count": 132, "memory_bytes": 150e9}
    g = fp.machine_id(cpu, gpu)
    assert g.startswith("gpu-nvidia-h200-x1-") and MACHINE_ID_RE.match(g)
    monkeypatch.setenv("SUITE_MACHINE_ID", "ci-runner-7")
    assert fp.machine_id(cpu, gpu) == "ci-runner-7"
    monkeypatch.setenv("SUITE_MACHINE_ID", "../evil")
    with pytest.raises(ValueError, match="SUITE_MACHINE_ID"):
        fp.machine_id(cpu, None)


def test_fingerprint_has_the_documented_fields():
    f = fp.fingerprint()
    assert {"machine_id", "kind", "cpu", "software"} <= set(f)
    assert {"model", "isa_flags", "usable_cpus", "torch_cpu_capability"} <= set(f["cpu"])
    assert "smep" not in f["cpu"]["isa_flags"]  # security features are not ISA
    assert f["software"]["torch"] == torch.__version__


def test_options_parse_and_refuse():
    assert parse_slowdown("cpu_fused_moe.vec=0.1, cpu_router=0.5") == {
        "cpu_fused_moe.vec": 0.1, "cpu_router": 0.5}
    for bad in ("cpu_fused_moe.vec", "x=abc", "x=-1", "=0.1"):
        with pytest.raises(ValueError, match="GLOB=FRACTION"):
            parse_slowdown(bad)
    s = BenchSettings.from_options(device="cpu", tokens="1,8", shapes=None, dtypes=None,
                                   threads="1", time_s=None, min_rounds=None,
                                   slowdown={"cpu_*": 0.2}, include_reference=False,
                                   usable_cpus=[0, 1])
    assert s.tokens == (1, 8) and s.pinned_cpus == [0] and s.dtypes == ("bfloat16",)
    assert s.slowdown_for("cpu_fused_moe.vec") == 0.2 and s.slowdown_for("fused_experts_cpu") == 0
    with pytest.raises(ValueError, match="may use 2 CPUs"):
        BenchSettings.from_options(device="cpu", tokens=None, shapes=None, dtypes=None,
                                   threads="3", time_s=None, min_rounds=None, slowdown={},
                                   include_reference=False, usable_cpus=[0, 1])
    with pytest.raises(ValueError, match="unknown dtypes"):
        BenchSettings.from_options(device="cpu", tokens=None, shapes=None, dtypes="int3",
                                   threads=None, time_s=None, min_rounds=None, slowdown={},
                                   include_reference=False, usable_cpus=[0])


def test_slowed_adds_the_stated_fraction_of_work():
    calls = []

    def kernel():
        calls.append(1)
        time.sleep(0.004)
        return "out"

    t0 = time.perf_counter()
    assert Slowed(kernel, 1.0)() == "out"
    elapsed = time.perf_counter() - t0
    assert len(calls) == 1
    assert elapsed >= 2 * 0.004  # the wrapper spins at least as long as the call itself took


def test_replay_clock_hands_pytest_benchmark_the_measured_rounds(benchmark):
    """The e2e benchmark times generate() inside the engine's process; ReplayClock must make
    pytest-benchmark record exactly those durations, one a round, and refuse to invent any."""
    clock = ReplayClock()
    durations = [0.30, 0.10, 0.20, 0.25]
    clock.load(durations)
    benchmark._timer = clock  # what pytest.mark.benchmark(timer=clock) installs
    benchmark.pedantic(clock.advance, rounds=len(durations), iterations=1, warmup_rounds=0)
    assert benchmark.stats.stats.data == pytest.approx(durations, abs=1e-12)
    assert benchmark.stats.stats.median == pytest.approx(0.225)
    with pytest.raises(RuntimeError, match="more rounds timed than durations loaded"):
        clock.advance()
    with pytest.raises(ValueError, match="must be positive"):
        clock.load([0.1, 0.0])
    with pytest.raises(ValueError, match="must be positive"):
        clock.load([])


def test_baton_windows_pass_every_window_and_warm_after_each_turn():
    """In an interleaved A/B pair, run_case hands the baton over before the first timed round
    and then every `rounds` rounds (suites/bench/timing.py Windows), makes one untimed call
    after each turn, and still runs the case's own per-round setup (the control op)."""
    from suites.bench.timing import Windows

    events: list[str] = []

    class FakeBaton:
        def pass_(self):
            events.append("pass")

    w = Windows(FakeBaton().pass_, lambda: events.append("warm"),
                lambda: events.append("control"), rounds=3)
    w.handover()
    for _ in range(1 + 10):  # pedantic: one warm-up round, then 10 timed rounds
        w.setup()
        events.append("round")
    assert events[:2] == ["pass", "warm"]
    rounds_between = [len(s.split("round")) - 1 for s in " ".join(events).split("pass")[1:]]
    assert rounds_between == [3, 3, 3, 2], events
    assert events.count("control") == 11 and w.handovers == 4
    assert all(events[i + 1] == "warm" for i, e in enumerate(events) if e == "pass")


def test_auto_rounds_follow_the_cases_own_variance():
    """--bench-rounds auto (an A/B run's processes): the rounds that bring the median's standard
    error to AUTO_SE from the pilot's spread (cv floored at CV_FLOOR), at least AUTO_MIN, never
    more than the time rule; an unknown rule is refused."""
    from suites.bench import timing as t

    steady = [1e-4] * 20
    assert t.auto_rounds(steady, 1000) == (math.ceil((1.2533 * t.CV_FLOOR / t.AUTO_SE) ** 2), 0.0)
    noisy = [1e-4 * (1 + 0.1 * z) for z in (-1.5, -1, -0.5, -0.2, 0, 0.2, 0.5, 1, 1.5, 0.1)]
    rounds, cv = t.auto_rounds(noisy, 1000)
    assert 0.05 < cv < 0.15 and rounds == math.ceil((1.2533 * cv / t.AUTO_SE) ** 2)
    assert t.auto_rounds(noisy, 40) == (40, cv)  # capped by the time rule
    # one preempted call among 20 does not set the rounds (robust spread)
    assert t.auto_rounds([*steady[:19], 5e-3], 1000) == t.auto_rounds(steady, 1000)
    assert t.auto_rounds([0.3], 10)[0] == 10 and t.auto_rounds([0.3, 0.3], 3)[0] == 3
    assert t.auto_rounds([0.3, 0.3], 100)[0] >= t.AUTO_MIN
    s = BenchSettings.from_options(device="cpu", tokens="1", shapes=None, dtypes=None,
                                   threads="1", time_s=None, min_rounds=None, slowdown={},
                                   include_reference=False, usable_cpus=[0], rounds_rule="auto")
    assert s.rounds_rule == "auto"
    with pytest.raises(ValueError, match="--bench-rounds 'often': expected one of time, auto"):
        BenchSettings.from_options(device="cpu", tokens="1", shapes=None, dtypes=None,
                                   threads="1", time_s=None, min_rounds=None, slowdown={},
                                   include_reference=False, usable_cpus=[0],
                                   rounds_rule="often")


def test_auto_rounds_case_records_its_rule(benchmark):
    """run_case with the auto rule on a steady 0.2 ms call: far fewer rounds than the time
    rule's 0.3 s would take, and the record says which rule and what the pilot saw."""
    from suites.bench.probes import Roofline
    from suites.bench.timing import run_case

    s = BenchSettings.from_options(device="cpu", tokens="1", shapes=None, dtypes=None,
                                   threads="1", time_s=None, min_rounds=None, slowdown={},
                                   include_reference=False, usable_cpus=[0], rounds_rule="auto")

    def call():
        end = time.perf_counter() + 2e-4
        while time.perf_counter() < end:
            pass

    rl = Roofline(device="cpu", matmul_flops_per_s={"bfloat16": 1e12}, copy_bytes_per_s=1e10)
    run_case(benchmark, call, settings=s, roofline=rl, group="g", backend="fake",
             extra={"family": "router", "dtype": "bfloat16", "tokens": 1, "flop": 1.0,
                    "bytes": 1.0})
    timing = benchmark.extra_info["timing"]
    assert timing["rounds_rule"] == "auto" and "pilot_cv" in timing
    assert 5 <= timing["rounds"] < 0.3 / 2e-4 / 3  # the time rule: 1000 (its cap)
    assert benchmark.extra_info["control"]["rounds"] < 2 * 40


def test_windows_rewarm_only_short_calls():
    """A call of REWARM_MAX_S or more gets no untimed call after each handover (it would double
    a case whose window is one round)."""
    from suites.bench.timing import Windows

    events: list[str] = []

    class FakeBaton:
        def pass_(self):
            events.append("pass")

    w = Windows(FakeBaton().pass_, lambda: events.append("warm"), None, rounds=1, rewarm=False)
    w.handover()
    for _ in range(3):
        w.setup()
        events.append("round")
    assert events == ["pass", "round", "pass", "round", "pass", "round"]


def test_roofline_probes_run_once_a_run_and_are_reused(tmp_path, monkeypatch):
    """SUITE_BENCH_ROOFLINE (an A/B run's folder): the first process measures and writes the
    roofline, later ones with the same device, dtypes and threads reuse it (and say so); a file
    that does not match, or is corrupt, is left alone and the probes run."""
    from suites.bench import probes

    calls = []

    def fake_measure(device, dtypes):
        calls.append(tuple(dtypes))
        return Roofline(device=device, matmul_flops_per_s={d: 1e12 for d in dtypes},
                        copy_bytes_per_s=1e10, probe={"seconds": 2.5})

    monkeypatch.setattr(probes, "measure", fake_measure)
    path = tmp_path / "roofline.json"
    first = probes.measure_or_reuse(str(path), "cpu", ("bfloat16", "float32"))
    again = probes.measure_or_reuse(str(path), "cpu", ("float32", "bfloat16"))
    assert len(calls) == 1 and path.exists()
    assert again.matmul_flops_per_s == first.matmul_flops_per_s
    assert again.probe["reused_from"] == str(path) and "reused_from" not in first.probe
    before = path.read_text()
    probes.measure_or_reuse(str(path), "cpu", ("float32",))  # other dtypes: measured anew
    assert len(calls) == 2 and path.read_text() == before
    path.write_text("{not json")
    probes.measure_or_reuse(str(path), "cpu", ("bfloat16", "float32"))
    assert len(calls) == 3 and path.read_text() == "{not json"
    probes.measure_or_reuse(None, "cpu", ("float32",))
    assert len(calls) == 4


def test_a_case_spans_several_windows_a_side():
    """A/B windows: about WINDOW_S of calls, but never fewer than MIN_WINDOWS windows a side
    for a case (a slow stretch of the machine must not cover one side's whole median); a call
    longer than a window is a window of one round."""
    from reports.baton import WINDOW_S
    from suites.bench.timing import MIN_WINDOWS, window_rounds

    assert window_rounds(1e-5, 100000) == math.ceil(WINDOW_S / 1e-5)  # long cases: ~50 ms
    assert window_rounds(1e-4, 300) == math.ceil(300 / MIN_WINDOWS)  # was one 300-round window
    assert window_rounds(0.2, 7) == 1 and window_rounds(1e-6, 3) == 1


def test_quantized_weights_cache_is_read_back_by_every_process(tmp_path, monkeypatch):
    """SUITE_BENCH_WEIGHT_CACHE (an A/B run's): the oracle's quantized weights are computed
    once and read back bit for bit (codes, scales, zero points) by later processes, into their
    own memory; the process that wrote the file reads it back too (every side alike)."""
    from reference import quant as Q

    cfg = get_shape("mixtral-8x7b-cpu-experts")
    scheme = Q.int_weight_only(4, 32, True)
    monkeypatch.delenv(workloads.WEIGHT_CACHE_ENV, raising=False)
    plain = workloads.quantized_weights(cfg, scheme)
    monkeypatch.setenv(workloads.WEIGHT_CACHE_ENV, str(tmp_path))
    first = workloads.quantized_weights(cfg, scheme)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    calls = []
    monkeypatch.setattr("reference.quant.quantize_weight",
                        lambda *a, **k: calls.append(a) or pytest.fail("recomputed"))
    again = workloads.quantized_weights(cfg, scheme)
    assert not calls
    for a, b, c in zip(plain, first, again):
        assert a.scheme == b.scheme == c.scheme and a.shape == c.shape
        for k in ("q", "scale", "zero"):
            x, y, z = getattr(a, k), getattr(b, k), getattr(c, k)
            assert (x is None) == (z is None) and (x is None or (torch.equal(x, y)
                                                                 and torch.equal(x, z)))
        assert c.q.untyped_storage().data_ptr() != b.q.untyped_storage().data_ptr()
