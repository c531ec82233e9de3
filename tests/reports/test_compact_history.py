"""Compact history (reports/compact.py, reports/history.py): a run stored without its raw rounds
judges and renders exactly as the full run does, the same run gives the same bytes, the rounds
come back from their sidecar on request; `migrate` rewrites old full files in place, atomically
and idempotently, and stops at a corrupt one without harming the others; a pooled baseline takes
the last N clean runs; "same" is reached when the interval fits the band and not for a 10% effect."""

from __future__ import annotations

import copy
import datetime as dt
import gzip
import json
import os

import numpy as np
import pytest

from reports import history
from reports.__main__ import main
from reports.compact import canonical, compact, expand, read_sidecar, rounds_sidecar, sidecar_path
from reports.compare import Rule, compare, to_markdown
from reports.merge import merge, pool
from reports.render import cv_by_family, stability
from reports.schema import SchemaError, loads, validate
from reports.synthetic import Noise, benchmark_names, machine_info, run

RULE = Rule.load()
MACHINE = "cpu-synthetic-00000000"


def _run(seed=0, *, n=12, day=0, noise=None, machine=None, **kw) -> dict:
    return run(names=benchmark_names(n), rng=np.random.default_rng(seed),
               noise=noise or Noise(rounds=20), machine=machine,
               when=dt.datetime(2026, 1, 1 + day, tzinfo=dt.timezone.utc), **kw)


def _compact_run(raw, source="compact"):
    return loads(canonical(compact(validate(raw, "full"))).decode(), source)


def _verdicts(cmp):
    return [(r.fullname, r.verdict, r.ratio, r.lo, r.hi, r.control_ratio) for r in cmp.rows]


# -- the compact form --------------------------------------------------------------------------

def test_compact_round_trip_judges_and_renders_the_same():
    names = benchmark_names(40)
    rng = np.random.default_rng(5)
    noise = Noise(rounds=30)
    slow = {n[0]: 0.3 for n in names[:6]}
    full_b = validate(run(names=names, rng=rng, noise=noise), "base")
    full_c = validate(run(names=names, rng=rng, noise=noise, slowdown=slow), "cand")
    comp_b, comp_c = _compact_run(full_b.raw), _compact_run(full_c.raw)
    assert comp_b.compact and not full_b.compact
    assert all(r.data == [] and r.compact for r in comp_b.records)
    assert "data" not in json.dumps(comp_b.raw)  # no raw rounds left anywhere
    ref = compare(full_b, full_c, RULE)
    assert {r.fullname for r in ref.regressions} == set(slow)
    # Every verdict, ratio and interval bit for bit, on both forms and mixed.
    for b, c in ((comp_b, comp_c), (full_b, comp_c), (comp_b, full_c)):
        assert _verdicts(compare(b, c, RULE)) == _verdicts(ref)
    for fr, cr in zip(full_b.records, comp_b.records):
        assert cr.median == fr.median and cr.median_se == fr.median_se
        assert cr.process_medians == fr.process_medians
        assert stability(cr) == stability(fr)
        assert cr.robust_cv == pytest.approx(fr.robust_cv, rel=1e-12)
    assert cv_by_family({MACHINE: [full_b, full_c]}) == cv_by_family({MACHINE: [comp_b, comp_c]})
    # What the brief keeps: fingerprint, summary statistics, cost model, process medians.
    kept = comp_b.raw["benchmarks"][0]
    for k in ("min", "max", "mean", "stddev", "median", "iqr", "q1", "q3", "rounds",
              "iterations", "ops"):
        assert kept["stats"][k] == full_b.raw["benchmarks"][0]["stats"][k]
    assert kept["extra_info"] == full_b.raw["benchmarks"][0]["extra_info"]
    assert comp_b.machine_info == full_b.machine_info
    assert len(kept["stats"]["per_process"]["rounds"]) == noise.processes


def test_compact_is_deterministic_and_keeps_runs_apart():
    raw = _run(1)
    a = canonical(compact(validate(raw, "a")))
    b = canonical(compact(validate(json.loads(json.dumps(raw)), "b")))  # reparsed copy
    assert a == b
    c = _compact_run(raw)
    assert canonical(compact(c)) == a  # compacting a compact run changes nothing
    # Two runs that differ only in one raw round: different compact bytes (the rounds' digest).
    other = copy.deepcopy(raw)
    other["benchmarks"][0]["stats"]["data"][0] *= 1.01
    assert canonical(compact(validate(other, "o"))) != a
    assert rounds_sidecar(validate(raw, "a")) == rounds_sidecar(validate(raw, "b"))


def test_compact_schema_errors_are_one_line(tmp_path):
    good = compact(validate(_run(2), "full"))

    def broken(mutate):
        raw = copy.deepcopy(good)
        mutate(raw)
        with pytest.raises(SchemaError) as e:
            validate(raw, "x.json")
        msg = str(e.value)
        assert msg.startswith("x.json: ") and "\n" not in msg
        return msg

    b0 = lambda r: r["benchmarks"][0]["stats"]  # noqa: E731
    assert "a compact run keeps no raw rounds" in broken(
        lambda r: b0(r).update(data=[1e-3] * b0(r)["rounds"]))
    assert "benchmarks[0].stats: missing field 'per_process'" in broken(
        lambda r: b0(r).pop("per_process"))
    assert "per_process.rounds: expected counts summing to" in broken(
        lambda r: b0(r)["per_process"]["rounds"].__setitem__(0, 1))
    assert "per_process.q3: expected 5 entries" in broken(
        lambda r: b0(r)["per_process"]["q3"].pop())
    assert "expected q1 <= median <= q3" in broken(
        lambda r: b0(r)["per_process"]["q1"].__setitem__(0, 1.0))
    assert "unsupported compact format 2" in broken(lambda r: r["compact"].update(format=2))
    assert "compact.rounds_sha256: expected 64 hex digits" in broken(
        lambda r: r["compact"].update(rounds_sha256="abc"))
    # A full run still needs its rounds (the message of old).
    full = _run(2)
    del full["benchmarks"][1]["stats"]["data"]
    with pytest.raises(SchemaError, match=r"benchmarks\[1\]\.stats: missing field 'data'"):
        validate(full, "f")
    with pytest.raises(SchemaError, match="a compact run"):
        merge([_compact_run(_run(3)), _compact_run(_run(4))])


# -- store and the sidecar ---------------------------------------------------------------------

def test_store_writes_compact_with_rounds_on_request(tmp_path):
    root = tmp_path / "h"
    raw = _run(6)
    full = validate(raw, "full")
    path, created = history.store(full, root)
    assert created and history.load_run(path).compact
    assert path.read_bytes() == canonical(compact(full))
    assert not sidecar_path(path).exists()
    # The same run again, as a full or a compact file: stored once; asking for its rounds now
    # adds the sidecar to the existing file.
    assert history.store(validate(copy.deepcopy(raw), "again"), root) == (path, False)
    assert history.store(history.load_run(path), root) == (path, False)
    assert history.store(full, root, keep_rounds=True) == (path, False)
    side = sidecar_path(path)
    assert side.name == "20260101T000000Z.rounds.json.gz" and side.exists()
    # The rounds come back: compact + sidecar = the full run, to the byte.
    back = expand(history.load_run(path), read_sidecar(side, history.load_run(path)))
    assert canonical(back.raw) == canonical(raw)
    assert [p.name for p in history.run_files(root, MACHINE)] == [path.name]  # sidecar no run
    # A second run of the same second: its own name and its own sidecar.
    other = copy.deepcopy(raw)
    other["benchmarks"][0]["stats"]["data"][0] *= 1.01
    second, created = history.store(validate(other, "o"), root, keep_rounds=True)
    assert created and second.name == "20260101T000000Z-2.json"
    assert read_sidecar(sidecar_path(second))[other["benchmarks"][0]["fullname"]] == \
        other["benchmarks"][0]["stats"]["data"]
    with pytest.raises(SchemaError, match="rounds of another run"):
        read_sidecar(side, history.load_run(second))
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
    # A compact run has no rounds to keep; a corrupt sidecar is named.
    with pytest.raises(history.HistoryError, match="a compact run"):
        history.store(history.load_run(path), root, keep_rounds=True)
    side.write_bytes(gzip.compress(b'{"rounds": {}, "rounds_sha256": "0"}'))
    with pytest.raises(SchemaError, match="do not match their digest"):
        read_sidecar(side)
    side.write_bytes(b"not gzip")
    with pytest.raises(SchemaError, match="not a rounds sidecar"):
        read_sidecar(side)


def test_store_recognizes_a_run_stored_in_the_full_form(tmp_path):
    """A run stored before compaction (full form, not yet migrated) is not stored again."""
    root = tmp_path / "h"
    raw = _run(7)
    folder = root / MACHINE
    folder.mkdir(parents=True)
    legacy = folder / "20260101T000000Z.json"
    legacy.write_bytes(canonical(raw))
    assert history.store(validate(raw, "again"), root) == (legacy, False)


def test_cli_store_keep_rounds(tmp_path, capsys):
    f = tmp_path / "run.json"
    f.write_text(json.dumps(_run(8)))
    root = tmp_path / "h"
    assert main(["store", str(f), "--history", str(root), "--keep-rounds"]) == 0
    stored = history.run_files(root, MACHINE)[0]
    assert sidecar_path(stored).exists() and history.load_run(stored).compact
    assert "stored:" in capsys.readouterr().out


# -- migrate -----------------------------------------------------------------------------------

def _legacy_history(root, days=3, machines=(MACHINE,)):
    """Full-form files as the history held them before compaction."""
    paths = []
    for m in machines:
        folder = root / m
        folder.mkdir(parents=True, exist_ok=True)
        for d in range(days):
            raw = _run(10 + d, day=d, machine=machine_info(m))
            p = folder / f"2026010{1 + d}T000000Z.json"
            p.write_bytes(canonical(raw))
            paths.append(p)
    return paths


def test_migrate_in_place_idempotent_with_sizes(tmp_path, capsys):
    root = tmp_path / "h"
    paths = _legacy_history(root, machines=("cpu-other-00000001", MACHINE))  # migrate's order
    fulls = {p: history.load_run(p) for p in paths}
    before = {p: p.read_bytes() for p in paths}
    # Dry run: one line a file, sizes, nothing written.
    assert main(["migrate", "--root", str(root), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(paths) + 1 and all("dry run" in ln for ln in out[:-1])
    assert {p: p.read_bytes() for p in paths} == before
    assert main(["migrate", "--root", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(paths) + 1
    for p, line in zip(paths, out):
        assert line.startswith(f"{p}: ") and " -> " in line
        run = history.load_run(p)
        assert run.compact and p.stat().st_size < len(before[p])
        assert p.read_bytes() == canonical(compact(fulls[p]))  # what store would write
    assert _verdicts(compare(fulls[paths[0]], fulls[paths[1]], RULE)) == _verdicts(
        compare(history.load_run(paths[0]), history.load_run(paths[1]), RULE))
    assert not list(root.rglob(".incoming-*")) and not list(root.rglob("*.gz"))
    # Again: every file compact already, left as it is (same bytes, same inode).
    after = {p: (p.read_bytes(), p.stat().st_ino) for p in paths}
    assert main(["migrate", "--root", str(root), "--keep-rounds"]) == 0
    assert all("compact already" in ln for ln in capsys.readouterr().out.splitlines()[:-1])
    assert {p: (p.read_bytes(), p.stat().st_ino) for p in paths} == after
    # compare and latest/previous work on the migrated history.
    assert main(["compare", f"{MACHINE}:previous", f"{MACHINE}:latest", "--history",
                 str(root)]) in (0, 1)


def test_migrate_keep_rounds_writes_sidecars(tmp_path, capsys):
    root = tmp_path / "h"
    paths = _legacy_history(root, days=2)
    raws = {p: json.loads(p.read_text()) for p in paths}
    assert main(["migrate", "--root", str(root), "--keep-rounds"]) == 0
    assert "rounds in 20260101T000000Z.rounds.json.gz" in capsys.readouterr().out
    for p in paths:
        run = history.load_run(p)
        assert canonical(expand(run, read_sidecar(sidecar_path(p), run)).raw) == \
            canonical(raws[p])


def test_migrate_stops_at_a_corrupt_file_and_harms_nothing(tmp_path, capsys):
    root = tmp_path / "h"
    paths = _legacy_history(root, days=4)
    corrupt = paths[2]
    corrupt.write_text('{"benchmarks": [')  # truncated
    before = {p: p.read_bytes() for p in paths}
    assert main(["migrate", "--root", str(root)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and corrupt.name in err[0]
    assert "2 file(s) before it rewritten" in err[0]
    # Those before it: migrated and complete; it and those after: untouched, byte for byte.
    for p in paths[:2]:
        assert history.load_run(p).compact
    for p in paths[2:]:
        assert p.read_bytes() == before[p]
    assert not list(root.rglob(".incoming-*"))
    # Fixed (removed), the migration finishes; the migrated files are not touched again.
    migrated = {p: p.read_bytes() for p in paths[:2]}
    corrupt.unlink()
    assert main(["migrate", "--root", str(root)]) == 0
    assert {p: p.read_bytes() for p in paths[:2]} == migrated
    assert history.load_run(paths[3]).compact


def test_migrate_failing_write_leaves_the_file_whole(tmp_path, monkeypatch):
    """A write that fails half-way (disk full at os.replace) leaves the old file as it was and
    no temporary file behind."""
    root = tmp_path / "h"
    paths = _legacy_history(root, days=1)
    before = paths[0].read_bytes()

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(history.HistoryError, match="No space left on device"):
        history.migrate(root, say=lambda s: None)
    assert paths[0].read_bytes() == before
    assert not list(root.rglob(".incoming-*"))


def test_migrate_empty_or_missing_root(tmp_path, capsys):
    assert main(["migrate", "--root", str(tmp_path / "absent")]) == 2
    assert "no such history folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["migrate", "--root", str(tmp_path / "empty")]) == 0


# -- pooled baseline ---------------------------------------------------------------------------

def _history_with_planted(root):
    """Days 0-5: clean, clean, slowed (synthetic slowdown), clean, planted via --bench-slowdown
    settings, clean. Stored compact."""
    runs = []
    for d in range(6):
        kw = {"slowdown": {benchmark_names(12)[0][0]: 0.5}} if d == 2 else {}
        mi = machine_info()
        if d == 4:
            mi["bench_settings"] = {"slowdown": {"cpu_fused_moe.vec": 0.15}}
        r = validate(_run(20 + d, day=d, machine=mi, **kw), f"day{d}")
        history.store(r, root)
        runs.append(r)
    return runs


def test_pool_takes_the_last_clean_runs(tmp_path):
    root = tmp_path / "h"
    runs = _history_with_planted(root)
    assert history.planted(runs[2]) and history.planted(runs[4])
    assert [history.planted(runs[d]) for d in (0, 1, 3, 5)] == [None] * 4
    base = history.pool("pool:3", root)
    assert [r["datetime"][:10] for r in base.raw["pool"]["runs"]] == [
        "2026-01-02", "2026-01-04", "2026-01-06"]
    assert len(base.raw["pool"]["skipped"]) == 2
    by = {d: runs[d].by_name for d in (1, 3, 5)}
    for rec in base.records:
        assert rec.process_medians == [m for d in (1, 3, 5) for m in
                                       by[d][rec.fullname].process_medians]
        assert len(rec.process_summaries) == 15 and rec.stats["rounds"] == 3 * 5 * 20
    # The CAND run is not its own baseline: pool:3 against the latest pools the 3 before it.
    latest = history.load_run(history.resolve("latest", root))
    base = history.pool(f"{MACHINE}:pool:3", root, exclude=latest)
    assert [r["datetime"][:10] for r in base.raw["pool"]["runs"]] == [
        "2026-01-01", "2026-01-02", "2026-01-04"]
    with pytest.raises(history.HistoryError, match=r"holds 3 clean run\(s\) \(2 planted "
                       r"skipped\), need 5"):
        history.pool("pool:5", root, exclude=latest)
    with pytest.raises(history.HistoryError, match="BASE only"):
        history.resolve("pool:3", root)
    cmp = compare(base, latest, RULE)
    assert any("BASE pools the process medians of 3 clean run(s)" in n for n in cmp.notes)
    assert cmp.regressions == [] and all(r.base_processes == 15 for r in cmp.rows)


def test_cli_compare_with_pool(tmp_path, capsys):
    root = tmp_path / "h"
    _history_with_planted(root)
    assert main(["compare", "pool:3", "latest", "--history", str(root)]) == 0
    out = capsys.readouterr().out
    assert "pools the process medians of 3 clean run(s)" in out and "| 15/5 |" in out
    assert main(["compare", "pool:9", "latest", "--history", str(root)]) == 2
    assert "need 9" in capsys.readouterr().err


def test_pool_of_full_and_compact_runs_agree():
    raws = [_run(30 + d, day=d) for d in range(3)]
    full = pool([validate(r, f"f{i}") for i, r in enumerate(raws)])
    comp = pool([_compact_run(r) for r in raws])
    assert [r.process_medians for r in full.records] == [r.process_medians for r in comp.records]
    assert [r.median_se for r in full.records] == [r.median_se for r in comp.records]
    assert full.raw["compact"] == comp.raw["compact"]


# -- "same" ------------------------------------------------------------------------------------

def test_same_is_reached_and_not_for_a_ten_percent_effect(capsys, tmp_path):
    """Two runs of one synthetic distribution, 11 processes of 100 rounds (a quarter of the
    processes disturbed): most benchmarks "same", the interval inside [1/1.05, 1.05]; the same
    runs with a 10% effect: never "same". (An odd P: with an even one the median of the process
    medians averages two, one of which may be disturbed, and the ratio shown can leave the
    interval; the verdict comes from the interval.)"""
    names = benchmark_names(40)
    noise = Noise(processes=11, rounds=100)
    rng = np.random.default_rng(41)
    base = validate(run(names=names, rng=rng, noise=noise), "base")
    cand = validate(run(names=names, rng=rng, noise=noise), "cand")
    slow = validate(run(names=names, rng=rng, noise=noise,
                        slowdown={n[0]: 0.10 for n in names}), "slow")
    t = RULE.threshold
    cmp = compare(base, cand, RULE)
    same = [r for r in cmp.rows if r.verdict == "unchanged"]
    assert len(same) >= 0.8 * len(names) and cmp.regressions == [], cmp.counts()
    assert all(1 / (1 + t) <= r.lo <= r.ratio <= r.hi <= 1 + t for r in same)
    md = to_markdown(cmp)
    assert f"Verdicts: same {len(same)}" in md and "same when inside [0.952, 1.050]" in md
    r0 = same[0]
    assert f"| same | {r0.label} |" in md and f"[{r0.lo:.3f}, {r0.hi:.3f}]" in md
    cmp = compare(base, slow, RULE)
    assert cmp.counts()["unchanged"] == 0 and len(cmp.regressions) >= 0.8 * len(names)
    # On the console, through compacted files.
    for name, r in (("base", base), ("cand", cand)):
        (tmp_path / f"{name}.json").write_bytes(canonical(compact(r)))
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "cand.json")]) == 0
    out = capsys.readouterr().out
    assert f"no regression (40 benchmarks compared: same {len(same)}" in out
    assert "| same |" in out
