"""python -m reports COMMAND ...

  validate FILE...                 check run files against the schema
  merge FILE... --out OUT          one run from the run files of several processes of one
                                   invocation (per-process medians kept; reports/merge.py)
  store FILE [--history DIR] [--keep-rounds]
                                   validate a run and file it, compact, under DIR/<machine-id>/
                                   (atomic, never overwrites; the same run twice is stored once);
                                   --keep-rounds: its raw rounds too, gzipped, beside it
  migrate [--root DIR] [--dry-run] [--keep-rounds]
                                   rewrite full run files in the history in the compact form, in
                                   place (atomic, one line a file with its size before and after;
                                   compact files left as they are)
  list [--history DIR]             machines and their runs
  compare BASE CAND [--history DIR] [--threshold F] [--rule FILE]
                    [--markdown OUT] [--json OUT] [--min-pool M] [--record-verdict]
                                   noise-aware verdict per benchmark; BASE/CAND are run files or
                                   [MACHINE:]latest|previous|~N in the history; BASE may be
                                   [MACHINE:]pool:N, the last N clean runs pooled (at least M,
                                   default N); --record-verdict files the verdict beside a
                                   stored CAND (<run>.verdict.json): a run judged a regression
                                   never enters a pool (reports/history.py)
  accept RUN --reason TEXT [--history DIR]
                                   a stored run judged a regression is a slowdown meant: clean
                                   again, and pools go no further back than it
  render [--history DIR] [--runs FILE...] [--compare BASE CAND] [--min-pool M] [--out DIR]
         [--skip-invalid]          Markdown + self-contained HTML with plots
  calibrate [--benchmarks N] [--processes P] [--disturbed F] [--rule FILE]
                                   false-alarm rate and power of the compare rule on synthetic runs
  calibrate --processes-from FILE... [--processes P] [--trials N]
                                   the same, measured on this machine's single-process run files
                                   of one code version (reports/calibrate.py)
  ab run --a-python PY --b-python PY [--ab-pairs N] [--ab-slowdown-b GLOB=F]
         [--ab-interleave auto|window|process|shared] [-- PYTEST ARGS]
  ab judge DIR | ab calibrate      interleaved A/B of two environments on this machine (what
                                   nox -s ab runs), paired verdicts per benchmark; see
                                   reports/ab.py (`python -m reports ab --help`)

Exit status: 0 fine, 1 a regression (compare, ab) or a calibration outside the rule's bounds,
2 bad input (unreadable or invalid file, missing baseline, bad arguments). Errors are one line.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import pathlib
import sys

from reports import compare as _compare
from reports import history as _history
from reports.schema import SchemaError, load_run
from reports.verdicts import write_new

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own convention too)
        raise _BadInput(f"{self.prog}: {message}")


class _BadInput(Exception):
    pass


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _write_new(path: pathlib.Path, text: str) -> None:
    """Write a file that must not exist yet (outputs never overwrite anything)."""
    write_new(path, text, _BadInput)


def cmd_validate(a) -> int:
    for f in a.files:
        run = load_run(f)
        print(f"{f}: ok ({run.machine_id}, {len(run.records)} benchmarks, {run.label})")
    return EXIT_OK


def cmd_merge(a) -> int:
    from reports.merge import merge

    run = merge([load_run(f) for f in a.files], source=str(a.out))
    _write_new(pathlib.Path(a.out), json.dumps(run.raw, indent=1) + "\n")
    print(f"merged {len(a.files)} process(es), {len(run.records)} benchmarks: {a.out}")
    return EXIT_OK


def cmd_store(a) -> int:
    path, created = _history.store(load_run(a.file), a.history, keep_rounds=a.keep_rounds)
    print(f"{'stored' if created else 'already stored'}: {path}")
    return EXIT_OK


def cmd_migrate(a) -> int:
    if not a.history.is_dir():
        raise _BadInput(f"{a.history}: no such history folder")
    before, after = _history.migrate(a.history, keep_rounds=a.keep_rounds, dry_run=a.dry_run)
    if before:
        print(f"{'would be' if a.dry_run else 'now'} {_history.human_size(after)} "
              f"(was {_history.human_size(before)}, {after / before:.1%})")
    else:
        print(f"{a.history}: no runs")
    return EXIT_OK


def cmd_list(a) -> int:
    ms = _history.machines(a.history)
    if not ms:
        print(f"{a.history}: no runs")
    for m in ms:
        files = _history.run_files(a.history, m)
        print(f"{m}: {len(files)} run(s)")
        for f in files:
            print(f"  {f.name}")
    return EXIT_OK


def _load_pair(a):
    base, cand, _ = _load_pair_paths(a)
    return base, cand


def _load_pair_paths(a):
    """(BASE run, CAND run, CAND's file)."""
    min_pool = getattr(a, "min_pool", None)
    if _history.is_pool(a.base):  # CAND first: its machine is the pool's, and it is left out
        machine = a.base.split(":pool:")[0] if ":pool:" in a.base else None
        cand_path = _history.resolve(a.cand, a.history, machine_id=machine)
        cand = load_run(cand_path)
        base = _history.pool(a.base, a.history, machine_id=cand.machine_id, exclude=cand,
                             min_runs=min_pool)
        return base, cand, cand_path
    if min_pool is not None:
        raise _BadInput(f"--min-pool applies to a pooled BASE ([MACHINE:]pool:N), not {a.base}")
    base_path = _history.resolve(a.base, a.history)
    base = load_run(base_path)
    cand_path = _history.resolve(a.cand, a.history, machine_id=base.machine_id)
    cand = load_run(cand_path)
    return base, cand, cand_path


def cmd_compare(a) -> int:
    rule = _compare.Rule.load(a.rule, threshold=a.threshold)
    base, cand, cand_path = _load_pair_paths(a)
    if a.record_verdict and not _history.in_history(cand_path, a.history):
        raise _BadInput(f"--record-verdict: CAND {cand_path} is not a run stored in "
                        f"{a.history}")
    cmp = _compare.compare(base, cand, rule)
    text = _compare.to_markdown(cmp)
    print(text)
    if a.markdown:
        _write_new(pathlib.Path(a.markdown), text)
    if a.json:
        _write_new(pathlib.Path(a.json), json.dumps(cmp.as_dict(), indent=1))
    c = cmp.counts()
    if a.record_verdict:
        pooled = (base.raw.get("pool") or {}).get("runs")
        vp = _history.record_verdict(
            cand_path, a.history, baseline=a.base,
            baseline_runs=[pathlib.Path(r["source"]).name for r in pooled] if pooled
            else [pathlib.Path(base.source).name],
            regressions=[r.label for r in cmp.regressions], counts=c, threshold=rule.threshold)
        print(f"verdict filed: {vp} ({'regression: this run enters no pool' if cmp.regressions else 'clean'})")
    if cmp.regressions:
        what = [f"{c['regression']} of {len(cmp.rows)} benchmarks slower beyond the threshold"]
        if c["acceptance_drop"]:
            what.append(f"{c['acceptance_drop']} accepting fewer draft tokens")
        print(f"REGRESSION: {'; '.join(what)} ({', '.join(r.label for r in cmp.regressions[:5])}"
              f"{', ...' if len(cmp.regressions) > 5 else ''})", file=sys.stderr)
    else:
        print(f"no regression ({len(cmp.rows)} benchmarks compared: "
              + ", ".join(f"{_compare.MARK[v]} {n}" for v, n in c.items() if n) + ")")
    return cmp.exit_code


def cmd_accept(a) -> int:
    path = _history.resolve(a.run, a.history)
    vp = _history.accept(path, a.history, reason=a.reason)
    print(f"accepted: {path} ({vp}); pools start again from it")
    return EXIT_OK


def cmd_render(a) -> int:
    from reports.render import render

    def warn(msg):
        print(f"warning: {msg}", file=sys.stderr)

    if a.runs:
        history: dict[str, list] = {}
        for f in a.runs:
            run = load_run(f)
            history.setdefault(run.machine_id, []).append(run)
        for runs in history.values():
            runs.sort(key=lambda r: r.datetime)
    else:
        history = _history.load_all(a.history, skip_invalid=a.skip_invalid, warn=warn)
    if not history:
        raise _BadInput(f"no runs to render (history {a.history} is empty; run nox -s bench)")
    comparison = None
    if a.compare:
        a.base, a.cand = a.compare
        base, cand = _load_pair(a)
        comparison = _compare.compare(base, cand, _compare.Rule.load(a.rule))
    out = pathlib.Path(a.out or pathlib.Path("reports") / "out" /
                       f"report-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and any(out.iterdir()):
        raise _BadInput(f"{out}: exists and is not empty; refusing to overwrite it")
    made = render(history, out, comparison=comparison)
    for name, p in made.items():
        print(f"{name}: {p}")
    return EXIT_OK


def cmd_calibrate(a) -> int:
    rule = _compare.Rule.load(a.rule)
    if a.processes_from:
        from reports.calibrate import from_processes

        res = from_processes(rule, [load_run(f) for f in a.processes_from],
                             processes=a.processes, trials=a.trials, seed=a.seed)
    else:
        from reports.synthetic import Noise, calibrate

        res = calibrate(rule, n=a.benchmarks, seed=a.seed, noise=Noise(
            sigma=a.sigma, outlier_rate=a.outlier_rate, rounds=a.rounds, processes=a.processes,
            process_sigma=a.process_sigma, disturbed=a.disturbed))
    print(json.dumps(res, indent=1))
    ok = res["false_alarm_rate"] <= rule.max_false_alarm_rate and res["power"] >= rule.min_power
    print(f"false-alarm rate {res['false_alarm_rate']:.2%} (bound {rule.max_false_alarm_rate:.2%}), "
          f"power at +{rule.power_slowdown:.0%} {res['power']:.2%} (bound {rule.min_power:.0%}): "
          + ("within the rule's bounds" if ok else "OUTSIDE the rule's bounds"))
    return EXIT_OK if ok else EXIT_REGRESSION


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m reports", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    hist = dict(type=pathlib.Path, default=_history.DEFAULT_ROOT,
                help="history root (default reports/history)")
    s = sub.add_parser("validate")
    s.add_argument("files", nargs="+")
    s.set_defaults(fn=cmd_validate)
    s = sub.add_parser("merge")
    s.add_argument("files", nargs="+")
    s.add_argument("--out", required=True, help="merged run file to write (must not exist)")
    s.set_defaults(fn=cmd_merge)
    s = sub.add_parser("store")
    s.add_argument("file")
    s.add_argument("--history", **hist)
    s.add_argument("--keep-rounds", action="store_true",
                   help="also keep the raw rounds, gzipped, in <run>.rounds.json.gz")
    s.set_defaults(fn=cmd_store)
    s = sub.add_parser("migrate")
    s.add_argument("--root", "--history", dest="history", **hist)
    s.add_argument("--dry-run", action="store_true", help="say what would change, write nothing")
    s.add_argument("--keep-rounds", action="store_true",
                   help="keep each file's raw rounds, gzipped, in <run>.rounds.json.gz")
    s.set_defaults(fn=cmd_migrate)
    s = sub.add_parser("list")
    s.add_argument("--history", **hist)
    s.set_defaults(fn=cmd_list)
    s = sub.add_parser("compare")
    s.add_argument("base")
    s.add_argument("cand")
    s.add_argument("--history", **hist)
    s.add_argument("--rule", default=_compare.DEFAULT_RULE, help="thresholds file")
    s.add_argument("--threshold", type=float, help="override the rule's threshold (e.g. 0.05)")
    s.add_argument("--markdown", help="also write the table here (must not exist)")
    s.add_argument("--json", help="also write the verdicts as JSON here (must not exist)")
    s.add_argument("--min-pool", type=int, metavar="M",
                   help="pool:N with fewer than N clean runs: pool the M or more there are")
    s.add_argument("--record-verdict", action="store_true",
                   help="file the verdict beside CAND (a run stored in the history); a run "
                   "judged a regression is kept out of every pool")
    s.set_defaults(fn=cmd_compare)
    s = sub.add_parser("accept")
    s.add_argument("run", help="a stored run judged a regression (file or [MACHINE:]latest...)")
    s.add_argument("--reason", required=True, help="why the slowdown is meant")
    s.add_argument("--history", **hist)
    s.set_defaults(fn=cmd_accept)
    s = sub.add_parser("render")
    s.add_argument("--history", **hist)
    s.add_argument("--runs", nargs="+", help="render these run files instead of the history")
    s.add_argument("--compare", nargs=2, metavar=("BASE", "CAND"))
    s.add_argument("--min-pool", type=int, metavar="M",
                   help="with --compare pool:N: pool the M or more clean runs there are")
    s.add_argument("--rule", default=_compare.DEFAULT_RULE)
    s.add_argument("--out", help="output folder (default reports/out/report-<time>)")
    s.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid history files with a warning instead of stopping")
    s.set_defaults(fn=cmd_render)
    # listed for --help only: main() hands `ab run` to harness/ab.py and the rest of `ab ...` to
    # reports/ab.py before this parser runs
    sub.add_parser("ab", add_help=False, help="interleaved A/B runs and their paired verdicts "
                   "(python -m reports ab --help)")
    s = sub.add_parser("calibrate")
    s.add_argument("--processes-from", nargs="+", metavar="FILE",
                   help="single-process run files of one code version on this machine")
    s.add_argument("--processes", type=int, default=5, help="processes per run (default 5)")
    s.add_argument("--trials", type=int, default=40)
    s.add_argument("--benchmarks", type=int, default=400)
    s.add_argument("--rounds", type=int, default=10, help="rounds per process")
    s.add_argument("--sigma", type=float, default=0.03)
    s.add_argument("--outlier-rate", type=float, default=0.05)
    s.add_argument("--process-sigma", type=float, default=0.01)
    s.add_argument("--disturbed", type=float, default=0.25)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--rule", default=_compare.DEFAULT_RULE)
    s.set_defaults(fn=cmd_calibrate)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["ab", "run"]:  # the runner launches processes: harness/ab.py, which judges
        from harness import ab as runner  # with reports/ab.py

        return runner.main(argv[2:])
    if argv[:1] == ["ab"]:  # its own parser: it passes pytest arguments through
        from reports import ab

        return ab.main(argv[1:])
    try:
        a = parser().parse_args(argv)
        return a.fn(a)
    except (_BadInput, SchemaError, _history.HistoryError, _compare.RuleError) as e:
        _err(str(e))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
