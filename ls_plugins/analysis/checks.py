"""Input checks shared by the analysis modules: bad input raises :class:`ls_plugins.cli.UsageError`
(a ``ValueError``) whose message starts with the argument at fault."""
from __future__ import annotations

import operator
from typing import Sequence

import torch
from torch import Tensor

from ..cli import bad_value


def float64_tensor(name: str, value, dims: int) -> Tensor:
    """``value`` as a finite float64 tensor with ``dims`` dimensions."""
    tensor = torch.as_tensor(value).detach().to(dtype=torch.float64, device="cpu")
    if tensor.dim() != dims:
        raise bad_value(name, f"must be a {dims}-D array", f"shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise bad_value(name, "must hold finite numbers", "nan or inf")
    return tensor


def label_vector(name: str, value, length: int) -> Tensor:
    """``value`` as a 1-D int64 tensor of ``length`` class indices."""
    labels = torch.as_tensor(value).detach().to(device="cpu")
    if labels.dim() != 1 or labels.numel() != length:
        raise bad_value(name, f"must be a 1-D array of {length} class indices (one per row)",
                        f"shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise bad_value(name, "must hold integer class indices", labels.dtype)
    return labels.to(torch.int64)


def class_indices(name: str, classes: Sequence[int], num_classes: int, *, exactly: int | None = None,
                  at_least: int = 1) -> list[int]:
    """``classes`` as a list of distinct indices in ``[0, num_classes)``.

    ``exactly``: how many there must be; ``at_least``: the fewest allowed otherwise.
    """
    try:
        listed = [operator.index(c) for c in classes]
    except TypeError:
        raise bad_value(name, "must be a sequence of integer class indices", classes) from None
    how_many = f"exactly {exactly}" if exactly is not None else f"at least {at_least}"
    if len(set(listed)) != len(listed) or (len(listed) != exactly if exactly is not None
                                           else len(listed) < at_least):
        raise bad_value(name, f"must be {how_many} distinct class indices", listed)
    out_of_range = [c for c in listed if not 0 <= c < num_classes]
    if out_of_range:
        raise bad_value(name, f"class indices must lie in [0, {num_classes})", listed)
    return listed
