"""Markdown summary of a suite run from its JUnit XML: backend x property -> outcome, worst
error, near-tie counts, skip reasons. Used by `nox -s cpu` / `nox -s gpu`.

    python -m reports.summary reports/out/<ts>/junit.xml --out reports/out/<ts>/summary.md
"""

from __future__ import annotations

import argparse
import re
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

FIGURES = ("worst_max_norm", "worst_rms_norm", "max_norm", "worst_abs_diff",
           "worst_weights_max_norm", "near_ties", "near_tie_candidates", "tokens", "examples",
           "refusal")


def _fmt(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:.3g}"


def parse(junit: Path) -> list[dict]:
    try:
        root = ET.parse(junit).getroot()
    except (ET.ParseError, OSError) as e:
        raise SystemExit(f"reports.summary: cannot read JUnit XML {junit}: {e}") from None
    rows = []
    for case in root.iter("testcase"):
        name = case.get("name", "")
        m = re.match(r"(?P<prop>[^\[]+)(\[(?P<params>.*)\])?$", name)
        prop = m.group("prop") if m else name
        params = (m.group("params") or "") if m else ""
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
                detail = (el.get("message") or "").splitlines()[0][:160] if el.get("message") else ""
                if tag == "skipped" and el.get("type") == "pytest.xfail":
                    outcome = "xfail"
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        rows.append(dict(file=case.get("classname", ""), prop=prop, params=params, outcome=outcome,
                         detail=detail, time=float(case.get("time", 0) or 0), props=props))
    return rows


def backend_of(params: str) -> str:
    # suite ids put the backend first or as one of the dash-joined parts
    for part in params.split("-"):
        if "." in part or part.endswith(("_cpu", "_router", "sampler")) or part.startswith("cpu_"):
            return part
    return params or "-"


def render(rows: list[dict], source: str) -> str:
    counts = defaultdict(int)
    for r in rows:
        counts[r["outcome"]] += 1
    out = ["# Suite summary\n", f"Source: `{source}`  ",
           "Totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "\n",
           "| backend | property | params | outcome | figures | time (s) |",
           "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (backend_of(r["params"]), r["prop"], r["params"])):
        figs = ", ".join(f"{k} {_fmt(r['props'][k])}" for k in FIGURES if k in r["props"])
        note = figs or r["detail"]
        out.append(f"| {backend_of(r['params'])} | {r['prop']} | {r['params']} | {r['outcome']} | "
                   f"{note.replace('|', '/')} | {r['time']:.2f} |")
    failed = [r for r in rows if r["outcome"] in ("FAILED", "ERROR")]
    if failed:
        out.append("\n## Failures\n")
        for r in failed:
            out.append(f"- `{r['file']}::{r['prop']}[{r['params']}]`: {r['detail']}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.summary", description=__doc__.splitlines()[0])
    ap.add_argument("junit", type=Path)
    ap.add_argument("--out", type=Path, help="write here (default: stdout); never overwrites")
    a = ap.parse_args(argv)
    text = render(parse(a.junit), str(a.junit))
    if a.out is None:
        sys.stdout.write(text)
        return 0
    if a.out.exists():
        print(f"reports.summary: {a.out} exists; not overwriting", file=sys.stderr)
        return 2
    tmp = a.out.with_suffix(a.out.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(a.out)
    print(f"reports.summary: wrote {a.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
