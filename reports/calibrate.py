"""The compare rule's false-alarm rate and power measured on this machine's own processes.

Input: single-process run files of one code version on one machine (what `nox -s bench` leaves
in reports/out/<time>-bench/bench-process*.json; several invocations may be pooled). Each trial
shuffles the processes, deals them into runs of P, and compares every ordered pair of those runs
with reports/compare.py's interval (widened as compare widens it): any "regression" is a false alarm (the code is the same);
then each CAND run's process medians are multiplied by 1 + power_slowdown and by
1 + threshold / 2, and the share called "regression" is the power and the below-threshold flag
rate; multiplied by 1 + 2 x threshold, the share called "same" (unchanged) is the false-same
rate; unchanged_rate is the share of clean comparisons called "same". Trials reuse the same
processes, so the figures are those of this sample of the machine's behaviour (report how many
processes went in); reports/synthetic.py gives the model's.
"""

from __future__ import annotations

import itertools

import numpy as np

from reports.compare import Rule, classify, process_interval
from reports.schema import Run, SchemaError


def from_processes(rule: Rule, runs: list[Run], *, processes: int, trials: int = 40,
                   seed: int = 0) -> dict:
    if processes < rule.min_processes:
        raise SchemaError(f"--processes {processes}: the rule needs at least "
                          f"{rule.min_processes} processes per run")
    if len(runs) < 2 * processes:
        raise SchemaError(f"{len(runs)} process file(s): need at least {2 * processes} to make "
                          f"two runs of {processes}")
    for r in runs:
        if len(r.records[0].process_medians) != 1:
            raise SchemaError(f"{r.source}: a merged run; pass the single-process files "
                              "(bench-process*.json)")
    ids = {(r.machine_id, r.commit_info.get("id"), r.machine_info["software"].get("vllm"))
           for r in runs}
    if len(ids) != 1:
        raise SchemaError(f"process files from {len(ids)} machines/code versions; calibrate on "
                          "one machine and one version")
    names = sorted(set.intersection(*(set(r.by_name) for r in runs)))
    if not names:
        raise SchemaError("the process files share no benchmark")
    fam = {n: runs[0].by_name[n].family for n in names}
    med = np.array([[r.by_name[n].median for n in names] for r in runs])  # [process, benchmark]
    se = np.array([[r.by_name[n].median_se for n in names] for r in runs])
    rng = np.random.default_rng(seed)
    counts = {"comparisons": 0, "false_alarms": 0, "improvements": 0, "unchanged": 0,
              "detected": 0, "below_threshold_flagged": 0, "false_same": 0}
    for _ in range(trials):
        perm = rng.permutation(len(runs))
        groups = [perm[i * processes:(i + 1) * processes] for i in range(len(runs) // processes)]
        for gb, gc in itertools.permutations(groups, 2):
            for j, n in enumerate(names):
                t = rule.threshold_for(fam[n])
                b, c = med[gb, j], med[gc, j]
                kw = {"se": float(np.hypot(np.median(se[gb, j]), np.median(se[gc, j])))}
                v = classify(*process_interval(b, c, **kw)[1:], t)
                counts["comparisons"] += 1
                counts["false_alarms"] += v == "regression"
                counts["improvements"] += v == "improvement"
                counts["unchanged"] += v == "unchanged"
                slow = classify(*process_interval(b, c * (1 + rule.power_slowdown), **kw)[1:], t)
                counts["detected"] += slow == "regression"
                half = classify(*process_interval(b, c * (1 + t / 2), **kw)[1:], t)
                counts["below_threshold_flagged"] += half == "regression"
                twice = classify(*process_interval(b, c * (1 + 2 * t), **kw)[1:], t)
                counts["false_same"] += twice == "unchanged"
    n = counts["comparisons"]
    return {"process_files": len(runs), "benchmarks": len(names), "processes_per_run": processes,
            "trials": trials, "comparisons": n, "threshold": rule.threshold,
            "false_alarm_rate": counts["false_alarms"] / n,
            "false_improvement_rate": counts["improvements"] / n,
            "unchanged_rate": counts["unchanged"] / n,
            "power": counts["detected"] / n, "power_slowdown": rule.power_slowdown,
            "below_threshold_flag_rate": counts["below_threshold_flagged"] / n,
            "false_same_rate": counts["false_same"] / n}
