"""Command-line validation shared by our fairseq components and console scripts.

Bad input stops with one line on stderr, ``<prog>: error: <option> must be ..., got ...``, and exit
code 2 (argparse's convention), before anything is written.  fairseq builds its argparse parser
from our dataclass configs; :func:`install_checks` attaches our validators to those arguments so
that bad values are refused while the command line is parsed, without argparse's (very long for
fairseq) usage dump.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Iterable, Mapping, NoReturn

from .losses import check_probability, check_temperature


def prog_name() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ls_plugins"


def exit_with_error(message: str) -> NoReturn:
    """Print ``<prog>: error: <message>`` on stderr and exit with code 2."""
    print(f"{prog_name()}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def checked(option: str, check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` that converts with ``check`` and exits with a one-line error on failure."""
    def convert(text: str):
        try:
            return check(text)
        except (TypeError, ValueError) as err:
            exit_with_error(f"{option}: {err}" if not str(err).startswith(option) else str(err))
    convert.__name__ = option.lstrip("-").replace("-", "_")
    return convert


def probability(option: str, *, upper_inclusive: bool = False) -> Callable[[str], float]:
    """argparse type for a value in [0, 1) (or [0, 1])."""
    return checked(option, lambda text: check_probability(option, float(text),
                                                          upper_inclusive=upper_inclusive))


def positive_float(option: str) -> Callable[[str], float]:
    """argparse type for a finite value > 0 (temperatures)."""
    return checked(option, lambda text: check_temperature(option, float(text)))


def int_at_least(option: str, minimum: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{option} must be an integer >= {minimum}, got {text}") from None
        if value < minimum:
            raise ValueError(f"{option} must be an integer >= {minimum}, got {value}")
        return value
    return checked(option, check)


def one_of(option: str, choices: Iterable[str]) -> Callable[[str], str]:
    choices = list(choices)

    def check(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{option} must be one of {', '.join(choices)}, got {text!r}")
        return text
    return checked(option, check)


def install_checks(parser: argparse.ArgumentParser, checks: Mapping[str, Callable[[str], Any]]) -> None:
    """Give the arguments named in ``checks`` our validating ``type`` (and drop argparse choices)."""
    for action in parser._actions:  # argparse keeps no public index of its actions
        for option in action.option_strings:
            if option in checks:
                action.type = checks[option]
                action.choices = None
