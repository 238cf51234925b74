"""Teacher-forced next-token predictions of a fairseq model or ensemble (fairseq side).

Paper section 3: token-level calibration is measured on next-token predictions *given the
reference prefix*.  ``decoder_logits`` runs each model once on a batch with the reference as
decoder input; ``decoder_log_probs`` applies a temperature and averages the models'
probabilities exactly as fairseq's beam search does
(:func:`ls_plugins.losses.log_mean_probs`).  Any number of temperatures can be applied
to the same logits, so a temperature sweep costs one forward pass.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .losses import log_mean_probs


@torch.inference_mode()
def decoder_logits(models: Sequence[torch.nn.Module], sample: dict) -> list[tuple]:
    """Each model's decoder output ``(logits B x T x V, extra)`` with the reference as input."""
    outputs = []
    for model in models:
        model.eval()
        outputs.append(model(**sample["net_input"]))
    return outputs


@torch.inference_mode()
def decoder_log_probs(models: Sequence[torch.nn.Module], outputs: Sequence[tuple],
                       temperature: float = 1.0) -> Tensor:
    """Log-probabilities ``B x T x V`` of the ensemble at temperature ``T`` (float32)."""
    log_probs = []
    for model, (logits, *extra) in zip(models, outputs):
        scaled = logits if temperature == 1.0 else logits / temperature
        log_probs.append(model.get_normalized_probs((scaled, *extra), log_probs=True).float())
    return log_mean_probs(log_probs)
