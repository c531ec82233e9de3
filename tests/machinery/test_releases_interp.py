"""suites/backends/vllm/releases.py, the tables of the CUDA releases under Triton's interpreter
(the *.interp adapters: Triton MoE launch, grouped router, V1 rejection sampler): which way each
release takes, from fake vLLM modules, so this runs with any vLLM or none."""

from __future__ import annotations

import sys
import types

import pytest

from suites.backends.vllm import releases as R

FM = "vllm.model_executor.layers.fused_moe.fused_moe"
RS = "vllm.v1.sample.rejection_sampler"

INTERP_TABLES = [R.TUNED_CONFIG_DEVICE_NAME, R.GROUPED_TOPK, R.FUSED_EXPERTS_ACTIVATION,
                 R.SPEC_DECODE_METADATA, R.V1_REJECTION_SAMPLER, R.V1_TARGET_CONSTRAINTS,
                 R.SILU_AND_MUL_NATIVE]


@pytest.mark.parametrize("table", INTERP_TABLES, ids=lambda t: t.what)
def test_interp_tables_reach_the_sweeps_oldest_release(table):
    """(Order, gaps and overlaps: test_releases.py, over every table.)"""
    assert table.first_release() == "0.11.0"  # code as old as the sweep's oldest release, read


def _platform(name: str):
    return type("Platform", (), {"get_device_name": lambda self, device_id=0: name})()


@pytest.fixture
def fake_fused_moe(monkeypatch):
    """A fused_moe module of one release: `file_name` says whether it has
    get_device_name_as_file_name (0.26.0 ..) or asks current_platform (.. 0.25.1)."""
    def make(file_name: bool):
        fm = types.ModuleType(FM)
        fm.current_platform = _platform("real GPU")
        if file_name:
            fm.get_device_name_as_file_name = lambda: "real_GPU"
        monkeypatch.setitem(sys.modules, FM, fm)
        return fm
    return make


@pytest.mark.parametrize("version,file_name", [
    ("0.34.0", True), ("0.26.0", True), ("0.25.1", False), ("0.14.1", False), ("0.11.0", False),
])
def test_tuned_config_device_name_is_patched_where_the_release_asks(fake_fused_moe, version,
                                                                    file_name):
    fm = fake_fused_moe(file_name)
    owner, name, answer = R.tuned_config_device_name("NVIDIA_H200", version)
    if file_name:
        assert (owner, name, answer) == (fm, "get_device_name_as_file_name", "NVIDIA_H200")
    else:  # the platform answers with spaces; get_config_file_name replaces them
        assert (owner, name, answer) == (fm.current_platform, "get_device_name", "NVIDIA H200")


def test_tuned_config_device_name_missing_where_the_table_says_is_not_guessed(fake_fused_moe):
    fake_fused_moe(file_name=False)
    with pytest.raises(R.NotInRelease, match="the table needs an entry"):
        R.tuned_config_device_name("NVIDIA_H200", "0.30.0")


def test_tuned_config_device_name_of_a_checkout_is_whichever_it_has(fake_fused_moe):
    fm = fake_fused_moe(file_name=False)
    owner, name, answer = R.tuned_config_device_name("NVIDIA_H200", "0.26.0.dev3+gabc")
    assert (owner, name, answer) == (fm.current_platform, "get_device_name", "NVIDIA H200")


@pytest.mark.parametrize("version,module", [
    ("0.32.0", "vllm.model_executor.layers.fused_moe.router.grouped_topk_router"),
    ("0.15.0", "vllm.model_executor.layers.fused_moe.router.grouped_topk_router"),
    ("0.14.1", FM), ("0.11.0", FM),
])
def test_grouped_topk_module_by_release(monkeypatch, version, module):
    for m in ("vllm.model_executor.layers.fused_moe.router.grouped_topk_router", FM):
        monkeypatch.setitem(sys.modules, m, None)
    fake = types.ModuleType(module)
    fake.grouped_topk = lambda *a, **k: module
    monkeypatch.setitem(sys.modules, module, fake)
    _, fn = R.resolve(R.GROUPED_TOPK, version)
    assert fn() == module


@pytest.mark.parametrize("version,enum", [("0.32.0", True), ("0.17.0", True),
                                          ("0.16.0", False), ("0.11.0", False)])
def test_fused_experts_activation_by_release(monkeypatch, version, enum):
    import enum as _enum

    act = types.ModuleType("vllm.model_executor.layers.fused_moe.activation")
    act.MoEActivation = _enum.Enum("MoEActivation", {"SILU": "silu", "GELU": "gelu"})
    fm = types.ModuleType(FM)
    fm.fused_experts = lambda *a, **k: None
    monkeypatch.setitem(sys.modules, act.__name__, act if enum else None)
    monkeypatch.setitem(sys.modules, FM, fm)
    got = R.fused_experts_activation("silu", version)
    assert got == (act.MoEActivation.SILU if enum else "silu")


@pytest.mark.parametrize("version,fields", [("0.32.0", ("cu_num_sampled_tokens",)),
                                            ("0.11.1", ("cu_num_sampled_tokens",)),
                                            ("0.11.0", ())])
def test_spec_decode_metadata_fields_by_release(monkeypatch, version, fields):
    md = types.ModuleType("vllm.v1.spec_decode.metadata")
    md.SpecDecodeMetadata = type("SpecDecodeMetadata", (), {})
    monkeypatch.setitem(sys.modules, md.__name__, md)
    assert R.spec_decode_metadata_fields(version) == fields


@pytest.fixture
def fake_rejection_sampler(monkeypatch):
    """vllm.v1.sample.rejection_sampler of one release: `bonus_outside` (0.11.0: forward takes
    the bonus tokens), `target` "logits" (0.16.0 ..) / "probs" (0.11.1 - 0.15.1) /
    "compute_probs" (0.11.0): what rejection_sample verifies against, and by which function."""
    def make(bonus_outside: bool, target: str):
        rs = types.ModuleType(RS)

        class RejectionSampler:
            if bonus_outside:
                def forward(self, metadata, draft_probs, target_logits, bonus_token_ids,
                            sampling_metadata):
                    pass
            else:
                def forward(self, metadata, draft_probs, logits, sampling_metadata):
                    pass

        rs.RejectionSampler = RejectionSampler
        if target == "compute_probs":
            rs.compute_probs = lambda *a: None
        else:
            rs.apply_sampling_constraints = lambda *a: None
        name = "target_logits" if target == "logits" else "target_probs"
        exec(f"def rejection_sample(draft_token_ids, num_draft_tokens, max_spec_len, "
             f"cu_num_draft_tokens, draft_probs, {name}, bonus_token_ids, sampling_metadata): "
             f"pass", rs.__dict__)
        monkeypatch.setitem(sys.modules, RS, rs)
    return make


@pytest.mark.parametrize("version,bonus_outside,target,expected", [
    ("0.32.0", False, "logits", ("bonus_inside", "logits")),
    ("0.16.0", False, "logits", ("bonus_inside", "logits")),
    ("0.15.1", False, "probs", ("bonus_inside", "probs")),
    ("0.11.1", False, "probs", ("bonus_inside", "probs")),
    ("0.11.0", True, "compute_probs", ("bonus_outside", "compute_probs")),
    # checkouts between releases say it by their signatures
    ("0.15.2.dev4+gabc", False, "probs", ("bonus_inside", "probs")),
    ("0.11.1.dev9+gabc", True, "compute_probs", ("bonus_outside", "compute_probs")),
])
def test_v1_rejection_sampler_styles_by_release(fake_rejection_sampler, version, bonus_outside,
                                                target, expected):
    fake_rejection_sampler(bonus_outside, target)
    assert R.v1_rejection_sampler_styles(version) == expected


def test_v1_rejection_sampler_without_compute_probs_in_0_11_0_needs_an_entry(
        fake_rejection_sampler):
    fake_rejection_sampler(True, "probs")  # a 0.11.0 that lacks the function the table names
    with pytest.raises(R.NotInRelease, match="the table needs an entry"):
        R.v1_rejection_sampler_styles("0.11.0")


@pytest.mark.parametrize("table", [R.SPEC_DECODE_METADATA, R.V1_REJECTION_SAMPLER,
                                   R.V1_TARGET_CONSTRAINTS], ids=lambda t: t.what)
def test_v1_sampler_removed_in_0_34_is_not_in_this_release_saying_so(table):
    with pytest.raises(R.NotInRelease, match=r"^not in this release: .*\(removed in 0\.34\.0\)"):
        R.resolve(table, "0.34.0")


@pytest.fixture
def fake_v2(monkeypatch):
    """rejection_sampler_utils.rejection_sample of one release: its draft-logits parameter and
    whether it takes use_block_verification."""
    def make(cache: bool, block: bool):
        mod = types.ModuleType("vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils")
        draft = "draft_logits_cache" if cache else "draft_logits"
        extra = ", use_block_verification=False" if block else ""
        exec(f"def rejection_sample(target_logits, {draft}, draft_sampled, cu_num_logits, pos, "
             f"idx_mapping, expanded_idx_mapping, expanded_local_pos, temperature, seed, "
             f"num_speculative_steps, synthetic_conditional_rates=None, use_fp64=False{extra}): "
             f"pass", mod.__dict__)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return make


@pytest.mark.parametrize("version,cache,block,style", [
    ("0.34.0", True, True, "cache"), ("0.32.0", False, True, "block"),
    ("0.25.0", False, True, "block"), ("0.24.0", False, False, "draft_logits"),
    ("0.22.0", False, False, "draft_logits"),
    ("0.33.1.dev2+gabc", True, True, "cache"), ("0.24.1.dev2+gabc", False, True, "block"),
])
def test_v2_rejection_sample_style_by_release(fake_v2, version, cache, block, style):
    fake_v2(cache, block)
    assert R.v2_rejection_sample_style(version) == style


@pytest.mark.parametrize("version,module,style", [
    ("0.21.0", "probabilistic_rejection_sampler_utils", "probabilistic"),
    ("0.20.0", "probabilistic_rejection_sampler_utils", "probabilistic_needs_draft_logits"),
    ("0.19.0", "rejection_sampler", "probabilistic_needs_draft_logits"),
    ("0.21.1.dev3+gabc", "probabilistic_rejection_sampler_utils", "probabilistic"),
])
def test_v2_probabilistic_rejection_sample_0_19_to_0_21(monkeypatch, version, module, style):
    """0.19.0-0.21.0: the standard method is probabilistic_rejection_sample, with the same
    leading parameters (no synthetic rates, no use_fp64), in one of two modules."""
    mod = types.ModuleType(f"vllm.v1.worker.gpu.spec_decode.{module}")
    exec("def probabilistic_rejection_sample(target_logits, draft_logits, draft_sampled, "
         "cu_num_logits, pos, idx_mapping, expanded_idx_mapping, expanded_local_pos, "
         "temperature, seed, num_speculative_steps): pass", mod.__dict__)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    # the 0.22.0 module absent (a build between releases tries every way, newest first)
    monkeypatch.setitem(sys.modules, "vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils",
                        None)
    assert R.v2_rejection_sample_style(version) == style


@pytest.mark.parametrize("version", ["0.18.0", "0.12.0", "0.11.0"])
def test_v2_rejection_sample_before_0_19_is_not_in_this_release(fake_v2, version):
    """0.18.0's probabilistic_rejection_sample (draft logits by batch row) and 0.12.0-0.17.1's
    strict rejection_sample are other methods or layouts: not driven, said so."""
    fake_v2(False, False)
    with pytest.raises(R.NotInRelease, match=r"\(first in 0\.19\.0\)"):
        R.v2_rejection_sample_style(version)


@pytest.mark.parametrize("version,style", [("0.32.0", "static"), ("0.11.1", "static"),
                                           ("0.11.0", "method")])
def test_silu_and_mul_native_by_release(monkeypatch, version, style):
    act = types.ModuleType("vllm.model_executor.layers.activation")
    act.SiluAndMul = type("SiluAndMul", (), {"forward_native": staticmethod(lambda x: x)})
    monkeypatch.setitem(sys.modules, act.__name__, act)
    way, _ = R.resolve(R.SILU_AND_MUL_NATIVE, version)
    assert way.style == style


@pytest.mark.parametrize("version,style", [("0.34.0", "gated"), ("0.31.0", "gated"),
                                           ("0.30.0", "always"), ("0.22.0", "always"),
                                           ("0.19.0", "always")])
def test_v2_sampling_gate_by_release(monkeypatch, version, style):
    states = types.ModuleType("vllm.v1.worker.gpu.sample.states")
    states.SamplingStates = type("SamplingStates", (), {"add_request": lambda self, i, p: None})
    monkeypatch.setitem(sys.modules, states.__name__, states)
    way, _ = R.resolve(R.V2_SAMPLING_GATE, version)
    assert way.style == style


@pytest.mark.parametrize("version,module", [
    ("0.34.0", "vllm.v1.worker.gpu.spec_decode.rejection_sampler"),
    ("0.32.0", "vllm.v1.spec_decode.utils"), ("0.20.0", "vllm.v1.spec_decode.utils"),
])
def test_conditional_rates_module_by_release(monkeypatch, version, module):
    for m in ("vllm.v1.worker.gpu.spec_decode.rejection_sampler", "vllm.v1.spec_decode.utils"):
        monkeypatch.setitem(sys.modules, m, None)
    fake = types.ModuleType(module)
    fake.unconditional_to_conditional_rates = lambda rates: module
    monkeypatch.setitem(sys.modules, module, fake)
    _, fn = R.resolve(R.CONDITIONAL_RATES, version)
    assert fn([]) == module


# ---- V2 MTP speculator: what the adapter reads from the release itself (0.23.0 ..) ----------

def test_v2_input_batch_takes_the_fields_the_release_declares():
    """0.23.0-0.26.0's InputBatch has no has_prefill (and requires max_seq_len_np); the pin's
    has both kinds: the adapter passes what the release declares, and None for
    max_seq_len_np where it is required (no pipeline parallelism)."""
    import dataclasses

    from suites.backends.vllm.v2_speculator import _input_batch

    @dataclasses.dataclass
    class Old:  # 0.26.0's shape
        num_reqs: int
        max_seq_len_np: object

    @dataclasses.dataclass
    class New:  # the pin's shape
        num_reqs: int
        has_prefill: bool
        max_seq_len_np: object = None

    old = _input_batch(Old, num_reqs=3, has_prefill=False)
    assert old == Old(num_reqs=3, max_seq_len_np=None)
    assert _input_batch(New, num_reqs=3, has_prefill=False) == New(3, False)


def test_v2_input_batch_names_a_field_it_cannot_supply():
    """A field a release requires that the adapter does not know is an adapter limit, said as
    such (a failure, never a skip or a pass)."""
    import dataclasses

    from suites.backends.vllm.v2_speculator import _input_batch

    @dataclasses.dataclass
    class Future:
        num_reqs: int
        draft_budget: int

    with pytest.raises(TypeError, match=r"requires draft_budget.*adapter limit"):
        _input_batch(Future, num_reqs=3)


def test_v2_declared_keeps_only_parameters_the_callee_has():
    from suites.backends.vllm.v2_speculator import _declared

    def old(block_sizes, device, kernel_block_sizes): ...

    def new(block_sizes, device, cp_size=1): ...

    assert _declared(old, kernel_block_sizes=[]) == {"kernel_block_sizes": []}
    assert _declared(new, kernel_block_sizes=[]) == {}


def test_v2_mtp_state_pair_exists_from_0_24(monkeypatch):
    """The speculator suite's "pair" cases: a contract of 0.24.0 on (DeepSeek's MTP layer);
    in 0.23.0 they are "not in this release", never a failure of vLLM or a pass."""
    mod = types.ModuleType("vllm.model_executor.models.deepseek_mtp")
    mod.DeepSeekMultiTokenPredictorLayer = type("L", (), {"forward": lambda self: None})
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    R.resolve(R.V2_MTP_STATE_PAIR, "0.24.0")
    R.resolve(R.V2_MTP_STATE_PAIR, "0.32.0")
    with pytest.raises(R.NotInRelease, match=r"^not in this release: .*\(first in 0\.24\.0\)"):
        R.resolve(R.V2_MTP_STATE_PAIR, "0.23.0")


@pytest.mark.parametrize("version,modules,found", [
    ("0.23.0", "one", True), ("0.22.1", "one", False),
    ("0.28.0", "several", True), ("0.27.1", "several", False), ("0.27.0", "several", False),
])
def test_v2_mtp_speculators_by_release(monkeypatch, version, modules, found):
    """0.27.x ship multi_module_mtp/speculator.py but init_speculator never chooses it: the
    several-module backend is "not in this release" there, never a failure or a pass."""
    for name, cls in (("mtp", "MTPSpeculator"), ("multi_module_mtp", "MultiModuleMTPSpeculator")):
        mod = types.ModuleType(f"vllm.v1.worker.gpu.spec_decode.{name}.speculator")
        setattr(mod, cls, type(cls, (), {}))
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    table = R.V2_MTP_SPECULATOR[modules]
    if found:
        R.resolve(table, version)
    else:
        with pytest.raises(R.NotInRelease, match=r"^not in this release: "):
            R.resolve(table, version)
