"""reports/sequential.py, the group-sequential A/B rule, and reports/ab.py judging a sequential
run: the looks spend exactly alpha; over all looks the false verdicts stay within alpha (and
re-reading the fixed interval after every pair, the negative control, does not); a benchmark's
verdict is the same judged while the pairs come in or afterwards on the folder; a planted
slowdown leaves early as a regression, A vs A as same; `ab step` names the open benchmarks and
refuses a run that is not sequential."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reports import ab
from reports import sequential as seq
from reports.__main__ import main
from reports.compare import Rule
from reports.synthetic import Noise, benchmark_names

RULE = Rule.load()
ALPHA, T = RULE.max_false_alarm_rate, RULE.threshold


@pytest.mark.parametrize("max_pairs", [3, 4, 8, 12])
def test_the_looks_spend_exactly_alpha(max_pairs):
    levels = [seq.level_at(n, max_pairs, ALPHA) for n in range(1, max_pairs + 3)]
    assert sum(levels) == pytest.approx(ALPHA)
    assert levels[:seq.MIN_PAIRS - 1] == [0.0, 0.0] and levels[-2:] == [0.0, 0.0]
    assert all(x > 0 for x in levels[seq.MIN_PAIRS - 1:max_pairs])


def test_false_verdicts_stay_within_alpha_over_all_looks():
    """B exactly at the threshold (+5%: not a regression) and A vs A, normal d at several
    spreads, 20,000 benchmarks a cell: false regressions <= alpha (binomial slack 3 sd), none
    for A vs A but a rare wild sample; a 2x slowdown is caught at the first look, +10% within N at sigma <= 1.5%."""
    cells = seq.simulate(sigmas=(0.01, 0.02, 0.04), ratios=(1.0, 1.0 + T, 1.10, 2.0),
                         max_pairs=8, alpha=ALPHA, threshold=T, n=20000, seed=1)
    slack = 3 * math.sqrt(ALPHA * (1 - ALPHA) / 20000)
    for c in cells:
        if c["ratio"] == 1.0 + T:
            assert c["regression"] <= ALPHA + slack, c
            assert c["same"] <= ALPHA + slack, c  # a false "same" (TOST) too
        if c["ratio"] == 1.0:
            assert c["regression"] <= ALPHA / 20 and c["faster"] <= ALPHA / 20, c
        if c["ratio"] == 2.0:
            assert c["regression"] == 1.0 and c["mean_pairs"] < 3.5, c
        if c["ratio"] == 1.10 and c["sigma"] == 0.01:
            assert c["regression"] == 1.0 and c["mean_pairs"] < 5, c


def test_negative_control_peeking_at_the_fixed_interval_inflates_false_regressions():
    """What the spending is for: re-reading the fixed rule's interval (alpha a side) after every
    pair and stopping at the first verdict calls B +5% a regression well above alpha."""
    rng = np.random.default_rng(2)
    d = rng.normal(math.log1p(T), 0.02, (20000, 8))
    from scipy.stats import t as student_t

    flagged = np.zeros(len(d), dtype=bool)
    for n in range(seq.MIN_PAIRS, 9):
        x = d[:, :n]
        lo = x.mean(1) - student_t.ppf(1 - ALPHA, n - 1) * x.std(1, ddof=1) / math.sqrt(n)
        flagged |= lo > math.log1p(T)
    assert flagged.mean() > 2.5 * ALPHA
    cell = seq.simulate(sigmas=(0.02,), ratios=(1.0 + T,), max_pairs=8, alpha=ALPHA,
                        threshold=T, n=20000, seed=2)[0]
    assert cell["regression"] <= ALPHA < flagged.mean() / 2.5


def test_replay_is_the_first_deciding_look():
    ratios = [1.20, 1.201, 1.199, 1.21, 1.20, 1.2]
    got = seq.replay(ratios, max_pairs=8, alpha=ALPHA, threshold=T)
    assert got.verdict == "regression" and got.n == 3 and got.lo > 1 + T
    # what comes after the deciding look does not change it (it would not have run)
    assert seq.replay([*ratios[:3], 0.5, 3.0], max_pairs=8, alpha=ALPHA, threshold=T) == got
    # an undecided benchmark shows its last look; fewer than MIN_PAIRS pairs: no interval
    noisy = seq.replay([1.0, 1.3, 0.8, 1.2], max_pairs=8, alpha=ALPHA, threshold=T)
    assert noisy.verdict is None and noisy.n == 4 and noisy.lo < 1 < noisy.hi
    two = seq.replay([1.0, 1.01], max_pairs=8, alpha=ALPHA, threshold=T)
    assert two.verdict is None and math.isnan(two.lo) and two.n == 2
    # ratios beyond max_pairs are never looked at
    assert seq.replay([1.0, 1.3, 0.8, 1.2, 1.0], max_pairs=4, alpha=ALPHA,
                      threshold=T).n == 4


def _processes(n_bench, *, pairs, slowdown_b=None, seed=0, drift_sigma=0.01):
    names = benchmark_names(n_bench)
    rng = np.random.default_rng(seed)
    slow = {names[i][0]: f for i, f in (slowdown_b or {}).items()}
    return names, ab.synthetic_processes(names, rng, pairs=pairs,
                                         noise=Noise(disturbed=0.0, rounds=50),
                                         slowdown_b=slow, drift_sigma=drift_sigma)


def _drop_decided(procs, max_pairs):
    """What the runner does: after each look, the decided benchmarks leave the later pairs."""
    out = list(procs[:2 * seq.MIN_PAIRS])
    for p in range(seq.MIN_PAIRS, len(procs) // 2):
        cmp = ab.judge(out, RULE, unpaired=False, sequential={"max_pairs": max_pairs})
        keep = set(cmp.open_names())
        for side, run in procs[2 * p:2 * p + 2]:
            raw = dict(run.raw)
            raw["benchmarks"] = [b for b in raw["benchmarks"] if b["fullname"] in keep]
            from reports.schema import validate

            out.append((side, validate(raw, f"process{len(out) + 1:02d}-{side}")))
    return out


def test_sequential_judgement_while_running_equals_the_folders():
    """A planted 2x and 10% slowdown leave as regressions, A vs A as same; judged on the
    folder afterwards (the decided benchmarks absent from later pairs), each benchmark keeps the
    verdict and the look it had while the run went on."""
    slowed = {0: 1.0, 1: 0.10, 2: 0.10}
    names, full = _processes(30, pairs=8, slowdown_b=slowed, seed=7)
    ran = _drop_decided(full, 8)
    assert sum(len(r.records) for _, r in ran) < sum(len(r.records) for _, r in full)
    cmp = ab.judge(ran, RULE, sequential={"max_pairs": 8})
    by = {r.fullname: r for r in cmp.rows}
    assert by[names[0][0]].verdict == "regression" and by[names[0][0]].decided_at == 3
    assert by[names[1][0]].verdict == by[names[2][0]].verdict == "regression"
    rest = [r for n, r in by.items() if n not in {names[i][0] for i in slowed}]
    assert not [r for r in rest if r.verdict in ("regression", "faster")]
    assert sum(r.verdict == "same" for r in rest) >= 0.9 * len(rest)
    for r in cmp.rows:
        if r.decided_at:
            assert r.pairs == r.decided_at  # it left at its verdict
            alone = seq.replay(r.pair_ratios, max_pairs=8, alpha=ALPHA, threshold=T)
            assert (alone.verdict, alone.n) == (r.verdict, r.decided_at)
    md = ab.to_markdown(cmp)
    assert "Rule (sequential" in md and "| at |" in md


def test_step_cli_names_the_open_benchmarks(tmp_path, capsys):
    names, procs = _processes(6, pairs=3, slowdown_b={0: 1.0}, seed=3)
    folder = tmp_path / "run"
    folder.mkdir()
    for i, (side, run) in enumerate(procs, start=1):
        ab.process_file(folder, i, side).write_text(json.dumps(run.raw))
    # not a sequential run (no plan): refused with one line
    assert main(["ab", "step", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "not a sequential run" in err and len(err.strip().splitlines()) == 1
    (folder / ab.PLAN).write_text(json.dumps({"sequential": {"max_pairs": 8, "rho": 3.0}}))
    assert main(["ab", "step", str(folder)]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["pairs"] == 3 and names[0][0] not in got["open"]
    assert got["counts"]["regression"] >= 1 and len(got["open"]) == got["counts"]["inconclusive"]


def test_calibrate_sequential_cli(capsys):
    assert main(["ab", "calibrate", "--sequential", "--benchmarks", "400"]) == 0
    out = capsys.readouterr().out
    assert "mean pairs" in out and json.loads(out[:out.index("\nsigma")])["max_pairs"] == 8
    assert "synthetic processes (disturbed 25%" in out
    assert main(["ab", "calibrate", "--sequential", "--pairs", "2"]) == 2
