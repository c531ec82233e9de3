"""What a comparison's table of verdicts answers, shared by the stored-run compare
(reports/compare.py) and the interleaved A/B (reports/ab.py). Standard library only: the A/B
runner is imported by the noxfile."""

from __future__ import annotations

from typing import ClassVar


class VerdictTable:
    """A comparison whose `rows` carry a `verdict`; VERDICTS lists the verdicts in table order,
    FAILING those that fail the comparison (exit 1)."""

    VERDICTS: ClassVar[tuple[str, ...]] = ()
    FAILING: ClassVar[tuple[str, ...]] = ("acceptance_drop", "regression")

    @property
    def regressions(self) -> list:
        """Rows that fail: slower beyond the threshold, or accepting less."""
        return [r for r in self.rows if r.verdict in self.FAILING]

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.rows) for v in self.VERDICTS}

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def write_new(path, text: str, error: type[Exception]) -> None:
    """Write a file that must not exist yet (outputs never overwrite anything); a failure is
    error(one line)."""
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise error(f"{path}: exists; refusing to overwrite it") from None
    except OSError as e:
        raise error(f"{path}: cannot write ({e.strerror})") from None
