"""Teacher-forced next-token predictions of a fairseq model or ensemble (fairseq side).

Paper section 3: token-level calibration is measured on next-token predictions *given the
reference prefix*.  ``decoder_logits`` runs each model once on a batch with the reference as
decoder input (only the decoders when the batch's encoder outputs are given, e.g. those beam
search already computed: :class:`EncoderCapture`); ``decoder_log_probs`` applies a temperature
and averages the models' probabilities exactly as fairseq's beam search does
(:func:`ls_plugins.losses.log_mean_probs`).  Any number of temperatures can be applied to the
same logits, so a temperature sweep costs one forward pass.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .losses import log_mean_probs


class EncoderCapture:
    """Keeps the encoder outputs that a fairseq ``SequenceGenerator`` computes for a batch.

    Attached to the generator's ensemble (``generator.model``, a fairseq ``EnsembleModel``), it
    records what ``forward_encoder`` returns (one output per model, before beam search expands
    it to the beams: fairseq's reordering builds new tensors and leaves these intact), so the
    teacher-forced pass over the same batch runs only the decoders.  Generators without such an
    ensemble (or models without an encoder) capture nothing and :meth:`take` returns None.
    """

    def __init__(self, generator):
        self.outputs: Optional[list] = None
        ensemble = getattr(generator, "model", None)
        forward_encoder = getattr(ensemble, "forward_encoder", None)
        self.attached = forward_encoder is not None and callable(getattr(ensemble, "has_encoder", None))
        if self.attached:
            def capturing_forward_encoder(net_input):
                self.outputs = forward_encoder(net_input)
                return self.outputs
            ensemble.forward_encoder = capturing_forward_encoder

    def take(self) -> Optional[list]:
        """The last batch's encoder outputs (None if none was captured), forgotten here."""
        outputs, self.outputs = self.outputs, None
        return outputs


@torch.inference_mode()
def decoder_logits(models: Sequence[torch.nn.Module], sample: dict,
                   encoder_outs: Optional[Sequence] = None) -> list[tuple]:
    """Each model's decoder output ``(logits B x T x V, extra)`` with the reference as input.

    ``encoder_outs``: each model's encoder output for this batch, already computed; then only
    the decoders run (``model.decoder(prev_output_tokens, encoder_out=...)``, what the model's
    own forward does after its encoder).
    """
    outputs = []
    net_input = sample["net_input"]
    for i, model in enumerate(models):
        model.eval()
        if encoder_outs is None:
            outputs.append(model(**net_input))
        else:
            outputs.append(model.decoder(net_input["prev_output_tokens"], encoder_out=encoder_outs[i]))
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


def has_plain_output(model: torch.nn.Module) -> bool:
    """Whether the model's normalised probabilities are ``softmax(logits)`` of its decoder output
    (no adaptive softmax): then its logits can be scored directly at any temperature."""
    return getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is None


@torch.inference_mode()
def teacher_forced_scores(models: Sequence[torch.nn.Module], sample: dict, temperature: float,
                          encoder_outs: Optional[Sequence] = None) -> tuple[Tensor, float]:
    """``(scores, t)`` with ``softmax(scores / t)`` the ensemble's next-token predictions at
    ``temperature``: one model with a plain output layer gives its raw logits and
    ``t = temperature`` (no normalisation pass here: the calibration statistics normalise);
    otherwise the ensemble's log-probabilities at ``temperature`` and ``t = 1``.
    """
    outputs = decoder_logits(models, sample, encoder_outs)
    if len(models) == 1 and has_plain_output(models[0]):
        return outputs[0][0], temperature
    return decoder_log_probs(models, outputs, temperature), 1.0
