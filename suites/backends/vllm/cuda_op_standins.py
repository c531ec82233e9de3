"""Plain-torch stand-ins for the CUDA custom ops that vLLM's Triton MoE launch code calls.

Under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors) vLLM's CUDA wheel imports without
its compiled libraries (`vllm._C`, `vllm._moe_C`), so the Triton programs are there but the
CUDA ops around them are not. vLLM's own launch code (`fused_experts_impl`: tile config, cache
allocation, expert assignment, both `fused_moe_kernel` launches, activation, final sum) stays
untouched; these stand-ins are registered under the ops' own names so that it calls them:

  _moe_C::moe_align_block_size   block alignment of the routed slots (written here from the
                                 contract in vllm/.../moe_align_block_size.py's docstring)
  _moe_C::moe_sum                sum over the top-k slots
  _C::silu_and_mul, _C::gelu_and_mul, _C::swigluoai_and_mul
                                 vLLM's own torch fallbacks (`SiluAndMul.forward_native`,
                                 `GeluAndMul.forward_native`, `SwigluOAIAndMul.forward_native`)

They are installed only where the real op is missing (never on a CUDA build of vLLM, whose
compiled ops stay in charge), and are themselves property-tested in
tests/machinery/test_cuda_op_standins.py (the alignment contract by enumeration, sums and activations
against independent formulas).

Known differences from the CUDA kernels, by design of the stand-ins (not of vLLM):
- moe_sum accumulates in float64 and rounds once (CUDA: in the activation dtype for K <= 4,
  at::sum otherwise): the stand-in adds no error of its own beyond the final rounding.
- Unused entries of expert_ids (blocks past num_tokens_post_pad) are -1; the kernel never reads
  them (`pid_m * BLOCK_SIZE_M >= num_tokens_post_padded` returns first).
"""

from __future__ import annotations

import importlib
import os
import types

import torch

SENTINEL_DOC = "padding slots of sorted_token_ids hold topk_ids.numel() (one past the last slot)"


# --------------------------------------------------------------------------- plain torch


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_size: int,
                         sorted_token_ids: torch.Tensor, expert_ids: torch.Tensor,
                         num_tokens_post_pad: torch.Tensor, expert_map: torch.Tensor | None = None,
                         scatter_idx: torch.Tensor | None = None) -> None:
    """In place, the contract of vLLM's op:
    - the M*K routed slots (flattened topk_ids, slot s = token s // K, rank s % K) are grouped
      by expert in expert order, each group padded to a multiple of block_size with the
      sentinel topk_ids.numel(); within a group slots keep their order;
    - expert_ids[b] is the expert of block b: the local id expert_map[e] when a map is given
      (slots of experts mapped to -1 are dropped: vLLM passes the map only with
      ignore_invalid_experts=True), else e;
    - num_tokens_post_pad[0] is the padded total (a multiple of block_size);
    - scatter_idx (optional, [M*K, 1]) is the slot's own index when it is kept, else -1.
    Experts with no slot get no block."""
    flat = topk_ids.reshape(-1).long()  # [M*K]
    n = flat.numel()
    if expert_map is not None:
        local = expert_map.long()[flat.clamp(0, expert_map.numel() - 1)]
        valid = (flat >= 0) & (flat < expert_map.numel()) & (local >= 0)
    else:
        local = flat
        valid = (flat >= 0) & (flat < num_experts)
    counts = torch.bincount(flat[valid], minlength=num_experts)[:num_experts]  # [E]
    padded = (counts + block_size - 1) // block_size * block_size  # [E]
    total = int(padded.sum())
    if total > sorted_token_ids.numel():
        raise RuntimeError(f"moe_align_block_size stand-in: {total} padded slots exceed the "
                           f"buffer of {sorted_token_ids.numel()}")
    starts = torch.cumsum(padded, 0) - padded  # [E] first padded row of each expert
    order = torch.argsort(torch.where(valid, flat, num_experts), stable=True)[: int(valid.sum())]
    e_sorted = flat[order]
    rank = torch.arange(order.numel()) - (torch.cumsum(counts, 0) - counts)[e_sorted]
    sorted_token_ids.fill_(n)
    sorted_token_ids[(starts[e_sorted] + rank).to(sorted_token_ids.device)] = order.to(
        sorted_token_ids.dtype).to(sorted_token_ids.device)
    blocks = padded // block_size  # [E]
    block_expert = torch.repeat_interleave(torch.arange(num_experts), blocks)  # [total / bs]
    expert_ids.fill_(-1)
    expert_ids[: block_expert.numel()] = local_ids(block_expert, expert_map).to(expert_ids.dtype)
    num_tokens_post_pad.fill_(total)
    if scatter_idx is not None:
        scatter_idx.copy_(torch.where(valid, torch.arange(n), -1).view(-1, 1).to(scatter_idx.dtype))


def local_ids(experts: torch.Tensor, expert_map: torch.Tensor | None) -> torch.Tensor:
    return experts if expert_map is None else expert_map.long()[experts]


def moe_sum(input: torch.Tensor, output: torch.Tensor, topk_ids: torch.Tensor | None = None,
            expert_map: torch.Tensor | None = None) -> None:
    """output [M, H] = sum over slots of input [M, K, H], accumulated in float64, rounded once."""
    output.copy_(input.double().sum(1).to(output.dtype))


def _activation(name: str):
    """The activation stand-ins: vLLM's own torch fallback (forward_native) of the CustomOp,
    called without instantiating the CustomOp (that needs a vLLM config context)."""
    from vllm.model_executor.layers import activation as A

    if name == "silu_and_mul":
        import vllm

        from suites.backends.vllm import releases

        way, native = releases.resolve(releases.SILU_AND_MUL_NATIVE, vllm.__version__)
        unbound = (native,) if way.style == "static" else (native, None)

        def silu_and_mul(out, x):
            out.copy_(unbound[0](*unbound[1:], x))
        return silu_and_mul
    if name == "gelu_and_mul":
        def gelu_and_mul(out, x):
            out.copy_(A.GeluAndMul.forward_native(types.SimpleNamespace(approximate="none"), x))
        return gelu_and_mul
    if name == "swigluoai_and_mul":
        def swigluoai_and_mul(out, x, alpha=1.702, limit=7.0):
            me = types.SimpleNamespace(alpha=alpha, limit=limit)
            out.copy_(A.SwigluOAIAndMul.forward_native(me, x))
        return swigluoai_and_mul
    raise KeyError(name)


# --------------------------------------------------------------------------- registration

# The trailing optional arguments default to None: releases before 0.13.0 call
# moe_align_block_size with the first six only (the map applied to expert_ids in Python
# afterwards) and releases before 0.15 (read: 0.14.0) call moe_sum(input, output); the stand-in's
# contract with those arguments absent is the older op's.
SCHEMAS = {
    ("_moe_C", "moe_align_block_size"): (
        "moe_align_block_size(Tensor topk_ids, int num_experts, int block_size, "
        "Tensor(a!) sorted_token_ids, Tensor(b!) experts_ids, Tensor(c!) num_tokens_post_pad, "
        "Tensor? maybe_expert_map=None, Tensor(d!)? scatter_idx=None) -> ()"),
    ("_moe_C", "moe_sum"): (
        "moe_sum(Tensor input, Tensor(a!) output, Tensor? topk_ids=None, "
        "Tensor? expert_map=None) -> ()"),
    ("_C", "silu_and_mul"): "silu_and_mul(Tensor(a!) result, Tensor input) -> ()",
    ("_C", "gelu_and_mul"): "gelu_and_mul(Tensor(a!) out, Tensor input) -> ()",
    ("_C", "swigluoai_and_mul"): (
        "swigluoai_and_mul(Tensor(a!) out, Tensor input, float alpha=1.702, float limit=7.0) -> ()"),
}
_LIBRARIES: dict[str, torch.library.Library] = {}
INSTALLED: list[str] = []


def _has_op(namespace: str, name: str) -> bool:
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def implementation(namespace: str, name: str):
    if name == "moe_align_block_size":
        return moe_align_block_size
    if name == "moe_sum":
        return moe_sum
    return _activation(name)


def install() -> list[str]:
    """Register every stand-in whose op is missing (CPU dispatch key); idempotent. Returns the
    qualified names of the stand-ins in force in this process. Only under Triton's interpreter,
    and only after vLLM has loaded whatever compiled libraries it has (a stand-in registered
    first would collide with the real op's registration)."""
    if os.environ.get("TRITON_INTERPRET", "") != "1":
        raise RuntimeError("CUDA-op stand-ins are for runs under Triton's interpreter "
                           "(TRITON_INTERPRET=1) only")
    importlib.import_module("vllm._custom_ops")  # loads vllm._C / _moe_C where they exist
    for (ns, name), schema in SCHEMAS.items():
        qual = f"{ns}::{name}"
        if qual in INSTALLED or _has_op(ns, name):
            continue
        lib = _LIBRARIES.setdefault(ns, torch.library.Library(ns, "FRAGMENT"))
        lib.define(schema)
        lib.impl(name, implementation(ns, name), "CPU")
        INSTALLED.append(qual)
    return list(INSTALLED)
