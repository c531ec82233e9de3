"""The one table of kinds: what the suite tests, as data.

A kind is a seam of the implementation under test (suites/backends/base.py): each backend says
which kind it is, and a test asks for one backend of a kind by naming the kind's fixture. For
each kind the table says where its parts live: the backend base class, the problem strategy
that draws inputs for one backend, the fp64 oracle, the tolerance entry, the properties that
hold for every backend of the kind (suites/properties/ for those written once across kinds),
and the markers its suites carry. Per-backend capabilities (dtypes, expert_map, quant scheme,
device) are attributes of the backend itself; the properties consult them.

Everything that selects backends reads this table: the root conftest (one generic fixture per
kind, parametrized over the selected backends), the benchmarks (suites/bench/selection.py), and
the tests that check that nothing is left out (tests/machinery/test_kinds.py).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str  # Backend.kind
    fixture: str  # the test argument that receives one backend of this kind
    base: str  # suites.backends.base (or adapter) class every backend of the kind derives from
    problems: str  # "module:function(backend, **bounds)" -> hypothesis strategy
    oracle: str  # the fp64 truth
    tolerance: str  # suites/tolerances.py entry
    properties: tuple[str, ...]  # property functions (module:function) the kind's suites run
    markers: tuple[str, ...]  # markers every test of the kind carries (root conftest adds them)
    # the backend attributes the properties consult (each backend states its own values)
    capabilities: tuple[str, ...] = ("device",)


_EXPERTS_CAPABILITIES = ("device", "dtypes", "activations", "supports_bias",
                         "supports_expert_map", "alignment", "draw_limits")
_EXPERTS_PROPERTIES = tuple(f"suites.properties.experts:{p}" for p in (
    "matches_oracle", "token_permutation", "batch_invariance", "expert_relabeling",
    "ep_sharding", "zero_weight_slots", "finite_output", "refuses_unsupported_shape"))

KINDS: tuple[Kind, ...] = (
    Kind("experts", "experts_backend", "suites.backends.base:ExpertsBackend",
         "suites.moe.checks:problems_for", "reference.experts:fused_experts",
         "suites.tolerances:TOLERANCES",
         (*_EXPERTS_PROPERTIES, "suites.moe.checks:check_topk_equals_dense"), ("moe",),
         _EXPERTS_CAPABILITIES),
    Kind("quant_experts", "quant_backend", "suites.backends.base:QuantExpertsBackend",
         "suites.moe.quant_checks:problems_for", "reference.quant:quantized_fused_experts",
         "suites.tolerances:QUANT_TOLERANCES", _EXPERTS_PROPERTIES, ("moe",),
         (*_EXPERTS_CAPABILITIES, "scheme_kind", "fp8_blocks", "zero_points")),
    Kind("router", "router_backend", "suites.backends.base:RouterBackend",
         "fixtures.strategies:router_problems", "reference.routing:route",
         "suites.tolerances:TOLERANCES", ("suites.moe.checks:check_router",), ("moe",),
         ("device", "topk_methods")),
    Kind("moe_block", "block_backend", "suites.backends.base:MoEBlockBackend",
         "fixtures.strategies:block_problems", "reference.moe:moe_block",
         "suites.tolerances:TOLERANCES", ("suites.moe.checks:check_block_matches_oracle",),
         ("moe",), ("device", "family")),
    Kind("ep_moe_block", "ep_block_backend", "suites.backends.base:EPMoEBlockBackend",
         "fixtures.strategies:ep_problems", "reference.expert_parallel:routed_partials",
         "suites.tolerances:TOLERANCES", ("suites.moe.ep_checks:check_block",
                                          "suites.moe.ep_checks:check_remote_zero",
                                          "suites.moe.ep_checks:check_placement"),
         ("moe",)),
    Kind("quant_moe_block", "quant_block_backend", "suites.backends.base:QuantMoEBlockBackend",
         "fixtures.strategies:quant_block_problems", "reference.moe:quantized_moe_block",
         "suites.tolerances:QUANT_TOLERANCES",
         ("suites.moe.quant_checks:check_quant_block_matches_oracle",), ("moe",),
         ("device", "family", "scheme_kind", "alignment", "hidden_multiple", "zero_points")),
    Kind("mtp_module", "mtp_backend", "suites.backends.base:MTPModuleBackend",
         "fixtures.strategies:mtp_problems", "reference.mtp:draft_chain",
         "suites.tolerances:OVERRIDES", ("suites.mtp.module_checks:check_mtp_step",
                                         "suites.mtp.module_checks:check_mtp_chain",
                                         "suites.mtp.module_checks:check_mtp_causal_prefix"),
         ("mtp",)),
    Kind("rejection_sampler", "sampler_backend",
         "suites.backends.base:RejectionSamplerBackend",
         "suites.mtp.sampler_checks:plan", "reference.speculative:rejection_sample",
         "suites.stats (formal laws at a stated false-positive rate)",
         ("suites.mtp.sampler_checks:check_random_verification",
          "suites.mtp.sampler_checks:check_target_processing",
          "suites.mtp.sampler_checks:check_greedy_exact",
          "suites.mtp.sampler_checks:check_mixed_batch",
          "suites.mtp.sampler_checks:check_seeded_reorder"), ("mtp",)),
    Kind("mtp_speculator", "speculator_backend", "suites.backends.base:MTPSpeculatorBackend",
         "suites.mtp.speculator_checks:speculator_problems", "reference.mtp:draft_chain_modules",
         "exact (an integer-valued probe draft model)",
         ("suites.mtp.speculator_checks:check_draft_loop",), ("mtp",), ("device", "modules")),
    Kind("engine", "engine_backend", "suites.backends.vllm.engine:EngineBackend",
         "fixtures/tiny_qwen3_next (a trained checkpoint, its golden.json)",
         "reference.target_model:speculative_trace", "exact tokens (greedy)",
         ("suites.e2e.judge:judge_stream", "suites.e2e.judge:replay_acceptance"), ("e2e",)),
)

INTERPRETED = ".interp"  # backends that run vLLM's GPU Triton programs under Triton's interpreter

BY_NAME = {k.name: k for k in KINDS}
BY_FIXTURE = {k.fixture: k for k in KINDS}

# Fixtures that take one backend of any of several kinds: properties written once for those
# kinds (suites/properties/) run on every backend of each.
FAMILIES: dict[str, tuple[str, ...]] = {
    "any_experts_backend": ("experts", "quant_experts"),
}


def kind(name: str) -> Kind:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown kind {name!r}; the kinds are {', '.join(BY_NAME)} "
                       "(suites/kinds.py)") from None


def select_backends(kind_name: str, *, patterns: list[str] | None, device: str,
                    include_reference: bool = False) -> list[tuple[str, list]]:
    """The backends of a kind a run drives, as (name, pytest marks): the implementations under
    test on `device` matching the --backend globs; the fp64 oracles as backends only when asked
    (include_reference, or a --backend glob naming them: oracle vs oracle, e.g. without
    vLLM); Triton programs under the interpreter (names ending in .interp) only where the
    interpreter is on or a glob names them. An unavailable backend is listed with a skip mark carrying its own one-line reason,
    never dropped: a skip that says why is the record of what this machine could not do.
    Shared by the suites (root conftest) and the benchmarks (suites/bench/selection.py)."""
    import pytest

    from suites.backends import REGISTRY
    from suites.backends.base import reason_of

    kind(kind_name)  # an unknown kind is an error, not an empty selection
    interpreter = os.environ.get("TRITON_INTERPRET") == "1"
    out = []
    for name in REGISTRY.names(kind=kind_name, device=device):
        b = REGISTRY.get(name)
        selected = bool(patterns) and any(fnmatch.fnmatch(name, p) for p in patterns)
        if b.is_reference and not (include_reference or selected):
            continue
        if name.endswith(INTERPRETED) and not (interpreter or selected):
            continue  # nox -s triton_interpret's backends: a run without the interpreter
            #           would only skip them (it sets TRITON_INTERPRET=1 and --backend=*.interp)
        if patterns and not selected:
            continue
        marks = [pytest.mark.gpu] if b.device == "cuda" else []
        reason = reason_of(b)
        if reason:
            marks.append(pytest.mark.skip(reason=f"{name}: {reason}"))
        out.append((name, marks))
    return out
