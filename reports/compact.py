"""The compact form of a run: what the history keeps (reports/history.py stores it).

pytest-benchmark's JSON keeps every round of every benchmark (stats.data): ~80% of a 13 MB run
here, while compare and render read from the rounds only a few numbers a process. compact()
keeps everything else as it is (the machine fingerprint, commit, pytest-benchmark's summary
statistics min/max/mean/stddev/median/iqr/q1/q3/rounds/iterations/ops..., extra_info with the
process medians, cost model, achieved rates, roofline fractions, control op) and replaces
stats.data by stats.per_process: per process its rounds, quartiles and the interquartile range
of the log rounds (reports/schema.py ProcessSummary). Everything compare computes (ratio,
interval, verdict) and render shows is then the same on both forms, to the last bit.

The top-level field `compact` marks the form: {"format": 1, "rounds_sha256": digest of the
dropped rounds}. The digest keeps two runs that differ only in their raw rounds apart (the
history's duplicate check compares bytes) and ties a rounds sidecar to its run.

Deterministic: the same run gives the same bytes (canonical(): sorted keys, fixed indentation,
floats as Python writes them), so storing a run twice, or a migrated run again, is detected.

Rounds on request: rounds_sidecar() is a gzip file (`<run>.rounds.json.gz` next to the run,
mtime 0 in its header, so it too is deterministic) with {format, rounds_sha256, rounds
{fullname: [seconds, ...]}}; expand() puts them back and gives the full run again.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import pathlib

from reports.schema import COMPACT_FORMAT, PER_PROCESS, Run, SchemaError, validate

SIDECAR_SUFFIX = ".rounds.json.gz"


def canonical(raw: dict) -> bytes:
    """The bytes the history writes for a run (same run, same bytes)."""
    return json.dumps(raw, indent=1, sort_keys=True, ensure_ascii=True).encode() + b"\n"


def rounds_of(run: Run) -> dict[str, list]:
    """A full run's raw rounds by benchmark fullname (as stored, no conversion)."""
    if run.compact:
        raise SchemaError(f"{run.source}: a compact run keeps no raw rounds")
    return {b["fullname"]: b["stats"]["data"] for b in run.raw["benchmarks"]}


def rounds_digest(rounds: dict[str, list]) -> str:
    text = json.dumps(rounds, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def compact(run: Run) -> dict:
    """The compact raw form of a validated run (a copy; a compact run is returned as it is)."""
    if run.compact:
        return copy.deepcopy(run.raw)
    raw = copy.deepcopy(run.raw)
    for b, rec in zip(raw["benchmarks"], run.records):
        del b["stats"]["data"]
        summaries = rec.process_summaries
        b["stats"]["per_process"] = {k: [getattr(s, k) for s in summaries] for k in PER_PROCESS}
    raw["compact"] = {"format": COMPACT_FORMAT, "rounds_sha256": rounds_digest(rounds_of(run))}
    return raw


def sidecar_path(run_path: pathlib.Path) -> pathlib.Path:
    """Where a stored run's rounds go: 20260101T000000Z.json -> 20260101T000000Z.rounds.json.gz."""
    p = pathlib.Path(run_path)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def rounds_sidecar(run: Run) -> bytes:
    """The gzip sidecar of a full run's rounds (deterministic bytes)."""
    rounds = rounds_of(run)
    doc = {"format": COMPACT_FORMAT, "rounds_sha256": rounds_digest(rounds), "rounds": rounds}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return gzip.compress(text.encode(), compresslevel=6, mtime=0)


def read_sidecar(path: pathlib.Path, run: Run | None = None) -> dict[str, list]:
    """The rounds in a sidecar, checked against their digest (and against `run`'s, if given)."""
    p = pathlib.Path(path)
    try:
        doc = json.loads(gzip.decompress(p.read_bytes()))
        rounds, digest = doc["rounds"], doc["rounds_sha256"]
    except FileNotFoundError:
        raise SchemaError(f"{p}: no such file (the run was stored without --keep-rounds?)") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise SchemaError(f"{p}: not a rounds sidecar ({type(e).__name__}: {e})") from None
    if not isinstance(rounds, dict) or rounds_digest(rounds) != digest:
        raise SchemaError(f"{p}: rounds do not match their digest (corrupt sidecar)")
    if run is not None and run.raw.get("compact", {}).get("rounds_sha256") != digest:
        raise SchemaError(f"{p}: rounds of another run than {run.source}")
    return rounds


def expand(run: Run, rounds: dict[str, list]) -> Run:
    """The full run again from a compact run and its rounds (read_sidecar)."""
    if not run.compact:
        return run
    if rounds_digest(rounds) != run.raw["compact"]["rounds_sha256"]:
        raise SchemaError(f"{run.source}: the rounds given are not this run's")
    raw = copy.deepcopy(run.raw)
    del raw["compact"]
    for b in raw["benchmarks"]:
        if b["fullname"] not in rounds:
            raise SchemaError(f"{run.source}: no rounds for {b['fullname']}")
        del b["stats"]["per_process"]
        b["stats"]["data"] = rounds[b["fullname"]]
    return validate(raw, run.source)
