"""Mutual information between a training example and its logits (paper section 4, Fig. 6).

``X`` is the index of one of ``N`` examples, ``Y = f(d(z_x))`` a scalar read from the network
(the difference of two classes' logits, :func:`logit_difference`) under a random data
augmentation ``d``; each example is seen under ``L`` augmentations.  ``p(y | x)`` is taken to be
Gaussian ``N(y; mu_x, sigma^2)`` with ``mu_x`` the example's mean over its augmentations and
``sigma^2`` the pooled within-example variance, and

    I^ = 1/(N L) sum_{x, l} [ log N(y_xl; mu_x, sigma^2) - log( 1/N sum_x' N(y_xl; mu_x', sigma^2) ) ]

(the paper prints the sum without the ``1/(N L)`` and ``1/N``; we use the normalised form it
describes, whose range is the paper's ``[0, log N]``: every term is at most ``log N``, and
examples that share one mean give 0; that the average never falls below 0 is observed on random
and adversarially optimised inputs, not proven here).  ``log 2`` is the value of two perfectly
separated clusters of examples: only the class is left in the logits.

Pure torch, float64 on the CPU.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..cli import bad_value
from .checks import class_indices, float64_tensor

CELLS_PER_CHUNK = 1 << 22  # entries of the (samples x N) log-density table held at a time (32 MB)


def estimate_mutual_information(values) -> float:
    """The Gaussian estimate ``I^(X; Y)`` in nats from ``values[x, l]`` (``N x L``, N, L >= 2).

    ``mu_x = mean_l values[x, l]``; ``sigma^2 = sum_{x,l} (values[x, l] - mu_x)^2 / (N (L - 1))``,
    the pooled within-example variance.  Each of the ``N L`` samples contributes
    ``-(y - mu_x)^2 / (2 sigma^2) - logsumexp_x'(-(y - mu_x')^2 / (2 sigma^2)) + log N`` (the
    Gaussians' normalising constants cancel); the terms are evaluated with logsumexp in float64,
    a chunk of samples at a time: time ``O(N^2 L)`` (N = 600, L = 32: under a second), memory
    at most ``CELLS_PER_CHUNK`` table entries (or one sample's ``N``).

    ``sigma^2 = 0`` (every example's values identical) gives the limit ``sigma^2 -> 0``: each
    sample is then certainly from an example with its mean, so ``I^ = log N - mean_x log n_x``
    with ``n_x`` the number of examples sharing ``mu_x``: ``log N`` for distinct means, 0 when
    all means coincide.

    >>> round(estimate_mutual_information([[0., 0.], [1., 1.], [2., 2.], [3., 3.]]), 6)  # log 4
    1.386294
    >>> estimate_mutual_information([[1., 2.], [1., 2.]])
    0.0
    """
    values = float64_tensor("values", values, 2)
    num_examples, num_augmentations = values.shape
    if num_examples < 2:
        raise bad_value("N", "must be at least 2 examples (rows of values)", num_examples)
    if num_augmentations < 2:
        raise bad_value("L", "must be at least 2 augmentations per example (columns of values)",
                        num_augmentations)
    means = values.mean(dim=1)
    variance = (values - means.unsqueeze(1)).pow(2).sum() / (num_examples * (num_augmentations - 1))
    log_n = math.log(num_examples)
    if variance == 0:
        _, group, group_size = torch.unique(means, return_inverse=True, return_counts=True)
        return log_n - float(group_size[group].to(torch.float64).log().mean())
    samples = values.reshape(-1)
    own_means = means.repeat_interleave(num_augmentations)
    chunk = max(1, CELLS_PER_CHUNK // num_examples)
    total = 0.0
    for start in range(0, samples.numel(), chunk):
        y = samples[start:start + chunk]
        log_own = -(y - own_means[start:start + chunk]).pow(2) / (2 * variance)
        log_all = -(y.unsqueeze(1) - means.unsqueeze(0)).pow(2) / (2 * variance)
        total += float((log_own - torch.logsumexp(log_all, dim=1)).sum())
    return total / samples.numel() + log_n


def logit_difference(logits, classes: Sequence[int]) -> Tensor:
    """The probe ``Y = z_a - z_b`` of the paper: ``N x L`` values from ``N x L x K`` logits.

    ``logits[x, l]``: the logits of example ``x`` under augmentation ``l``; ``classes = (a, b)``:
    the two classes whose logits are compared (the paper takes examples of those two classes).
    Returns float64.
    """
    logits = float64_tensor("logits", logits, 3)
    a, b = class_indices("classes", classes, logits.size(2), exactly=2)
    return logits[..., a] - logits[..., b]
