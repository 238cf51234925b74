"""Safe loading of fairseq checkpoints under torch >= 2.6 (``weights_only=True``).

fairseq checkpoints pickle a few non-tensor objects (``argparse.Namespace`` in old ``args``,
numpy scalars in older ones).  Switching safe loading off would make every checkpoint
code-execution surface; instead the few classes those checkpoints hold are allowlisted with
``torch.serialization.add_safe_globals``, and a checkpoint that still fails is reported with the
exact global that is missing.
"""
from __future__ import annotations

import argparse
import pickle

import torch

_explained = False


def fairseq_checkpoint_globals() -> list:
    """The classes (beyond torch's own allowlist) that fairseq checkpoints hold.

    ``argparse.Namespace``: the ``args`` of checkpoints (and of models trained before fairseq's
    hydra configs).  Older checkpoints also store numpy scalars (e.g. ``best_loss``).
    """
    import numpy as np

    numpy_scalar = getattr(getattr(np, "_core", np.core), "multiarray").scalar
    return [argparse.Namespace, numpy_scalar, np.dtype, type(np.dtype(np.float64)),
            type(np.dtype(np.float32)), type(np.dtype(np.int64))]


def allow_fairseq_checkpoint_globals() -> None:
    """Allowlist the fairseq checkpoint classes for ``torch.load(weights_only=True)``."""
    torch.serialization.add_safe_globals(fairseq_checkpoint_globals())


def missing_global_message(error: BaseException) -> str:
    """One line naming the global a safe load refused (from torch's UnpicklingError text)."""
    text = str(error)
    marker = "Unsupported global: GLOBAL "
    if marker in text:
        name = text.split(marker, 1)[1].split()[0].rstrip(".,")
        return (f"checkpoint needs the global {name}, which ls_plugins does not allowlist for safe "
                f"loading; if you trust it, call torch.serialization.add_safe_globals([{name}])")
    return f"checkpoint could not be loaded safely: {text.splitlines()[0] if text else error!r}"


def explain_unsafe_globals() -> None:
    """Make fairseq's checkpoint loader say which global is missing instead of a long traceback."""
    global _explained
    if _explained:
        return
    from fairseq import checkpoint_utils

    original = checkpoint_utils.load_checkpoint_to_cpu

    def load_checkpoint_to_cpu(path, *args, **kwargs):
        try:
            return original(path, *args, **kwargs)
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(f"{path}: {missing_global_message(err)}") from None

    load_checkpoint_to_cpu.__doc__ = original.__doc__
    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
    _explained = True
