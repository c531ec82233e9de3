"""reports/render.py: Markdown + self-contained HTML with the plots, from synthetic histories."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re

import numpy as np

from reports.__main__ import main
from reports.compare import compare
from reports.render import cv_by_family, family_trend, render
from reports.schema import validate
from reports.synthetic import Noise, benchmark_names, machine_info, run

PNG = b"\x89PNG\r\n\x1a\n"


def _history(n_runs=3, machines=("cpu-a-00000001", "gpu-b-00000002"), acceptance=True):
    rng = np.random.default_rng(7)
    names = benchmark_names(20)
    out = {}
    for m in machines:
        mi = machine_info(m, kind="gpu" if m.startswith("gpu") else "cpu")
        out[m] = [validate(run(names=names, rng=rng, noise=Noise(), machine=mi,
                               acceptance=acceptance,
                               slowdown={n[0]: 0.1 * i for n in names[:5]},
                               when=dt.datetime(2026, 1, 1 + i, tzinfo=dt.timezone.utc)),
                           f"{m}/{i}") for i in range(n_runs)]
    return out


def test_render_writes_markdown_html_and_plots(tmp_path):
    hist = _history()
    cmp = compare(hist["cpu-a-00000001"][0], hist["cpu-a-00000001"][-1])
    made = render(hist, tmp_path, comparison=cmp)
    expected = {"throughput_moe_experts", "roofline_moe_experts", "throughput_router",
                "roofline_router", "acceptance", "trend"}
    assert expected <= set(made)
    for name in expected:
        assert made[name].read_bytes()[:8] == PNG and made[name].stat().st_size > 5000
    md = made["markdown"].read_text()
    html = made["html"].read_text()
    images = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", md)
    assert {i.removeprefix("plots/").removesuffix(".png") for i in images} == expected
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(embedded) == len(images)
    assert all(base64.b64decode(e)[:8] == PNG for e in embedded)
    assert "plots/" not in html  # self-contained: nothing linked
    assert "coefficient of variation" in md and "REGRESSION" in md  # compare section
    assert md.count("## Latest results:") == 2
    # MTP end to end: tokens/s per k and the speedup over MTP off, from the e2e records.
    mtp = md[md.index("### MTP end to end"):]
    assert "| synthetic-engine | tiny-qwen3-next | 1 | off |" in mtp and "1.00x" in mtp
    assert "| 3 |" in mtp and "0.80, 0.68, 0.58" in mtp
    assert "between-process CV" in md and "disturbed processes" in md


def test_trend_follows_planted_slowdown():
    hist = _history(machines=("cpu-a-00000001",), acceptance=False)
    trend = family_trend(hist["cpu-a-00000001"])
    # 5 of 20 benchmarks (3 moe_experts, 2 router... by construction) slow 10% a run.
    moe = [v for _, v in trend["moe_experts"]]
    assert moe[0] == 1.0 and moe[0] < moe[1] < moe[2]
    rows = cv_by_family(hist)
    assert [r[1] for r in rows] == ["moe_experts", "router"]


def test_render_without_acceptance_or_history_depth(tmp_path):
    hist = _history(n_runs=1, machines=("cpu-a-00000001",), acceptance=False)
    made = render(hist, tmp_path)
    assert "acceptance" not in made and "trend" in made
    assert "- (1 run)" in made["markdown"].read_text()


def test_cli_render_refuses_non_empty_out(tmp_path, capsys):
    hist = _history(n_runs=1, machines=("cpu-a-00000001",), acceptance=False)
    f = tmp_path / "run.json"
    f.write_text(json.dumps(hist["cpu-a-00000001"][0].raw))
    out = tmp_path / "out"
    assert main(["render", "--runs", str(f), "--out", str(out)]) == 0
    before = (out / "report.md").read_text()
    assert main(["render", "--runs", str(f), "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out / "report.md").read_text() == before
