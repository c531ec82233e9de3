"""Routers per routing method over token counts (logits [T, E] float32 in).

Methods and the models they come from (the catalogue's real router configs; routers do not
depend on H or I, so the same shapes serve CPU and GPU):
  greedy                softmax top-k, renormalized: Qwen3.5 (E 512, K 10), Mixtral (E 8, K 2)
  noaux_tc              grouped sigmoid with correction bias: DeepSeek-V3 (E 256, K 8, 8/4 groups)
  group_limited_greedy  grouped softmax, max-per-group (DeepSeek-V2 style, on DeepSeek-V3's E/K)
  topk_softmax          softmax over the top-k logits: gpt-oss-120b (E 128, K 4)
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fixtures.catalogue import DEEPSEEK_V3, GPT_OSS_120B, MIXTRAL_8X7B, QWEN35_397B
from suites.bench import workloads
from suites.bench.conftest import settings_of
from suites.bench.selection import backends
from suites.bench.timing import run_case

pytestmark = [pytest.mark.bench, pytest.mark.moe]

ROUTERS = {
    "greedy-qwen3.5": QWEN35_397B.router,
    "greedy-mixtral": MIXTRAL_8X7B.router,
    "noaux_tc-deepseek-v3": DEEPSEEK_V3.router,
    "group_limited_greedy-deepseek-v3": replace(DEEPSEEK_V3.router,
                                                topk_method="group_limited_greedy",
                                                scoring_func="softmax", routed_scaling_factor=1.0),
    "topk_softmax-gpt-oss-120b": GPT_OSS_120B.router,
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "router_case" not in metafunc.fixturenames:
        return
    s = settings_of(metafunc.config)
    params = [pytest.param((name, method, tokens), marks=marks, id=f"{name}-{method}-T{tokens}")
              for name, marks in backends(metafunc.config, "router", s.include_reference)
              for method in ROUTERS for tokens in s.tokens]
    metafunc.parametrize("router_case", params)


def test_router(benchmark, router_case, bench_settings, roofline):
    from suites.backends import REGISTRY, UnsupportedShape

    name, method, tokens = router_case
    backend = REGISTRY.get(name)
    cfg = ROUTERS[method]
    E, K = cfg.num_experts, cfg.num_experts_per_tok
    logits = workloads.router_logits(tokens, E, method)
    bias = workloads.correction_bias(E, method) if cfg.topk_method == "noaux_tc" else None
    try:
        backend.route(logits[:1], cfg, bias)  # refusals by design skip before any timing
    except UnsupportedShape as e:
        pytest.skip(str(e))
    if backend.device == "cuda":
        logits = logits.cuda()
        bias = None if bias is None else bias.cuda()
    flop, nbytes = workloads.router_cost(tokens=tokens, E=E, K=K, bias=bias is not None)
    extra = {
        "family": "router", "dtype": "float32", "tokens": tokens, "flop": flop, "bytes": nbytes,
        "shape": {"name": method, "T": tokens, "E": E, "K": K, "topk_method": cfg.topk_method,
                  "scoring_func": cfg.scoring_func, "n_group": cfg.n_group,
                  "topk_group": cfg.topk_group},
        "cost_model": "flop 0 (selection); bytes 4TE (+4E bias) + 8TK",
    }
    run_case(benchmark, lambda: backend.route(logits, cfg, bias), settings=bench_settings,
             roofline=roofline, group=f"router {method}", backend=name, extra=extra,
             inputs=(logits, bias))
