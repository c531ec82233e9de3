"""Benchmark records say what they measured, and nothing they did not (issue 28, part 8).

  timed region     a CUDA record claimed the device-to-host copy was timed while the adapters
                   return device tensors: what a round contains is now read from the tensors the
                   case passes in and gets back (suites/bench/timing.py timed_region), and a copy
                   nobody asked for is refused
  roofline         quantized kernels were held to the bf16 matmul peak (an int8 kernel read
                   above 1): the compute roof is the peak of the arithmetic done
                   (extra_info.compute_dtype), a missing peak leaves the memory roof only, and a
                   fraction above 1 is withheld with a flag saying the roof was wrong
  e2e phases       the e2e "decode" figure was the whole generate, prefill included: prefill and
                   decode are timed apart (suites/bench/phases.py)

Each test fails against the code before the fix (said per test).
"""

from __future__ import annotations

import pathlib
import re
import types

import pytest
import torch

from reports import roofline as R
from reports.schema import SchemaError, validate
from suites.bench import phases, timing
from suites.bench.probes import Roofline, measure, quant_probe_plan
from suites.bench.timing import BenchSettings, TimedRegionError, run_case, timed_region

BENCH = pathlib.Path(__file__).resolve().parents[2] / "suites" / "bench"


class FakeTensor:
    """What timed_region reads of a tensor (device, nbytes), placed on any device: a CUDA
    tensor's metadata without a CUDA device."""

    def __init__(self, device: str, nbytes: int = 1024) -> None:
        self.device = torch.device(device)
        self.nbytes = nbytes


# -- timed region --------------------------------------------------------------------------------

def test_cuda_region_with_device_tensors_excludes_copies():
    r = timed_region("cuda", inputs=(FakeTensor("cuda:0"), FakeTensor("cuda:0")),
                     output=(FakeTensor("cuda:0"), FakeTensor("cuda:0")))
    assert r["clock"] == "cuda-events" and r["d2h_copy"] is False and r["h2d_copy"] is False
    assert any("device-to-host" in e for e in r["excludes"])
    assert not any("copy" in c for c in r["contains"])
    assert any("L2 flush" in e for e in r["excludes"])


def test_cuda_region_refuses_an_unasked_copy_and_times_a_meant_one():
    with pytest.raises(TimedRegionError, match="returns host outputs"):
        timed_region("cuda", inputs=(FakeTensor("cuda:0"),), output=FakeTensor("cpu"))
    with pytest.raises(TimedRegionError, match="takes host inputs"):
        timed_region("cuda", inputs=(FakeTensor("cpu"),), output=FakeTensor("cuda:0"))
    # a d2h copy allowed does not let an h2d copy through
    with pytest.raises(TimedRegionError, match="takes host inputs"):
        timed_region("cuda", inputs=(FakeTensor("cpu"),), output=FakeTensor("cpu"),
                     copies={"d2h": "the engine reads the ids"})
    r = timed_region("cuda", inputs={"logits": FakeTensor("cuda:0"), "ids": None},
                     output=FakeTensor("cpu", nbytes=96), copies={"d2h": "the engine reads them"})
    assert r["d2h_copy"] is True and r["copies_why"] == {"d2h": "the engine reads them"}
    assert any("device-to-host copy of 1 output tensor(s), 96 bytes" in c for c in r["contains"])
    with pytest.raises(ValueError, match="keys 'h2d' and 'd2h'"):
        timed_region("cuda", copies={"copy": "x"})


def test_cpu_region():
    r = timed_region("cpu", inputs=(torch.zeros(2),), output=torch.zeros(2))
    assert r["clock"] == "perf_counter" and not r["d2h_copy"] and not r["h2d_copy"]


def _cuda_settings() -> BenchSettings:
    return BenchSettings(device="cuda", tokens=(1,), shapes=("x",), dtypes=("bfloat16",),
                         threads=1, pinned_cpus=[0], time_s=0.0, min_rounds=3, max_rounds=3)


def test_run_case_on_cuda_records_the_region_it_timed(benchmark, monkeypatch):
    """run_case's CUDA path, on CPU: no synchronize, no L2 flush. Before the fix the router and
    experts records said "times include the device-to-host copy" for adapters that return
    device tensors; the record now holds what the call did."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(timing._roofline, "L2Flush", lambda: (lambda: None))
    rl = Roofline(device="cuda", matmul_flops_per_s={"bfloat16": 1e15}, copy_bytes_per_s=3e12)
    extra = {"family": "router", "dtype": "bfloat16", "tokens": 1, "flop": 0.0, "bytes": 100.0}
    run_case(benchmark, lambda: (FakeTensor("cuda:0"), FakeTensor("cuda:0")),
             settings=_cuda_settings(), roofline=rl, group="g", backend="triton.router",
             extra=extra, inputs=(FakeTensor("cuda:0"),))
    region = benchmark.extra_info["timing"]["region"]
    assert region["d2h_copy"] is False and region["clock"] == "cuda-events"
    assert benchmark.extra_info["timing"]["clock"] == "cuda-events"
    assert "note" not in benchmark.extra_info


def test_run_case_on_cuda_refuses_a_host_output(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(timing._roofline, "L2Flush", lambda: (lambda: None))
    rl = Roofline(device="cuda", matmul_flops_per_s={"bfloat16": 1e15}, copy_bytes_per_s=3e12)
    extra = {"family": "router", "dtype": "bfloat16", "tokens": 1, "flop": 0.0, "bytes": 100.0}
    with pytest.raises(TimedRegionError, match="returns host outputs"):
        run_case(types.SimpleNamespace(), lambda: FakeTensor("cpu"), settings=_cuda_settings(),
                 roofline=rl,
                 group="g", backend="b", extra=extra, inputs=(FakeTensor("cuda:0"),))


def test_no_benchmark_claims_a_copy_by_hand():
    """What a round contains comes from timed_region, not from a note written beside a call
    (the notes that claimed a device-to-host copy were false: the adapters return device
    tensors)."""
    for path in BENCH.glob("test_*.py"):
        text = path.read_text()
        for m in re.finditer(r'"note"\]?\s*[:=]\s*"([^"]*)"', text):
            assert not re.search(r"device-to-host|d2h|host tensor", m.group(1)), (path, m.group(1))


# -- roofline ------------------------------------------------------------------------------------

PEAKS = {"bfloat16": 1e11, "float32": 5e10, "int8": 2e11}


def test_int8_kernel_is_held_to_the_int8_peak():
    """An int8 W8A8 kernel at 1.5x the bf16 peak (half the int8 one). Before: compute fraction
    1.5 against the bf16 peak, recorded as such."""
    f = R.figures(matmul_flops_per_s=PEAKS, copy_bytes_per_s=1e10, dtype="bfloat16",
                  flop=1.5e8, nbytes=1e5, seconds=1e-3, compute_dtype="int8")
    assert f["compute_dtype"] == "int8" and f["peak_flops_per_s"] == 2e11
    assert f["compute_fraction"] == pytest.approx(0.75)
    assert f["roofline_fraction"] == pytest.approx(0.75) and f["bound"] == "compute"
    assert f["roofline_flags"] == []
    # the same call held to the bf16 peak (what the record did before): withheld and flagged
    old = R.figures(matmul_flops_per_s=PEAKS, copy_bytes_per_s=1e10, dtype="bfloat16",
                    flop=1.5e8, nbytes=1e5, seconds=1e-3)
    assert old["compute_fraction"] is None and old["roofline_fraction"] is None
    assert len(old["roofline_flags"]) == 1
    assert re.search(r"compute fraction 1\.5 > 1: the peak used \(bfloat16 matmul.*is wrong",
                     old["roofline_flags"][0])


def test_no_peak_of_the_arithmetic_leaves_the_memory_roof_only():
    f = R.figures(matmul_flops_per_s=PEAKS, copy_bytes_per_s=1e10, dtype="bfloat16",
                  flop=1e8, nbytes=4e6, seconds=1e-3, compute_dtype="float8_e4m3fn")
    assert f["compute_fraction"] is None and f["peak_flops_per_s"] is None
    assert f["roofline_fraction"] == pytest.approx(0.4) == f["bandwidth_fraction"]
    assert "compute fraction is unavailable" in f["roofline_basis"] and f["roofline_flags"] == []


def test_bandwidth_above_the_copy_probe_is_withheld():
    f = R.figures(matmul_flops_per_s=PEAKS, copy_bytes_per_s=1e10, dtype="float32",
                  flop=0.0, nbytes=3e7, seconds=1e-3)
    assert f["roofline_fraction"] is None and f["bandwidth_fraction"] is None
    assert "bandwidth fraction 3 > 1: the roof used (copy bandwidth" in f["roofline_flags"][0]


@pytest.mark.parametrize("flop, nbytes, seconds", [
    (1e6, 1e6, 1e-3), (1e8, 1e6, 1e-3), (1e8, 1e6, 5e-4), (0.0, 5e6, 1e-3), (0.0, 2e7, 1e-3),
    (3e8, 1e4, 1e-3), (1e5, 1e8, 1e-3)])
@pytest.mark.parametrize("compute_dtype", [None, "int8", "float8_e4m3fn"])
def test_no_fraction_above_one_is_ever_recorded(flop, nbytes, seconds, compute_dtype):
    f = R.figures(matmul_flops_per_s=PEAKS, copy_bytes_per_s=1e10, dtype="bfloat16",
                  flop=flop, nbytes=nbytes, seconds=seconds, compute_dtype=compute_dtype)
    kept = [f[k] for k in ("compute_fraction", "bandwidth_fraction", "roofline_fraction")
            if f[k] is not None]
    assert all(0 <= x <= 1 + R.ABOVE_ONE for x in kept), f
    if f["roofline_fraction"] is None:
        assert f["roofline_flags"], f


def _run(extra_update: dict) -> dict:
    import numpy as np

    from reports.synthetic import Noise, benchmark_names, run

    raw = run(names=benchmark_names(2), rng=np.random.default_rng(0), noise=Noise(processes=3))
    ex = raw["benchmarks"][0]["extra_info"]  # a moe_experts record
    assert ex["family"] == "moe_experts"
    ex.update(extra_update)
    return raw


def test_schema_refuses_a_fraction_above_one_and_an_unexplained_null():
    validate(_run({"roofline_fraction": None, "roofline_flags": ["compute fraction 1.2 > 1"]}))
    with pytest.raises(SchemaError, match=r"null without extra_info\.roofline_flags"):
        validate(_run({"roofline_fraction": None}))
    with pytest.raises(SchemaError, match=r"1\.3 > 1: the roof it is against is wrong"):
        validate(_run({"roofline_fraction": 1.3, "roofline_basis": "x", "roofline_flags": []}))
    validate(_run({"roofline_fraction": 1.3}))  # written before roofline_basis: loaded as is


def test_schema_knows_the_quantized_family():
    """Runs with quantized-expert records failed validation ('unknown family
    moe_quant_experts'), so nox -s bench could not store them."""
    raw = _run({"family": "moe_quant_experts", "compute_dtype": "int8"})
    assert validate(raw).records[0].family == "moe_quant_experts"


def test_merge_keeps_the_arithmetic_peak():
    """reports/merge.py recomputes the fractions from the merged roofline: with the record's
    compute_dtype, not the activation dtype's peak."""
    from reports.merge import _rates

    roof = {"matmul_flops_per_s": PEAKS, "copy_bytes_per_s": 1e10}
    ex = {"dtype": "bfloat16", "compute_dtype": "int8", "flop": 1.5e8, "bytes": 1e5,
          "tokens": 1}
    _rates(ex, 1e-3, roof)
    assert ex["compute_fraction"] == pytest.approx(0.75) and ex["roofline_flags"] == []


def test_quantized_compute_dtype_per_scheme():
    from reference import quant as Q
    from suites.bench.workloads import quantized_compute_dtype

    cases = {Q.INT8_W8A8_CHANNEL: "int8", Q.int4_w4a8(32, False): "int8",
             Q.fp8_block(128, 128, True): "float8_e4m3fn",
             Q.fp8_block(128, 128, False): "bfloat16", Q.int_weight_only(4, 128, False): "bfloat16",
             Q.MXFP4: "bfloat16"}
    for scheme, want in cases.items():
        assert quantized_compute_dtype(scheme, "bfloat16") == want, scheme.name


def test_quant_probe_plan():
    assert quant_probe_plan("cpu", None)["int8"] is None
    assert "AMX-FP8" in quant_probe_plan("cpu", None)["float8_e4m3fn"]
    assert "no fp8 tensor cores" in quant_probe_plan("cuda", (8, 0))["float8_e4m3fn"]
    assert quant_probe_plan("cuda", (9, 0)) == {"int8": None, "float8_e4m3fn": None}
    assert quant_probe_plan("cuda", (8, 9))["float8_e4m3fn"] is None


def test_cpu_probes_measure_the_int8_peak():
    r = measure("cpu", ("float32",), sizes=(128,))
    assert r.matmul_flops_per_s["int8"] > 0 and "torch._int_mm" in r.probe["ops"]["int8"]
    assert "float8_e4m3fn" in r.probe["unmeasured"]
    assert "float8_e4m3fn" not in r.matmul_flops_per_s


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_probes_measure_int8_and_fp8_peaks():
    r = measure("cuda", ("bfloat16",))
    p = r.matmul_flops_per_s
    print({k: f"{v / 1e12:.0f} T/s" for k, v in p.items()}, r.probe["unmeasured"])
    assert p["int8"] > p["bfloat16"]
    if torch.cuda.get_device_capability() >= (8, 9):
        assert p["float8_e4m3fn"] > p["bfloat16"]


# -- e2e: prefill and decode ---------------------------------------------------------------------

class FakeEngine:
    """generate(max_tokens=n) of B requests: prefill P seconds, then (n - 1) decode steps of
    D seconds each (one step serves the whole batch), plus a fixed call overhead."""

    def __init__(self, prefill: float, step: float, overhead: float = 0.002) -> None:
        self.prefill, self.step, self.overhead = prefill, step, overhead
        self.calls: list[int] = []

    def generate(self, n: int):
        self.calls.append(n)

        class Result:
            seconds = self.overhead + self.prefill + (n - 1) * self.step

        return Result()


def test_decode_is_timed_without_prefill():
    """A long prefill (0.5 s) and 63 decode steps of 10 ms, batch 8: decode is 8 / 0.01 =
    800 tokens/s. The figure before the fix, tokens / whole generate, said 8 x 64 / 1.132 =
    452 tokens/s and called it decode."""
    eng = FakeEngine(prefill=0.5, step=0.01)
    B, N = 8, 64
    timed = phases.time_rounds(lambda w: eng.generate(1 if w == "first" else N), 4)
    assert eng.calls == [1, N, N, 1, 1, N, N, 1]  # paired, order alternating
    decode = timed.decode_s()
    assert decode == pytest.approx([63 * 0.01] * 4)
    f = phases.figures(batch=B, max_tokens=N, prompt_tokens=32, first_s=timed.first_s,
                       full_s=timed.full_s, decode_s=decode)
    assert f["decode"]["tokens_per_s"] == pytest.approx(B / 0.01)
    assert f["prefill"]["median_s"] == pytest.approx(0.502)
    assert f["prefill"]["prompt_tokens_per_s"] == pytest.approx(B * 32 / 0.502)
    assert f["generate"]["tokens_per_s"] == pytest.approx(B * N / 1.132)
    assert f["generate"]["tokens_per_s"] < 0.6 * f["decode"]["tokens_per_s"]


def test_a_disturbed_round_is_timed_again_and_counted():
    """A 1-token generate slower than the full one (seen here: 14.6 s beside 0.9 s) is timed
    again, at most twice a case; a third one is left for decode_s to refuse."""
    times = iter([9.0, 1.0,  0.1, 1.0,  1.0, 0.1,  0.1, 1.0])  # round 0 once disturbed
    timed = phases.time_rounds(lambda w: type("R", (), {"seconds": next(times)})(), 3)
    assert timed.redone == [[0, 9.0, 1.0]] and timed.decode_s() == pytest.approx([0.9] * 3)
    bad = iter([5.0, 1.0] * 4)
    timed = phases.time_rounds(lambda w: type("R", (), {"seconds": next(bad)})(), 1)
    assert len(timed.redone) == 2
    with pytest.raises(phases.PhaseError, match="round 0"):
        timed.decode_s()


def test_a_round_without_decode_time_is_refused():
    r = phases.PhaseRounds()
    r.first = [type("R", (), {"seconds": 0.3})()]
    r.full = [type("R", (), {"seconds": 0.2})()]
    with pytest.raises(phases.PhaseError, match=r"round 0: .* not more than"):
        r.decode_s()


def test_merge_pools_the_phases_over_processes():
    from reports.merge import _phases

    class Rec:
        def __init__(self, prefill):
            self.extra = {"phases": {"prefill": {"tokens": 8, "prompt_tokens": 256,
                                                 "median_s": prefill}}}

    ex = {"phases": {"prefill": {"tokens": 8, "prompt_tokens": 256, "median_s": 0.1}}}
    _phases(ex, [Rec(0.1), Rec(0.3), Rec(0.2)])
    p = ex["phases"]["prefill"]
    assert p["median_s"] == 0.2 and p["process_medians"] == [0.1, 0.3, 0.2]
    assert p["tokens_per_s"] == pytest.approx(40) and p["prompt_tokens_per_s"] == pytest.approx(1280)
