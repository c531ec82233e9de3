"""Per-machine history, asv style: reports/history/<machine-id>/<timestamp>.json, one file a run.

Files are written atomically and never overwritten: the run is written to a hidden temporary
file in the same folder, flushed to disk, then hard-linked to its final name (the link fails if
that name exists, in which case the next free name <timestamp>-2.json, -3, ... is taken) and the
temporary file removed. A reader therefore sees either no file or a complete one. Merging the
history of many machines is copying folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import tempfile

from reports.schema import MACHINE_ID_RE, Run, SchemaError, load_run

DEFAULT_ROOT = pathlib.Path(__file__).parent / "history"
_NAME_RE = re.compile(r"^\d{8}T\d{6}Z(-\d+)?\.json$")


class HistoryError(RuntimeError):
    """A history operation that cannot proceed; str() is one line."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _canonical(run: Run) -> bytes:
    return json.dumps(run.raw, indent=1, sort_keys=True, ensure_ascii=True).encode() + b"\n"


def machine_dir(root: pathlib.Path, machine_id: str) -> pathlib.Path:
    if not MACHINE_ID_RE.match(machine_id):  # validated runs already satisfy this
        raise HistoryError(f"invalid machine id {machine_id!r}")
    return pathlib.Path(root) / machine_id


def store(run: Run, root: pathlib.Path = DEFAULT_ROOT) -> tuple[pathlib.Path, bool]:
    """Write `run` into the history; returns (path, created). A run whose content is already
    stored for this machine is not written again (created False, path of the existing file)."""
    folder = machine_dir(root, run.machine_id)
    payload = _canonical(run)
    digest = hashlib.sha256(payload).hexdigest()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HistoryError(f"cannot create {folder}: {e.strerror}") from None
    for existing in run_files(root, run.machine_id):
        if hashlib.sha256(existing.read_bytes()).hexdigest() == digest:
            return existing, False
    stamp = f"{run.datetime:%Y%m%dT%H%M%SZ}"
    fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", suffix=".json.tmp", dir=folder)
    tmp = pathlib.Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes it 0600
            os.fsync(f.fileno())
        for n in range(1, 1000):
            final = folder / (f"{stamp}.json" if n == 1 else f"{stamp}-{n}.json")
            try:
                os.link(tmp, final)  # atomic, and refuses an existing name
            except FileExistsError:
                continue
            except OSError as e:
                raise HistoryError(f"cannot write {final}: {e.strerror}") from None
            return final, True
        raise HistoryError(f"{folder}: 999 runs already stored for {stamp}")
    finally:
        tmp.unlink(missing_ok=True)


def store_file(path: pathlib.Path, root: pathlib.Path = DEFAULT_ROOT) -> tuple[pathlib.Path, bool]:
    return store(load_run(path), root)


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


def resolve(spec: str, root: pathlib.Path = DEFAULT_ROOT, *, machine_id: str | None = None
            ) -> pathlib.Path:
    """A run file from a path, or from `[MACHINE:]latest`, `[MACHINE:]previous`, `[MACHINE:]~N`
    (N runs before the latest) in the history. Without MACHINE: `machine_id` if given, else the
    only machine in the history."""
    m = _SPEC_RE.match(spec)
    p = pathlib.Path(spec)
    if m is None or p.exists():
        if not p.exists():
            raise HistoryError(f"{spec}: no such file (and not latest|previous|~N)")
        return p
    machine = m.group("machine") or machine_id
    if machine is None:
        known = machines(root)
        if len(known) != 1:
            raise HistoryError(f"{spec}: say which machine ({'MACHINE:' + m.group('which')}); "
                               f"{root} holds {len(known)}: {', '.join(known) or 'none'}")
        machine = known[0]
    which = m.group("which")
    back = 0 if which == "latest" else 1 if which == "previous" else int(which[1:])
    files = run_files(root, machine)
    if len(files) <= back:
        raise HistoryError(f"{spec}: {root / machine} holds {len(files)} run(s), "
                           f"need at least {back + 1}")
    return files[-1 - back]

