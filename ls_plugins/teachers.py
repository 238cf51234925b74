"""Distillation teachers for fairseq: a frozen ensemble whose tempered probabilities are averaged.

``load_teachers("a.pt:b.pt", student_task)`` loads the checkpoints with
:func:`ls_plugins.fairseq_models.load_ensemble` (safe loading; source and target dictionaries
checked against the student's, symbol by symbol).  ``--criterion distillation_ce
--teacher-path`` and ``ls-cache-teacher`` use it.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from . import fairseq_models
from .losses import ensemble_tempered_log_probs


class TeacherEnsemble:
    """One or more frozen teacher models; their tempered probabilities are averaged.

    Deliberately not an ``nn.Module`` attribute of the criterion: the teachers' weights must not
    reach the optimizer, the student's checkpoints or a DistributedDataParallel wrapper.
    """

    def __init__(self, models: Sequence[torch.nn.Module], paths: Sequence[str]):
        self.models = list(models)
        self.paths = list(paths)
        self._placement = None

    def __len__(self) -> int:
        return len(self.models)

    def place_like(self, tensor: torch.Tensor) -> None:
        """Move the teachers to ``tensor``'s device and floating dtype (the student's), once."""
        key = (tensor.device, tensor.dtype)
        if key != self._placement:
            for model in self.models:
                model.to(device=tensor.device, dtype=tensor.dtype)
                model.eval()
            self._placement = key

    def log_probs(self, net_input: dict, temperature: float = 1.0) -> torch.Tensor:
        """``log p^t(T)`` of the (averaged) teachers, ``(batch, length, K)``, float32 or wider.

        The forward passes run under ``torch.inference_mode``; the tempering and averaging run
        under ``no_grad`` so that the result is an ordinary tensor the loss may save for backward.
        """
        with torch.inference_mode():
            outs = []
            for model in self.models:
                net_output = model(**net_input)
                outs.append(model.get_normalized_probs(net_output, log_probs=True))
        with torch.no_grad():
            return ensemble_tempered_log_probs(outs, temperature)


def load_teachers(spec: str, student_task, teacher_data: Optional[str] = None,
                  option: str = "--teacher-path",
                  preloaded: Optional[dict] = None) -> TeacherEnsemble:
    """The teachers of ``spec`` (``a.pt:b.pt``), each checked against ``student_task``.

    ``teacher_data``: the directory with the teachers' dictionaries (default: the data
    directory each checkpoint records).  Errors: :class:`ls_plugins.cli.UsageError` naming
    ``option`` (or ``--teacher-data``).
    """
    models = fairseq_models.load_ensemble(
        spec, student_task, option=option, reference="the student", data=teacher_data,
        data_option="--teacher-data DIR", preloaded=preloaded)
    return TeacherEnsemble(models, [os.path.abspath(p) for p in fairseq_models.split_paths(spec)])
