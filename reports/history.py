"""Per-machine history, asv style: reports/history/<machine-id>/<timestamp>.json, one file a run.

Runs are stored compact (reports/compact.py: summaries of the rounds, not the rounds; ~3% of
pytest-benchmark's file); store(keep_rounds=True) also writes the raw rounds, gzipped, to
<timestamp>.rounds.json.gz beside the run. `python -m reports migrate` rewrites run files stored
before, in the full form, into the compact one (migrate() below).

Files are written atomically and never overwritten: the run is written to a hidden temporary
file in the same folder, flushed to disk, then hard-linked to its final name (the link fails if
that name exists, in which case the next free name <timestamp>-2.json, -3, ... is taken) and the
temporary file removed. A reader therefore sees either no file or a complete one. The same run
stored twice is kept once (a run's file name carries its time, so only files of that time are
compared). Merging the history of many machines is copying folders.

A pooled baseline (pool()): the process medians of the last N clean runs of a machine, pooled
per benchmark into one run that compare takes as BASE (`[MACHINE:]pool:N`, see reports/merge.py
pool). A run is clean unless it was planted: a slowdown recorded by --bench-slowdown
(machine_info.bench_settings.slowdown, or extra_info.slowdown on a record; reports/synthetic.py
marks its slowed records the same way) or a `planted` field in machine_info or extra_info; or
judged a regression.

Verdicts: `compare BASE CAND --record-verdict` (the nightly GPU workflow) files compare's verdict
on a stored CAND beside it, <timestamp>.verdict.json (record_verdict(); the run file itself is
never rewritten). A run judged a regression (or an acceptance drop) is not clean: it never enters
a pool, so a slowdown that comes a few percent a night is judged against runs from before it,
and a regressed run never becomes the baseline that makes the next night look fine. Judgments
accumulate (a later "no regression" does not wash out an earlier regression). A slowdown that is
meant (a deliberate trade) is accepted with `python -m reports accept RUN --reason TEXT`: the
accepted run is clean again and a rebaseline, a pool stops at it (the runs before it measured
the old code), so until N runs have followed it a pool holds fewer (`--min-pool`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
import re
import stat
import tempfile

from reports.compact import canonical, compact, rounds_sidecar, sidecar_path
from reports.schema import MACHINE_ID_RE, Run, SchemaError, load_run

DEFAULT_ROOT = pathlib.Path(__file__).parent / "history"
_NAME_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?\.json$")


class HistoryError(RuntimeError):
    """A history operation that cannot proceed; str() is one line."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def machine_dir(root: pathlib.Path, machine_id: str) -> pathlib.Path:
    if not MACHINE_ID_RE.match(machine_id):  # validated runs already satisfy this
        raise HistoryError(f"invalid machine id {machine_id!r}")
    return pathlib.Path(root) / machine_id


def _write_temp(folder: pathlib.Path, data: bytes, mode: int) -> pathlib.Path:
    """A hidden temporary file in `folder` holding `data`, flushed to disk."""
    fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", suffix=".tmp", dir=folder)
    tmp = pathlib.Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)  # mkstemp makes it 0600
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _sync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_atomically(path: pathlib.Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `path` (new or replaced): temporary file in the same folder, fsync,
    os.replace. A reader, or a crash, sees the old content or the new, never a mix."""
    path = pathlib.Path(path)
    if mode is None:
        mode = 0o666 & ~_umask()
    try:
        tmp = _write_temp(path.parent, data, mode)
    except OSError as e:
        raise HistoryError(f"cannot write {path}: {e.strerror}") from None
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise HistoryError(f"cannot write {path}: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(path.parent)


def _same_run(existing: pathlib.Path, payload: bytes) -> bool:
    """Whether a stored file holds the run whose compact bytes are `payload` (a file stored in
    the full form before compaction counts too)."""
    try:
        data = existing.read_bytes()
    except OSError:
        return False
    if data == payload:
        return True
    try:
        run = load_run(existing)
    except SchemaError:
        return False
    return not run.compact and canonical(compact(run)) == payload


def store(run: Run, root: pathlib.Path = DEFAULT_ROOT, *, keep_rounds: bool = False
          ) -> tuple[pathlib.Path, bool]:
    """Write `run` into the history, compact; returns (path, created). A run already stored for
    this machine is not written again (created False, path of the existing file). keep_rounds:
    also write its raw rounds to the gzip sidecar beside it (reports/compact.py)."""
    if keep_rounds and run.compact:
        raise HistoryError(f"{run.source}: a compact run; its raw rounds are not in it to keep")
    folder = machine_dir(root, run.machine_id)
    payload = canonical(compact(run))
    side = rounds_sidecar(run) if keep_rounds else None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HistoryError(f"cannot create {folder}: {e.strerror}") from None
    stamp = f"{run.datetime:%Y%m%dT%H%M%SZ}"
    for existing in run_files(root, run.machine_id):
        if existing.name.partition(".")[0].partition("-")[0] == stamp and \
                _same_run(existing, payload):
            if side is not None and not sidecar_path(existing).exists():
                replace_atomically(sidecar_path(existing), side)
            return existing, False
    mode = 0o666 & ~_umask()
    tmps = []
    try:
        tmps.append(_write_temp(folder, payload, mode))
        if side is not None:
            tmps.append(_write_temp(folder, side, mode))
    except OSError as e:
        for t in tmps:
            t.unlink(missing_ok=True)
        raise HistoryError(f"cannot write into {folder}: {e.strerror}") from None
    try:
        for n in range(1, 1000):
            final = folder / (f"{stamp}.json" if n == 1 else f"{stamp}-{n}.json")
            try:
                os.link(tmps[0], final)  # atomic, and refuses an existing name
            except FileExistsError:
                continue
            except OSError as e:
                raise HistoryError(f"cannot write {final}: {e.strerror}") from None
            if side is not None:
                try:
                    os.replace(tmps[1], sidecar_path(final))
                except OSError as e:
                    raise HistoryError(f"{final} stored, but not its rounds "
                                       f"({sidecar_path(final).name}: {e.strerror})") from None
            _sync_dir(folder)
            return final, True
        raise HistoryError(f"{folder}: 999 runs already stored for {stamp}")
    finally:
        for t in tmps:
            t.unlink(missing_ok=True)


def store_file(path: pathlib.Path, root: pathlib.Path = DEFAULT_ROOT, *,
               keep_rounds: bool = False) -> tuple[pathlib.Path, bool]:
    return store(load_run(path), root, keep_rounds=keep_rounds)


def machines(root: pathlib.Path = DEFAULT_ROOT) -> list[str]:
    root = pathlib.Path(root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and MACHINE_ID_RE.match(d.name))


def run_files(root: pathlib.Path, machine_id: str) -> list[pathlib.Path]:
    """The machine's runs, oldest first (names sort by time; -N suffixes after the plain name)."""
    folder = machine_dir(root, machine_id)
    if not folder.is_dir():
        return []

    def key(p: pathlib.Path):
        stem, _, n = p.stem.partition("-")
        return stem, int(n or 1)

    return sorted((p for p in folder.iterdir() if _NAME_RE.match(p.name)), key=key)


def load_machine(root: pathlib.Path, machine_id: str, *, skip_invalid: bool = False,
                 warn=None) -> list[Run]:
    runs = []
    for p in run_files(root, machine_id):
        try:
            run = load_run(p)
        except SchemaError as e:
            if not skip_invalid:
                raise
            if warn:
                warn(f"skipped: {e}")
            continue
        if run.machine_id != machine_id:
            msg = f"{p}: machine_info.machine_id {run.machine_id!r} does not match its folder"
            if not skip_invalid:
                raise SchemaError(msg)
            if warn:
                warn(f"skipped: {msg}")
            continue
        runs.append(run)
    return runs


def load_all(root: pathlib.Path = DEFAULT_ROOT, *, skip_invalid: bool = False,
             warn=None) -> dict[str, list[Run]]:
    return {m: runs for m in machines(root)
            if (runs := load_machine(root, m, skip_invalid=skip_invalid, warn=warn))}


_SPEC_RE = re.compile(r"^(?:(?P<machine>[a-z0-9][a-z0-9._-]*):)?(?P<which>latest|previous|~\d+)$")


def _machine(spec: str, machine: str | None, root: pathlib.Path, which: str) -> str:
    """The machine a spec names, or the only machine in the history; else one line why not."""
    if machine is not None:
        return machine
    known = machines(root)
    if len(known) != 1:
        raise HistoryError(f"{spec}: say which machine (MACHINE:{which}); "
                           f"{root} holds {len(known)}: {', '.join(known) or 'none'}")
    return known[0]


def resolve(spec: str, root: pathlib.Path = DEFAULT_ROOT, *, machine_id: str | None = None
            ) -> pathlib.Path:
    """A run file from a path, or from `[MACHINE:]latest`, `[MACHINE:]previous`, `[MACHINE:]~N`
    (N runs before the latest) in the history. Without MACHINE: `machine_id` if given, else the
    only machine in the history. (`[MACHINE:]pool:N` is no file: see pool().)"""
    m = _SPEC_RE.match(spec)
    p = pathlib.Path(spec)
    if is_pool(spec):
        raise HistoryError(f"{spec}: a pooled baseline is BASE only; CAND is one run")
    if m is None or p.exists():
        if not p.exists():
            raise HistoryError(f"{spec}: no such file (and not latest|previous|~N)")
        return p
    machine = _machine(spec, m.group("machine") or machine_id, root, m.group("which"))
    which = m.group("which")
    back = 0 if which == "latest" else 1 if which == "previous" else int(which[1:])
    files = run_files(root, machine)
    if len(files) <= back:
        raise HistoryError(f"{spec}: {root / machine} holds {len(files)} run(s), "
                           f"need at least {back + 1}")
    return files[-1 - back]


# -- migration to the compact form -------------------------------------------------------------

def human_size(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def migrate(root: pathlib.Path = DEFAULT_ROOT, *, keep_rounds: bool = False,
            dry_run: bool = False, say=print) -> tuple[int, int]:
    """Rewrite the full run files under `root` in the compact form, in place, one at a time:
    each is validated, its compact form written to a temporary file in its folder, flushed and
    os.replace'd over it (with keep_rounds, the rounds sidecar first, the same way). A compact
    file is left as it is. One line a file through `say`. A file that does not load stops the
    migration with a SchemaError naming it: the files before it are migrated (each complete),
    it and the files after it are untouched; fix or remove it and run again.
    Returns (bytes before, bytes after) over the files seen."""
    total_before = total_after = done = 0
    for machine in machines(root):
        for p in run_files(root, machine):
            try:
                before = p.stat().st_size
                run = load_run(p)
            except (OSError, SchemaError) as e:
                raise SchemaError(f"{e} -- migrate stopped at this file ({done} file(s) before "
                                  "it rewritten, each complete; it and the rest untouched)"
                                  ) from None
            total_before += before
            if run.compact:
                total_after += before
                say(f"{p}: {human_size(before)}, compact already: left as is")
                continue
            payload = canonical(compact(run))
            total_after += len(payload)
            line = f"{p}: {human_size(before)} -> {human_size(len(payload))}"
            if dry_run:
                say(line + " (dry run: nothing written)")
                continue
            mode = stat.S_IMODE(p.stat().st_mode)
            if keep_rounds:
                side = rounds_sidecar(run)
                replace_atomically(sidecar_path(p), side, mode=mode)
                line += f", rounds in {sidecar_path(p).name} ({human_size(len(side))})"
            replace_atomically(p, payload, mode=mode)
            done += 1
            say(line)
    return total_before, total_after


# -- pooled baselines --------------------------------------------------------------------------

_POOL_RE = re.compile(r"^(?:(?P<machine>[a-z0-9][a-z0-9._-]*):)?pool:(?P<n>\d+)$")


def is_pool(spec: str) -> bool:
    return _POOL_RE.match(spec) is not None and not pathlib.Path(spec).exists()


def planted(run: Run) -> str | None:
    """Why a run is not clean (a slowdown planted in it), or None for a clean run."""
    mi = run.machine_info
    if (mi.get("bench_settings") or {}).get("slowdown"):
        return f"--bench-slowdown {mi['bench_settings']['slowdown']}"
    if mi.get("planted"):
        return f"machine_info.planted {mi['planted']!r}"
    for r in run.records:
        if r.extra.get("slowdown"):
            return f"{r.fullname} slowed by {r.extra['slowdown']}"
        if r.extra.get("planted"):
            return f"{r.fullname} planted {r.extra['planted']!r}"
    return None


VERDICT_FORMAT = 1


def verdict_path(run_file: pathlib.Path) -> pathlib.Path:
    """<timestamp>.verdict.json beside a stored run file (not a run file itself: _NAME_RE)."""
    p = pathlib.Path(run_file)
    return p.with_name(p.name.removesuffix(".json") + ".verdict.json")


def read_verdict(run_file: pathlib.Path) -> dict | None:
    """The verdict file of a stored run, or None when it was never judged."""
    vp = verdict_path(run_file)
    try:
        data = json.loads(vp.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise HistoryError(f"{vp}: unreadable verdict file ({e})") from None
    if not isinstance(data, dict) or data.get("format") != VERDICT_FORMAT \
            or not isinstance(data.get("judgments"), list):
        raise HistoryError(f"{vp}: not a verdict file of format {VERDICT_FORMAT}")
    return data


def in_history(run_file: pathlib.Path, root: pathlib.Path) -> bool:
    p = pathlib.Path(run_file).resolve()
    return _NAME_RE.match(p.name) is not None and p.parent.parent == pathlib.Path(root).resolve()


def record_verdict(run_file: pathlib.Path, root: pathlib.Path, *, baseline: str,
                   baseline_runs: list[str], regressions: list[str], counts: dict,
                   threshold: float, now: _dt.datetime | None = None) -> pathlib.Path:
    """Add one judgment of a stored run to its verdict file (written atomically): regression
    when `regressions` (benchmark labels) is non-empty, else clean."""
    run_file = pathlib.Path(run_file)
    if not in_history(run_file, root):
        raise HistoryError(f"{run_file}: not a run stored in {root} (a verdict is filed beside "
                           "a stored run: pass its path or [MACHINE:]latest)")
    data = read_verdict(run_file) or {"format": VERDICT_FORMAT, "run": run_file.name,
                                      "judgments": [], "accepted": None}
    now = now or _dt.datetime.now(_dt.timezone.utc)
    data["judgments"].append({
        "at": now.isoformat(timespec="seconds"),
        "verdict": "regression" if regressions else "clean",
        "baseline": baseline, "baseline_runs": list(baseline_runs), "threshold": threshold,
        "regressions": list(regressions), "counts": dict(counts)})
    vp = verdict_path(run_file)
    replace_atomically(vp, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    return vp


def accept(run_file: pathlib.Path, root: pathlib.Path, *, reason: str,
           now: _dt.datetime | None = None) -> pathlib.Path:
    """Accept a stored run judged a regression (a slowdown meant): clean again, and a rebaseline
    (pools stop at it)."""
    run_file = pathlib.Path(run_file)
    if not reason.strip():
        raise HistoryError("accept: say why the slowdown is meant (--reason)")
    data = read_verdict(run_file)
    if not in_history(run_file, root) or data is None or not regressed_judgments(data):
        raise HistoryError(f"{run_file}: no regression judged on it to accept")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    data["accepted"] = {"at": now.isoformat(timespec="seconds"), "reason": reason.strip()}
    vp = verdict_path(run_file)
    replace_atomically(vp, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    return vp


def regressed_judgments(data: dict) -> list[dict]:
    return [j for j in data["judgments"] if j.get("verdict") == "regression"]


def regressed(run_file: pathlib.Path) -> str | None:
    """Why a stored run is not clean by its verdict file (judged a regression and not accepted),
    or None."""
    data = read_verdict(run_file)
    if data is None or data.get("accepted"):
        return None
    bad = regressed_judgments(data)
    if not bad:
        return None
    j = bad[-1]
    names = j.get("regressions") or []
    return (f"judged a regression against {j.get('baseline')} on {j.get('at')}: "
            f"{len(names)} benchmark(s), e.g. {', '.join(names[:2])}")


def accepted(run_file: pathlib.Path) -> bool:
    data = read_verdict(run_file)
    return bool(data and data.get("accepted"))


def _same_identity(a: Run, b: Run) -> bool:
    return (a.machine_id == b.machine_id and a.datetime == b.datetime
            and a.commit_info.get("id") == b.commit_info.get("id"))


def pool_files(spec: str, root: pathlib.Path = DEFAULT_ROOT, *, machine_id: str | None = None,
               exclude: Run | None = None, min_runs: int | None = None
               ) -> tuple[list[pathlib.Path], list[Run], list[str], str]:
    """The runs `[MACHINE:]pool:N` pools: (files, runs, skipped, machine), oldest first. Newest
    first, up to N clean runs of MACHINE (without it: `machine_id` if given, else the only
    machine in the history), skipping `exclude` (the CAND run, when it is stored there: a run is
    not its own baseline), planted runs and runs judged a regression (read_verdict), and going
    no further back than an accepted run (a rebaseline). Fewer than min_runs (default N) clean
    runs: HistoryError."""
    m = _POOL_RE.match(spec)
    if m is None:
        raise HistoryError(f"{spec}: not [MACHINE:]pool:N")
    n = int(m.group("n"))
    if n < 1:
        raise HistoryError(f"{spec}: pool at least 1 run")
    need = n if min_runs is None else min_runs
    if not 1 <= need <= n:
        raise HistoryError(f"{spec}: --min-pool {need} must lie in [1, {n}]")
    machine = _machine(spec, m.group("machine") or machine_id, root, f"pool:{n}")
    files: list[pathlib.Path] = []
    chosen: list[Run] = []
    skipped: list[str] = []
    rebaselined = None
    n_planted = n_regressed = 0
    for p in reversed(run_files(root, machine)):
        run = load_run(p)
        if exclude is not None and _same_identity(run, exclude):
            continue
        why = planted(run)
        n_planted += why is not None
        if why is None and (why := regressed(p)):
            n_regressed += 1
        if why:
            skipped.append(f"{p.name} ({why})")
            continue
        files.append(p)
        chosen.append(run)
        if len(chosen) == n:
            break
        if accepted(p):
            rebaselined = p.name
            break
    if len(chosen) < need:
        what = ", ".join(f"{k} {w}" for k, w in ((n_planted, "planted"),
                                                  (n_regressed, "judged a regression")) if k)
        raise HistoryError(f"{spec}: {root / machine} holds {len(chosen)} clean run(s)"
                           + (f" ({what} skipped)" if what else "")
                           + (f" since the accepted rebaseline {rebaselined}" if rebaselined
                              else "")
                           + f", need {need}")
    if rebaselined:
        skipped.append(f"runs before {rebaselined} (accepted rebaseline)")
    return files[::-1], chosen[::-1], skipped, machine


def pool(spec: str, root: pathlib.Path = DEFAULT_ROOT, *, machine_id: str | None = None,
         exclude: Run | None = None, min_runs: int | None = None) -> Run:
    """`[MACHINE:]pool:N`: the runs pool_files chooses, pooled into one run (reports/merge.py
    pool)."""
    from reports.merge import pool as pool_runs

    _, runs, skipped, machine = pool_files(spec, root, machine_id=machine_id, exclude=exclude,
                                           min_runs=min_runs)
    n = _POOL_RE.match(spec).group("n")
    return pool_runs(runs, source=f"{machine}:pool:{n}", skipped=skipped)
