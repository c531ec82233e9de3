"""reports/ab.py, the judging half of the interleaved A/B mode, on synthetic process files
(reports/synthetic.py): a drift common to the two processes of a pair cancels in the paired
verdict while the stored-run compare of the same processes cannot see past it; a planted 10%
slowdown of B is flagged and nothing else; A vs A reaches "same" with enough pairs; bad input
exits 2 with one line and overwrites nothing. The running half (harness/ab.py: the order, the
processes, the baton) is tested in tests/harness/test_ab_runner.py."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from reports import ab
from reports.__main__ import main
from reports.compare import Rule, compare
from reports.merge import merge
from reports.synthetic import Noise, benchmark_names

RULE = Rule.load()
QUIET = Noise(disturbed=0.0, rounds=50)  # a machine without other tenants


def _processes(n_bench=40, *, pairs=6, noise=QUIET, slowdown_b=None, speeds=None, order=None,
               drift_sigma=0.0, seed=0):
    names = benchmark_names(n_bench)
    rng = np.random.default_rng(seed)
    slow = {names[i][0]: f for i, f in (slowdown_b or {}).items()}
    return names, ab.synthetic_processes(names, rng, pairs=pairs, noise=noise, slowdown_b=slow,
                                         speeds=speeds, order=order, drift_sigma=drift_sigma)


def _verdicts(cmp) -> dict[str, str]:
    return {r.fullname: r.verdict for r in cmp.rows}


def test_common_drift_cancels_when_paired():
    """Each pair of processes runs at its own machine speed (another tenant for a while, a
    clock change): up to 60% apart between pairs, the same for the two processes of a pair."""
    pair_speed = [1.0, 1.35, 0.9, 1.6, 1.1, 1.25]
    speeds = [s for s in pair_speed for _ in range(2)]
    _, procs = _processes(speeds=speeds)
    cmp = ab.judge(procs, RULE)
    counts = cmp.counts()
    assert counts["regression"] == counts["faster"] == 0, ab.to_markdown(cmp)
    assert counts["same"] >= 0.9 * len(cmp.rows), ab.to_markdown(cmp)
    for r in cmp.rows:
        assert r.lo <= 1.02 and r.hi >= 0.98  # the intervals hold the true ratio 1
    # the stored-run rule on the same processes: the drift spreads each side's medians, so it
    # cannot call any of them the same
    unpaired = compare(merge([r for s, r in procs if s == "A"], "A"),
                       merge([r for s, r in procs if s == "B"], "B"), RULE).counts()
    assert unpaired["unchanged"] == 0 and unpaired["inconclusive"] == len(cmp.rows)
    assert {r.unpaired for r in cmp.rows} == {"inconclusive"}  # the contrast column says so


def test_drift_between_stored_runs_is_a_false_verdict_unpaired():
    """The situation A/B exists for: A's processes first, then B's, the machine 15% slower by
    then. The stored-run compare finds identical code 15% slower: a regression, relabelled
    "machine drift" where the control op saw the machine slow down too (here it does), never
    "same"; interleaved and paired, the same drift (a steady trend over the run) gives no
    verdict against B and calls most benchmarks the same."""
    order = ["A"] * 6 + ["B"] * 6
    _, seq = _processes(pairs=6, order=order, speeds=[1.0] * 6 + [1.15] * 6)
    unpaired = compare(merge([r for s, r in seq if s == "A"], "A"),
                       merge([r for s, r in seq if s == "B"], "B"), RULE).counts()
    assert unpaired["regression"] + unpaired["drift"] >= 36 and unpaired["unchanged"] == 0
    with pytest.raises(ab.ABError, match="one A and one B"):
        ab.judge(seq, RULE)  # not an A/B run: its processes cannot be paired in run order
    trend = [1.15 ** (i / 11) for i in range(12)]  # 15% slower by the end, steadily
    _, inter = _processes(pairs=6, speeds=trend)
    cmp = ab.judge(inter, RULE)
    assert cmp.counts()["regression"] == cmp.counts()["faster"] == 0, ab.to_markdown(cmp)
    assert cmp.counts()["same"] >= 30, ab.to_markdown(cmp)


def test_unbalanced_order_would_turn_a_trend_into_a_verdict():
    """Why the order is A B B A, not A B A B: with B always second, a trend of 8% a process
    makes identical code look 8% slower."""
    speeds = [1.08 ** i for i in range(12)]
    _, abab = _processes(pairs=6, order=["A", "B"] * 6, speeds=speeds)
    assert len(ab.judge(abab, RULE).regressions) >= 30
    _, abba = _processes(pairs=6, speeds=speeds)
    assert ab.judge(abba, RULE).regressions == []


def test_planted_ten_percent_is_flagged_and_nothing_else():
    slowed = {i: 0.10 for i in range(0, 40, 4)}  # 10 of 40 benchmarks, B 10% slower
    names, procs = _processes(slowdown_b=slowed, drift_sigma=0.01)  # 1% drift a process
    cmp = ab.judge(procs, RULE)
    v = _verdicts(cmp)
    slow = {names[i][0] for i in slowed}
    assert {n for n, x in v.items() if x == "regression"} == slow, ab.to_markdown(cmp)
    assert not [n for n, x in v.items() if x == "faster"]
    assert sum(v[n] == "same" for n in v if n not in slow) >= 0.8 * (len(v) - len(slow))
    for r in cmp.rows:
        if r.fullname in slow:
            assert r.lo > 1 + RULE.threshold and r.lo < 1.10 < r.hi  # the interval holds 1.10
    assert cmp.exit_code == 1
    md = ab.to_markdown(cmp)
    assert md.count("| REGRESSION |") == len(slow) and "98% interval" in md


def test_a_vs_a_is_same_with_enough_pairs():
    # 3 pairs: t_{0.99, 2} = 6.96, the interval too wide for "same" but never a verdict
    _, few = _processes(pairs=3, drift_sigma=0.02, seed=3)
    c3 = ab.judge(few, RULE).counts()
    assert c3["regression"] == c3["faster"] == 0
    _, many = _processes(pairs=12, drift_sigma=0.02, seed=3)
    c12 = ab.judge(many, RULE).counts()
    assert c12["regression"] == c12["faster"] == 0
    assert c12["same"] >= 38 and c12["same"] > c3["same"]


def test_a_shared_pair_is_said_in_the_notes():
    """Pairs timed in one process (--ab-interleave shared: machine_info.ab_shared in their
    files) are judged as any pair, and the notes say so: their spread is not two
    environments'."""
    _, procs = _processes(n_bench=4, pairs=4)
    plain = ab.judge(procs, RULE)
    assert not any("one process timing both sides" in n for n in plain.notes)
    for i, (side, run) in enumerate(procs):
        if side == "A" and i < 4:  # the first two pairs
            run.machine_info["ab_shared"] = {"side": "A", "first": "A"}
    marked = ab.judge(procs, RULE)
    assert any(n.startswith("2 of 4 pairs were one process timing both sides") for n in
               marked.notes), marked.notes
    assert _verdicts(marked) == _verdicts(plain)


def test_disturbed_processes_make_inconclusive_not_false_verdicts():
    """A quarter of the process medians 1.05-2.5x slower (another tenant on the cores): wide
    intervals, no false regression over 400 benchmarks of A vs A."""
    _, procs = _processes(400, pairs=6, noise=Noise(), drift_sigma=0.02, seed=4)
    c = ab.judge(procs, RULE, unpaired=False).counts()
    assert c["regression"] <= RULE.max_false_alarm_rate * 400 and c["faster"] <= 4
    assert c["inconclusive"] > c["same"]


def test_slowdown_at_the_threshold_is_rarely_a_regression():
    """The interval's level: B exactly 5% slower (not a regression by the rule) is called one
    in at most ~alpha of the benchmarks (1%; binomial slack over 600)."""
    _, procs = _processes(600, pairs=6, noise=Noise(disturbed=0.0), drift_sigma=0.02,
                          slowdown_b={i: RULE.threshold for i in range(600)}, seed=5)
    c = ab.judge(procs, RULE, unpaired=False).counts()
    assert c["regression"] <= 2 * RULE.max_false_alarm_rate * 600, c


def test_paired_interval_is_a_t_interval_of_the_log_ratios():
    a = [1.0, 1.2, 0.9, 1.1]
    b = [1.05, 1.26, 0.945, 1.17]
    ratio, lo, hi = ab.paired_interval(a, b, 0.01)
    d = np.log(np.array(b) / np.array(a))
    assert ratio == pytest.approx(float(np.exp(d.mean())))
    from scipy.stats import t

    half = t.ppf(0.99, 3) * d.std(ddof=1) / 2
    assert (lo, hi) == pytest.approx((np.exp(d.mean() - half), np.exp(d.mean() + half)))


def _write(folder: pathlib.Path, procs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (side, run) in enumerate(procs, start=1):
        ab.process_file(folder, i, side).write_text(json.dumps(run.raw))


def test_judge_a_folder_and_the_cli_exit_codes(tmp_path, capsys):
    _, procs = _processes(8, slowdown_b={0: 0.5})
    folder = tmp_path / "run-ab"
    _write(folder, procs)
    out_md = tmp_path / "table.md"
    assert main(["ab", "judge", str(folder), "--markdown", str(out_md)]) == 1
    text = capsys.readouterr()
    assert "REGRESSION" in text.err and out_md.read_text().count("| REGRESSION |") == 1
    # a second write to the same table is refused, and it stays as it was
    before = out_md.read_text()
    assert main(["ab", "judge", str(folder), "--markdown", str(out_md)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and out_md.read_text() == before


def _bad_input(tmp_path, capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    _, procs = _processes(6)
    # not a folder / no process files
    _bad_input(tmp_path, capsys, ["ab", "judge", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    _bad_input(tmp_path, capsys, ["ab", "judge", str(tmp_path / "empty")])
    # a corrupt process file
    bad = tmp_path / "corrupt"
    _write(bad, procs)
    ab.process_file(bad, 3, "B").write_text('{"benchmarks": [')
    assert "not valid JSON" in _bad_input(tmp_path, capsys, ["ab", "judge", str(bad)])
    # two A's in one pair
    twice = tmp_path / "twice"
    _write(twice, [procs[0], procs[0], *procs[2:]])
    assert "one A and one B" in _bad_input(tmp_path, capsys, ["ab", "judge", str(twice)])
    # a gap in the numbering
    gap = tmp_path / "gap"
    _write(gap, procs)
    ab.process_file(gap, 2, "B").unlink()
    assert "without gaps" in _bad_input(tmp_path, capsys, ["ab", "judge", str(gap)])
    # processes of two machines
    other = tmp_path / "machines"
    _write(other, procs)
    raw = json.loads(ab.process_file(other, 2, "B").read_text())
    raw["machine_info"]["machine_id"] = "cpu-elsewhere-00000000"
    ab.process_file(other, 2, "B").write_text(json.dumps(raw))
    assert "machines" in _bad_input(tmp_path, capsys, ["ab", "judge", str(other)])
