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

FIRST_LOOK = min(seq.MIN_PAIRS, seq.FUTILITY_FROM)

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


def _drop_decided(procs, max_pairs, plan=None):
    """What the runner does: after each look, the decided benchmarks leave the later pairs."""
    plan = plan or ab.plan_sequential(max_pairs)
    first = FIRST_LOOK if plan.get("futility_beta") else seq.MIN_PAIRS
    out = list(procs[:2 * first])
    for p in range(first, len(procs) // 2):
        cmp = ab.judge(out, RULE, unpaired=False, sequential=plan)
        keep = set(cmp.open_names())
        for side, run in procs[2 * p:2 * p + 2]:
            raw = dict(run.raw)
            raw["benchmarks"] = [b for b in raw["benchmarks"] if b["fullname"] in keep]
            from reports.schema import validate

            out.append((side, validate(raw, f"process{len(out) + 1:02d}-{side}")))
    return out


@pytest.mark.parametrize("futility", [True, False])
def test_sequential_judgement_while_running_equals_the_folders(futility):
    """A planted 2x and 10% slowdown leave as regressions, A vs A as same (without futility) or
    as same / futile (with: most after 2 pairs); judged on the folder afterwards (the decided
    benchmarks absent from later pairs), each benchmark keeps the verdict and the look it had
    while the run went on."""
    slowed = {0: 1.0, 1: 0.10, 2: 0.10}
    names, full = _processes(30, pairs=8, slowdown_b=slowed, seed=7)
    plan = ab.plan_sequential(8, futility=futility)
    ran = _drop_decided(full, 8, plan)
    assert sum(len(r.records) for _, r in ran) < sum(len(r.records) for _, r in full)
    cmp = ab.judge(ran, RULE, sequential=plan)
    by = {r.fullname: r for r in cmp.rows}
    assert by[names[0][0]].verdict == "regression" and by[names[0][0]].decided_at == 3
    assert by[names[1][0]].verdict == by[names[2][0]].verdict == "regression"
    rest = [r for n, r in by.items() if n not in {names[i][0] for i in slowed}]
    assert not [r for r in rest if r.verdict in ("regression", "faster")]
    if futility:
        assert all(r.verdict == "same" or r.futile for r in rest)
        assert sum(r.futile and r.decided_at == 2 for r in rest) >= 0.5 * len(rest)
        assert not [r for r in cmp.rows if r.futile and r.verdict != "inconclusive"]
        assert not set(cmp.open_names()) & {r.fullname for r in cmp.rows if r.futile}
    else:
        assert sum(r.verdict == "same" for r in rest) >= 0.9 * len(rest)
        assert not [r for r in cmp.rows if r.futile]
    for r in cmp.rows:
        if r.decided_at:
            assert r.pairs == r.decided_at  # it left at its verdict (or for futility)
            alone = seq.replay(r.pair_ratios, max_pairs=8, alpha=ALPHA, threshold=T,
                               pooled=cmp.pooled.get(r.backend),
                               beta=plan["futility_beta"] or 0.0)
            assert (alone.verdict or "inconclusive", alone.n, alone.futile) == \
                (r.verdict, r.decided_at, r.futile)
    md = ab.to_markdown(cmp)
    assert "Rule (sequential" in md and "| at |" in md
    assert ("futile (band) |" in md) == futility and ("trimmed t interval" in md)


def test_a_plan_from_before_trimming_and_futility_is_judged_as_it_ran():
    """plan.json of the first sequential runs ({"max_pairs", "rho", "min_pairs"}): plain t
    intervals, no futility, as the runner then decided who stayed."""
    assert ab.seq_plan({"max_pairs": 8, "rho": 3.0, "min_pairs": 3}) == {
        "max_pairs": 8, "rho": 3.0, "trim": 0.0, "futility_beta": None}
    assert ab.seq_plan(ab.plan_sequential(10))["trim"] == seq.TRIM
    for bad in ({"rho": 3}, {"max_pairs": 8, "trim": 0.6}, {"max_pairs": 8, "trim": 0.2,
                                                             "futility_beta": 0.9}, None):
        with pytest.raises(ab.ABError):
            ab.seq_plan(bad)


def test_one_wild_pair_does_not_hide_a_slowdown_from_the_trimmed_interval():
    """A 10% slowdown with one pair 60% off (one process of the pair slow for that case, as
    the shared machine does): the t interval alone stays wide for good; intersected with the
    trimmed one it is a regression at 6 pairs. The negative control (trim 0) stays open."""
    ratios = [1.10, 1.095, 1.105, 1.60, 1.10, 1.098, 1.102, 1.10]
    got = seq.replay(ratios, max_pairs=8, alpha=ALPHA, threshold=T)
    assert got.verdict == "regression" and got.n == 6 and got.lo > 1 + T
    plain = seq.replay(ratios, max_pairs=8, alpha=ALPHA, threshold=T, trim=0.0)
    assert plain.verdict is None and plain.lo < 1 + T
    # below 5 pairs nothing is trimmed (g = 0), and the two intervals never both widen it
    assert seq.trimmed(4, seq.TRIM) == 0 and seq.trimmed(5, seq.TRIM) == 1
    assert seq.trimmed(10, seq.TRIM) == 2 and seq.trimmed(2, 0.4) == 0
    d = np.log(ratios[:6])
    (c1, h1), (c2, h2) = seq.half_widths(d, 0.001, seq.TRIM)
    assert c1 == pytest.approx(d.mean()) and c2 == pytest.approx(np.sort(d)[1:5].mean())
    assert h2 < h1 / 4  # the wild pair is what made the t interval wide


def test_futility_needs_every_pair_inside_the_band():
    """Futility: a benchmark whose pairs all sit well inside the band leaves after 2 pairs;
    one pair outside the band (a 10% slowdown seen once, the other pair dipped by an episode)
    keeps it; no pooled sd (too few benchmarks of its backend): never futile. It is never a
    verdict."""
    pooled = [None, 0.01, 0.01, 0.01]
    quiet = seq.replay([1.002, 0.997], max_pairs=8, alpha=ALPHA, threshold=T, pooled=pooled)
    assert quiet.futile == "band" and quiet.verdict is None and quiet.n == 2
    dipped = seq.replay([1.0, 1.10], max_pairs=8, alpha=ALPHA, threshold=T, pooled=pooled)
    assert not dipped.futile and dipped.verdict is None
    assert not seq.replay([1.002, 0.997], max_pairs=8, alpha=ALPHA, threshold=T,
                          pooled=[None, None]).futile
    # the benchmark's own spread counts when it is the larger: 1.04 / 0.96 stays open
    assert not seq.replay([1.04, 0.96], max_pairs=8, alpha=ALPHA, threshold=T,
                          pooled=pooled).futile
    # pooled_sd: the median of the backend's sds, made unbiased for normal d
    rng = np.random.default_rng(0)
    series = np.exp(rng.normal(0, 0.02, (400, 3)))
    assert seq.pooled_sd(series, 3) == pytest.approx(0.02, rel=0.1)
    assert seq.pooled_sd(series[:2], 3) is None and seq.pooled_sd(series, 1) is None


def test_a_benchmark_leaves_when_no_verdict_is_reachable_by_the_last_pair():
    """Stochastic curtailment ("reach"): pairs too spread for any verdict within N (a 5% sd
    against a 5% band, centred inside it) leave at look REACH_FROM; a 10% slowdown with one
    wild pair does not look hopeless (median and MAD), nor does a quiet benchmark ("same" is
    within reach); fewer pairs than REACH_FROM, or the last look: never."""
    kw = {"max_pairs": 10, "alpha": ALPHA, "threshold": T}
    wide = [1.06, 0.93, 1.08, 0.92, 1.00]
    assert seq.REACH_FROM == 5 and seq.unreachable(wide, **kw)
    got = seq.replay(wide, pooled=[None, 0.09, 0.09, 0.09, 0.09], **kw)
    assert got.futile == "reach" and got.n == 5 and got.verdict is None
    assert not seq.unreachable([1.10, 1.10, 0.76, 1.09, 1.11], **kw)
    assert not seq.unreachable([1.00, 1.01, 0.99, 1.00, 1.01], **kw)
    assert not seq.unreachable(wide[:4], **kw)
    assert not seq.unreachable(wide, max_pairs=5, alpha=ALPHA, threshold=T)
    # in the simulation: a 5% spread of A vs A leaves within a few pairs instead of at N, and
    # a 10% slowdown at this machine's quiet spread is let go almost never
    wide_cell = seq.simulate(sigmas=(0.05,), ratios=(1.0,), max_pairs=10, n=4000, seed=4)[0]
    assert wide_cell["futile"] > 0.85 and wide_cell["mean_pairs"] < 6, wide_cell
    slow = seq.simulate(sigmas=(0.015,), ratios=(1.10,), max_pairs=10, n=4000, seed=4)[0]
    assert slow["futile"] < 0.002 and slow["regression"] > 0.99, slow


def test_heavy_tailed_pairs_keep_false_verdicts_within_alpha():
    """The spread this machine shows (a contaminated normal: 1.5% sd, 10% of the pairs from a
    12% one) with B exactly at the threshold: the trimmed interval and futility keep false
    regressions and false "same" within alpha; a 10% slowdown is still caught mostly, and A vs
    A is never a regression."""
    def noise(rng, shape):
        wild = rng.random(shape) < 0.10
        return np.where(wild, rng.normal(0, 0.12, shape), rng.normal(0, 0.015, shape))

    cells = seq.simulate_noise(noise, (1.0, 1.0 + T, 1.10), max_pairs=10, alpha=ALPHA,
                               threshold=T, n=20000, seed=3)
    slack = 3 * math.sqrt(ALPHA * (1 - ALPHA) / 20000)
    at, aa, ten = cells[1], cells[0], cells[2]
    assert at["regression"] <= ALPHA + slack and at["same"] <= ALPHA + slack, at
    assert aa["regression"] == 0 and aa["faster"] <= ALPHA / 20, aa
    assert ten["regression"] > 0.9 and ten["futile"] < 0.03, ten
    plain = seq.simulate_noise(noise, (1.10,), max_pairs=10, alpha=ALPHA, threshold=T,
                               trim=0.0, n=20000, seed=3)[0]
    assert plain["regression"] < ten["regression"] - 0.05  # what the trimmed interval buys


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


def test_calibrate_sequential_cli(capsys, tmp_path):
    assert main(["ab", "calibrate", "--sequential", "--benchmarks", "400"]) == 0
    out = capsys.readouterr().out
    head = json.loads(out[:out.index("\nsigma")])
    assert "mean pairs" in out and head["max_pairs"] == seq.MAX_PAIRS == 10
    assert head["trim"] == seq.TRIM and head["futility_beta"] == seq.FUTILITY_BETA
    assert "synthetic processes (disturbed 25%" in out and "| futile |" in out
    assert main(["ab", "calibrate", "--sequential", "--pairs", "2"]) == 2
    # --from: the pair ratios of an A vs A folder, the slowed backend left out
    names, procs = _processes(40, pairs=4, seed=5)
    folder = tmp_path / "aa"
    folder.mkdir()
    for i, (side, run) in enumerate(procs, start=1):
        ab.process_file(folder, i, side).write_text(json.dumps(run.raw))
    plan = {"a": {"name": "pinned"}, "b": {"name": "pinned"},
            "slowdown_b": "cpu_fused_moe.vec=0.1", "sequential": ab.plan_sequential(4)}
    (folder / ab.PLAN).write_text(json.dumps(plan))
    assert main(["ab", "calibrate", "--sequential", "--benchmarks", "400", "--from",
                 str(folder)]) == 0
    out = capsys.readouterr().out
    got = json.loads(out[:out.index("\nsigma")])
    assert got["resampled_from"] == {"folder": str(folder), "pairs": 4, "benchmarks": 40,
                                     "left_out_slowed": 0, "ratios": 160,
                                     "cpu": {"model": "Synthetic CPU", "usable_cpus": 2,
                                             "isa_flags": ["avx2", "avx512f"]}}
    assert "resampled |" in out
    # the slowed backend's pairs are left out (here: every benchmark's), never resampled
    backend = procs[0][1].by_name[names[0][0]].backend
    (folder / ab.PLAN).write_text(json.dumps({**plan, "slowdown_b": f"{backend}=0.1"}))
    assert main(["ab", "calibrate", "--sequential", "--from", str(folder)]) == 2
    assert "0 unslowed pair ratios" in capsys.readouterr().err
    # not an A vs A run: refused, one line
    plan["b"]["name"] = "0.31.0"
    (folder / ab.PLAN).write_text(json.dumps(plan))
    assert main(["ab", "calibrate", "--sequential", "--from", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "not an A vs A run" in err and len(err.strip().splitlines()) == 1


def test_the_runner_default_is_the_rules_maximum():
    from harness.options import OPTIONS

    assert int(OPTIONS["--ab-pairs"].default) == seq.MAX_PAIRS
