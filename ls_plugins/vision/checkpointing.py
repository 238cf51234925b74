"""``ls-vision`` checkpoints: safe loading, compatibility checks, saving and RNG states.

A checkpoint is a dict of tensors and plain types, loaded with ``torch.load(weights_only=True)``
(never switched off: a checkpoint is code-execution surface).  It records ``model``,
``num_classes``, ``in_channels``, ``image_size``, ``dataset``, ``state_dict`` and the run's
``args`` (the teacher format of ``--teacher``); a training checkpoint adds :data:`TRAINING_STATE`.
"""
from __future__ import annotations

import re
import sys

import torch
from torch import nn

from ls_plugins import cli
from ls_plugins.atomic import atomic_write
from ls_plugins.checkpoints import missing_global_message
from ls_plugins.vision import data, models

TRAINING_STATE = ("epoch", "optimizer", "lr_scheduler", "scaler", "rng", "history")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _one_clean_line(text: str) -> str:
    return " ".join(ANSI_ESCAPE.sub("", text).split())


def load(option: str, path: str) -> tuple[nn.Module, dict]:
    """``(model in eval mode, checkpoint)`` from the ``ls-vision`` checkpoint at ``path``.

    Raises :class:`cli.UsageError` naming ``option`` when the file does not load safely (a
    pickle that asks for a global outside torch's allowlist, e.g. ``os.system``: the message
    names it, via :func:`ls_plugins.checkpoints.missing_global_message`), is not an ``ls-vision``
    checkpoint, or holds weights that do not fit its model.
    """
    cli.check_input_file(option, path)
    try:
        checkpoint = models.read_checkpoint(path)
        reason = None
    except ValueError as error:  # loaded, but not a dict with the model's keys
        reason = cli.first_line(error)
    except Exception as error:  # UnpicklingError (a refused global), not a zip file, truncated, ...
        reason = missing_global_message(error)
    if reason is None:
        try:
            return models.model_from_checkpoint(checkpoint), checkpoint
        except Exception as error:  # unknown model, missing weights, shape mismatches
            reason = cli.first_line(error)
    raise cli.bad_value(option, "must name an ls-vision checkpoint",
                        f"{path} ({_one_clean_line(reason)})")


def check_compatible(option: str, checkpoint: dict, dataset: str, splits: data.Splits) -> None:
    """The checkpoint's model must take the data set's images and predict its classes."""
    if checkpoint["num_classes"] != splits.num_classes:
        raise cli.UsageError(f"{option}: the checkpoint's model predicts {checkpoint['num_classes']} "
                             f"classes, but --dataset {dataset} has {splits.num_classes}")
    if (checkpoint["in_channels"], checkpoint["image_size"]) != (splits.in_channels, splits.image_size):
        raise cli.UsageError(
            f"{option}: the checkpoint's model takes {checkpoint['in_channels']}x"
            f"{checkpoint['image_size']}x{checkpoint['image_size']} images, --dataset {dataset} "
            f"has {splits.in_channels}x{splits.image_size}x{splits.image_size}")


def check_training_state(checkpoint: dict) -> None:
    """A checkpoint to continue training from must hold the optimiser, schedule and RNG state."""
    if not all(key in checkpoint for key in TRAINING_STATE):
        raise cli.UsageError("--resume: the checkpoint holds a model but no training state "
                             "(use it with --test-only or --teacher)")


def save(checkpoint: dict, path: str) -> None:
    """Write ``checkpoint`` atomically (temporary file, then rename)."""
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def rng_states() -> dict:
    """This process's torch RNG states (CPU, and CUDA when used)."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}


def restore_rng_states(states: list, rank: int, world_size: int, seed: int, epoch: int,
                       prog: str) -> None:
    """Restore process ``rank``'s RNG states; with another number of processes, reseed instead."""
    if len(states) != world_size:
        print(f"{prog}: checkpoint written by {len(states)} processes, resuming with {world_size}: "
              "random augmentations will differ from an uninterrupted run", file=sys.stderr)
        torch.manual_seed(seed + 1000 * epoch + rank)
        return
    torch.set_rng_state(states[rank]["cpu"])
    if states[rank]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states[rank]["cuda"])
