"""Synthetic runs with known effects: for the suite's own tests and for calibrating the compare
rule (`python -m reports calibrate` measures its false-alarm rate and power).

Times follow what this repo's CPU machine shows (reports/compare.py): a run is `processes`
processes; in each, a benchmark's level is its true time times a benign process effect
(log-normal, process_sigma) and, with probability `disturbed`, a disturbance slowing the whole
case 1.05-2.5x (log-uniform: another tenant on the cores); its rounds scatter around that level
with log-normal jitter (sigma) and a fraction of outlier rounds slowed 1.2-3x (a preempted
thread). Runs are written as reports/merge.py writes them (process_medians, process_rounds). A
"slowdown" multiplies the true time of chosen benchmarks (marked extra_info.slowdown, as
--bench-slowdown marks them: such a run is not clean), "acceptance_scale" the acceptance rates
of the e2e records; a "machine_speed" above 1 is another
tenant slowing everything in the run, the control op included (extra_info.control); a
"code_speed" above 1 is slower code that nobody planted (every kernel's true time, not the
control op, and no mark: the run is clean by its marks), e.g. a nightly drift of a few percent.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from dataclasses import dataclass

import numpy as np

from reports.compare import Rule, compare
from reports.schema import SCHEMA_VERSION, round_stats, validate

FAMILIES = ("moe_experts", "router")


@dataclass(frozen=True)
class Noise:
    sigma: float = 0.03  # log-normal jitter of a round
    outlier_rate: float = 0.05  # fraction of rounds hit by an interruption
    rounds: int = 10  # per process
    processes: int = 5
    process_sigma: float = 0.01  # benign process-to-process effect
    disturbed: float = 0.25  # probability that a process's case runs beside another tenant


def machine_info(machine_id: str = "cpu-synthetic-00000000", *, kind: str = "cpu",
                 copy_bytes_per_s: float = 1.0e10, bf16_flops: float = 1.0e11) -> dict:
    mi = {
        "machine_id": machine_id, "kind": kind, "device": "cuda" if kind == "gpu" else "cpu",
        "node": "synthetic",
        "cpu": {"model": "Synthetic CPU", "arch": "x86_64", "isa_flags": ["avx2", "avx512f"],
                "logical_cpus": 2, "usable_cpus": 2, "memory_bytes": 2**34},
        "software": {"python": "3.11", "torch": "2.13.0+cpu", "vllm": "0.32.0",
                     "vllm_commit": None},
        "threads": {"device": "cpu", "torch_num_threads": 2, "pinned_cpus": [0, 1]},
        "roofline": {"device": "cpu", "matmul_flops_per_s": {"bfloat16": bf16_flops,
                                                             "float32": bf16_flops / 2},
                     "copy_bytes_per_s": copy_bytes_per_s, "probe": {}},
    }
    if kind == "gpu":
        mi["gpu"] = {"name": "Synthetic GPU", "sm_count": 132, "memory_bytes": 80 * 2**30,
                     "driver": "550.00", "cuda": "12.8"}
    return mi


def benchmark_names(n: int, tokens=(1, 4, 16, 64, 256)) -> list[tuple[str, str, int, float]]:
    """(fullname, family, tokens, true seconds) for n benchmarks over FAMILIES x shapes x tokens."""
    out = []
    i = 0
    while len(out) < n:
        fam = FAMILIES[i % len(FAMILIES)]
        shape = f"shape{i // (len(FAMILIES) * len(tokens))}"
        t = tokens[(i // len(FAMILIES)) % len(tokens)]
        seconds = (2e-5 if fam == "router" else 1e-4) * (1 + t) ** 0.7
        out.append((f"suites/bench/test_{fam}.py::test_{fam}[synthetic-{shape}-bfloat16-T{t}]",
                    fam, t, seconds))
        i += 1
    return out


def run(*, names: list[tuple[str, str, int, float]], rng: np.random.Generator, noise: Noise,
        slowdown: dict[str, float] | None = None, when: _dt.datetime | None = None,
        machine: dict | None = None, acceptance: bool = False, commit: str = "0" * 40,
        machine_speed: float = 1.0, acceptance_scale: float = 1.0,
        code_speed: float = 1.0) -> dict:
    """A raw run (what pytest --benchmark-json would write) that passes reports.schema."""
    slowdown = slowdown or {}
    mi = dict(machine or machine_info(), processes=noise.processes)
    peak = mi["roofline"]["matmul_flops_per_s"]["bfloat16"]
    bw = mi["roofline"]["copy_bytes_per_s"]
    benches = []
    for fullname, fam, tokens, seconds in names:
        true = seconds * (1.0 + slowdown.get(fullname, 0.0)) * machine_speed * code_speed
        data, meds = [], []
        for _ in range(noise.processes):
            level = true * float(np.exp(rng.normal(0.0, noise.process_sigma)))
            if rng.random() < noise.disturbed:
                level *= float(np.exp(rng.uniform(np.log(1.05), np.log(2.5))))
            x = level * np.exp(rng.normal(0.0, noise.sigma, noise.rounds))
            hit = rng.random(noise.rounds) < noise.outlier_rate
            x[hit] *= rng.uniform(1.2, 3.0, int(hit.sum()))
            data += [float(v) for v in x]
            meds.append(float(np.median(x)))
        med = float(np.median(meds))
        flop = 0.0 if fam == "router" else 6.0 * tokens * 4 * 256 * 128
        nbytes = 4.0 * tokens * 256 + 8.0 * tokens * 4 if fam == "router" else 16 * 3 * 256 * 128 * 2.0
        extra = {
            "family": fam, "backend": "synthetic", "dtype": "bfloat16", "tokens": tokens,
            "shape": {"name": fullname.split("[")[1].split("-")[1], "T": tokens},
            "timing": {"clock": "perf_counter", "rounds": len(data), "iterations": 1,
                       "processes": noise.processes},
            "process_medians": meds, "process_rounds": [noise.rounds] * noise.processes,
            "flop": flop, "bytes": nbytes, "achieved_flops_per_s": flop / med,
            "achieved_bytes_per_s": nbytes / med, "median_s": med, "tokens_per_s": tokens / med,
            "roofline_fraction": (flop / med) / min(peak, flop / nbytes * bw) if flop
            else nbytes / med / bw,
            "control": {"op": "synthetic", "rounds": 80,
                        "median_s": 1e-4 * machine_speed * float(np.exp(rng.normal(0, 0.01)))},
        }
        if slowdown.get(fullname):
            extra["slowdown"] = slowdown[fullname]
        benches.append({
            "group": f"{fam} synthetic", "name": fullname.split("::")[1], "fullname": fullname,
            "params": None, "param": fullname.split("[")[1].rstrip("]"), "extra_info": extra,
            "options": {"timer": "perf_counter"},
            "stats": round_stats(data),
        })
    if acceptance:
        for k in (0, 1, 2, 3):
            rates = [round(0.8 * 0.85**p * acceptance_scale, 4) for p in range(k)]
            mal = 1 + sum(math.prod(rates[: p + 1]) for p in range(k))
            tps = 50.0 * mal / (1 + 0.1 * k)  # verification costs a little per draft
            tokens = 64
            meds = [tokens / tps * float(x)
                    for x in np.exp(rng.normal(0, noise.process_sigma, noise.processes))]
            data = [m * float(x) for m in meds for x in np.exp(rng.normal(0, noise.sigma,
                                                                          noise.rounds))]
            fullname = f"suites/bench/test_e2e.py::test_e2e[synthetic-mtp{k}-B1]"
            extra = {"family": "e2e", "backend": "synthetic-engine", "dtype": "bfloat16",
                     "tokens": tokens, "shape": {"name": "tiny-qwen3-next", "B": 1},
                     "timing": {}, "tokens_per_s": tokens / float(np.median(meds)), "mtp_k": k,
                     "process_medians": meds,
                     "process_rounds": [noise.rounds] * noise.processes}
            if k:
                drafts = 5000
                extra.update(acceptance_per_position=rates, mean_acceptance_length=mal,
                             acceptance_rate=sum(rates) / k, num_drafts=drafts,
                             num_draft_tokens=drafts * k)
            benches.append({
                "group": "e2e", "name": fullname.split("::")[1], "fullname": fullname,
                "params": None, "param": f"synthetic-mtp{k}-B1", "options": {},
                "extra_info": extra,
                "stats": round_stats(data),
            })
    when = when or _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc)
    return {"machine_info": mi, "commit_info": {"id": commit, "branch": "main", "dirty": False},
            "benchmarks": benches, "datetime": when.isoformat(), "version": "5.3.1",
            "suite_schema": SCHEMA_VERSION}


def calibrate(rule: Rule, *, n: int = 400, noise: Noise = Noise(), seed: int = 0) -> dict:
    """False-alarm rate on pure noise, power at rule.power_slowdown, and how often a slowdown of
    half the threshold is (wrongly) called a regression, over n synthetic benchmarks each; how
    often pure noise is called "same" (same_rate) and how often "same" is (wrongly) claimed for
    a slowdown of twice the threshold (false_same_rate)."""
    rng = np.random.default_rng(seed)
    names = benchmark_names(n)

    def shares(slow: float) -> dict[str, float]:
        base = validate(run(names=names, rng=rng, noise=noise), "synthetic-base")
        sd = {nm[0]: slow for nm in names} if slow else {}
        cand = validate(run(names=names, rng=rng, noise=noise, slowdown=sd), "synthetic-cand")
        cmp = compare(base, cand, rule)
        return {v: k / len(cmp.rows) for v, k in cmp.counts().items()}

    clean = shares(0.0)
    return {"benchmarks": n, "noise": dataclasses.asdict(noise), "threshold": rule.threshold,
            "false_alarm_rate": clean["regression"], "same_rate": clean["unchanged"],
            "power": shares(rule.power_slowdown)["regression"],
            "power_slowdown": rule.power_slowdown,
            "below_threshold_flag_rate": shares(rule.threshold / 2)["regression"],
            "false_same_rate": shares(2 * rule.threshold)["unchanged"]}
