"""MoE experts per backend over token counts at catalogue shapes sized for the device.

One record per (backend, shape, dtype, tokens); extra_info carries the shape, the cost model
(suites/bench/workloads.py), achieved FLOP/s and bytes/s and the roofline fractions.
"""

from __future__ import annotations

import pytest

from fixtures.catalogue import get as get_shape
from suites.bench import workloads
from suites.bench.probes import DTYPES
from suites.bench.selection import parametrize_cases
from suites.bench.timing import run_case

pytestmark = [pytest.mark.bench, pytest.mark.moe]

_PREPARED: dict[tuple, object] = {}  # the one (backend, shape, dtype) whose weights are packed


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_cases(metafunc, "experts_case", "experts")


def _prepared(backend, shape: str, dtype_name: str):
    key = (backend.name, shape, dtype_name)
    if key not in _PREPARED:
        _PREPARED.clear()  # free the previous shape's packed weights first
        cfg = get_shape(shape)
        w13, w2 = workloads.expert_weights(cfg, DTYPES[dtype_name], backend.device)
        _PREPARED[key] = backend.prepare(w13, w2, activation="silu")
    return _PREPARED[key]


def test_moe_experts(benchmark, experts_case, bench_settings, roofline):
    from suites.backends import REGISTRY, UnsupportedShape

    name, shape, dtype_name, tokens = experts_case
    backend = REGISTRY.get(name)
    cfg = get_shape(shape)
    H, I, E, K = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
                  cfg.num_experts_per_tok)
    dtype = DTYPES[dtype_name]
    try:
        backend.check(H=H, I=I, E=E, dtype=dtype, activation="silu")
    except UnsupportedShape as e:
        pytest.skip(str(e))
    handle = _prepared(backend, shape, dtype_name)
    p = workloads.experts_problem(cfg, tokens, dtype)
    x, tw, ti = p.x, p.topk_weights, p.topk_ids
    if backend.device == "cuda":
        x, tw, ti = x.cuda(), tw.cuda(), ti.cuda()
    flop, nbytes = workloads.experts_cost(tokens=tokens, H=H, I=I, K=K, n_active=p.n_active,
                                          act_bytes=dtype.itemsize, weight_bytes=dtype.itemsize)
    extra = {
        "family": "moe_experts", "shape": {"name": shape, "T": tokens, "H": H, "I": I, "E": E,
                                           "K": K, "n_active": p.n_active},
        "dtype": dtype_name, "tokens": tokens, "flop": flop, "bytes": nbytes,
        "cost_model": "flop 6TKHI; bytes n_active*3HI*s + 2TH*s + 8TK",
    }
    run_case(benchmark, lambda: backend.run(handle, x, tw, ti), settings=bench_settings,
             roofline=roofline, group=f"moe_experts {shape} {dtype_name}", backend=name,
             extra=extra, inputs=(x, tw, ti, handle))
