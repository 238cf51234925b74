"""How our criteria refuse: one line on stderr, exit code 2, nothing left behind.

* Bad options (and teachers that cannot serve the student) raise :class:`ls_plugins.cli.UsageError`
  in the criteria's constructors.  :func:`refusing_bad_input` wraps fairseq's construction of the
  criterion (``build_criterion``, the path of both ``fairseq-train`` and ``fairseq-hydra-train``)
  and turns the error into ``<prog>: error: <option>: <allowed>, got <value>``.  Built directly
  (``Criterion(task, ...)``), a criterion raises the ``UsageError`` instead.
* fairseq creates ``--save-dir`` (``checkpoint.save_dir``) before it builds the criterion.  We
  record the directories its ``verify_checkpoint_directory`` creates in this process, and a
  refusal removes those that are still empty: a refused run leaves nothing behind, while a
  directory that existed before the run is never touched.
* A non-finite loss (or logged term) stops training with one line naming the criterion and the
  term at fault (:func:`check_finite_terms`), except where fairseq's loss scaler handles
  overflows (training with ``--fp16`` or ``--amp``): there it is an overflow, the update is
  skipped, the scale lowered and the step's logging output dropped, so it never reaches the
  metrics.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Iterator, NoReturn, Optional

import torch
from fairseq import checkpoint_utils

from .. import cli

_fresh_dirs: list[str] = []  # created by fairseq in this process, deepest first


def _recording(verify: Callable[[str], None]) -> Callable[[str], None]:
    """fairseq's ``verify_checkpoint_directory``, also recording the directories it creates."""
    if getattr(verify, "records_fresh_dirs", False):
        return verify

    @functools.wraps(verify)
    def verify_checkpoint_directory(save_dir: str) -> None:
        missing, path = [], os.path.abspath(save_dir)
        while not os.path.exists(path):  # save_dir and the parents makedirs will create
            missing.append(path)
            path = os.path.dirname(path)
        verify(save_dir)
        _fresh_dirs.extend(missing)

    verify_checkpoint_directory.records_fresh_dirs = True
    return verify_checkpoint_directory


checkpoint_utils.verify_checkpoint_directory = _recording(checkpoint_utils.verify_checkpoint_directory)


def remove_fresh_empty_dirs() -> None:
    """Remove the directories fairseq created in this process that are still empty."""
    while _fresh_dirs:
        path = _fresh_dirs.pop(0)
        with contextlib.suppress(OSError):  # not empty (checkpoints written), or gone
            os.rmdir(path)


def refuse(message: str) -> NoReturn:
    """Leave nothing behind, print ``<prog>: error: <message>`` and exit with code 2."""
    remove_fresh_empty_dirs()
    cli.exit_with_error(message)


@contextlib.contextmanager
def refusing_bad_input() -> Iterator[None]:
    """A :class:`~ls_plugins.cli.UsageError` inside ends in :func:`refuse`; any other failure
    removes the fresh empty directories too, then propagates."""
    try:
        yield
    except cli.UsageError as err:
        refuse(str(err))
    except BaseException:
        remove_fresh_empty_dirs()
        raise


def loss_scaler_active(logits: torch.Tensor) -> bool:
    """Whether fairseq trains this model under a loss scaler that handles overflows: float16
    logits (``--fp16``, ``--memory-efficient-fp16``) or autocast (``--amp``).  fairseq's
    ``--bf16`` has no loss scaler."""
    return logits.dtype == torch.float16 or torch.is_autocast_enabled(logits.device.type)


def check_finite_terms(criterion: str, terms: dict, *, logits: torch.Tensor, training: bool,
                       details: Optional[Callable[[], str]] = None) -> None:
    """Stop with one line when the loss or a value logged beside it holds a nan or an inf.

    ``terms``: name -> tensor, in the order to blame them: the terms the criterion logs, then the
    loss itself, named after the part of it that the others do not cover (a non-finite loss with
    finite other terms is that part's).  Cheap: their sum is tested with one ``isfinite``; only
    when it fails are the terms looked at one by one and ``details()`` (what the inputs hold)
    evaluated.  Left to fairseq in training under a loss scaler (see the module doc).
    """
    if bool(torch.isfinite(sum(terms.values())).all()):
        return
    if training and loss_scaler_active(logits):
        return  # an overflow: fairseq's loss scaler skips the update and its logging output
    for name, value in terms.items():
        value = value.detach().reshape(-1)
        bad = value[~torch.isfinite(value)]
        if bad.numel():
            break
    extra = f"; {details()}" if details is not None else ""
    refuse(str(cli.bad_value(criterion, "the loss and the terms it logs must be finite",
                             f"{bad[0].item()} in the {name} term{extra}")))


def non_finite_summary(name: str, values: torch.Tensor) -> str:
    """``"<name> hold 3 nan, 0 +inf and 5 -inf among 1200 values"`` (for error messages)."""
    values = values.detach()
    nan = int(torch.isnan(values).sum())
    pos = int(torch.isposinf(values).sum())
    neg = int(torch.isneginf(values).sum())
    return f"{name} hold {nan} nan, {pos} +inf and {neg} -inf among {values.numel()} values"
