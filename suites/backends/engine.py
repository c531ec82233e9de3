"""vLLM's whole engine (`vllm.LLM`) in a child process, one per configuration, with timeouts.

Kind "engine", one signature:

    backend.generate(EngineConfig, [EngineRequest, ...]) -> EngineResult

An EngineConfig names the checkpoint directory and the speculative setting (MTP with k tokens,
or none). The first call for a configuration starts a child process (multiprocessing "spawn",
so nothing of the parent's torch state leaks in, and its own process group, so vLLM's engine-core
process goes with it) that builds the LLM once; later calls reuse it. Every call has a timeout.
A crashed or hung engine raises EngineError carrying the tail of the engine's stderr+stdout
(kept in a log file per configuration); the process group is killed and the parent goes on.

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
import signal
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field

from suites.backends.base import REGISTRY, Backend, vllm_build_reason

STDERR_TAIL = 6000  # characters of the engine log quoted in a failure


@dataclass(frozen=True)
class EngineConfig:
    model: str  # checkpoint directory (config.json + model.safetensors)
    num_speculative_tokens: int = 0  # 0: no speculation; k > 0: MTP with k tokens
    dtype: str = "bfloat16"
    max_model_len: int = 512
    seed: int = 0
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE
    max_num_seqs: int = 16

    @property
    def label(self) -> str:
        spec = f"mtp{self.num_speculative_tokens}" if self.num_speculative_tokens else "nospec"
        return f"{pathlib.Path(self.model).name}-{spec}-{self.dtype}"

    def llm_kwargs(self) -> dict:
        kw = dict(model=self.model, skip_tokenizer_init=True, enforce_eager=True, dtype=self.dtype,
                  enable_prefix_caching=False,  # MTP on CPU needs it off (see ENVIRONMENT.md)
                  disable_log_stats=False,  # spec-decode counters
                  max_model_len=self.max_model_len, max_num_seqs=self.max_num_seqs,
                  seed=self.seed)
        if self.num_speculative_tokens:
            kw["speculative_config"] = {"method": "mtp",
                                        "num_speculative_tokens": self.num_speculative_tokens}
        return kw


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


def _orphan_watchdog(parent_pid: int) -> None:  # pragma: no cover (runs in the child)
    """If the test session dies without closing us (SIGKILL, Ctrl-C twice), take the whole
    engine process group down instead of leaving vLLM running."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os.killpg(0, signal.SIGKILL)


def _child_main(conn, cfg: dict, log_path: str, parent_pid: int) -> None:  # pragma: no cover
    os.setsid()  # own process group: the parent can take vLLM's engine-core process down too
    threading.Thread(target=_orphan_watchdog, args=(parent_pid,), daemon=True).start()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        config = EngineConfig(**cfg)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        t0 = time.time()
        from vllm import LLM, SamplingParams

        llm = LLM(**config.llm_kwargs())
        conn.send(("ready", time.time() - t0))
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


class _Engine:
    def __init__(self, config: EngineConfig, start_timeout: float, log_dir: pathlib.Path):
        self.config = config
        self.log_path = log_dir / f"{config.label}-{os.getpid()}-{time.time_ns()}.log"
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, daemon=False, name=f"engine-{config.label}",
                                args=(child_conn, dataclasses.asdict(config), str(self.log_path),
                                      os.getpid()))
        self.proc.start()
        child_conn.close()
        msg = self._wait(start_timeout, "start")
        if msg[0] != "ready":
            self.kill()
            raise EngineError(self._explain(f"engine failed to start:\n{msg[1]}"))
        self.start_seconds = float(msg[1])

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no engine log)"
        return text[-STDERR_TAIL:]

    def _explain(self, what: str) -> str:
        return (f"[{self.config.label}] {what}\n--- engine log tail ({self.log_path}) ---\n"
                f"{self.log_tail()}")

    def _wait(self, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise EngineError(self._explain(f"engine hung: no answer to {what} in {timeout:.0f}s"))
            try:
                if self.conn.poll(min(left, 1.0)):
                    return self.conn.recv()
            except (EOFError, OSError):
                pass
            if not self.proc.is_alive():
                code = self.proc.exitcode
                self.kill()
                raise EngineError(self._explain(f"engine process died (exit code {code}) during {what}"))

    def generate(self, requests: list[EngineRequest], timeout: float) -> tuple:
        try:
            self.conn.send(("generate", [dataclasses.asdict(r) for r in requests]))
        except (BrokenPipeError, OSError) as e:
            self.kill()
            raise EngineError(self._explain(f"engine not reachable: {e}")) from e
        msg = self._wait(timeout, "generate")
        if msg[0] != "ok":
            raise EngineError(self._explain(f"engine raised:\n{msg[1]}"))
        return msg[1], msg[2], msg[3]

    def close(self, timeout: float = 30.0) -> None:
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

    def unavailable_reason(self) -> str | None:
        return vllm_build_reason(self.device)

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
        eng, started = self._engine(config)
        try:
            comps, spec, secs = eng.generate(requests, self.generate_timeout)
        except EngineError:
            self._engines.pop(config, None)
            eng.kill()
            raise
        return EngineResult(config, [Completion(**c) for c in comps], SpecCounters(**spec),
                            secs, started)

    def close(self) -> None:
        while self._engines:
            _, eng = self._engines.popitem()
            eng.close()


def _make(name: str, device: str) -> EngineBackend:
    b = EngineBackend(name=name, device=device,
                      description="vllm.LLM in a spawned child process, one per configuration")
    atexit.register(b.close)
    return b


REGISTRY.register("vllm.engine", functools.partial(_make, "vllm.engine", "cpu"))
REGISTRY.register("vllm.engine.cuda", functools.partial(_make, "vllm.engine.cuda", "cuda"))
