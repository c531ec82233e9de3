"""reports/merge.py: the run files of several processes of one `nox -s bench` become one run
whose records keep one median a process (compare's samples); mismatched files are refused in
one line and nothing is written."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from reports.__main__ import main
from reports.merge import merge
from reports.schema import SchemaError, validate
from reports.synthetic import Noise, benchmark_names, machine_info, run


def _processes(n: int, *, names=None, seed: int = 0, **kw) -> list:
    names = names or benchmark_names(8)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        mi = machine_info()
        mi["roofline"]["copy_bytes_per_s"] *= 1 + 0.01 * i  # each process probes its own
        out.append(validate(run(names=names, rng=rng, noise=Noise(processes=1, rounds=7),
                                machine=mi, **kw), f"process{i + 1}"))
    return out


def test_merge_keeps_one_median_a_process():
    parts = _processes(3)
    m = merge(parts, "merged")
    assert m.machine_info["processes"] == 3 and len(m.records) == 8
    for rec in m.records:
        own = [p.by_name[rec.fullname] for p in parts]
        assert rec.data == [t for r in own for t in r.data]
        assert rec.process_medians == [statistics.median(r.data) for r in own]
        assert rec.extra["process_rounds"] == [7, 7, 7] and rec.stats["rounds"] == 21
        assert rec.median == statistics.median(rec.process_medians) == rec.extra["median_s"]
        assert rec.extra["tokens_per_s"] == pytest.approx(rec.tokens / rec.median)
        assert rec.extra["achieved_bytes_per_s"] == pytest.approx(rec.extra["bytes"] / rec.median)
        assert [len(x) for x in rec.process_data] == [7, 7, 7]
        assert rec.stats["median"] == pytest.approx(float(np.median(rec.data)))
    bws = [p.machine_info["roofline"]["copy_bytes_per_s"] for p in parts]
    assert m.machine_info["roofline"]["copy_bytes_per_s"] == statistics.median(bws)
    assert len(m.machine_info["roofline"]["per_process"]) == 3
    # The merged run round-trips through the schema unchanged.
    assert validate(json.loads(json.dumps(m.raw)), "again").by_name.keys() == m.by_name.keys()


def test_merge_keeps_a_benchmark_some_processes_lack():
    names = benchmark_names(6)
    parts = _processes(2, names=names) + _processes(1, names=names[:4], seed=1)
    m = merge(parts)
    counts = {r.fullname: len(r.process_medians) for r in m.records}
    assert sorted(counts.values()) == [2, 2, 3, 3, 3, 3]


@pytest.mark.parametrize("field, value, expected", [
    ("machine_id", "cpu-other-11111111", "machine_info.machine_id"),
    ("commit", "1" * 40, "commit_info.id"),
    ("vllm", "0.33.0", "machine_info.software"),
])
def test_merge_refuses_mixed_invocations(field, value, expected):
    parts = _processes(2)
    raw = parts[1].raw
    if field == "machine_id":
        raw["machine_info"]["machine_id"] = value
    elif field == "commit":
        raw["commit_info"]["id"] = value
    else:
        raw["machine_info"]["software"]["vllm"] = value
    with pytest.raises(SchemaError, match=expected) as e:
        merge([parts[0], validate(raw, "process2")])
    assert "\n" not in str(e.value)


def test_cli_merge_writes_once(tmp_path, capsys):
    files = []
    for i, p in enumerate(_processes(3)):
        f = tmp_path / f"bench-process{i + 1}.json"
        f.write_text(json.dumps(p.raw))
        files.append(str(f))
    out = tmp_path / "bench.json"
    assert main(["merge", *files, "--out", str(out)]) == 0
    merged = validate(json.loads(out.read_text()), str(out))
    assert {len(r.process_medians) for r in merged.records} == {3}
    before = out.read_text()
    assert main(["merge", *files, "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and out.read_text() == before
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["merge", files[0], str(bad), "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
