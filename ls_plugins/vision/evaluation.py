"""Evaluation passes of ``ls-vision``: calibration statistics of a split, the fitted temperature,
and every example's logits when asked (gathered from all processes in data set order).

``evaluate_splits`` is what the trainer reports after each epoch: the validation statistics and
``T* = argmin_T NLL(softmax(z / T))`` fitted on the validation logits, then the test statistics
at T = 1 and at ``T*`` (:mod:`ls_plugins.calibration`).  A nan or inf logit raises
:class:`NonFiniteError` on every process.

Intervals (``bootstrap=B``): a Poisson bootstrap over images, each image's group id being its
index in its split's data set.  The ids do not depend on the batch size or the number of
processes (each process's examples are the indices its sampler yields, in order), so the
replicate tables sum exactly over batches and processes, and two models evaluated with the same
``--calibration-seed`` get paired replicates (``calibration.paired_replicate_interval``).
"""
from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ls_plugins import calibration
from ls_plugins.vision import distributed


class NonFiniteError(RuntimeError):
    """A nan or inf in the logits or loss; the message names where."""


def to_device(images: Tensor, targets: Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def dataset_indices(loader: DataLoader) -> Tensor:
    """The data set index of every example ``loader`` yields, in order: what its sampler yields
    (:class:`distributed.ShardSampler` on every process; it must not shuffle)."""
    return torch.as_tensor(list(loader.sampler), dtype=torch.int64)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, args: argparse.Namespace, device: torch.device,
             temperatures: tuple[float, ...] = (1.0,), keep_logits: bool = False,
             split: str = "test", bootstrap: int = 0):
    """One pass over ``loader``: a ``CalibrationStats`` of ``softmax(z / T)`` for each ``T`` in
    ``temperatures`` (with ``bootstrap`` replicates over images, seed ``--calibration-seed``,
    group id = data set index), summed over processes; with ``keep_logits`` also every example's
    logits and target, gathered from all processes in data set order.  Raises
    :class:`NonFiniteError` if a logit is nan or inf."""
    model.eval()
    stats = [calibration.CalibrationStats(args.calibration_bins, bootstrap=bootstrap,
                                          seed=args.calibration_seed) for _ in temperatures]
    indices, seen = dataset_indices(loader), 0
    kept_logits, kept_targets = [], []
    finite = torch.ones((), dtype=torch.bool, device=device)
    for images, targets in loader:
        groups = indices[seen:seen + len(targets)]
        seen += len(targets)
        images, targets = to_device(images, targets, device, args.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=args.amp):
            logits = model(images).float()
        finite &= torch.isfinite(logits).all()
        for stat, temperature in zip(stats, temperatures):
            stat.update(logits, targets, temperature=temperature, groups=groups)
        if keep_logits:
            kept_logits.append(logits.cpu())
            kept_targets.append(targets.cpu())
    if distributed.any_process(~finite):
        raise NonFiniteError(f"non-finite logits in the evaluation of the {split} split")
    stats = [distributed.all_reduce_stats(stat, device) for stat in stats]
    if not keep_logits:
        return stats, None, None
    world_size = distributed.world_size()
    return (stats, distributed.gather_in_dataset_order(torch.cat(kept_logits), world_size),
            distributed.gather_in_dataset_order(torch.cat(kept_targets), world_size))


def evaluate_splits(model: nn.Module, val_loader: DataLoader, test_loader: DataLoader,
                    args: argparse.Namespace, device: torch.device, bootstrap: int = 0) -> dict:
    """Validation statistics and fitted ``T*``; test statistics at T = 1 and at ``T*``; each
    with ``bootstrap`` replicates over images."""
    distributed.sync_buffers(model)
    (val,), val_logits, val_targets = evaluate(model, val_loader, args, device, keep_logits=True,
                                               split="validation", bootstrap=bootstrap)
    temperature = calibration.fit_temperature(val_logits, val_targets)
    (test, test_scaled), _, _ = evaluate(model, test_loader, args, device,
                                         temperatures=(1.0, temperature), bootstrap=bootstrap)
    return {"val": val, "temperature": temperature, "test": test, "test_scaled": test_scaled}
