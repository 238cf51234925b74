"""One command-line convention for every console script and fairseq option of ours.

Bad input stops with one line on stderr, ``<prog>: error: <option>: <what is allowed>, got
<value>``, and exit code 2 (argparse's convention): no usage dump, no traceback, and nothing
written, because output paths are checked (:func:`check_output_dir`, :func:`check_output_file`)
before any data or model is loaded.

* Console scripts build their parser with :class:`ArgumentParser` (argparse's own errors become
  that one line) and give options a validating ``type`` (:func:`probability`,
  :func:`positive_float`, :func:`int_at_least`, :func:`one_of`, ...).
* Library code raises :class:`UsageError` (a ``ValueError`` whose message starts with the option);
  a command turns it into the line with :func:`exit_on_usage_error`.
* fairseq builds its argparse parser from our dataclass configs; :func:`install_checks` attaches
  our validators to those arguments so that bad values are refused while the command line is
  parsed, without fairseq's very long usage dump.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
from typing import Any, Callable, Iterable, Iterator, Mapping, NoReturn


class UsageError(ValueError):
    """Bad input; the message is one line that starts with the option at fault."""


_PROG: list = []  # the name set by the running command's parser (see ArgumentParser)


def prog_name() -> str:
    """The running command's name: its parser's ``prog``, else ``basename(sys.argv[0])``
    (``python -m ls_plugins.vision.train`` and torchrun would otherwise say ``train.py``)."""
    if _PROG:
        return _PROG[-1]
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ls_plugins"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def exit_with_error(message: str) -> NoReturn:
    """Print ``<prog>: error: <message>`` (one line) on stderr and exit with code 2."""
    message = " ".join(str(message).split())  # one line, whatever the message held
    print(f"{prog_name()}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def bad_value(option: str, allowed: str, value: Any) -> UsageError:
    """``UsageError("<option>: <allowed>, got <value>")``, to raise."""
    return UsageError(f"{option}: {allowed}, got {value}")


@contextlib.contextmanager
def exit_on_usage_error() -> Iterator[None]:
    """Turn a :class:`UsageError` (or another ``ValueError`` naming its option) into the line."""
    try:
        yield
    except UsageError as err:
        exit_with_error(str(err))


class ArgumentParser(argparse.ArgumentParser):
    """argparse with our one-line errors: ``prog: error: --opt: ...``, exit code 2, no usage.

    Its ``prog`` also names the command in the errors of :func:`exit_with_error` (argparse types).
    """

    def parse_known_args(self, args=None, namespace=None):
        _PROG[:] = [self.prog]  # the command now running (a subcommand's parser sets its own)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument "):  # "argument --x/-x: invalid ..." -> "--x: invalid ..."
            option, _, rest = message[len("argument "):].partition(": ")
            message = f"{option.split('/')[0]}: {rest}"
        print(f"{self.prog}: error: {' '.join(message.split())}", file=sys.stderr)
        raise SystemExit(2)


# -- argparse types ------------------------------------------------------------------------------

def checked(option: str, check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` that converts with ``check`` and exits with a one-line error on failure.

    ``check`` raises ``ValueError``/``TypeError``; a message that does not start with the option
    gets it prefixed.
    """
    def convert(text: str):
        try:
            return check(text)
        except (TypeError, ValueError) as err:
            message = str(err)
            exit_with_error(message if message.startswith(option) else f"{option}: {message}")
    convert.__name__ = option.lstrip("-").replace("-", "_")
    return convert


def parse_float(option: str, text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise bad_value(option, "must be a number", repr(text)) from None


def check_probability(option: str, value: float, *, upper_inclusive: bool = False) -> float:
    """``value`` if it lies in [0, 1) (or [0, 1]); else :class:`UsageError` naming ``option``."""
    value = float(value)
    upper_ok = value <= 1.0 if upper_inclusive else value < 1.0
    if not (value >= 0.0 and upper_ok):  # also rejects nan
        raise bad_value(option, f"must be in [0, 1{']' if upper_inclusive else ')'}", value)
    return value


def check_positive(option: str, value: float) -> float:
    """``value`` if it is a finite number > 0; else :class:`UsageError` naming ``option``."""
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise bad_value(option, "must be a finite number > 0", value)
    return value


def check_open_unit(option: str, value: float) -> float:
    """``value`` if it lies in (0, 1) (levels, target gammas)."""
    value = float(value)
    if not 0.0 < value < 1.0:
        raise bad_value(option, "must be in (0, 1)", value)
    return value


def check_int_at_least(option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise bad_value(option, f"must be an integer >= {minimum}", repr(value)) from None
        if not as_float.is_integer():
            raise bad_value(option, f"must be an integer >= {minimum}", value)
        value = int(as_float)
    if value < minimum:
        raise bad_value(option, f"must be an integer >= {minimum}", value)
    return value


def probability(option: str, *, upper_inclusive: bool = False) -> Callable[[str], float]:
    """argparse type for a value in [0, 1) (or [0, 1])."""
    return checked(option, lambda text: check_probability(option, parse_float(option, text),
                                                          upper_inclusive=upper_inclusive))


def positive_float(option: str) -> Callable[[str], float]:
    """argparse type for a finite value > 0 (temperatures, learning rates)."""
    return checked(option, lambda text: check_positive(option, parse_float(option, text)))


def open_unit(option: str) -> Callable[[str], float]:
    """argparse type for a value in (0, 1)."""
    return checked(option, lambda text: check_open_unit(option, parse_float(option, text)))


def finite_float(option: str) -> Callable[[str], float]:
    """argparse type for any finite number."""
    def check(text: str) -> float:
        value = parse_float(option, text)
        if not math.isfinite(value):
            raise bad_value(option, "must be a finite number", value)
        return value
    return checked(option, check)


def int_at_least(option: str, minimum: int) -> Callable[[str], int]:
    """argparse type for an integer >= ``minimum``."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise bad_value(option, f"must be an integer >= {minimum}", repr(text)) from None
        return check_int_at_least(option, value, minimum)
    return checked(option, check)


def one_of(option: str, choices: Iterable[str]) -> Callable[[str], str]:
    choices = list(choices)

    def check(text: str) -> str:
        if text not in choices:
            raise bad_value(option, f"must be one of {', '.join(choices)}", repr(text))
        return text
    return checked(option, check)


def install_checks(parser: argparse.ArgumentParser, checks: Mapping[str, Callable[[str], Any]]) -> None:
    """Give the arguments named in ``checks`` our validating ``type`` (and drop argparse choices)."""
    for action in parser._actions:  # argparse keeps no public index of its actions
        for option in action.option_strings:
            if option in checks:
                action.type = checks[option]
                action.choices = None


# -- input and output paths ----------------------------------------------------------------------

def check_input_file(option: str, path: str) -> str:
    """``path`` if it is a readable regular file; else :class:`UsageError`."""
    if not os.path.exists(path):
        raise bad_value(option, "must name an existing file", f"{path} (no such file)")
    if not os.path.isfile(path):
        raise bad_value(option, "must name a file", f"{path} (a directory)"
                        if os.path.isdir(path) else path)
    if not os.access(path, os.R_OK):
        raise bad_value(option, "must name a readable file", path)
    return path


def check_input_dir(option: str, path: str) -> str:
    """``path`` if it is a directory; else :class:`UsageError`."""
    if not os.path.isdir(path):
        what = "not a directory" if os.path.exists(path) else "no such directory"
        raise bad_value(option, "must name an existing directory", f"{path} ({what})")
    return path


def _try_write_in(directory: str) -> bool:
    """Whether a file can really be created in ``directory`` (``os.access`` says yes to root)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".ls-write-probe-", dir=directory)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _nearest_existing(path: str) -> str:
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent


def check_output_dir(option: str, path: str) -> str:
    """``path`` if it is a writable directory or can be created as one (nothing is created)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise bad_value(option, "must name a directory", f"{path} (an existing file)")
    parent = _nearest_existing(path)
    if not os.path.isdir(parent):
        raise bad_value(option, "must name a directory", f"{path} ({parent} is a file)")
    if not _try_write_in(parent):
        raise bad_value(option, "must name a writable directory", f"{path} (cannot write in {parent})")
    return path


def check_output_file(option: str, path: str) -> str:
    """``path`` if a file can be written there: its directory exists and takes a file, and the
    path is not a directory (tried with a real write, then removed)."""
    if os.path.isdir(path):
        raise bad_value(option, "must name a file", f"{path} (a directory)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise bad_value(option, "must name a file in an existing directory",
                        f"{path} (no directory {directory})")
    if not _try_write_in(directory):
        raise bad_value(option, "must name a writable file", f"{path} (cannot write in {directory})")
    return path
