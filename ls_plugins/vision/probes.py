"""What ``ls-vision`` measures inside its models around training (paper section 4).

* :class:`MutualInformationProbe` (``--mi-every E``, Fig. 6): ``N`` training examples of two
  classes ``a, b`` (``N // 2`` of ``a``, the rest of ``b``; a fixed seeded choice, the same in
  every run on the same data), each under ``L`` draws of the training augmentation, drawn once
  from a seeded generator inside ``torch.random.fork_rng`` (the training's random stream is left
  untouched, so a run with the probe trains exactly like one without).  Before training, every
  ``E`` epochs and after the last one, the model (in eval mode, float32) scores the ``N x L``
  images; ``analysis.estimate_mutual_information`` of ``Y = z_a - z_b``
  (``analysis.logit_difference``) estimates ``I(X; Y)`` in nats, between ``log 2`` (two
  clusters: only the class is left) and ``log N`` (every example told apart).
* :func:`teacher_gamma` (``--teacher``, Fig. 5): the teacher's equivalent smoothing
  ``gamma(T) = E[sum_k (1 - y_k) p^t_k(T) K/(K-1)]`` (``losses.equivalent_smoothing``) over the
  training split *without* augmentation, at ``--distill-temperature``, or, with ``--match-gamma``,
  at the ``T`` that ``analysis.bisect_temperature`` finds (``|gamma(T) - target| <= 1e-3``).  The
  teacher's logits are computed once and kept (``n x K`` floats: 55,000 x 10 on Fashion-MNIST).
"""
from __future__ import annotations

import argparse
import time
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ls_plugins import analysis, cli, losses
from ls_plugins.vision import data, distributed, evaluation

PROBE_SEED = 0  # the probe's examples and augmentations: the same in every run on the same data
GAMMA_TOLERANCE = 1e-3  # --match-gamma: |gamma(T) - target| at the T found


class MutualInformationProbe:
    """``N`` fixed training examples of two classes under ``L`` fixed augmentations each; see the
    module docstring.  ``images`` holds example ``x``'s ``l``-th augmentation at row ``x L + l``."""

    def __init__(self, images: Tensor, classes: list[int], num_augmentations: int, every: int,
                 epochs: int):
        self.images, self.classes = images, classes
        self.num_augmentations, self.every, self.epochs = num_augmentations, every, epochs

    @classmethod
    def from_args(cls, args: argparse.Namespace, splits: data.Splits) -> "MutualInformationProbe":
        """The probe of ``--mi-classes``, ``--mi-examples`` and ``--mi-augmentations`` on the
        training split; :class:`cli.UsageError` if the split holds too few images of a class."""
        labels = data.labels_of(splits.train)
        pools = [torch.nonzero(labels == c).flatten() for c in args.mi_classes]
        smaller = min(len(pool) for pool in pools)
        if args.mi_examples > 2 * smaller:
            held = " and ".join(f"{len(pool)} of class {c}" for c, pool in zip(args.mi_classes, pools))
            raise cli.bad_value("--mi-examples", f"must be at most {2 * smaller} (half from each "
                                f"class; the training split holds {held})", args.mi_examples)
        generator = torch.Generator().manual_seed(PROBE_SEED)
        counts = (args.mi_examples // 2, args.mi_examples - args.mi_examples // 2)
        chosen = torch.cat([pool[torch.randperm(len(pool), generator=generator)[:count]]
                            for pool, count in zip(pools, counts)])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(PROBE_SEED)
            images = torch.stack([splits.train[int(i)][0] for i in chosen
                                  for _ in range(args.mi_augmentations)])
        return cls(images, list(args.mi_classes), args.mi_augmentations, args.mi_every, args.epochs)

    @property
    def num_examples(self) -> int:
        return len(self.images) // self.num_augmentations

    def due(self, epoch: int) -> bool:
        """Whether the probe runs after ``epoch`` (every ``E`` epochs and after the last)."""
        return epoch % self.every == 0 or epoch == self.epochs

    @torch.inference_mode()
    def estimate(self, model: nn.Module, device: torch.device, batch_size: int,
                 memory_format: torch.memory_format = torch.preserve_format) -> float:
        """``I^(X; Y)`` in nats for ``model`` (left in eval mode)."""
        model.eval()
        logits = torch.cat([model(chunk.to(device, memory_format=memory_format)).float().cpu()
                            for chunk in self.images.split(batch_size)])
        if not torch.isfinite(logits).all():
            raise evaluation.NonFiniteError("non-finite logits in the mutual information probe")
        values = analysis.logit_difference(
            logits.view(self.num_examples, self.num_augmentations, -1), self.classes)
        return analysis.estimate_mutual_information(values)

    def record(self, model: nn.Module, device: torch.device, batch_size: int,
               memory_format: torch.memory_format = torch.preserve_format) -> dict:
        """``{"mutual_information": nats, "mi_seconds": time taken}``."""
        start = time.perf_counter()
        estimate = self.estimate(model, device, batch_size, memory_format)
        return {"mutual_information": estimate, "mi_seconds": time.perf_counter() - start}


def teacher_gamma(teacher: nn.Module, teacher_checkpoint: dict, splits: data.Splits,
                  args: argparse.Namespace, device: torch.device) -> dict:
    """The teacher's gamma over the training split without augmentation, at
    ``args.distill_temperature``; with ``--match-gamma`` (and no temperature yet) first the
    temperature where it equals the target, which is then stored in ``args.distill_temperature``.

    Returns the ``distillation`` record of ``metrics.json``: ``temperature``, ``gamma``,
    ``target_gamma`` (None without ``--match-gamma``), ``bisection_evaluations`` (passes over the
    kept logits; None when the temperature was given), ``images``, ``seconds``, and the teacher's
    ``teacher_model``, ``teacher_architecture`` and ``teacher_label_smoothing`` (from its
    checkpoint).  Raises :class:`cli.UsageError` naming ``--match-gamma`` when the target is out
    of the teacher's reach.
    """
    start = time.perf_counter()
    training_images = data.without_augmentation(splits)
    world_size = distributed.world_size()
    loader = DataLoader(training_images, batch_size=args.eval_batch_size,
                        sampler=distributed.ShardSampler(training_images,
                                                         distributed.rank(), world_size),
                        num_workers=args.workers)
    _, logits, targets = evaluation.evaluate(teacher, loader, args, device, keep_logits=True,
                                             split="training (teacher)")

    def gamma_at(temperature: float) -> float:
        return losses.equivalent_smoothing(logits, targets, temperature)

    evaluations: Optional[int] = None
    if args.distill_temperature is None:
        try:
            match = analysis.bisect_temperature(gamma_at, args.match_gamma, tol=GAMMA_TOLERANCE)
        except cli.UsageError as error:
            name, _, rest = str(error).partition(": ")
            raise cli.UsageError(f"--match-gamma: {rest if name == 'gamma' else error}") from None
        args.distill_temperature, evaluations = match.temperature, match.evaluations
    teacher_args = teacher_checkpoint.get("args") or {}
    return {"temperature": args.distill_temperature, "gamma": gamma_at(args.distill_temperature),
            "target_gamma": args.match_gamma, "bisection_evaluations": evaluations,
            "images": len(targets), "seconds": time.perf_counter() - start,
            "teacher_model": teacher_checkpoint["model"],
            "teacher_architecture": teacher_checkpoint.get("architecture") or {},
            "teacher_label_smoothing": teacher_args.get("label_smoothing")}
