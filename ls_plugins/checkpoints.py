"""Safe loading of checkpoints under torch >= 2.6 (``weights_only=True``).

fairseq checkpoints pickle a few non-tensor objects (``argparse.Namespace`` in old ``args``,
numpy scalars in older ones).  Switching safe loading off would make every checkpoint
code-execution surface; instead the few classes those checkpoints hold are allowlisted with
``torch.serialization.add_safe_globals``, and a checkpoint that still fails is reported in one
line naming the global it asked for (:func:`missing_global_message`).  A checkpoint that asks
for a callable (``open``, ``eval``, ``os.system``, ``subprocess.Popen``, ...) wants to run code
when it is unpickled: it is refused, and the message never suggests allowlisting it.

This module imports only torch, numpy and the standard library (the vision trainer uses it too);
:func:`explain_unsafe_globals` imports fairseq when it is called.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import sys

import torch

_explained = False

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# torch's wording of a refused global (torch/_weights_only_unpickler.py); torch writes builtins
# without their module ("open", "eval").
REFUSED_GLOBAL = (
    re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),
    re.compile(r"allowlisted via `add_safe_globals`,? but got <class '([^']+)'>"),
    re.compile(r"Trying to call reduce for unrecognized function <?(?:built-in function |function )?"
               r"([\w.]+)"),
)
# Modules whose every global can run code or reach the system when called while unpickling.
CODE_MODULES = frozenset({
    "builtins", "io", "os", "posix", "nt", "sys", "subprocess", "_posixsubprocess", "shutil",
    "importlib", "runpy", "pickle", "_pickle", "marshal", "socket", "ctypes", "code", "codeop",
    "pty", "platform", "functools", "operator", "types", "webbrowser", "multiprocessing",
    "threading", "signal", "tempfile", "pathlib", "asyncio", "pdb", "timeit", "cProfile",
    "profile", "trace", "commands", "popen2", "bdb", "glob", "zipimport", "pydoc",
})


def fairseq_checkpoint_globals() -> list:
    """The classes (beyond torch's own allowlist) that fairseq checkpoints hold.

    ``argparse.Namespace``: the ``args`` of checkpoints (and of models trained before fairseq's
    hydra configs).  Older checkpoints also store numpy scalars (e.g. ``best_loss``), pickled as
    ``numpy.core.multiarray.scalar`` by numpy 1 and ``numpy._core.multiarray.scalar`` by numpy 2
    (which keeps ``numpy.core`` only as a deprecated alias): both names are allowed.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    return [argparse.Namespace, multiarray.scalar, (multiarray.scalar, "numpy.core.multiarray.scalar"),
            np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)),
            type(np.dtype(np.int64))]


def allow_fairseq_checkpoint_globals() -> None:
    """Allowlist the fairseq checkpoint classes for ``torch.load(weights_only=True)``."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_globals())


def refused_global(error: BaseException) -> str | None:
    """The dotted name of the global a safe load refused, from torch's message (or None)."""
    text = ANSI_ESCAPE.sub("", str(error))
    for pattern in REFUSED_GLOBAL:
        match = pattern.search(text)
        if match:
            return match.group(1).rstrip(".,")
    return None


def runs_code(name: str) -> bool:
    """Whether allowing the global ``name`` lets a checkpoint run code when it is unpickled.

    Builtins (torch writes them without a module: ``open``, ``eval``, ``exec``), anything from a
    module that reaches the system (``os``, ``posix``, ``subprocess``, ``io``, ...) and every
    function (a lower-case last name, by Python's naming convention) count; only a class from
    another module (``mypackage.Config``) does not.
    """
    module, _, attribute = name.rpartition(".")
    top = module.split(".")[0]
    return not module or top in CODE_MODULES or not attribute[:1].isupper()


def torch_reason(error: BaseException) -> str:
    """The informative line of torch's load error (its first lines are generic advice)."""
    text = ANSI_ESCAPE.sub("", str(error))
    detail = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in detail.splitlines() if line.strip()
             and not line.strip().startswith(("Check the documentation", "Weights only load failed",
                                               "Please file an issue"))]
    kind = type(error).__name__
    if not lines:
        return f"{kind} (file empty or truncated?)" if isinstance(error, EOFError) else kind
    line = " ".join(lines[0].split())
    return line if isinstance(error, pickle.UnpicklingError) else f"{kind}: {line}"


def missing_global_message(error: BaseException) -> str:
    """One line explaining why a safe load (``torch.load(weights_only=True)``) failed.

    When torch refused a global, the line names it.  A callable (see :func:`runs_code`) means
    the checkpoint wants to run code: refused, with no advice to allowlist it.  A class may be
    allowlisted by a user who trusts the file.  Other failures give torch's informative line.
    """
    name = refused_global(error)
    if name is None:
        return f"not a checkpoint that loads safely: {torch_reason(error)}"
    if runs_code(name):
        return (f"refused: the checkpoint asks for the global {name}, a callable; a checkpoint "
                f"that calls it while loading wants to run code (like open, eval, exec, "
                f"os.system, subprocess.*), so it is never allowlisted; do not load this file")
    return (f"the checkpoint needs the class {name}, which is not allowlisted for safe loading; "
            f"if you trust this file, allowlist that class with "
            f"torch.serialization.add_safe_globals([{name}]) before loading it")


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that safe loading refused; the message is one line starting with its path."""


def _report_unsafe_checkpoint(previous_hook):
    """A ``sys.excepthook`` that prints an uncaught :class:`UnsafeCheckpointError` as one line."""
    def hook(kind, value, traceback):
        if issubclass(kind, UnsafeCheckpointError):
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
            print(f"{prog}: error: {value}", file=sys.stderr)
            return
        previous_hook(kind, value, traceback)
    return hook


def explain_unsafe_globals() -> None:
    """Make fairseq's checkpoint loader fail in one line naming the refused global.

    ``load_checkpoint_to_cpu`` raises :class:`UnsafeCheckpointError` (a
    ``pickle.UnpicklingError``) instead of torch's long message; our commands turn it into their
    own one-line error, and in the stock ``fairseq-*`` commands, which do not catch it, it is
    printed as ``fairseq-generate: error: <path>: ...`` without a traceback.
    """
    global _explained
    if _explained:
        return
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu

    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(f"{path}: {missing_global_message(err)}") from None

    load_checkpoint_to_cpu.__doc__ = original.__doc__
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    sys.excepthook = _report_unsafe_checkpoint(sys.excepthook)
    _explained = True
