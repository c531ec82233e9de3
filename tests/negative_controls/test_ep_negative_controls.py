"""The expert-parallel properties (suites/moe/ep_checks.py, run by suites/moe/test_ep_layer.py)
must catch the bugs an EP layer can have. Each bug is planted in the oracle-side EP layer
(suites/backends/oracle.py ReferenceEPMoEBlock: one step overridden) and must be caught by
the checks named next to it on every problem below; the clean layer passes the same problems
and drawn ones. Two loading bugs are also planted in vLLM's real layers in their worker processes
(suites/backends/vllm/ep_layer.py TAMPERS), where the placement check must catch them:

  expert_map off by one shard   a rank runs with its neighbour's expert_map over its own
                                weights                               placement, block, zero
  experts swapped between ranks each rank loads and maps its neighbour's experts (the sum is
                                right: only the layout shows it)       placement
  all-reduce done twice         the ranks' outputs summed, then summed again       block
  all-reduce skipped            each rank returns its own partial                  block
  remote slot counted as local  a slot whose expert is remote (expert_map -1) runs local slot
                                0 with its weight (a garbage id that contributes) block, zero
  expert dropped on one rank    rank 1's first local expert never loaded (zeros)   placement,
                                                                                   block
  unwritten rows                a rank leaves the rows of tokens with no local expert unwritten
                                (NaN-poisoned buffer)                              block, zero
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fixtures.strategies import BlockProblem, EPProblem, ep_problems
from reference import expert_parallel as EP
from reference.experts import fused_experts
from suites.backends.oracle import ReferenceEPMoEBlock
from suites.moe import ep_checks


def _problems(family: str) -> list[EPProblem]:
    block = BlockProblem(E=8, K=2, H=128, I=64, Is=64, norm_topk_prob=True, T=17,
                         gate_scale=4.0, seed=5, family=family)
    return [EPProblem(block=block, placement="linear", routing="split"),
            EPProblem(block=block, placement="round_robin", routing="split"),
            EPProblem(block=block, placement="linear", routing="one_rank"),
            EPProblem(block=block, placement="linear", routing="split", num_redundant_experts=2),
            EPProblem(block=dataclasses.replace(block, E=16, K=4, T=33), placement="round_robin",
                      routing="router")]


FAMILIES = ("qwen3_next", "deepseek_v3")
CHECKS = {"placement": ep_checks.check_placement, "block": ep_checks.check_block,
          "zero": ep_checks.check_remote_zero}


def _reference(family: str, cls=ReferenceEPMoEBlock):
    return cls(name=f"reference.ep_moe_block.{family}+bug", family=family, is_reference=True)


class _MapOffByOneShard(ReferenceEPMoEBlock):
    def expert_maps(self, layout):
        maps = super().expert_maps(layout)
        return maps[1:] + maps[:1]


class _SwappedRanks(ReferenceEPMoEBlock):
    def local_slots(self, layout):
        slots = super().local_slots(layout)
        return slots[1:] + slots[:1]

    def expert_maps(self, layout):
        maps = super().expert_maps(layout)
        return maps[1:] + maps[:1]


class _AllReduceTwice(ReferenceEPMoEBlock):
    def all_reduce(self, pre):
        once = super().all_reduce(pre)
        return super().all_reduce(once)


class _AllReduceSkipped(ReferenceEPMoEBlock):
    def all_reduce(self, pre):
        return list(pre)


class _RemoteSlotCounts(ReferenceEPMoEBlock):
    def routed_experts(self, cfg, x, w13, w2, tw, physical_ids, expert_map):
        return super().routed_experts(cfg, x, w13, w2, tw, physical_ids,
                                      expert_map.clamp(min=0))


class _DroppedExpert(ReferenceEPMoEBlock):
    def forward_ep(self, cfg, w, x, placement="linear", num_redundant_experts=0):
        run = super().forward_ep(cfg, w, x, placement, num_redundant_experts)
        # rerun rank 1 with its first local expert's weights zero, as if never loaded
        rk = run.ranks[1]
        layout = self.layout(cfg, placement, num_redundant_experts)
        rk.local_w13[0] = 0
        rk.local_w2[0] = 0
        tw, ids = self.routing(cfg, w, x)
        routed = self.routed_experts(cfg, x, rk.local_w13, rk.local_w2, tw,
                                     layout.to_physical(ids), rk.expert_map).to(x.dtype)
        rk.pre_reduce = (rk.pre_reduce.double() - rk.routed.double() + routed.double()).to(x.dtype)
        rk.routed = routed
        outs = self.all_reduce([r.pre_reduce for r in run.ranks])
        for r, o in zip(run.ranks, outs):
            r.out = o
        return run


class _UnwrittenRows(ReferenceEPMoEBlock):
    def routed_experts(self, cfg, x, w13, w2, tw, physical_ids, expert_map):
        y = super().routed_experts(cfg, x, w13, w2, tw, physical_ids, expert_map)
        none_local = (expert_map.long()[physical_ids.long()] < 0).all(1)
        y[none_local] = float("nan")
        return y


ALL = ("router", "one_rank", "split")
# bug -> (the layer with it, {check: the routings on which the bug can show in that check})
PLANTED = {
    "expert_map off by one shard": (_MapOffByOneShard, {"placement": ALL, "block": ALL,
                                                        "zero": ALL}),
    "experts swapped between ranks": (_SwappedRanks, {"placement": ALL}),
    "all-reduce done twice": (_AllReduceTwice, {"block": ALL}),
    "all-reduce skipped": (_AllReduceSkipped, {"block": ALL}),
    "remote slot counted as local": (_RemoteSlotCounts, {"block": ALL, "zero": ALL}),
    # one_rank routing never sends a token to rank 1's experts: only its layout shows the loss
    "expert dropped on one rank": (_DroppedExpert, {"placement": ALL,
                                                    "block": ("router", "split")}),
    "unwritten rows": (_UnwrittenRows, {"block": ALL, "zero": ALL}),
}
CASES = [(bug, check, family) for bug, (_, checks) in sorted(PLANTED.items())
         for check in checks for family in FAMILIES]


@pytest.mark.parametrize(("bug", "check", "family"), CASES,
                         ids=[f"{b}-{c}-{f}" for b, c, f in CASES])
def test_planted_ep_bug_in_the_oracle_is_caught(bug, check, family):
    cls, checks = PLANTED[bug]
    backend = _reference(family, cls)
    problems = [p for p in _problems(family) if p.routing in checks[check]]
    caught = []
    for p in problems:
        try:
            CHECKS[check](backend, p)
        except AssertionError as e:
            assert p.describe() in str(e) and backend.name in str(e)
            caught.append(p.describe())
    assert problems and len(caught) == len(problems), (
        f"{bug}: check {check} caught it on {len(caught)} of {len(problems)} problems")


@pytest.mark.parametrize("family", FAMILIES)
def test_clean_oracle_ep_layer_passes(family):
    backend = _reference(family)
    for p in _problems(family):
        for check in CHECKS.values():
            check(backend, p)


@given(data=st.data())
def test_clean_oracle_ep_layer_passes_drawn_problems(data):
    """The strategy's problems are well posed (the forced routings route as they say on every
    rank they use, K within what can be forced) and the clean layer passes them all."""
    family = data.draw(st.sampled_from(FAMILIES), label="family")
    p = data.draw(ep_problems(family=family, redundant=(0, 1, 2)), label="problem")
    backend = _reference(family)
    for check in CHECKS.values():
        check(backend, p)


@given(data=st.data())
def test_rank_partials_sum_to_the_routed_experts(data):
    """reference/expert_parallel.py against reference/experts.py: the ranks' routed experts
    (replicas included) sum to the whole layer's in fp64, and each rank's expert_map names
    exactly its own slots."""
    family = data.draw(st.sampled_from(FAMILIES), label="family")
    p = data.draw(ep_problems(family=family, redundant=(0, 3)), label="problem")
    x, w = p.tensors()
    tw, ids = ep_checks.oracle_routing(p, x, w)
    layout = p.layout()
    parts = EP.routed_partials(x, w.w13, w.w2, tw, ids, layout, p.cfg.hidden_act)
    whole = fused_experts(x, w.w13, w.w2, tw, ids, p.cfg.hidden_act)
    assert torch.allclose(torch.stack(parts).sum(0), whole, rtol=1e-12, atol=1e-12)
    for r, local in enumerate(layout.ranks):
        m = layout.expert_map(r)
        assert [int(m[q]) for q in local] == list(range(len(local)))
        assert int((m >= 0).sum()) == len(local)


# ----------------------------------------------------------------------------- vLLM's layers


@pytest.fixture(scope="module", params=["vllm.qwen3_next_moe_block.ep2",
                                        "vllm.deepseek_v3_moe_block.ep2"])
def vllm_ep(request):
    from suites.backends import REGISTRY

    b = REGISTRY.get(request.param)
    if reason := b.unavailable_reason():
        pytest.skip(reason)
    return b


@pytest.mark.moe
@pytest.mark.parametrize("bug", ["expert_map off by one shard", "expert dropped on rank 1"])
@pytest.mark.parametrize("placement", ["linear", "round_robin"])
def test_planted_loading_bug_in_vllm_is_caught(vllm_ep, bug, placement):
    """Planted in vLLM's layer after its loader ran (each rank's process); the clean layer's
    placement passes first, on the same problem."""
    from suites.backends.vllm.ep_layer import tampered

    block = BlockProblem(E=8, K=2, H=128, I=64, Is=64, norm_topk_prob=True, T=9,
                         gate_scale=4.0, seed=2, family=vllm_ep.family)
    p = EPProblem(block=block, placement=placement, routing="one_rank")
    ep_checks.check_placement(vllm_ep, p)
    with tampered(vllm_ep, bug), pytest.raises(AssertionError, match=r"\[ep placement\]"):
        ep_checks.check_placement(vllm_ep, p)


@pytest.mark.moe
def test_worker_error_quotes_its_traceback_and_keeps_the_workers(vllm_ep):
    """A rank that raises: the error quotes its traceback; when every rank answered, the
    workers stay up for the next call."""
    from suites.backends.vllm import ep_layer as V
    from suites.backends.vllm.ep_layer import tampered

    block = BlockProblem(E=8, K=2, H=128, I=64, Is=64, norm_topk_prob=True, T=3,
                         gate_scale=4.0, seed=2, family=vllm_ep.family)
    p = EPProblem(block=block, routing="one_rank")
    ep_checks.check_placement(vllm_ep, p)
    group = V._GROUPS[(vllm_ep.ep_size, vllm_ep.device)]
    with tampered(vllm_ep, "loader raises on every rank"), \
            pytest.raises(V.EPWorkerError, match=r"(?s)Traceback.*planted loader error"):
        ep_checks.check_placement(vllm_ep, p)
    assert V._GROUPS.get((vllm_ep.ep_size, vllm_ep.device)) is group
    ep_checks.check_placement(vllm_ep, p)


@pytest.mark.moe
@pytest.mark.slow
def test_hung_worker_times_out_and_every_worker_is_killed(vllm_ep, monkeypatch):
    """Rank 1 never answers (rank 0 waits for it in the all-reduce): the request times out,
    both workers are killed, and the next call starts a fresh group."""
    from suites.backends.vllm import ep_layer as V
    from suites.backends.vllm.ep_layer import tampered

    block = BlockProblem(E=8, K=2, H=128, I=64, Is=64, norm_topk_prob=True, T=3,
                         gate_scale=4.0, seed=2, family=vllm_ep.family)
    p = EPProblem(block=block, routing="one_rank")
    ep_checks.check_placement(vllm_ep, p)
    group = V._GROUPS[(vllm_ep.ep_size, vllm_ep.device)]
    monkeypatch.setattr(V, "WORKER_TIMEOUT_S", 5.0)
    with tampered(vllm_ep, "rank 1 hangs"), \
            pytest.raises(V.EPWorkerError, match=r"did not answer within 5 s"):
        ep_checks.check_placement(vllm_ep, p)
    assert not any(proc.is_alive() for proc in group.procs)
    assert (vllm_ep.ep_size, vllm_ep.device) not in V._GROUPS
    for log in group.logs:  # kept by a failure for its message; this one was planted
        log.unlink(missing_ok=True)
    monkeypatch.undo()
    ep_checks.check_placement(vllm_ep, p)
