"""A Runner (harness/runner.py) that records the commands it is given and installs nothing."""

from __future__ import annotations

import pathlib
import sys


class SessionError(Exception):
    """What runner.error raises (nox's session.error stops the session the same way)."""


class FakeRunner:
    """calls: (kind, command, env) in order, kind one of install / run / call / output / venv.
    `fail`: a call (pip install, a query) whose command contains one of these strings exits 1;
    `outputs`: standard output of an `output` query, by a word of its command; `on_call`: called
    with each `call` command before it answers (to plant what an install leaves behind)."""

    def __init__(self, tmp_path: pathlib.Path, *, python: str | None = None, fail=(),
                 outputs: dict[str, str] | None = None, on_call=None) -> None:
        self.location = tmp_path / "session-venv"
        self.location.mkdir(parents=True, exist_ok=True)
        self.python = python or str(self.location / "bin" / "python")
        self.calls: list[tuple[str, list[str], dict]] = []
        self.lines: list[str] = []
        self.fail, self.outputs, self.on_call = tuple(fail), outputs or {}, on_call

    def log(self, line: str) -> None:
        self.lines.append(line)

    def error(self, line: str):
        self.lines.append(f"error: {line}")
        raise SessionError(line)

    def install(self, cmd, *, env=None, silent=False) -> None:
        self.calls.append(("install", list(cmd), dict(env or {})))

    def run(self, cmd, *, env=None, ok=(0,)) -> None:
        self.calls.append(("run", list(cmd), dict(env or {})))
        for a in cmd:  # a benchmark process: leave its JSON where pytest-benchmark would
            if str(a).startswith("--benchmark-json="):
                pathlib.Path(str(a).partition("=")[2]).write_text("{}")

    def call(self, cmd, *, env=None) -> int:
        self.calls.append(("call", list(cmd), dict(env or {})))
        if self.on_call:
            self.on_call(list(cmd))
        return 1 if any(f in " ".join(cmd) for f in self.fail) else 0

    def output(self, cmd) -> tuple[int, str]:
        self.calls.append(("output", list(cmd), {}))
        if any(f in " ".join(cmd) for f in self.fail):
            return 1, ""
        return 0, next((v for k, v in self.outputs.items() if k in cmd), "")

    def make_venv(self, location: pathlib.Path) -> str:
        location.mkdir(parents=True, exist_ok=True)
        self.calls.append(("venv", [str(location)], {}))
        return str(location / "bin" / "python")

    def commands(self, kind: str | None = None) -> list[list[str]]:
        return [c for k, c, _ in self.calls if kind is None or k == kind]


PYTHON = sys.executable
