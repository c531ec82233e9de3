"""reports/schema.py and reports/history.py: valid runs load, every kind of bad file gives one
clear line (and exit 2 from the CLI, no traceback), history never overwrites."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from reports import history
from reports.__main__ import main
from reports.schema import SchemaError, load_run, validate
from reports.synthetic import Noise, benchmark_names, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def raw():
    return run(names=benchmark_names(6), rng=np.random.default_rng(1), noise=Noise(rounds=12, processes=1))


def _write(path, obj_or_text):
    path.write_text(obj_or_text if isinstance(obj_or_text, str) else json.dumps(obj_or_text))
    return path


def test_valid_run_loads(raw, tmp_path):
    r = load_run(_write(tmp_path / "r.json", raw))
    assert r.machine_id == "cpu-synthetic-00000000"
    assert len(r.records) == 6
    assert all(len(rec.data) == 12 and rec.median > 0 for rec in r.records)
    assert r.datetime.tzinfo is not None


def _set(path: str, value):
    def mutate(d):
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        last = keys[-1]
        if value is _DELETE:
            del d[last]
        elif isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return mutate


_DELETE = object()

CORRUPTIONS = [
    ("suite_schema", _set("suite_schema", 99), "unsupported schema version 99"),
    ("no-schema", _set("suite_schema", _DELETE), "missing field 'suite_schema'"),
    ("datetime", _set("datetime", "yesterday"), "datetime: not an ISO 8601 time"),
    ("machine-id-missing", _set("machine_info.machine_id", _DELETE),
     "machine_info: missing field 'machine_id'"),
    ("machine-id-traversal", _set("machine_info.machine_id", "../../etc"),
     "machine_info.machine_id: '../../etc' is not a valid machine id"),
    ("gpu-without-gpu", _set("machine_info.kind", "gpu"), "machine_info: missing field 'gpu'"),
    ("roofline-zero", _set("machine_info.roofline.copy_bytes_per_s", 0),
     "machine_info.roofline.copy_bytes_per_s: expected a finite number > 0"),
    ("no-benchmarks", _set("benchmarks", []), "benchmarks: expected a non-empty list"),
    ("no-data", _set("benchmarks.2.stats.data", _DELETE),
     "benchmarks[2].stats: missing field 'data'"),
    ("short-data", _set("benchmarks.0.stats.data", [1e-3]),
     "benchmarks[0].stats.data: expected a list of 12 round times"),
    ("negative-round", _set("benchmarks.1.stats.data.3", -1.0),
     "benchmarks[1].stats.data[3]: expected a finite number > 0, got -1.0"),
    ("string-median", _set("benchmarks.0.stats.median", "fast"),
     "benchmarks[0].stats.median: expected a finite number > 0"),
    ("family", _set("benchmarks.0.extra_info.family", "disk"), "unknown family \"disk\""),
    ("no-roofline-fraction", _set("benchmarks.3.extra_info.roofline_fraction", _DELETE),
     "benchmarks[3].extra_info: missing field 'roofline_fraction'"),
    ("tokens-zero", _set("benchmarks.0.extra_info.tokens", 0),
     "benchmarks[0].extra_info.tokens: expected an integer >= 1"),
    ("acceptance-above-1", _set("benchmarks.0.extra_info.acceptance_per_position", [0.5, 1.5]),
     "acceptance_per_position[1]: a rate must lie in [0, 1]"),
    ("process-medians-empty", _set("benchmarks.0.extra_info.process_medians", []),
     "benchmarks[0].extra_info.process_medians: expected a non-empty list"),
    ("process-median-zero", _set("benchmarks.1.extra_info.process_medians.0", 0.0),
     "benchmarks[1].extra_info.process_medians[0]: expected a finite number > 0"),
    ("process-rounds-sum", _set("benchmarks.1.extra_info.process_rounds", [11]),
     "benchmarks[1].extra_info.process_rounds: expected 1 round counts summing to 12"),
    ("duplicate", lambda d: d["benchmarks"].append(copy.deepcopy(d["benchmarks"][0])),
     "benchmarks[6].fullname: duplicate of benchmarks[0]"),
]


@pytest.mark.parametrize("mutate, expected", [pytest.param(m, e, id=i) for i, m, e in CORRUPTIONS])
def test_invalid_field_is_named(raw, tmp_path, mutate, expected):
    mutate(raw)
    path = _write(tmp_path / "bad.json", raw)
    with pytest.raises(SchemaError) as e:
        load_run(path)
    msg = str(e.value)
    assert expected in msg, msg
    assert msg.startswith(str(path)) and "\n" not in msg


@pytest.mark.parametrize("content, expected", [
    ("", "empty file"),
    ('{"machine_info": {', "not valid JSON (line 1 column"),
    ('{"a": NaN}', "non-standard JSON constant NaN"),
    ("[1, 2]", "expected an object, got list"),
])
def test_corrupt_text(tmp_path, content, expected):
    with pytest.raises(SchemaError, match=expected.replace("(", r"\(").replace("[", r"\[")):
        load_run(_write(tmp_path / "c.json", content))


def test_binary_and_missing_and_directory(tmp_path):
    b = tmp_path / "b.json"
    b.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(SchemaError, match="not UTF-8"):
        load_run(b)
    with pytest.raises(SchemaError, match="no such file"):
        load_run(tmp_path / "absent.json")
    with pytest.raises(SchemaError, match="is a directory"):
        load_run(tmp_path)


def test_cli_bad_input_is_one_line_exit_2(raw, tmp_path):
    good = _write(tmp_path / "good.json", raw)
    bad = _write(tmp_path / "bad.json", '{"benchmarks": [')
    cases = [
        ["compare", str(bad), str(good)],
        ["compare", str(tmp_path / "missing-baseline.json"), str(good)],
        ["store", str(bad), "--history", str(tmp_path / "h")],
        ["render", "--history", str(tmp_path / "empty-history"), "--out", str(tmp_path / "o")],
    ]
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "reports", *args], cwd=ROOT,
                           capture_output=True, text=True)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "h").exists() or not any((tmp_path / "h").rglob("*.json"))


# -- history -------------------------------------------------------------------------------------

def test_store_atomic_never_overwrites(raw, tmp_path):
    root = tmp_path / "history"
    first, created = history.store(validate(raw, "a"), root)
    assert created and first.parent.name == "cpu-synthetic-00000000"
    assert first.name == "20260101T000000Z.json"
    content = first.read_bytes()
    again, created = history.store(validate(copy.deepcopy(raw), "a-again"), root)
    assert (again, created) == (first, False)  # identical run: stored once
    other = copy.deepcopy(raw)
    other["benchmarks"][0]["stats"]["data"][0] *= 1.01  # same timestamp, different content
    second, created = history.store(validate(other, "b"), root)
    assert created and second.name == "20260101T000000Z-2.json"
    assert first.read_bytes() == content
    assert [p.name for p in history.run_files(root, "cpu-synthetic-00000000")] == [
        "20260101T000000Z.json", "20260101T000000Z-2.json"]
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_store_failure_leaves_nothing(raw, tmp_path, monkeypatch):
    root = tmp_path / "history"

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", refuse)
    with pytest.raises(history.HistoryError, match="No space left on device"):
        history.store(validate(raw, "a"), root)
    assert list((root / "cpu-synthetic-00000000").iterdir()) == []


def test_history_load_resolve_and_corrupt_file(raw, tmp_path):
    root = tmp_path / "history"
    paths = []
    for i in range(3):
        r = copy.deepcopy(raw)
        r["datetime"] = (dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
                         + dt.timedelta(days=i)).isoformat()
        paths.append(history.store(validate(r, f"r{i}"), root)[0])
    assert history.resolve("latest", root) == paths[2]
    assert history.resolve("previous", root) == paths[1]
    assert history.resolve("cpu-synthetic-00000000:~2", root) == paths[0]
    with pytest.raises(history.HistoryError, match=r"holds 3 run\(s\), need at least 4"):
        history.resolve("~3", root)
    assert [len(v) for v in history.load_all(root).values()] == [3]
    corrupt = root / "cpu-synthetic-00000000" / "20260201T000000Z.json"
    corrupt.write_text('{"truncated": ')
    with pytest.raises(SchemaError, match=r"20260201T000000Z\.json: not valid JSON"):
        history.load_all(root)
    warnings = []
    runs = history.load_all(root, skip_invalid=True, warn=warnings.append)
    assert [len(v) for v in runs.values()] == [3] and len(warnings) == 1
    moved = root / "cpu-other-00000000"
    moved.mkdir()
    (moved / "20260101T000000Z.json").write_bytes(paths[0].read_bytes())
    with pytest.raises(SchemaError, match="does not match its folder"):
        history.load_machine(root, "cpu-other-00000000")


def test_cli_store_and_list(raw, tmp_path, capsys):
    f = _write(tmp_path / "run.json", raw)
    root = tmp_path / "history"
    assert main(["store", str(f), "--history", str(root)]) == 0
    assert main(["store", str(f), "--history", str(root)]) == 0
    out = capsys.readouterr().out
    assert "stored:" in out and "already stored:" in out
    assert main(["list", "--history", str(root)]) == 0
    assert "cpu-synthetic-00000000: 1 run(s)" in capsys.readouterr().out
