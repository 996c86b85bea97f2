"""The one argparse flavour behind every magic: usage errors are one line, never an exit.

``%%lepton``, ``%lepton``, ``%%lepton train``/``tune`` and the model commands all parse with
:class:`UsageParser`, so a mistake reads the same everywhere and names where to look next.
"""

from __future__ import annotations

import argparse

from ..errors import LeptonUsageError
from ..remote._spec import parse_size


class UsageParser(argparse.ArgumentParser):
    """argparse that raises one-line usage errors instead of printing and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise LeptonUsageError(f"{self.prog}: {message}; see {self.hint()}")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """``-h``/``--help`` wins over everything else, required flags included, so the hint
        every error gives (``see `%%lepton tune -h```) always works."""
        if args is not None and "-h" in self._option_string_actions \
                and any(a in ("-h", "--help") for a in args):
            defaults = {a.dest: a.default for a in self._actions if a.dest != argparse.SUPPRESS}
            return argparse.Namespace(**{**defaults, "help": True})
        return super().parse_args(args, namespace)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise LeptonUsageError(message or f"{self.prog}: bad arguments")

    def hint(self) -> str:
        """Where to read more: this command's own ``-h`` when it has one, else ``%lepton?``."""
        if "-h" in self._option_string_actions:
            return f"`{self.prog} -h`"
        return "`%lepton?`" if " " in self.prog else f"`%lepton?` or `{self.prog} --help`"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def worker_range(text: str) -> tuple[int, int]:
    """``N`` (a fixed number of workers) or ``MIN-MAX`` (elastic: start with what is there,
    at least MIN, and grow or shrink between the two)."""
    lo, sep, hi = text.partition("-")
    try:
        lo_n, hi_n = int(lo), int(hi if sep else lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or MIN-MAX (e.g. 2 or 2-4)") \
            from None
    if lo_n < 1 or hi_n < lo_n:
        raise argparse.ArgumentTypeError(f"{text!r}: need 1 <= MIN <= MAX (e.g. 2-4)")
    return lo_n, hi_n


def real(text: str) -> float:
    """Any number (its range is checked where it is used)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def number(text: str) -> float:
    """A finite number, 0 or more."""
    value = real(text)
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number, 0 or more")
    return value


def names(text: str) -> tuple[str, ...]:
    found = tuple(n.strip() for n in text.split(",") if n.strip())
    if not found or any(not n.isidentifier() for n in found):
        raise argparse.ArgumentTypeError(f"{text!r} must be Python names separated by commas")
    return found


def size(text: str) -> int:
    try:
        return parse_size(text)
    except LeptonUsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--memory ", "")) from None
