"""What the harness asks of the session it runs in: a Runner. NoxRunner wraps a nox session;
tests pass a recorder that keeps the commands (tests/harness/fakes.py) and installs nothing.

A command is a list of words. "python" as its first word is the session venv's interpreter
(nox resolves it there); any other interpreter is an absolute path. Standard library only: nox
is imported by NoxRunner.make_venv alone, when it runs inside nox.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Mapping, Sequence
from typing import NoReturn, Protocol

from harness.project import ROOT

PIP_INSTALL = ("python", "-m", "pip", "install")


class Runner(Protocol):
    python: str  # the session venv's interpreter, an absolute path
    location: pathlib.Path  # the session venv's folder

    def log(self, line: str) -> None: ...

    def error(self, line: str) -> NoReturn: ...

    def install(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                silent: bool = False) -> None:
        """A command that changes an environment (pip install / uninstall); failure stops
        the session; skipped by `nox --no-install` in a reused venv."""

    def run(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
            ok: Sequence[int] = (0,)) -> None:
        """A command of the session (pytest, reports, printing the environment); an exit
        status outside `ok` stops the session."""

    def call(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
        """A command whose failure is an answer: its exit status (logged first; the process
        environment plus `env`; cwd the repository)."""

    def output(self, cmd: Sequence[str]) -> tuple[int, str]:
        """A query: exit status and standard output."""

    def make_venv(self, location: pathlib.Path) -> str:
        """Create (or reuse) a virtual environment there; its interpreter."""


class NoxRunner:
    """A Runner over a nox session."""

    def __init__(self, session) -> None:
        self.session = session

    @property
    def python(self) -> str:
        return str(pathlib.Path(self.session.virtualenv.bin) / "python")

    @property
    def location(self) -> pathlib.Path:
        return pathlib.Path(self.session.virtualenv.location)

    def log(self, line: str) -> None:
        self.session.log(line)

    def error(self, line: str) -> NoReturn:
        self.session.error(line)
        raise AssertionError("unreachable: session.error raises")

    def install(self, cmd, *, env=None, silent=False) -> None:
        cmd = list(cmd)
        if tuple(cmd[:4]) == PIP_INSTALL:  # nox's own install: its verbosity, its venv checks
            self.session.install(*cmd[4:], env=dict(env or {}))
        else:
            self.session.run_install(*cmd, env=dict(env or {}), silent=silent,
                                     external=os.path.isabs(cmd[0]))

    def run(self, cmd, *, env=None, ok=(0,)) -> None:
        cmd = list(cmd)
        self.session.run(*cmd, env=dict(env or {}), external=os.path.isabs(cmd[0]),
                         success_codes=list(ok))

    def call(self, cmd, *, env=None) -> int:
        cmd = [self.python if c == 0 and w == "python" else w for c, w in enumerate(cmd)]
        self.session.log(" ".join(cmd))
        return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}).returncode

    def output(self, cmd) -> tuple[int, str]:
        cmd = [self.python if c == 0 and w == "python" else w for c, w in enumerate(cmd)]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        return r.returncode, r.stdout

    def make_venv(self, location: pathlib.Path) -> str:
        from nox.virtualenv import VirtualEnv

        venv = VirtualEnv(str(location), reuse_existing=True)
        venv.create()
        return str(pathlib.Path(venv.bin) / "python")
