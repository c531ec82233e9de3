"""One run from several processes of one benchmark invocation (asv-style process repeats).

Why: on the 2-core CI machine a benchmark's median moves between two processes of the same code
by far more than its rounds within one process say (measured: bootstrap s.e. of a process's
median ~0.1%; spread of the medians across processes 1-30%, ~100x larger). Which cores the
threads get, where the allocations land and, above all, other tenants taking the cores for
seconds at a time (every case of that window 1.2-2x slower) shift all rounds of a case in one
process together. An interval over the rounds of one process therefore understates the noise,
and a compare built on it raises false alarms. `nox -s bench` runs the benchmarks in P
processes one after another (SUITE_BENCH_PROCESSES), each case's P samples spread over the
whole run, and merge() folds their run files into one run:

  benchmarks[].stats            recomputed over the rounds of all processes (data concatenated
                                in process order)
  extra_info.process_medians    [median of the rounds in process 1, ..., P]: compare's samples
  extra_info.process_rounds     [rounds in process 1, ..., P]
  extra_info.median_s, tokens_per_s, achieved rates, roofline fractions
                                recomputed from the median of the process medians (robust to a
                                minority of disturbed processes) and the merged roofline
  extra_info.control            the control op's median: the median over processes
  extra_info.phases             (e2e) per phase, the median over processes (their medians kept
                                in phases.<phase>.process_medians) and its tokens/s
  machine_info.roofline         per probe the median over processes (each process's probes
                                kept in roofline.per_process)
  machine_info.processes        P

The files must come from one machine and one checkout (machine id, software versions, commit),
in the full form (the rounds are merged). A benchmark absent from some processes keeps the
processes it has. Nothing is written here: history.store files the merged run.

pool() folds several stored runs of one machine into one baseline (compare's BASE for
`[MACHINE:]pool:N`, reports/history.py chooses the runs): per benchmark, the process medians of
all runs that have it, one after another, oldest run first, and so are their per-process
summaries (stats.per_process) and round counts; the control op's median is the median over the
runs; stats min/max/mean/stddev/rounds are those of all rounds together, stats.median the median
of the process medians (the pooled rounds' quartiles are not kept, so none are given); extra_info
otherwise the newest run's, rates and roofline fractions recomputed from the pooled median and
the runs' merged roofline. compare then applies its one rule to P_base = the pooled processes:
more BASE processes make fast-half(BASE) steadier and min(BASE) lower, so the baseline leans on
no single run (one taken on a fast or a slow day) at the price of a slightly wider interval
(not measured on this machine yet). The pooled run is compact (no rounds), not meant to be
stored.
"""

from __future__ import annotations

import copy
import hashlib
import math
import statistics

from reports import roofline as _roofline
from reports.schema import COMPACT_FORMAT, PER_PROCESS, Run, SchemaError, round_stats, validate

_SAME = (("machine_info", "machine_id"), ("machine_info", "software"), ("commit_info", "id"),
         ("machine_info", "device"))


def _get(raw: dict, path: tuple[str, ...]):
    for k in path:
        raw = raw.get(k, {}) if isinstance(raw, dict) else {}
    return raw


def _merged_roofline(runs: list[Run]) -> dict:
    probes = [r.machine_info["roofline"] for r in runs]
    out = copy.deepcopy(probes[0])
    dtypes = set.intersection(*(set(p["matmul_flops_per_s"]) for p in probes))
    out["matmul_flops_per_s"] = {dt: statistics.median(p["matmul_flops_per_s"][dt] for p in probes)
                                 for dt in sorted(dtypes)}
    out["copy_bytes_per_s"] = statistics.median(p["copy_bytes_per_s"] for p in probes)
    out["per_process"] = [{"matmul_flops_per_s": p["matmul_flops_per_s"],
                           "copy_bytes_per_s": p["copy_bytes_per_s"]} for p in probes]
    return out


def _rates(ex: dict, center: float, roof: dict) -> None:
    """extra_info's time, tokens/s, achieved rates and roofline fractions at `center` seconds."""
    ex["median_s"] = center
    if "tokens" in ex:
        ex["tokens_per_s"] = ex["tokens"] / center
    if "flop" in ex and "bytes" in ex:
        ex.update(_roofline.figures(
            matmul_flops_per_s=roof["matmul_flops_per_s"],
            copy_bytes_per_s=roof["copy_bytes_per_s"], dtype=ex["dtype"], flop=ex["flop"],
            nbytes=ex["bytes"], seconds=center, compute_dtype=ex.get("compute_dtype")))


def _phases(ex: dict, recs: list) -> None:
    """extra_info.phases (e2e: prefill / decode / generate, suites/bench/phases.py) of several
    processes or pooled runs: per phase the median over their process medians, which are kept,
    and the rates at it (a phase's tokens, and prompt tokens, over its median)."""
    per = [rec.extra.get("phases") for rec in recs]
    if not isinstance(ex.get("phases"), dict) or not all(isinstance(p, dict) for p in per):
        return
    for name, phase in ex["phases"].items():
        meds = [float(m) for p in per if isinstance(p.get(name), dict)
                for m in p[name].get("process_medians", [p[name].get("median_s")])
                if m is not None]
        if not meds:
            continue
        phase["process_medians"] = meds
        phase["median_s"] = statistics.median(meds)
        for what, rate in (("tokens", "tokens_per_s"), ("prompt_tokens", "prompt_tokens_per_s")):
            if what in phase:
                phase[rate] = phase[what] / phase["median_s"]


def merge(runs: list[Run], source: str = "<merged>") -> Run:
    """The runs of P processes of one invocation, as one validated run (see the module doc)."""
    if not runs:
        raise SchemaError(f"{source}: no runs to merge")
    if len(runs) == 1:
        return runs[0]
    for r in runs:
        if r.compact:
            raise SchemaError(f"{r.source}: a compact run (no raw rounds); merge the process "
                              "files pytest wrote (--benchmark-json)")
    first = runs[0]
    for r in runs[1:]:
        for path in _SAME:
            a, b = _get(first.raw, path), _get(r.raw, path)
            if a != b:
                raise SchemaError(f"{r.source}: {'.'.join(path)} {b!r} differs from "
                                  f"{first.source}'s {a!r}; only processes of one invocation "
                                  "(same machine, software and checkout) can be merged")
    raw = copy.deepcopy(first.raw)
    roof = _merged_roofline(runs)
    raw["machine_info"]["roofline"] = roof
    raw["machine_info"]["processes"] = len(runs)
    raw["datetime"] = max(r.raw["datetime"] for r in runs)
    order: list[str] = []
    per_name: dict[str, list[tuple[dict, object]]] = {}
    for r in runs:
        by_raw = {b["fullname"]: b for b in r.raw["benchmarks"]}
        for rec in r.records:
            if rec.fullname not in per_name:
                order.append(rec.fullname)
                per_name[rec.fullname] = []
            per_name[rec.fullname].append((by_raw[rec.fullname], rec))
    benches = []
    for name in order:
        parts = per_name[name]
        b = copy.deepcopy(parts[0][0])
        data = [t for _, rec in parts for t in rec.data]
        meds = [statistics.median(rec.data) for _, rec in parts]
        center = statistics.median(meds)
        b["stats"] = round_stats(data)
        ex = b["extra_info"]
        ex["process_medians"] = meds
        ex["process_rounds"] = [len(rec.data) for _, rec in parts]
        _rates(ex, center, roof)
        _phases(ex, [rec for _, rec in parts])
        controls = [rec.extra["control"] for _, rec in parts if rec.extra.get("control")]
        if controls:
            ex["control"] = dict(controls[0])
            ex["control"]["median_s"] = statistics.median(c["median_s"] for c in controls)
            ex["control"]["process_medians"] = [c["median_s"] for c in controls]
        if isinstance(ex.get("timing"), dict):
            ex["timing"]["rounds"] = len(data)
            ex["timing"]["processes"] = len(parts)
        benches.append(b)
    raw["benchmarks"] = benches
    return validate(raw, source)


def _pooled_stats(recs: list, meds: list[float]) -> dict:
    """stats over all rounds of `recs` from theirs (min, max, mean, stddev by the law of total
    variance), the median of the pooled process medians, per_process concatenated."""
    ns = [int(r.stats["rounds"]) for r in recs]
    total = sum(ns)
    means = [float(r.stats["mean"]) for r in recs]
    mean = sum(n * m for n, m in zip(ns, means)) / total
    ss = sum((n - 1) * float(r.stats["stddev"]) ** 2 + n * (m - mean) ** 2
             for n, m, r in zip(ns, means, recs))
    summaries = [s for r in recs for s in r.process_summaries]
    return {"min": min(float(r.stats["min"]) for r in recs),
            "max": max(float(r.stats["max"]) for r in recs),
            "mean": mean, "stddev": math.sqrt(ss / (total - 1)) if total > 1 else 0.0,
            "median": statistics.median(meds), "rounds": total,
            "iterations": recs[-1].stats.get("iterations", 1), "ops": 1.0 / mean,
            "per_process": {k: [getattr(s, k) for s in summaries] for k in PER_PROCESS}}


def _digest(run: Run) -> str:
    if run.compact:
        return run.raw["compact"]["rounds_sha256"]
    from reports.compact import rounds_digest, rounds_of

    return rounds_digest(rounds_of(run))


def pool(runs: list[Run], source: str = "<pool>", *, skipped: list[str] = ()) -> Run:
    """Several runs of one machine, oldest first, as one baseline run (see the module doc)."""
    if not runs:
        raise SchemaError(f"{source}: no runs to pool")
    ids = {r.machine_id for r in runs}
    if len(ids) != 1:
        raise SchemaError(f"{source}: runs of {len(ids)} machines ({', '.join(sorted(ids))}); "
                          "a pooled baseline is one machine's")
    newest = runs[-1]
    raw = {k: copy.deepcopy(v) for k, v in newest.raw.items() if k != "benchmarks"}
    roof = _merged_roofline(runs)
    raw["machine_info"]["roofline"] = roof
    raw["machine_info"]["processes"] = sum(int(r.machine_info.get("processes", 1)) for r in runs)
    raw["commit_info"] = {"id": None, "pooled": [r.commit_info.get("id") for r in runs]}
    raw["pool"] = {"runs": [{"source": r.source, "datetime": r.raw["datetime"],
                             "commit": r.commit_info.get("id"), "label": r.label,
                             "vllm": r.machine_info["software"].get("vllm"),
                             "vllm_commit": r.machine_info["software"].get("vllm_commit")}
                            for r in runs],
                   "skipped": list(skipped)}
    raw["compact"] = {"format": COMPACT_FORMAT, "rounds_sha256": hashlib.sha256(
        " ".join(_digest(r) for r in runs).encode()).hexdigest()}
    order: list[str] = []
    parts: dict[str, list] = {}
    for r in reversed(runs):  # the newest run's benchmark order first
        for rec in r.records:
            if rec.fullname not in parts:
                order.append(rec.fullname)
                parts[rec.fullname] = []
    for r in runs:
        for rec in r.records:
            parts[rec.fullname].append(rec)
    by_raw = {}
    for r in runs:  # the newest run's raw record wins
        by_raw.update({b["fullname"]: b for b in r.raw["benchmarks"]})
    benches = []
    for name in order:
        recs = parts[name]
        b = copy.deepcopy(by_raw[name])
        meds = [m for rec in recs for m in rec.process_medians]
        b["stats"] = _pooled_stats(recs, meds)
        ex = b["extra_info"]
        ex["process_medians"] = meds
        prs = [rec.extra.get("process_rounds") for rec in recs]
        if all(pr and len(pr) == len(rec.process_medians) for pr, rec in zip(prs, recs)):
            ex["process_rounds"] = [n for pr in prs for n in pr]
        else:
            ex.pop("process_rounds", None)
        _rates(ex, statistics.median(meds), roof)
        _phases(ex, recs)
        controls = [rec.extra["control"] for rec in recs if rec.extra.get("control")]
        if controls:
            ex["control"] = dict(controls[-1])
            ex["control"]["median_s"] = statistics.median(c["median_s"] for c in controls)
            ex["control"]["process_medians"] = [
                m for c in controls for m in c.get("process_medians", [c["median_s"]])]
        if isinstance(ex.get("timing"), dict):
            ex["timing"]["rounds"] = b["stats"]["rounds"]
            ex["timing"]["processes"] = len(meds)
            ex["timing"]["pooled_runs"] = len(recs)
        benches.append(b)
    raw["benchmarks"] = benches
    return validate(raw, source)
