"""Expert parallelism (EP): which rank holds which expert, and the MoE block as the ranks compute it.

With EP over S ranks every rank sees every token and routes it with the full router; it runs only
the experts it holds, through `expert_map` (physical expert -> local slot, -1 where the expert
lives on another rank: such a slot contributes nothing on this rank), and an all-reduce sums the
S partial outputs. The shared expert is tensor-parallel across the same ranks: rank r computes
the r-th slice of its intermediate, and the same all-reduce sums the slices.

Placement, as vLLM 0.32 documents it (ParallelConfig.expert_placement_strategy; vllm/model_executor/
layers/fused_moe/expert_map_manager.py determine_expert_map, determine_expert_placement_strategy):

  linear       rank r holds a contiguous run; with N = S * base + rem physical experts the first
               rem ranks hold base + 1 of them ("4 experts, 2 ranks: rank 0 has [0, 1], rank 1
               has [2, 3]")
  round_robin  rank r holds r, r + S, r + 2S, ... (its local slots in that order)
  round_robin is honoured only for models with several expert groups (n_group > 1) and no
  redundant experts / EPLB; otherwise the layer falls back to linear (with a warning).

Redundant experts (EPLB): N = E + R physical experts, physical p holds logical p for p < E and
logical (p - E) % E after that (EplbState.build_initial_global_physical_to_logical_map); the
placement is over physical experts. Which replica serves a token is the balancer's choice and
does not change the sum over ranks: the oracle sends token t to replica t mod (number of replicas).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reference.experts import expert_mlp, fused_experts

PLACEMENTS = ("linear", "round_robin")


def physical_to_logical(num_experts: int, num_redundant_experts: int = 0) -> list[int]:
    """[E + R]: the logical expert each physical expert holds (EPLB's initial arrangement)."""
    return list(range(num_experts)) + [i % num_experts for i in range(num_redundant_experts)]


def effective_placement(strategy: str, n_group: int, num_redundant_experts: int = 0) -> str:
    """The placement a layer ends up with: round_robin only with expert groups and no
    redundant experts, else linear."""
    if strategy not in PLACEMENTS:
        raise ValueError(f"unknown expert placement {strategy!r}; known: {PLACEMENTS}")
    if strategy == "round_robin" and (n_group <= 1 or num_redundant_experts):
        return "linear"
    return strategy


def local_experts(num_physical: int, ep_size: int, rank: int, strategy: str) -> list[int]:
    """The physical experts rank `rank` holds, in local-slot order."""
    base, rem = divmod(num_physical, ep_size)
    n = base + (1 if rank < rem else 0)
    if strategy == "linear":
        start = rank * base + min(rank, rem)
        return list(range(start, start + n))
    if strategy == "round_robin":
        return list(range(rank, num_physical, ep_size))
    raise ValueError(f"unknown expert placement {strategy!r}; known: {PLACEMENTS}")


def expert_map(local: list[int], num_physical: int) -> torch.Tensor:  # [N] int32
    """physical expert -> local slot on this rank, -1 elsewhere."""
    m = torch.full((num_physical,), -1, dtype=torch.int32)
    m[torch.tensor(local, dtype=torch.long)] = torch.arange(len(local), dtype=torch.int32)
    return m


@dataclass(frozen=True)
class Layout:
    """Where every expert lives: ranks[r] = the physical experts rank r holds, in slot order."""

    num_experts: int  # E, logical
    num_redundant_experts: int  # R
    strategy: str  # the placement in effect (after the round_robin fallback)
    ranks: tuple[tuple[int, ...], ...]

    @classmethod
    def make(cls, num_experts: int, ep_size: int, strategy: str, n_group: int = 1,
             num_redundant_experts: int = 0) -> Layout:
        eff = effective_placement(strategy, n_group, num_redundant_experts)
        N = num_experts + num_redundant_experts
        return cls(num_experts, num_redundant_experts, eff,
                   tuple(tuple(local_experts(N, ep_size, r, eff)) for r in range(ep_size)))

    @property
    def num_physical(self) -> int:
        return self.num_experts + self.num_redundant_experts

    @property
    def p2l(self) -> list[int]:
        return physical_to_logical(self.num_experts, self.num_redundant_experts)

    def expert_map(self, rank: int) -> torch.Tensor:  # [N] int32
        return expert_map(list(self.ranks[rank]), self.num_physical)

    def logical_on(self, rank: int) -> set[int]:
        p2l = self.p2l
        return {p2l[p] for p in self.ranks[rank]}

    def to_physical(self, topk_ids: torch.Tensor) -> torch.Tensor:  # [T, K] logical -> physical
        """Token t's slot on logical e goes to replica t mod n_replicas(e)."""
        replicas: dict[int, list[int]] = {}
        for p, e in enumerate(self.p2l):
            replicas.setdefault(e, []).append(p)
        T, K = topk_ids.shape
        out = torch.empty(T, K, dtype=torch.long)
        for t in range(T):
            for k in range(K):
                reps = replicas[int(topk_ids[t, k])]
                out[t, k] = reps[t % len(reps)]
        return out


def routed_partials(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H] logical experts
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, K]
    topk_ids: torch.Tensor,  # [T, K] logical ids
    layout: Layout,
    activation: str = "silu",
) -> list[torch.Tensor]:  # per rank [T, H] float64
    """Each rank's routed experts: its local slots hold the weights of the logical experts its
    physical experts replicate; slots whose expert is remote contribute nothing."""
    p2l = layout.p2l
    physical = layout.to_physical(topk_ids)
    out = []
    for r, local in enumerate(layout.ranks):
        logical = torch.tensor([p2l[p] for p in local], dtype=torch.long)
        if not local:
            out.append(torch.zeros(hidden_states.shape[0], w13.shape[2], dtype=torch.float64))
            continue
        out.append(fused_experts(hidden_states, w13[logical], w2[logical], topk_weights,
                                 physical, activation, expert_map=layout.expert_map(r)))
    return out


def shared_expert_slices(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [2Is, H] gate rows then up rows
    w2: torch.Tensor,  # [H, Is]
    ep_size: int,
    shared_expert_gate: torch.Tensor | None = None,  # [1, H]
) -> list[torch.Tensor]:  # per rank [T, H] float64
    """The shared expert split over the ranks by its intermediate (tensor parallel): rank r's
    slice of gate/up rows and down columns; the slices sum to the whole expert (the sigmoid gate,
    a per-token scalar, scales each slice). An intermediate the ranks cannot split evenly stays
    whole on rank 0."""
    Is = w2.shape[1]
    if Is % ep_size:
        parts = [(0, Is)] + [(0, 0)] * (ep_size - 1)
    else:
        n = Is // ep_size
        parts = [(r * n, (r + 1) * n) for r in range(ep_size)]
    g = (None if shared_expert_gate is None
         else torch.sigmoid(hidden_states.double() @ shared_expert_gate.double().T))  # [T, 1]
    out = []
    for lo, hi in parts:
        if hi == lo:
            out.append(torch.zeros(hidden_states.shape[0], w2.shape[0], dtype=torch.float64))
            continue
        rows = torch.cat([torch.arange(lo, hi), torch.arange(Is + lo, Is + hi)])
        y = expert_mlp(hidden_states, w13[rows], w2[:, lo:hi], "silu")
        out.append(y if g is None else g * y)
    return out
