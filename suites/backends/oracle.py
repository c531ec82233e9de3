"""The oracles registered as backends, so every suite can run oracle-vs-oracle without vLLM."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference import expert_parallel as EP
from reference.experts import fused_experts
from reference.moe import moe_block, quantized_moe_block
from reference.quant import SCHEME_KINDS, quantized_fused_experts
from reference.routing import route, router_logits
from reference.speculative import batch_target_probs, rejection_sample
from suites.backends.base import (
    REGISTRY,
    EPMoEBlockBackend,
    EPRank,
    EPRun,
    ExpertsBackend,
    MoEBlockBackend,
    MTPModuleBackend,
    MTPSpeculatorBackend,
    MTPStepOutput,
    ObservedRouting,
    QuantExpertsBackend,
    QuantMoEBlockBackend,
    RejectionSamplerBackend,
    RouterBackend,
    SpeculatorCall,
    SpeculatorRun,
    UnsupportedShape,
)


@dataclass
class ReferenceExperts(ExpertsBackend):
    activations: tuple[str, ...] = ("silu", "gelu", "swigluoai")
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
    supports_bias: bool = True
    supports_expert_map: bool = True

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        return (w13, w2, w13_bias, w2_bias, activation)

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        w13, w2, b13, b2, act = handle
        y = fused_experts(x, w13, w2, topk_weights, topk_ids, act, b13, b2, expert_map)
        if out is None:
            return y.to(x.dtype)
        out.copy_(y)
        return out


@dataclass
class ReferenceRouter(RouterBackend):
    def route(self, logits, cfg, e_score_correction_bias=None):
        w, ids = route(logits, cfg, e_score_correction_bias)
        return w.float(), ids.int()


REGISTRY.register("reference.experts", lambda: ReferenceExperts(
    name="reference.experts", description="fp64 oracle (reference/experts.py)", is_reference=True))
REGISTRY.register("reference.router", lambda: ReferenceRouter(
    name="reference.router", description="fp64 oracle (reference/routing.py)", is_reference=True))


@dataclass
class ReferenceQuantExperts(QuantExpertsBackend):
    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16, torch.float32, torch.float64)

    activations: tuple[str, ...] = ("silu", "swigluoai")
    supports_bias: bool = True

    def prepare(self, w13, w2, w13_bias=None, w2_bias=None, activation="silu"):
        return dict(w13=w13, w2=w2, w13_bias=w13_bias, w2_bias=w2_bias, activation=activation)

    def run(self, handle, x, topk_weights, topk_ids, out=None, expert_map=None):
        y = quantized_fused_experts(x, handle["w13"], handle["w2"], topk_weights, topk_ids,
                                    handle["activation"], expert_map=expert_map,
                                    w13_bias=handle["w13_bias"], w2_bias=handle["w2_bias"])
        if out is None:
            return y.to(x.dtype)
        out.copy_(y)
        return out


for _kind in SCHEME_KINDS:
    REGISTRY.register(f"reference.quant_experts.{_kind}", lambda k=_kind: ReferenceQuantExperts(
        name=f"reference.quant_experts.{k}", scheme_kind=k, is_reference=True,
        description="fp64 dequantizing oracle (reference/quant.py)"))


def _observed(x, w, weights, ids) -> list[ObservedRouting]:
    """The oracle's own routing, reported as an implementation's is observed."""
    from reference.routing import router_logits

    return [ObservedRouting(x, router_logits(x, w.gate, w.gate_bias), weights, ids)]


@dataclass
class ReferenceMoEBlock(MoEBlockBackend):
    def forward(self, cfg, w, x):
        out, weights, ids = moe_block(x, cfg, w)
        self.observed_routing = _observed(x, w, weights, ids)
        return out.to(x.dtype)


REGISTRY.register("reference.moe_block", lambda: ReferenceMoEBlock(
    name="reference.moe_block", description="fp64 oracle (reference/moe.py)", is_reference=True))


@dataclass
class ReferenceEPMoEBlock(EPMoEBlockBackend):
    """The MoE block over EP ranks as reference/expert_parallel.py lays it out: each rank's
    routed experts and shared-expert slice in fp64, rounded to the model dtype where a kernel
    hands its output on (routed partial, the rank's sum before the all-reduce, the reduced
    output). Every step is a method, so the tests' negative controls plant a bug by overriding
    one."""

    def layout(self, cfg, placement: str, num_redundant_experts: int) -> EP.Layout:
        return EP.Layout.make(cfg.num_experts, self.ep_size, placement, cfg.n_group,
                              num_redundant_experts)

    def local_slots(self, layout: EP.Layout) -> list[tuple[int, ...]]:
        """The physical experts each rank loads, in slot order."""
        return list(layout.ranks)

    def expert_maps(self, layout: EP.Layout) -> list[torch.Tensor]:
        return [layout.expert_map(r) for r in range(self.ep_size)]

    def routing(self, cfg, w, x):
        """(topk_weights, topk_ids) as the model's gate (in the model dtype) and router give."""
        logits = router_logits(x, w.gate, w.gate_bias).to(x.dtype).double()
        return route(logits, cfg.router, w.e_score_correction_bias)

    def routed_experts(self, cfg, x, w13, w2, tw, physical_ids, expert_map) -> torch.Tensor:
        """One rank's routed experts, fp64 [T, H]."""
        return fused_experts(x, w13, w2, tw, physical_ids, cfg.hidden_act, expert_map=expert_map)

    def all_reduce(self, pre: list[torch.Tensor]) -> list[torch.Tensor]:
        total = torch.stack([p.double() for p in pre]).sum(0)
        return [total.to(pre[0].dtype) for _ in pre]

    def forward_ep(self, cfg, w, x, placement="linear", num_redundant_experts=0):
        layout = self.layout(cfg, placement, num_redundant_experts)
        slots, maps, p2l = self.local_slots(layout), self.expert_maps(layout), layout.p2l
        tw, ids = self.routing(cfg, w, x)
        physical = layout.to_physical(ids)
        logical = [torch.tensor([p2l[q] for q in s], dtype=torch.long) for s in slots]
        w13 = [w.w13[lg].clone() for lg in logical]
        w2 = [w.w2[lg].clone() for lg in logical]
        routed = [self.routed_experts(cfg, x, w13[r], w2[r], tw, physical, maps[r]).to(x.dtype)
                  for r in range(self.ep_size)]
        if w.shared_w13 is not None:
            shared = EP.shared_expert_slices(x, w.shared_w13, w.shared_w2, self.ep_size,
                                             w.shared_expert_gate)
        else:
            shared = [torch.zeros(x.shape[0], cfg.hidden_size, dtype=torch.float64)] * self.ep_size
        pre = [(r.double() + s).to(x.dtype) for r, s in zip(routed, shared)]
        outs = self.all_reduce(pre)
        ranks = [EPRank(rank=r, expert_map=maps[r], placement=layout.strategy,
                        local_w13=w13[r], local_w2=w2[r], out=outs[r], routed=routed[r],
                        pre_reduce=pre[r], experts_class="reference.experts.fused_experts",
                        routing=ObservedRouting(x, router_logits(x, w.gate, w.gate_bias), tw,
                                                physical))
                 for r in range(self.ep_size)]
        return EPRun(ranks=ranks, physical_to_logical=p2l)


for _family in ("qwen3_next", "deepseek_v3"):
    REGISTRY.register(f"reference.ep_moe_block.{_family}", lambda f=_family: ReferenceEPMoEBlock(
        name=f"reference.ep_moe_block.{f}", family=f, is_reference=True,
        description="fp64 oracle over 2 EP ranks (reference/expert_parallel.py)"))


@dataclass
class ReferenceQuantMoEBlock(QuantMoEBlockBackend):
    def forward(self, cfg, w, w13, w2, x):
        self.selected = "reference.moe.quantized_moe_block"
        out, weights, ids = quantized_moe_block(x, cfg, w, w13, w2, router_logits_dtype=x.dtype,
                                                activation_dtype=x.dtype)
        self.observed_routing = _observed(x, w, weights, ids)
        return out.to(x.dtype)


for _kind in SCHEME_KINDS:
    REGISTRY.register(f"reference.quant_moe_block.{_kind}", lambda k=_kind: ReferenceQuantMoEBlock(
        name=f"reference.quant_moe_block.{k}", scheme_kind=k, is_reference=True,
        description="fp64 oracle (reference/moe.py quantized_moe_block)"))


@dataclass
class ReferenceMTPModule(MTPModuleBackend):
    def prepare(self, problem, inputs):
        return inputs

    def step(self, handle, input_ids, hidden_states, positions):
        trace: dict = {}
        fed, logits, pre = handle.oracle_step(input_ids, hidden_states.double(), positions,
                                              trace=trace)
        mlp = handle.layer.mlp
        weights, ids = trace["moe_routing"]
        self.observed_routing = _observed(trace["moe_input"], mlp, weights, ids)
        dt = hidden_states.dtype
        return MTPStepOutput(fed.to(dt), logits.to(dt), None if pre is None else pre.to(dt))


for _family in ("qwen3_next", "deepseek_v3"):
    REGISTRY.register(f"reference.mtp_module.{_family}", lambda f=_family: ReferenceMTPModule(
        name=f"reference.mtp_module.{f}", family=f, is_reference=True,
        description="fp64 oracle (reference/mtp.py)"))


@dataclass
class ReferenceMTPSpeculator(MTPSpeculatorBackend):
    """reference/mtp.py's chains, reported as a KV-cached loop feeds them: "one": the oracle's
    inputs, then per step the row the chain appended; "several": what each module read."""

    def propose(self, problem, model):
        from reference.mtp import draft_chain, draft_chain_modules

        if problem.modules != self.modules:
            raise UnsupportedShape(f"{self.name}: {problem.modules} module(s)")

        def step(s):
            def run(i, h, p):
                lh, fed = model(i, h, p, s)
                return fed, model.logits(lh, s)
            return run

        drafts, calls = [], []
        for r, req in enumerate(problem.requests):
            if problem.reaches_cap(r):
                raise UnsupportedShape(f"{self.name}: the oracle has no max_model_len")
            ids, hid, pos = problem.oracle_inputs(r)
            seq_len = req.first_position + req.query_len
            if self.modules == "one":
                c = draft_chain(step(0), ids, hid, pos, problem.k)
                rows = [SpeculatorCall(ids, pos, hid, None, seq_len)] + [
                    SpeculatorCall(torch.tensor([c.draft_token_ids[s - 1]]), pos[-1:] + s,
                                   c.hidden_states[s - 1:s], None, seq_len - req.num_rejected + s)
                    for s in range(1, problem.k)]
            else:
                c = draft_chain_modules([step(s) for s in range(problem.k)], ids, hid, pos,
                                        problem.k)
                rows = [SpeculatorCall(i, p, h, s, seq_len) for s, (i, h, p) in enumerate(c.inputs)]
            drafts.append(c.draft_token_ids)
            calls.append(rows)
        return SpeculatorRun(torch.tensor(drafts, dtype=torch.int64), calls)


for _modules in ("one", "several"):
    REGISTRY.register(f"reference.mtp_speculator.{_modules}",
                      lambda m=_modules: ReferenceMTPSpeculator(
                          name=f"reference.mtp_speculator.{m}", modules=m, is_reference=True,
                          description="fp64 oracle (reference/mtp.py draft_chain, "
                                      "draft_chain_modules)"))


# ----------------------------------------------------------------- rejection sampler


@dataclass
class ReferenceRejectionSampler(RejectionSamplerBackend):
    verification_methods: tuple[str, ...] = ("standard", "block", "synthetic")  # v2_method_checks

    def sample(self, batch, seed):
        return rejection_sample(batch, torch.Generator().manual_seed(seed))

    def sample_block(self, batch, seed):
        from reference.block_verification import block_rejection_sample

        return block_rejection_sample(batch, torch.Generator().manual_seed(seed))

    def sample_synthetic(self, batch, seed, rates):
        from reference.speculative import synthetic_rejection_sample

        return synthetic_rejection_sample(batch, rates, torch.Generator().manual_seed(seed))

    def target_probs(self, batch):
        return batch_target_probs(batch)[batch.target_rows]


REGISTRY.register("reference.rejection_sampler", lambda: ReferenceRejectionSampler(
    name="reference.rejection_sampler", description="fp64 oracle (reference/speculative.py)",
    is_reference=True))
