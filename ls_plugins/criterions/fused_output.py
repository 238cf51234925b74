"""``--memory-efficient-output``: the training loss from the decoder's last hidden states.

With the option, ``smoothed_ce`` and ``distillation_ce`` run the model with ``features_only=True``
in training and give the decoder's hidden states and its output projection (an ``nn.Linear``,
its weight shared with the embeddings or not) to :mod:`ls_plugins.linear_losses`, which never
holds the ``tokens x vocabulary`` logits, their log-probabilities or their gradient.  The loss
and its gradients are those of the unfused path (to float32 rounding).  A decoder whose output
layer is anything else (an adaptive softmax, or a decoder other than fairseq's transformer
decoder) is refused in one line at the first batch.

Validation (the model in eval mode, no gradients) keeps the unfused path, so every value logged
there, the calibration statistics included, is computed exactly as without the option; its
memory is bounded by ``--max-tokens-valid``.
"""
from __future__ import annotations

import inspect

import torch
from fairseq.models import FairseqDecoder
from fairseq.models.transformer import TransformerDecoderBase

from .. import cli

OPTION = "--memory-efficient-output"
HELP = ("training only: compute the loss from the decoder's hidden states chunk by chunk, "
        "never holding the tokens x vocabulary logits (needs a transformer decoder with a "
        "plain linear output layer); validation and logged values are unchanged")


def output_projection(model) -> torch.nn.Linear:
    """The decoder's output layer, if the loss can be fused with it; else a
    :class:`~ls_plugins.cli.UsageError` naming the option."""
    decoder = getattr(model, "decoder", None)
    if getattr(decoder, "adaptive_softmax", None) is not None:
        raise cli.bad_value(OPTION, "needs a plain linear output layer",
                            "an adaptive softmax (--adaptive-softmax-cutoff)")
    plain = (isinstance(decoder, TransformerDecoderBase)
             and isinstance(getattr(decoder, "output_projection", None), torch.nn.Linear)
             and type(decoder).output_layer is TransformerDecoderBase.output_layer
             and type(decoder).get_normalized_probs_scriptable
             is FairseqDecoder.get_normalized_probs_scriptable
             and "features_only" in inspect.signature(model.forward).parameters)
    if not plain:
        raise cli.bad_value(OPTION, "needs a transformer decoder whose output layer is a plain "
                            "linear projection", f"a {type(model).__name__} with a "
                            f"{type(decoder).__name__}")
    return decoder.output_projection


def features_and_target(model, sample, ignore_prefix_size: int):
    """The decoder's last hidden states ``(N, d)`` and the targets ``(N,)``, the first
    ``ignore_prefix_size`` positions of every sentence removed."""
    features, extra = model(**sample["net_input"], features_only=True)
    target = model.get_targets(sample, (features, extra))
    if ignore_prefix_size > 0:
        features = features[:, ignore_prefix_size:, :]
        target = target[:, ignore_prefix_size:]
    return features.reshape(-1, features.size(-1)), target.reshape(-1)
