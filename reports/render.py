"""Render runs to Markdown and self-contained HTML with plots (matplotlib, Agg backend).

  throughput_<family>.png  tokens/s vs tokens, one panel per shape, a line per machine x backend
  roofline_<family>.png    fraction of the machine's measured roofline vs tokens, same layout
  acceptance.png           acceptance rate per draft position (records that carry
                           acceptance_per_position: e2e with MTP k = 1..3, rejection sampler)
  trend.png                per machine, each family's geometric-mean median time relative to the
                           machine's first run, over its runs (history order)

The Markdown links the PNGs under plots/; the HTML embeds them as base64 data URIs, so it is one
file to upload. Latest-run tables and the coefficient of variation per family come with them.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
import pathlib
import statistics
import tempfile
from collections import defaultdict

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from reports.compare import Comparison, fast_half, to_markdown
from reports.schema import Record, Run, robust_cv

KERNEL_FAMILIES = ("moe_experts", "moe_quant_experts", "router", "rejection_sampler")


# -- documents: a list of blocks, written as Markdown or HTML --------------------------------------

def _md_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def to_md(blocks: list[tuple]) -> str:
    parts = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            parts.append("#" * b[1] + " " + b[2])
        elif kind == "p":
            parts.append(b[1])
        elif kind == "ul":
            parts.append("\n".join(f"- {x}" for x in b[1]))
        elif kind == "table":
            parts.append(_md_table(b[1], b[2]))
        elif kind == "img":
            parts.append(f"![{b[2]}]({b[1]})")
        elif kind == "raw_md":
            parts.append(b[1])
    return "\n\n".join(parts) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;"
        "overflow-x:auto;font-size:12px}.bad{color:#b00;font-weight:bold}")


def to_html(blocks: list[tuple], title: str, plot_dir: pathlib.Path) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h":
            parts.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif kind == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(
                f"<td class='bad'>{e(str(c))}</td>" if str(c) == "REGRESSION"
                else f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            parts.append(f"<table><tr>{head}</tr>{body}</table>")
        elif kind == "img":
            data = base64.b64encode((plot_dir.parent / b[1]).read_bytes()).decode()
            parts.append(f"<figure><img alt='{e(b[2])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(b[2])}</figcaption></figure>")
        elif kind == "raw_md":
            parts.append(f"<pre>{e(b[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- figures -----------------------------------------------------------------------------------------

def _series_key(machine: str, r: Record) -> str:
    slow = f" slowed x{1 + r.extra['slowdown']:.2f}" if r.extra.get("slowdown") else ""
    return f"{machine} {r.backend} {r.dtype}{slow}"


def _grid(n: int):
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_vs_tokens(latest: dict[str, Run], family: str, metric: str, path: pathlib.Path
                   ) -> pathlib.Path | None:
    """metric: 'tokens_per_s' (log y) or 'roofline_fraction' (linear y)."""
    panels: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for machine, run in latest.items():
        for r in run.records:
            value = r.extra.get(metric)
            if metric == "roofline_fraction" and not _fraction_ok(r.extra):
                continue  # withheld or held to the wrong roof: no point to plot
            if r.family == family and value is not None:
                panels[r.shape_name][_series_key(machine, r)].append((r.tokens, float(value)))
    if not panels:
        return None
    fig, axes = _grid(len(panels))
    for ax, (shape, series) in zip(axes, sorted(panels.items())):
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
        ax.set_xscale("log", base=2)
        if metric == "tokens_per_s":
            ax.set_yscale("log")
        ax.set_title(f"{family}: {shape}", fontsize=10)
        ax.set_xlabel("tokens")
        ax.set_ylabel("tokens/s" if metric == "tokens_per_s" else "fraction of measured roofline")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_acceptance(latest: dict[str, Run], path: pathlib.Path) -> pathlib.Path | None:
    """One bar group per draft position; a bar per machine x backend x k, pooled over the
    records that share them (the rejection-sampler benchmark's batch sizes, weighted by the
    number of drafts, shape.B, so a batch of one does not count as much as a batch of 64)."""
    groups: dict[str, list[tuple[float, list[float]]]] = defaultdict(list)
    for machine, run in latest.items():
        for r in run.records:
            acc = r.extra.get("acceptance_per_position")
            if acc:
                k = r.extra.get("mtp_k", len(acc))
                weight = float(r.extra.get("shape", {}).get("B", 1))
                groups[f"{machine} {r.family} {r.backend} k={k}"].append((weight, acc))
    if not groups:
        return None
    series = []
    for label, items in groups.items():
        n = min(len(a) for _, a in items)
        total = sum(w for w, _ in items)
        series.append((label, [sum(w * a[p] for w, a in items) / total for p in range(n)]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(series)
    for i, (label, acc) in enumerate(sorted(series)):
        xs = [p + 1 + (i - (len(series) - 1) / 2) * width for p in range(len(acc))]
        ax.bar(xs, acc, width=width, label=label)
    ax.set_xlabel("draft position")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(1, 1 + max(len(a) for _, a in series)))
    ax.set_title("acceptance per draft position")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def family_trend(runs: list[Run]) -> dict[str, list[tuple[int, float]]]:
    """family -> [(run index, geometric mean over benchmarks of median / first median)]."""
    first: dict[str, float] = {}
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for i, run in enumerate(runs):
        logs: dict[str, list[float]] = defaultdict(list)
        for r in run.records:
            first.setdefault(r.fullname, r.median)
            logs[r.family].append(math.log(r.median / first[r.fullname]))
        for fam, ls in logs.items():
            out[fam].append((i, math.exp(sum(ls) / len(ls))))
    return out


def plot_trend(history: dict[str, list[Run]], path: pathlib.Path) -> pathlib.Path | None:
    if not history:
        return None
    fig, axes = _grid(len(history))
    for ax, (machine, runs) in zip(axes, sorted(history.items())):
        for fam, pts in sorted(family_trend(runs).items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=fam)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels([r.label + (" (slowed)" if any(x.extra.get("slowdown") for x in r.records)
                                       else "") for r in runs], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("median time / first run (geo. mean)")
        ax.set_title(f"trend: {machine} ({len(runs)} runs)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


# -- tables ------------------------------------------------------------------------------------------

def _si(x: float, unit: str) -> str:
    if not math.isfinite(x):
        return "-"
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= p:
            return f"{x / p:.3g} {s}{unit}"
    return f"{x:.3g} {unit}"


def _time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _robust_cv(xs) -> float:
    """schema.robust_cv, or stdev / mean for 2-3 values (a run of 2-3 processes)."""
    x = np.asarray(xs, dtype=np.float64)
    if 2 <= x.size < 4:
        return float(x.std(ddof=1) / x.mean())
    return robust_cv(x)


def stability(rec: Record) -> dict:
    """How one benchmark's time moved: within a process (robust CV of its rounds, median over
    processes), between the processes of the run (robust CV of the process medians), and the
    share of processes disturbed (median >= 5% above the fast half, compare.fast_half)."""
    within = [s.robust_cv for s in rec.process_summaries if s.rounds >= 4]
    meds = rec.process_medians
    floor = fast_half(meds)
    return {"within": float(np.median(within)) if within else math.nan,
            "between_processes": _robust_cv(meds),
            "disturbed": (sum(m > 1.05 * floor for m in meds) / len(meds)) if len(meds) > 1
            else math.nan}


def cv_by_family(history: dict[str, list[Run]]) -> list[list]:
    """Per machine and family (latest run; medians and worst over the family's benchmarks): the
    within-process CV, the between-process CV, the share of disturbed processes, and the
    between-run CV of the benchmark's time over all the machine's runs (when >= 2)."""

    def pct(xs, f):
        xs = [x for x in xs if math.isfinite(x)]
        return f"{f(xs):.1%}" if xs else "-"

    rows = []
    for machine, runs in sorted(history.items()):
        latest = runs[-1]
        fams = sorted({r.family for r in latest.records})
        for fam in fams:
            recs = [r for r in latest.records if r.family == fam]
            st = [stability(r) for r in recs]
            meds: dict[str, list[float]] = defaultdict(list)
            for run in runs:
                for r in run.records:
                    if r.family == fam and not r.extra.get("slowdown"):
                        meds[r.fullname].append(r.median)
            between = [statistics.stdev(v) / statistics.mean(v) for v in meds.values()
                       if len(v) >= 2]
            rows.append([machine, fam, len(recs), len(recs[0].process_medians),
                         pct([x["within"] for x in st], statistics.median),
                         pct([x["within"] for x in st], max),
                         pct([x["between_processes"] for x in st], statistics.median),
                         pct([x["between_processes"] for x in st], max),
                         pct([x["disturbed"] for x in st], statistics.mean),
                         pct(between, statistics.median) if between else "- (1 run)",
                         pct(between, max) if between else "-"])
    return rows


def _machine_rows(history: dict[str, list[Run]]) -> list[list]:
    rows = []
    for machine, runs in sorted(history.items()):
        mi = runs[-1].machine_info
        hw = (f"{mi['gpu']['name']} ({mi['gpu']['sm_count']} SMs, driver {mi['gpu'].get('driver')}, "
              f"CUDA {mi['gpu'].get('cuda')})" if mi.get("gpu") else mi["cpu"]["model"])
        isa = mi["cpu"].get("torch_cpu_capability") or ",".join(
            f for f in mi["cpu"]["isa_flags"] if f.startswith(("avx512f", "amx", "sve")))
        th = mi.get("threads", {})
        sw = mi["software"]
        rows.append([machine, hw, isa or "-", th.get("torch_num_threads", "-"),
                     f"torch {sw['torch']}, vllm {sw.get('vllm')}"
                     + (f" @{sw['vllm_commit'][:10]}" if sw.get("vllm_commit") else ""),
                     len(runs), runs[-1].label])
    return rows


def _roofline_rows(history: dict[str, list[Run]]) -> list[list]:
    rows = []
    for machine, runs in sorted(history.items()):
        rl = runs[-1].machine_info["roofline"]
        peaks = ", ".join(f"{dt} {_si(v, 'FLOP/s')}" for dt, v in rl["matmul_flops_per_s"].items())
        rows.append([machine, peaks, _si(rl["copy_bytes_per_s"], "B/s")])
    return rows


def _fraction_ok(x: dict) -> bool:
    """A roofline fraction that can be shown: present, and not above 1 (a record written before
    reports/roofline.py withheld those may hold one: held to the wrong roof)."""
    f = x.get("roofline_fraction")
    return f is not None and f <= 1 + 1e-9


def _fraction_cell(x: dict) -> str:
    if "roofline_fraction" not in x:
        return "-"
    if x["roofline_fraction"] is None:
        return "withheld (>1: wrong roof, see roofline_flags)"
    if not _fraction_ok(x):
        return f"{x['roofline_fraction']:.1%} (>1: wrong roof)"
    return f"{x['roofline_fraction']:.1%}" + ("" if x.get("compute_fraction") is not None
                                             or not x.get("flop") or "roofline_basis" not in x
                                             else " (memory roof only)")


def _result_rows(run: Run, family: str) -> list[list]:
    rows = []
    recs = [r for r in run.records if r.family == family]
    for r in sorted(recs, key=lambda r: (r.shape_name, r.backend, r.dtype, r.tokens)):
        x = r.extra
        cd = x.get("compute_dtype")
        rows.append([r.shape_name, r.backend + (" (slowed)" if x.get("slowdown") else ""),
                     r.dtype + (f" ({cd} arithmetic)" if cd and cd != r.dtype else ""),
                     r.tokens, _time(r.median), _si(x.get("tokens_per_s", r.tokens / r.median), "tok/s"),
                     _si(x.get("achieved_flops_per_s", math.nan), "FLOP/s"),
                     _si(x.get("achieved_bytes_per_s", math.nan), "B/s"),
                     _fraction_cell(x),
                     f"{r.robust_cv:.1%}", r.stats["rounds"]])
    return rows


# -- the report --------------------------------------------------------------------------------------

def mtp_rows(run: Run) -> list[list]:
    """e2e records: per backend and batch, tokens/s for each k and what they time (decode, with
    prefill timed apart; records written before the split time the whole generate, prefill
    included, and say so), the speedup over MTP off, the prefill time and the mean acceptance
    length (tokens per verification step)."""
    by: dict[tuple, dict[int, Record]] = defaultdict(dict)
    for r in run.records:
        if r.family == "e2e":
            by[(r.backend, r.shape_name, r.extra.get("shape", {}).get("B", "?"))][
                int(r.extra["mtp_k"])] = r
    rows = []
    for (backend, shape, b), ks in sorted(by.items(), key=lambda kv: str(kv[0])):
        off = ks.get(0)
        for k, r in sorted(ks.items()):
            tps = r.extra["tokens_per_s"]
            prefill = (r.extra.get("phases") or {}).get("prefill") or {}
            rows.append([backend, shape, b, "off" if k == 0 else k,
                         r.extra.get("phase") or "generate (prefill included)",
                         _si(tps, "tok/s"),
                         f"{tps / off.extra['tokens_per_s']:.2f}x" if off else "-",
                         _time(prefill["median_s"]) if "median_s" in prefill else "-",
                         f"{r.extra['mean_acceptance_length']:.2f}"
                         if "mean_acceptance_length" in r.extra else "-",
                         ", ".join(f"{a:.2f}" for a in r.extra.get("acceptance_per_position", []))
                         or "-"])
    return rows


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def render(history: dict[str, list[Run]], out: pathlib.Path, *,
           comparison: Comparison | None = None, title: str = "MoE / MTP benchmark report"
           ) -> dict[str, pathlib.Path]:
    """Write out/report.md, out/report.html and out/plots/*.png; returns name -> path."""
    if not history:
        raise ValueError("no runs to render")
    out = pathlib.Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    latest = {m: runs[-1] for m, runs in history.items()}
    made: dict[str, pathlib.Path] = {}
    families = sorted({r.family for run in latest.values() for r in run.records})
    for fam in families:
        if fam not in KERNEL_FAMILIES:
            continue
        for metric, stem in (("tokens_per_s", "throughput"), ("roofline_fraction", "roofline")):
            p = plot_vs_tokens(latest, fam, metric, plots / f"{stem}_{fam}.png")
            if p:
                made[p.stem] = p
    if p := plot_acceptance(latest, plots / "acceptance.png"):
        made["acceptance"] = p
    if p := plot_trend(history, plots / "trend.png"):
        made["trend"] = p

    now = _dt.datetime.now(_dt.timezone.utc)
    n_runs = sum(len(v) for v in history.values())
    blocks: list[tuple] = [
        ("h", 1, title),
        ("p", f"Generated {now:%Y-%m-%d %H:%M} UTC from {n_runs} run(s) on {len(history)} "
              "machine(s). Times are medians over rounds; roofline fractions are against the "
              "matmul peak and copy bandwidth measured in the same run."),
        ("h", 2, "Machines"),
        ("table", ["machine", "hardware", "ISA", "threads", "software", "runs", "latest"],
         _machine_rows(history)),
        ("h", 2, "Measured roofline (latest run)"),
        ("table", ["machine", "matmul peak", "copy bandwidth"], _roofline_rows(history)),
        ("h", 2, "Stability: coefficient of variation per benchmark family"),
        ("p", "Robust CVs (0.7413 IQR / median; stddev/mean would be dominated by the odd "
              "preempted round or disturbed process), median and worst over the family, latest "
              "run. Within a process: the rounds of one benchmark. Between processes: the "
              "process medians of one benchmark (what compare works from). Disturbed: share of "
              "process medians >= 5% above the fast half of the run's processes (another tenant "
              "on the cores). Between runs: stddev/mean of one benchmark's time over this "
              "machine's runs (deliberately slowed runs excluded)."),
        ("table", ["machine", "family", "benchmarks", "processes", "within-process CV (median)",
                   "(worst)", "between-process CV (median)", "(worst)", "disturbed processes",
                   "between-run CV (median)", "(worst)"], cv_by_family(history)),
    ]
    if comparison is not None:
        blocks += [("h", 2, "Compare"), ("raw_md", to_markdown(comparison, only_changes=True))]
    blocks.append(("h", 2, "Plots"))
    for name, path in made.items():
        blocks.append(("img", f"plots/{path.name}", name.replace("_", " ")))
    for machine, run in sorted(latest.items()):
        blocks.append(("h", 2, f"Latest results: {machine} ({run.label})"))
        if rows := mtp_rows(run):
            blocks += [("h", 3, "MTP end to end: tokens/s with MTP off and on"),
                       ("table", ["backend", "model", "batch", "MTP k", "timed", "throughput",
                                  "vs MTP off", "prefill", "mean acceptance length",
                                  "acceptance per position"], rows)]
        for fam in families:
            rows = _result_rows(run, fam)
            if rows:
                blocks += [("h", 3, fam),
                           ("table", ["shape", "backend", "dtype", "tokens", "median", "throughput",
                                      "FLOP/s", "bytes/s", "roofline", "robust CV", "rounds"], rows)]
    md_path, html_path = out / "report.md", out / "report.html"
    _atomic_write(md_path, to_md(blocks).encode())
    _atomic_write(html_path, to_html(blocks, title, plots).encode())
    return {"markdown": md_path, "html": html_path, **made}
