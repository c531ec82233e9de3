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
  machine_info.roofline         per probe the median over processes (each process's probes
                                kept in roofline.per_process)
  machine_info.processes        P

The files must come from one machine and one checkout (machine id, software versions, commit).
A benchmark absent from some processes keeps the processes it has. Nothing is written here:
history.store files the merged run.
"""

from __future__ import annotations

import copy
import statistics

from reports import roofline as _roofline
from reports.schema import Run, SchemaError, round_stats, validate

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


def merge(runs: list[Run], source: str = "<merged>") -> Run:
    """The runs of P processes of one invocation, as one validated run (see the module doc)."""
    if not runs:
        raise SchemaError(f"{source}: no runs to merge")
    if len(runs) == 1:
        return runs[0]
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
        ex["median_s"] = center
        if "tokens" in ex:
            ex["tokens_per_s"] = ex["tokens"] / center
        if "flop" in ex and "bytes" in ex:
            ex.update(_roofline.figures(
                matmul_flops_per_s=roof["matmul_flops_per_s"],
                copy_bytes_per_s=roof["copy_bytes_per_s"], dtype=ex["dtype"], flop=ex["flop"],
                nbytes=ex["bytes"], seconds=center))
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
