"""The suite's own GPU plumbing, on a CUDA device without vLLM (the device machines lent to these
sessions have torch and Triton, not the CUDA vLLM wheel). Marked gpu: skipped with a reason
where there is no CUDA device, deselected from `nox -s tests`. Run by .ci/device-check.

  oracles on CUDA   reference routing / experts / the whole MoE block in fp64 on the GPU give
                    what they give on the CPU (ids exactly, values to 1e-10): a GPU runner can
                    compute the truth where the data is
  CUDA-event timer  suites/bench/roofline.CudaEventTimer reads the same duration as the host
                    clock around a synchronized GEMM (within 10% on a long enough call)
  L2 flush          an L2-resident read is slower after roofline.L2Flush than when warm
  roofline probes   measure("cuda") gives a bf16 matmul peak and a copy bandwidth in the range
                    of a data-centre GPU (printed, for the note)
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import pytest
import torch

from fixtures.catalogue import get as get_shape
from fixtures.weights import hidden_states, moe_weights
from reference.moe import moe_block

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]

SHAPES = ("qwen3.5-397b-a17b-cpu-experts", "deepseek-v3-cpu-experts", "mixtral-8x7b-cpu-experts",
          "gpt-oss-20b-cpu-experts")


def _to(w, device: str):
    return dataclasses.replace(w, **{f.name: getattr(w, f.name).to(device)
                                     for f in dataclasses.fields(w)
                                     if isinstance(getattr(w, f.name), torch.Tensor)})


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tokens", [1, 33, 257])
def test_oracle_on_cuda_matches_cpu(shape, tokens):
    cfg = get_shape(shape)
    w = moe_weights(cfg, torch.bfloat16, "device-check")
    x = hidden_states(tokens, cfg.hidden_size, torch.bfloat16, "device-check")
    out_c, wt_c, ids_c = moe_block(x, cfg, w)
    out_g, wt_g, ids_g = moe_block(x.cuda(), cfg, _to(w, "cuda"))
    assert out_g.is_cuda and out_g.dtype == torch.float64
    assert torch.equal(ids_g.cpu().sort(-1).values, ids_c.sort(-1).values), (shape, tokens)
    torch.testing.assert_close(wt_g.cpu(), wt_c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-10, atol=1e-10 * out_c.abs().max().item())


def test_cuda_event_timer_agrees_with_the_host_clock():
    from suites.bench.probes import CudaEventTimer

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b)
    torch.cuda.synchronize()
    timer, ev, host = CudaEventTimer(), [], []
    timer()
    for _ in range(10):
        t0, h0 = timer(), time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize()
        ev.append(timer() - t0)
        host.append(time.perf_counter() - h0)
    e, h = statistics.median(ev), statistics.median(host)
    print(f"8192^3 bf16 GEMM: CUDA events {e * 1e3:.3f} ms, host clock {h * 1e3:.3f} ms, "
          f"{2 * 8192**3 / e / 1e12:.0f} TFLOP/s")
    assert 0 < e <= h * 1.02 and e >= 0.9 * h, (e, h)


def test_l2_flush_makes_a_resident_read_cold():
    from suites.bench.probes import CudaEventTimer, L2Flush

    flush, timer = L2Flush(), CudaEventTimer()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    x = torch.ones(l2 // 4 // 4, device="cuda")  # a quarter of L2, fp32

    def read_time(cold: bool) -> float:
        times = []
        for _ in range(30):
            x.sum()  # bring it into L2
            if cold:
                flush()
            t0 = timer()
            x.sum()
            times.append(timer() - t0)
        return statistics.median(times)

    warm, cold = read_time(False), read_time(True)
    print(f"read of {x.numel() * 4 / 2**20:.0f} MiB (L2 {l2 / 2**20:.0f} MiB): warm "
          f"{warm * 1e6:.1f} us, after flush {cold * 1e6:.1f} us")
    assert cold > 1.1 * warm, (warm, cold)


def test_roofline_probes_on_cuda():
    from suites.bench.probes import measure

    r = measure("cuda", ("bfloat16", "float32"))
    bf16, bw = r.matmul_flops_per_s["bfloat16"], r.copy_bytes_per_s
    print(f"roofline: bf16 {bf16 / 1e12:.0f} TFLOP/s, fp32 "
          f"{r.matmul_flops_per_s['float32'] / 1e12:.0f} TFLOP/s, copy {bw / 1e9:.0f} GB/s")
    assert 50e12 < bf16 < 5e15 and 0.3e12 < bw < 20e12, r
