"""vLLM's MoE blocks with expert parallelism over two ranks, in two worker processes
(kind "ep_moe_block", base.EPMoEBlockBackend):

    vllm.qwen3_next_moe_block.ep2        Qwen3NextSparseMoeBlock, CPU, gloo
    vllm.deepseek_v3_moe_block.ep2       DeepseekV2MoE with a DeepSeek-V3 config, CPU, gloo
    vllm.*_moe_block.ep2.cuda            the same on two CUDA devices, NCCL

Each worker is one rank as vLLM's own workers set it up: VLLM_DIST_IDENT as the CPU worker sets
it (vLLM's shared-memory all-reduce on CPU), init_distributed_environment(world_size 2) over
127.0.0.1, initialize_model_parallel(tensor_model_parallel_size=2) under a VllmConfig whose
ParallelConfig has enable_expert_parallel=True and the expert_placement_strategy under test. The
block is built as the family's decoder layer builds it (suites/backends/vllm/layer.py), and ALL
weights are handed to vLLM's own loader by their checkpoint names (AutoWeightsLoader with the
model's name mapping -> MoERunner.load_weights -> RoutedExperts.weight_loader): vLLM decides
which rank keeps which expert; nothing is sliced here. Per rank the worker reports the layer's
expert_map and placement, the expert weights it kept, its routed experts' output before the
reduction (RoutedExperts.forward_modular's result), the tensor it handed to the all-reduce (the
MoE runner's tensor_model_parallel_all_reduce, wrapped for the call) and the block's output.

Redundant experts need EPLB, which vLLM 0.32 refuses off CUDA/ROCm/XPU at ParallelConfig
construction; redundancy_reason quotes its error.

Quarantine (suites/known_failures.py cpu-ep-experts-ignore-expert-map): vLLM's CPU experts
kernels are handed the global topk_ids with the rank's local weights, expert_map ignored; ids
outside [0, local experts) read out of bounds (cpu-fused-moe-no-id-bounds-check: a segfault in
cpu_fused_moe.cpp was seen). The worker checks the ids before the kernel runs and refuses such
a forward on every rank alike (a RuntimeError naming the entry), so no rank is left waiting in
the all-reduce; forwards whose ids all lie in range run.

The workers start once per test session (vLLM's import costs ~20 s) and are reused; a request
times out after WORKER_TIMEOUT_S, a worker that dies or fails makes the group shut down (all
workers killed) and the error quotes its traceback, or its exit code and log tail.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import faulthandler
import functools
import importlib
import io
import os
import pathlib
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

import torch

from suites.backends.base import (
    REGISTRY,
    EPMoEBlockBackend,
    EPRank,
    EPRun,
    ObservedRouting,
    UnsupportedShape,
    cuda_unavailable_reason,
)
from suites.backends.vllm import releases
from suites.backends.vllm.common import (
    loaded_parameter_names,
    model_file_reason,
    observing_routing,
    rendezvous_method,
    vllm_version,
    write_config,
)
from suites.backends.vllm.layer import BLOCKS, COMMON_CONFIG, FAMILY_BLOCKS

WORKER_TIMEOUT_S = 120.0  # one forward request (build, load, run) on every rank
START_TIMEOUT_S = 240.0  # spawn + vLLM's import on a busy core
ERROR_GRACE_S = 10.0  # after one rank fails, how long the others get to answer
KNOWN_OOB = "cpu-ep-experts-ignore-expert-map"

# ----------------------------------------------------------------------------- planted bugs
# name -> fn(block, rank) applied after loading, before packing (tests/negative_controls/test_ep_negative_controls.py).


def _expert_map_off_by_one_shard(block, rank):
    """The rank's expert_map is its neighbour's (the weights stay as loaded)."""
    re = block.experts.routed_experts
    m = re._expert_map
    shift = int((m >= 0).sum()) if re.expert_placement_strategy == "linear" else 1
    m.copy_(torch.roll(m, shift))


def _drop_expert_on_rank1(block, rank):
    """Rank 1's first local expert never loaded (zeros where its checkpoint tensors go)."""
    if rank == 1:
        re = block.experts.routed_experts
        with torch.no_grad():
            re.w13_weight[0].zero_()
            re.w2_weight[0].zero_()


def _raise_on_every_rank(block, rank):
    """A loader error on every rank (the workers' error path: traceback quoted, group kept)."""
    raise ValueError(f"planted loader error on rank {rank}")


def _rank1_hangs(block, rank):
    """Rank 1 never answers (the timeout path: every worker killed)."""
    if rank == 1:
        time.sleep(3600)


TAMPERS = {"expert_map off by one shard": _expert_map_off_by_one_shard,
           "expert dropped on rank 1": _drop_expert_on_rank1,
           "loader raises on every rank": _raise_on_every_rank,
           "rank 1 hangs": _rank1_hangs}


# ----------------------------------------------------------------------------- worker side


class _Refused(RuntimeError):
    """Raised inside a rank's forward, before vLLM's CPU experts kernel would read out of
    bounds; every rank raises it alike (same ids, same bound)."""


def _dump(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


def _checkpoint(family: str, cfg, w) -> tuple[list, object]:
    """(name, tensor) as the model's checkpoint names them (relative to a root holding the block
    as `mlp`), and the model's name mapping to vLLM's stacked parameters."""
    from vllm.model_executor.models.utils import WeightsMapper

    I = cfg.moe_intermediate_size
    ckpt = [("mlp.gate.weight", w.gate)]
    if family == "qwen3_next":
        from vllm.model_executor.models.qwen3_next import Qwen3NextModel

        shared, mapper = "shared_expert", Qwen3NextModel.hf_to_vllm_mapper
        ckpt.append(("mlp.shared_expert_gate.weight", w.shared_expert_gate))
    elif family == "deepseek_v3":
        # DeepseekV2Model.load_weights' stacked_params_mapping for the shared experts
        shared = "shared_experts"
        mapper = WeightsMapper(orig_to_new_stacked={
            ".shared_experts.gate_proj": (".shared_experts.gate_up_proj", 0),
            ".shared_experts.up_proj": (".shared_experts.gate_up_proj", 1)})
        ckpt.append(("mlp.gate.e_score_correction_bias", w.e_score_correction_bias))
    else:
        raise UnsupportedShape(f"no EP checkpoint layout for family {family!r}")
    Is = w.shared_w13.shape[0] // 2
    ckpt += [(f"mlp.{shared}.gate_proj.weight", w.shared_w13[:Is]),
             (f"mlp.{shared}.up_proj.weight", w.shared_w13[Is:]),
             (f"mlp.{shared}.down_proj.weight", w.shared_w2)]
    for e in range(cfg.num_experts):
        ckpt += [(f"mlp.experts.{e}.gate_proj.weight", w.w13[e, :I]),
                 (f"mlp.experts.{e}.up_proj.weight", w.w13[e, I:]),
                 (f"mlp.experts.{e}.down_proj.weight", w.w2[e])]
    return [(n, t.contiguous()) for n, t in ckpt], mapper


class _Worker:
    """One rank's state inside its process."""

    def __init__(self, rank: int, ep_size: int, init_method: str, device: str):
        self.rank, self.ep_size, self.init_method, self.device = rank, ep_size, init_method, device
        self.distributed = False
        self.configs: dict = {}

    def vllm_config(self, fam, cfg, placement: str, n_redundant: int):
        key = (fam.family, cfg, placement, n_redundant)
        if key not in self.configs:
            from vllm.config import ModelConfig, ParallelConfig, VllmConfig

            hf = {**COMMON_CONFIG, **fam._hf_config(cfg)}
            folder = write_config(f"ep{self.ep_size}-{fam.family}-{len(self.configs)}", hf)
            mc = ModelConfig(model=str(folder), skip_tokenizer_init=True, dtype="bfloat16",
                             enforce_eager=True)
            eplb = ({"enable_eplb": True, "eplb_config": {"num_redundant_experts": n_redundant}}
                    if n_redundant else {})
            pc = ParallelConfig(tensor_parallel_size=self.ep_size, enable_expert_parallel=True,
                                expert_placement_strategy=placement, **eplb)
            self.configs[key] = VllmConfig(model_config=mc, parallel_config=pc)
        return self.configs[key]

    def ensure_distributed(self) -> None:
        if self.distributed:
            return
        from vllm.distributed import init_distributed_environment, initialize_model_parallel

        init_distributed_environment(
            world_size=self.ep_size, rank=self.rank, local_rank=self.rank,
            backend="nccl" if self.device == "cuda" else "gloo",
            distributed_init_method=self.init_method)
        initialize_model_parallel(tensor_model_parallel_size=self.ep_size)
        self.distributed = True

    def forward(self, msg: dict) -> dict:
        from vllm.config import set_current_vllm_config
        from vllm.forward_context import set_forward_context
        from vllm.model_executor.models.utils import AutoWeightsLoader

        from reference.moe import MoEConfig, MoEWeights

        family = msg["family"]
        fam = BLOCKS[FAMILY_BLOCKS[family]][0](name=f"{FAMILY_BLOCKS[family]}.ep{self.ep_size}")
        cfg = MoEConfig(**msg["cfg"])
        w = MoEWeights(**msg["w"])
        x = msg["x"]
        dev = torch.device("cuda", self.rank) if self.device == "cuda" else torch.device("cpu")
        vc = self.vllm_config(fam, cfg, msg["placement"], msg["num_redundant_experts"])
        with set_current_vllm_config(vc):
            self.ensure_distributed()
            with torch.device(dev):  # parameters where the model loader creates them
                block = fam._fresh_block(vc, x.dtype)
            ckpt, mapper = _checkpoint(family, cfg, w)
            root = torch.nn.Module()
            root.add_module("mlp", block)
            loaded = loaded_parameter_names(
                AutoWeightsLoader(root).load_weights(iter(ckpt), mapper=mapper))
            missing = {f"mlp.{n}" for n, _ in block.named_parameters()} - loaded
            if missing:
                raise RuntimeError(f"vLLM's loader left {sorted(missing)} unloaded")
            if msg["tamper"]:
                TAMPERS[msg["tamper"]](block, self.rank)
            re = block.experts.routed_experts
            rec = {"rank": self.rank, "expert_map": re.expert_map.detach().cpu().clone(),
                   "placement": str(re.expert_placement_strategy),
                   "local_w13": re.w13_weight.detach().cpu().clone(),
                   "local_w2": re.w2_weight.detach().cpu().clone()}
            for m in block.modules():
                qm = getattr(m, "quant_method", None)
                if qm is not None and hasattr(qm, "process_weights_after_loading"):
                    qm.process_weights_after_loading(m)
            seen: list = []
            try:
                with (self.instrumented(block, rec), set_forward_context(None, vc),
                      torch.no_grad(), observing_routing(block) as seen):
                    out = block(x.to(dev).clone())
            except _Refused as e:
                rec["refused"] = str(e)
                for k in ("routed", "pre_reduce"):
                    rec.pop(k, None)
                return rec
            finally:
                # plain tensors across the pipe (the loader takes no classes): ObservedRouting's fields
                rec["routing"] = dict(vars(seen[0])) if len(seen) == 1 else None
            rec["out"] = out.detach().cpu()
        return rec

    @contextlib.contextmanager
    def instrumented(self, block, rec: dict):
        """Record the routed experts' output and the all-reduce's input for this forward; on
        CPU, refuse ids the experts kernel would read out of bounds (module docstring)."""
        from vllm.model_executor.layers.fused_moe.runner import moe_runner

        re = block.experts.routed_experts
        kernel = getattr(re.quant_method, "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        rec["experts_class"] = type(experts).__name__ if experts is not None else ""
        # the same bound on every rank (each rank holds at least this many), so all refuse alike
        bound = re.global_num_experts // self.ep_size
        # modular: the router object routes, experts.apply takes topk_ids, the routed output is
        # forward_modular's; monolithic (0.27-0.29): experts.apply routes with the CPU router's
        # module function and forward_monolithic returns the routed output
        # (releases.CPU_EXPERTS_CALL)
        style, routing_fn = (releases.cpu_experts_routing(vllm_version())
                             if self.device == "cpu" else ("modular", None))
        entry = "forward_modular" if style == "modular" else "forward_monolithic"
        saved = []
        routed_orig = getattr(re, entry)

        def forward_routed(*a, _orig=routed_orig, **k):
            y = _orig(*a, **k)
            if isinstance(y, torch.Tensor):
                rec["routed"] = y.detach().cpu().clone()
            return y

        def all_reduce(t, _orig=moe_runner.tensor_model_parallel_all_reduce):
            rec["pre_reduce"] = t.detach().cpu().clone()
            return _orig(t)

        def refuse_out_of_bounds(ids, local: str):
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= bound:
                raise _Refused(
                    f"refused (known failure {KNOWN_OOB}, quarantined): vLLM hands "
                    f"{type(experts).__name__} topk_ids in [{lo}, {hi}] with {local} local "
                    f"experts and the expert_map unused; ids outside [0, {bound}) would be read "
                    "out of bounds")

        saved.append((re, entry, re.__dict__.get(entry)))
        setattr(re, entry, forward_routed)
        saved.append((moe_runner, "tensor_model_parallel_all_reduce",
                      moe_runner.tensor_model_parallel_all_reduce))
        moe_runner.tensor_model_parallel_all_reduce = all_reduce
        if experts is not None and self.device == "cpu" and style == "modular":
            def apply(*a, _orig=experts.apply, **k):
                refuse_out_of_bounds(k["topk_ids"], str(k["w1"].shape[0]))
                return _orig(*a, **k)

            saved.append((experts, "apply", experts.__dict__.get("apply")))
            experts.apply = apply
        elif self.device == "cpu" and routing_fn is not None:
            # the ids are made inside the experts' apply: checked as the routing returns them
            mod_name, _, attr = routing_fn.partition(":")
            mod = importlib.import_module(mod_name)
            routing_orig = getattr(mod, attr)

            def routing(*a, _orig=routing_orig, **k):
                topk_weights, topk_ids = _orig(*a, **k)
                refuse_out_of_bounds(topk_ids, str(re.local_num_experts))
                return topk_weights, topk_ids

            saved.append((mod, attr, routing_orig))
            setattr(mod, attr, routing)
        try:
            yield
        finally:
            for obj, name, old in reversed(saved):
                if old is None:
                    delattr(obj, name)
                else:
                    setattr(obj, name, old)


def _worker_main(rank: int, ep_size: int, init_method: str, ident: str, device: str, conn,
                 log_path: str) -> None:
    """A rank's process: log to log_path (C-level faults too), then serve requests."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    # the parent asks a rank that does not answer where it is before killing it
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    torch.set_num_threads(1)
    if device == "cpu":
        # vLLM's CPU worker names its shared-memory communicator after the init port
        # (v1/worker/cpu_worker.py); the TP all-reduce then runs through it.
        os.environ["VLLM_DIST_IDENT"] = ident
    else:
        torch.cuda.set_device(rank)
    worker = _Worker(rank, ep_size, init_method, device)
    conn.send_bytes(_dump({"status": "ready"}))
    while True:
        try:
            msg = _load(conn.recv_bytes())
        except EOFError:
            return
        if msg["op"] == "close":
            with contextlib.suppress(Exception):
                from vllm.distributed import (
                    destroy_distributed_environment,
                    destroy_model_parallel,
                )

                destroy_model_parallel()
                destroy_distributed_environment()
            conn.send_bytes(_dump({"status": "closed"}))
            return
        try:
            reply = {"status": "ok", "result": worker.forward(msg)}
        except Exception:
            reply = {"status": "error", "traceback": traceback.format_exc()}
        sys.stdout.flush()
        conn.send_bytes(_dump(reply))


# ----------------------------------------------------------------------------- parent side


class EPWorkerError(RuntimeError):
    """A rank failed, died or timed out; the group was shut down."""


class _Group:
    """ep_size worker processes (spawn), one per rank, for one device kind."""

    def __init__(self, ep_size: int, device: str):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.ep_size, self.device = ep_size, device
        self.init_method = rendezvous_method()  # file://: no port to race for
        self.ident = self.init_method.rsplit("/", 1)[1][:16]
        self.logs = [pathlib.Path(tempfile.mkstemp(prefix=f"vllm-ep{ep_size}-rank{r}-",
                                                   suffix=".log")[1]) for r in range(ep_size)]
        self.conns, self.procs = [], []
        for r in range(ep_size):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, name=f"vllm-ep-rank{r}", daemon=True,
                            args=(r, ep_size, self.init_method, self.ident, device, child,
                                  str(self.logs[r])))
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        self._collect(START_TIMEOUT_S, "start")

    def request(self, msgs: list[dict], timeout: float | None = None) -> list[dict]:
        for conn, msg in zip(self.conns, msgs):
            conn.send_bytes(_dump(msg))
        timeout = WORKER_TIMEOUT_S if timeout is None else timeout
        return [r["result"] for r in self._collect(timeout, msgs[0].get("op", "?"))]

    def _collect(self, timeout: float, what: str) -> list[dict]:
        from multiprocessing.connection import wait

        deadline = time.monotonic() + timeout
        replies: list[dict | None] = [None] * self.ep_size
        while any(r is None for r in replies):
            left = deadline - time.monotonic()
            if left <= 0:
                waiting = [r for r, v in enumerate(replies) if v is None]
                errors = [f"rank {r} raised\n{v['traceback']}" for r, v in enumerate(replies)
                          if v is not None and v["status"] == "error"]
                self._dump_stacks(waiting)
                if errors:
                    self._fail(f"{what}: rank(s) {waiting} did not answer within "
                               f"{ERROR_GRACE_S:.0f} s of another rank's failure: "
                               + "\n".join(errors))
                self._fail(f"{what}: rank(s) {waiting} did not answer within {timeout:.0f} s "
                           "(their Python stacks at the timeout are in the log tails)")
            pending = [self.conns[r] for r, v in enumerate(replies) if v is None]
            sentinels = [self.procs[r].sentinel for r, v in enumerate(replies) if v is None]
            wait(pending + sentinels, timeout=min(left, 1.0))
            for r, v in enumerate(replies):
                if v is not None:
                    continue
                if self.conns[r].poll():
                    try:
                        replies[r] = _load(self.conns[r].recv_bytes())
                    except (EOFError, OSError):
                        self._fail(f"{what}: rank {r} closed its pipe", rank=r)
                    if replies[r]["status"] == "error":
                        # the others may be waiting for r in a collective: a short grace,
                        # then the group goes; if all answered it stays usable
                        deadline = min(deadline, time.monotonic() + ERROR_GRACE_S)
                elif not self.procs[r].is_alive():
                    self._fail(f"{what}: rank {r} died (exit code {self.procs[r].exitcode})",
                               rank=r)
            errors = [r for r, v in enumerate(replies) if v is not None and v["status"] == "error"]
            if errors and all(v is not None for v in replies):
                r = errors[0]
                raise EPWorkerError(f"vLLM EP workers: {what}: rank {r} raised (ranks {errors} "
                                    f"failed; the workers stay up)\n{replies[r]['traceback']}")
        return replies  # type: ignore[return-value]

    def _dump_stacks(self, ranks: list[int]) -> None:
        """faulthandler's stack dump of each rank into its log (SIGUSR1, registered by the
        worker), before the group is killed."""
        for r in ranks:
            with contextlib.suppress(Exception):
                os.kill(self.procs[r].pid, signal.SIGUSR1)
        time.sleep(1.0)

    def _fail(self, why: str, rank: int | None = None, log: bool = True):
        tail = ""
        if log:
            for r in ([rank] if rank is not None else range(self.ep_size)):
                lines = self.logs[r].read_text(errors="replace").splitlines()
                keep = [ln for ln in lines if "site-packages/torch/include" not in ln][-25:]
                tail += f"\n--- rank {r} log tail ({self.logs[r]}) ---\n" + "\n".join(keep)
        self.close(kill=True)
        raise EPWorkerError(f"vLLM EP workers: {why}{tail}\n(all workers killed)")

    def close(self, kill: bool = False) -> None:
        if not kill:
            with contextlib.suppress(Exception):
                for conn in self.conns:
                    conn.send_bytes(_dump({"op": "close"}))
                for conn in self.conns:
                    if conn.poll(10):
                        conn.recv_bytes()
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        for conn in self.conns:
            conn.close()
        # vLLM's CPU shared-memory communicator leaves its segments behind (named after
        # VLLM_DIST_IDENT, our port: 4 MB a rank); the workers are gone, so they go too
        for seg in pathlib.Path("/dev/shm").glob(f"{self.ident}-*-cpushm*"):
            seg.unlink(missing_ok=True)
        if not kill:  # a failure's message names the logs: those stay
            for log in self.logs:
                log.unlink(missing_ok=True)
        if _GROUPS.get((self.ep_size, self.device)) is self:
            del _GROUPS[(self.ep_size, self.device)]


_GROUPS: dict[tuple[int, str], _Group] = {}


def _group(ep_size: int, device: str) -> _Group:
    key = (ep_size, device)
    g = _GROUPS.get(key)
    if g is not None and not all(p.is_alive() for p in g.procs):
        g.close(kill=True)
        g = None
    if g is None:
        g = _GROUPS[key] = _Group(ep_size, device)
    return g


@atexit.register
def _close_groups() -> None:
    for g in list(_GROUPS.values()):
        g.close()


@functools.cache
def eplb_reason(ep_size: int, num_redundant_experts: int) -> str | None:
    """vLLM's own answer to ParallelConfig(enable_eplb=True, num_redundant_experts=R) at this
    EP size on this platform: None when it constructs, else its error."""
    from vllm.config import ParallelConfig

    try:
        ParallelConfig(tensor_parallel_size=ep_size, enable_expert_parallel=True,
                       enable_eplb=True,
                       eplb_config={"num_redundant_experts": num_redundant_experts})
    except Exception as e:  # pydantic's ValidationError wraps vLLM's ValueError
        msg = " ".join(str(e).split())
        if "Value error, " in msg:
            msg = msg.split("Value error, ", 1)[1].split(" [type=", 1)[0]
        return f"vLLM's ParallelConfig(enable_eplb=True) refuses it here: {msg}"
    return None


@dataclass
class VllmEPMoEBlock(EPMoEBlockBackend):
    """One family's vLLM MoE block over ep_size ranks in worker processes."""

    dtypes: tuple[torch.dtype, ...] = (torch.bfloat16,)
    tamper: str | None = None  # a TAMPERS name: a planted bug (negative controls)

    def unavailable_reason(self) -> str | None:
        fam = BLOCKS[FAMILY_BLOCKS[self.family]][0]
        return model_file_reason(self.device, fam.module) or self.hardware_reason()

    def hardware_reason(self) -> str | None:
        if self.device != "cuda":
            return None
        if (why := cuda_unavailable_reason()) is not None:
            return why
        n = torch.cuda.device_count()
        if n < self.ep_size:
            return (f"expert parallelism over {self.ep_size} ranks needs {self.ep_size} CUDA "
                    f"devices (NCCL, one per rank); {n} visible")
        return None

    def check(self, cfg) -> None:
        fam = BLOCKS[FAMILY_BLOCKS[self.family]][0](name=self.name)
        fam.check(cfg)
        if cfg.num_experts < self.ep_size:
            raise UnsupportedShape(f"{self.name}: {cfg.num_experts} experts over "
                                   f"{self.ep_size} ranks (vLLM: TP size > number of experts)")
        Is = cfg.shared_expert_intermediate_size
        if Is % self.ep_size:
            raise UnsupportedShape(f"{self.name}: shared expert intermediate {Is} does not "
                                   f"split over TP {self.ep_size} (vLLM refuses it)")

    def redundancy_reason(self, num_redundant_experts: int) -> str | None:
        if num_redundant_experts == 0:
            return None
        return eplb_reason(self.ep_size, num_redundant_experts)

    def forward_ep(self, cfg, w, x, placement="linear", num_redundant_experts=0) -> EPRun:
        self.check(cfg)
        if x.dtype not in self.dtypes:
            raise UnsupportedShape(f"{self.name}: dtype {x.dtype} (the model dtype is bfloat16)")
        if (why := self.redundancy_reason(num_redundant_experts)) is not None:
            raise UnsupportedShape(f"{self.name}: {num_redundant_experts} redundant experts: "
                                   f"{why}")
        msg = {"op": "forward", "family": self.family,
               "cfg": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                       if f.name != "extra"},
               "w": {k: v for k, v in vars(w).items() if v is not None},
               "x": x, "placement": placement, "num_redundant_experts": num_redundant_experts,
               "tamper": self.tamper}
        group = _group(self.ep_size, self.device)
        recs = group.request([msg] * self.ep_size)
        from reference.expert_parallel import physical_to_logical

        refused = [r.pop("refused", "") for r in recs]
        if len({bool(why) for why in refused}) != 1:
            raise EPWorkerError(f"the ranks disagree on refusing the forward: {refused}")
        for r in recs:
            r["routing"] = ObservedRouting(**r["routing"]) if r.get("routing") else None
        ranks = [EPRank(**r) for r in recs]
        return EPRun(ranks=ranks, physical_to_logical=physical_to_logical(
            cfg.num_experts, num_redundant_experts),
            refused="; ".join(f"rank {r}: {why}" for r, why in enumerate(refused) if why))


@contextlib.contextmanager
def tampered(backend: VllmEPMoEBlock, name: str):
    """Run with a planted bug (a TAMPERS name), for the negative controls."""
    if name not in TAMPERS:
        raise KeyError(f"unknown planted EP bug {name!r}; known: {sorted(TAMPERS)}")
    old, backend.tamper = backend.tamper, name
    try:
        yield backend
    finally:
        backend.tamper = old


EP_BLOCKS = {}
for _family in ("qwen3_next", "deepseek_v3"):
    _block = FAMILY_BLOCKS[_family]
    for _device, _how in (("cpu", "CPU, gloo"), ("cuda", "two CUDA devices, NCCL")):
        _name = f"{_block}.ep2" + (".cuda" if _device == "cuda" else "")
        EP_BLOCKS[_name] = _family
        REGISTRY.register(_name, functools.partial(
            VllmEPMoEBlock, name=_name, family=_family, device=_device, ep_size=2,
            description=f"vLLM's {BLOCKS[_block][0].block_class} with expert parallelism over "
                        f"2 ranks in 2 processes ({_how})"))
