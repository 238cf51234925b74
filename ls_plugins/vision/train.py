"""ls-vision: train image classifiers with label smoothing or distillation; measure calibration.

Training objective per example, averaged over the batch (``ls_plugins.losses``)::

    no teacher:    H(y_LS, p)                                   y_LS = y (1 - alpha) + alpha / K
    with teacher:  (1 - beta) H(y_LS, p) + beta H(p^t(T), p(T))  p(T) = softmax(z / T)

A nan or inf in the logits or the loss stops the run with one line naming the step and the term
(exit code 1); nothing of that epoch is recorded.  The check is on the unscaled loss: under
``--amp``, GradScaler's own handling of overflowing *scaled gradients* (it skips those steps and
lowers the scale) is part of normal training and is not an error.

Evaluation after every epoch (``ls_plugins.calibration``, 15 equal-width bins by default):
accuracy, NLL, ECE and MCE of the test split at T = 1; the temperature
``T* = argmin_T NLL(softmax(z / T))`` fitted on the validation split; test ECE and NLL at ``T*``;
when distilling, the teacher's equivalent smoothing
``gamma = E[sum_k (1 - y_k) p^t_k(T) K / (K - 1)]`` over the (augmented) training images.
The final evaluation (after the last epoch, or ``--test-only``) also has 95% intervals: a
Poisson bootstrap over images (``--calibration-bootstrap`` replicates, ``--calibration-seed``;
:mod:`.evaluation`).

Measured once before training (:mod:`.probes`): with ``--teacher``, the teacher's gamma over the
training split without augmentation (``--match-gamma``: the temperature is first bisected so
that it equals the target); with ``--mi-every E``, the mutual information between training
examples and their logit difference (paper Fig. 6), then again every ``E`` epochs and after the
last.

Outputs in ``--output-dir``: ``checkpoint.pt`` and ``metrics.json`` (per-epoch history), both
written atomically after every epoch; at the end ``metrics.json`` gains the final metrics and
``reliability.png`` (test reliability diagram at T = 1 and at ``T*``) is drawn.

    ls-vision --dataset digits --model smallcnn --label-smoothing 0.1
    torchrun --nproc_per_node 2 -m ls_plugins.vision.train --dataset cifar10 --model resnet20
    ls-vision --resume runs/x/checkpoint.pt --output-dir runs/x          # continue a run
    ls-vision --resume runs/x/checkpoint.pt --test-only --output-dir runs/x-eval  # evaluate only
    ls-vision plot RUN_DIR... --out fig2.png   # paper Fig. 2 from several runs
    ls-vision project RUN_HARD RUN_LS --classes 0,2,6 --out fig1.png   # paper Fig. 1
    ls-vision plot-mi RUN_DIR... --out fig6.png                        # paper Fig. 6
    ls-vision plot-fig5 RUN_DIR... --out fig5.png                      # paper Fig. 5

Modules: :mod:`.command_line` (options and their checks), :mod:`.checkpointing`,
:mod:`.distributed`, :mod:`.evaluation` (evaluation passes), :mod:`.probes` (mutual information,
teacher gamma), :mod:`.report` (metrics, summary, ``ls-vision plot``), :mod:`.projection_command`
and :mod:`.figure_commands` (the other subcommands); this one holds the training loop.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ls_plugins import cli, losses
from ls_plugins.atomic import write_json
from ls_plugins.vision import (checkpointing, command_line, data, distributed, models, probes,
                               report)
from ls_plugins.vision.evaluation import NonFiniteError, evaluate_splits, to_device
from ls_plugins.vision.report import CHECKPOINT, METRICS, PROG, RELIABILITY, TIMING_KEYS  # noqa: F401

SUBCOMMANDS = {  # ls-vision SUBCOMMAND ...: module and function, imported when called
    "plot": ("ls_plugins.vision.report", "plot_main"),
    "project": ("ls_plugins.vision.projection_command", "main"),
    "plot-mi": ("ls_plugins.vision.figure_commands", "plot_mi_main"),
    "plot-fig5": ("ls_plugins.vision.figure_commands", "plot_fig5_main"),
}


@dataclass
class Run:
    """What training updates: the model (DDP-wrapped under torchrun), its optimiser state and
    the per-epoch history."""
    model: nn.Module
    module: nn.Module  # the bare model: evaluated and saved
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    start_epoch: int
    history: list
    measured: dict  # measured once per run (teacher gamma, mutual information before training)


class Loaders(NamedTuple):
    train: DataLoader
    val: DataLoader
    test: DataLoader
    train_sampler: DistributedSampler
    worker_seeds: torch.Generator


# -- main ----------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    """``ls-vision [options]`` (see ``--help``) or ``ls-vision SUBCOMMAND ...`` (:data:`SUBCOMMANDS`);
    returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        module, function = SUBCOMMANDS[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    parser = command_line.get_args_parser()
    with usage_errors(parser, int(os.environ.get("RANK", "0"))):  # torchrun's processes: one line
        args, resumed = command_line.parse(parser, argv)
        teacher, teacher_checkpoint = (checkpointing.load("--teacher", args.teacher) if args.teacher
                                       else (None, None))
    started = time.perf_counter()
    rank, world_size, device = start_process(args)
    with usage_errors(parser, rank):
        splits = load_splits(args, rank)
        for option, checkpoint in (("--resume", resumed), ("--teacher", teacher_checkpoint)):
            if checkpoint is not None:
                checkpointing.check_compatible(option, checkpoint, args.dataset, splits)
        probe = (probes.MutualInformationProbe.from_args(args, splits)
                 if args.mi_every is not None and not args.test_only else None)
    run = build_run(args, splits, device, resumed, rank, world_size)
    loaders = build_loaders(args, splits, device, rank, world_size)
    teacher = prepare_teacher(teacher, args, device) if teacher is not None else None
    with usage_errors(parser, rank), non_finite_errors(parser, rank):
        measure_before_training(run, probe, teacher, teacher_checkpoint, splits, args, device, rank)
    metrics = {"args": vars(args), "dataset": args.dataset, "model": args.model,
               "num_classes": splits.num_classes, "class_names": list(splits.class_names),
               "world_size": world_size, "history": run.history,
               "parameters": sum(p.numel() for p in run.module.parameters()), **run.measured}
    with non_finite_errors(parser, rank):
        result = train_epochs(run, teacher, probe, loaders, splits, args, device, metrics, rank)
        if result is None:  # --test-only, or resuming a run that has finished
            result = evaluate_splits(run.module, loaders.val, loaders.test, args, device,
                                     bootstrap=args.calibration_bootstrap)
    if rank == 0:
        report.write_final_outputs(metrics, result, args.output_dir,
                                   f"{args.model} / {args.dataset} (test)", time.perf_counter() - started)
    distributed.shutdown()
    return 0


@contextlib.contextmanager
def usage_errors(parser: cli.ArgumentParser, rank: int = 0) -> Iterator[None]:
    """A :class:`cli.UsageError` becomes the one-line error of ``parser`` (exit code 2), printed
    by process 0 only."""
    try:
        yield
    except cli.UsageError as error:
        if rank == 0:
            parser.error(str(error))
        raise SystemExit(2) from None


@contextlib.contextmanager
def non_finite_errors(parser: cli.ArgumentParser, rank: int) -> Iterator[None]:
    """A :class:`NonFiniteError` ends the run with one line and exit code 1 (process 0 prints)."""
    try:
        yield
    except NonFiniteError as error:
        if rank == 0:
            parser.exit(1, f"{parser.prog}: error: {error}\n")
        raise SystemExit(1) from None


# -- set-up --------------------------------------------------------------------------------------
def start_process(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """Join the process group under torchrun; seed; set the determinism switches."""
    rank, world_size, device = distributed.init_distributed(args.device)
    torch.manual_seed(args.seed + rank)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.deterministic
    return rank, world_size, device


def load_splits(args: argparse.Namespace, rank: int) -> data.Splits:
    """The data set's splits; under torchrun process 0 reads (or downloads) it first."""
    if rank != 0:
        distributed.barrier()
    try:
        splits = data.build_splits(args.dataset, args.data_dir, val_size=args.val_size,
                                   augment=args.augment)
    except data.DataUnavailableError as error:
        raise cli.UsageError(str(error)) from None
    if rank == 0:
        distributed.barrier()
    return splits


def memory_format(args: argparse.Namespace) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.preserve_format


def build_run(args: argparse.Namespace, splits: data.Splits, device: torch.device,
              resumed: Optional[dict], rank: int, world_size: int) -> Run:
    """A fresh model, optimiser and schedule, or the state of the ``--resume`` checkpoint."""
    module = models.build_model(args.model, splits.num_classes, splits.in_channels, splits.image_size,
                                **models.architecture(args.model, vars(args)))
    module.to(device, memory_format=memory_format(args))
    if args.optimizer == "adam":
        optimizer = torch.optim.Adam(module.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = torch.optim.SGD(module.parameters(), lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay, nesterov=args.nesterov)
    if args.lr_scheduler == "step":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_milestones, args.lr_gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp)
    start_epoch, history = 0, []
    measured = dict(resumed.get("measured") or {}) if resumed is not None else {}
    if resumed is not None:
        module.load_state_dict(resumed["state_dict"])
        if not args.test_only:
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["lr_scheduler"])
            scaler.load_state_dict(resumed["scaler"])
            start_epoch, history = resumed["epoch"], list(resumed["history"])
            checkpointing.restore_rng_states(resumed["rng"], rank, world_size, args.seed,
                                             start_epoch, PROG)
    model = module
    if world_size > 1:
        model = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(model, module, optimizer, scheduler, scaler, start_epoch, history, measured)


def build_loaders(args: argparse.Namespace, splits: data.Splits, device: torch.device,
                  rank: int, world_size: int) -> Loaders:
    """Shuffled training batches (each process its share); validation and test sharded without
    padding (:class:`distributed.ShardSampler`)."""
    train_sampler = DistributedSampler(splits.train, num_replicas=world_size, rank=rank,
                                       shuffle=True, seed=args.seed)
    worker_seeds = torch.Generator()
    pin = device.type == "cuda"
    train_loader = DataLoader(splits.train, batch_size=args.batch_size, sampler=train_sampler,
                              num_workers=args.workers, pin_memory=pin, drop_last=True,
                              generator=worker_seeds)
    val_loader, test_loader = (
        DataLoader(split, batch_size=args.eval_batch_size, pin_memory=pin,
                   sampler=distributed.ShardSampler(split, rank, world_size),
                   num_workers=args.workers, persistent_workers=args.workers > 0)
        for split in (splits.val, splits.test))
    return Loaders(train_loader, val_loader, test_loader, train_sampler, worker_seeds)


def prepare_teacher(teacher: nn.Module, args: argparse.Namespace, device: torch.device) -> nn.Module:
    return teacher.to(device, memory_format=memory_format(args)).eval().requires_grad_(False)


def measure_before_training(run: Run, probe: Optional[probes.MutualInformationProbe],
                            teacher: Optional[nn.Module], teacher_checkpoint: Optional[dict],
                            splits: data.Splits, args: argparse.Namespace, device: torch.device,
                            rank: int) -> None:
    """Once per run, kept in ``run.measured`` (and the checkpoint): the teacher's gamma over the
    training split without augmentation, after bisecting the temperature for ``--match-gamma``
    (printed); the mutual information of the initial model."""
    if args.test_only:
        return
    if teacher is not None and "distillation" not in run.measured:
        record = probes.teacher_gamma(teacher, teacher_checkpoint, splits, args, device)
        run.measured["distillation"] = record
        if rank == 0 and record["target_gamma"] is not None:
            print(f"{PROG}: --match-gamma {record['target_gamma']:g}: distilling at "
                  f"T={record['temperature']:.4f}, where the teacher's gamma over the "
                  f"{record['images']} training images without augmentation is "
                  f"{record['gamma']:.4f} ({record['bisection_evaluations']} temperatures tried)",
                  flush=True)
    if probe is not None and run.start_epoch == 0:
        run.measured["mutual_information_initial"] = {
            "epoch": 0, **probe.record(run.module, device, args.eval_batch_size, memory_format(args))}


# -- training ------------------------------------------------------------------------------------
def train_epochs(run: Run, teacher: Optional[nn.Module],
                 probe: Optional[probes.MutualInformationProbe], loaders: Loaders,
                 splits: data.Splits, args: argparse.Namespace, device: torch.device,
                 metrics: dict, rank: int) -> Optional[dict]:
    """Train from ``run.start_epoch`` to ``--epochs``; after each epoch evaluate (and run the
    ``probe`` when due), append to the history and (process 0) write ``metrics.json`` and the
    checkpoint.  Returns the last evaluation (None when no epoch was left)."""
    world_size = distributed.world_size()
    show_progress = rank == 0 and not args.quiet and sys.stderr.isatty()
    if rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
    result = None
    for epoch in range(run.start_epoch, 0 if args.test_only else args.epochs):
        loaders.train_sampler.set_epoch(epoch)
        loaders.worker_seeds.manual_seed(args.seed * 1_000_003 + epoch * world_size + rank)
        epoch_start = time.perf_counter()
        record = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}
        record.update(train_one_epoch(run.model, teacher, loaders.train, run.optimizer, run.scaler,
                                      args, device, epoch + 1, show_progress))
        run.scheduler.step()
        eval_start = time.perf_counter()
        last = epoch + 1 == args.epochs  # the final evaluation: with bootstrap intervals
        result = evaluate_splits(run.module, loaders.val, loaders.test, args, device,
                                 bootstrap=args.calibration_bootstrap if last else 0)
        record.update(report.flat_metrics(result))
        record["eval_seconds"] = time.perf_counter() - eval_start
        if probe is not None and probe.due(epoch + 1):
            record.update(probe.record(run.module, device, args.eval_batch_size, memory_format(args)))
        record["epoch_seconds"] = time.perf_counter() - epoch_start
        run.history.append(record)
        checkpoint = training_checkpoint(run, args, splits, epoch + 1, world_size)
        if rank == 0:
            write_json(os.path.join(args.output_dir, METRICS), metrics)
            checkpointing.save(checkpoint, os.path.join(args.output_dir, CHECKPOINT))
            if not args.quiet:
                print(report.epoch_line(record, args.epochs, teacher is not None), flush=True)
    return result


def training_checkpoint(run: Run, args: argparse.Namespace, splits: data.Splits, epoch: int,
                        world_size: int) -> dict:
    """The model (teacher format) plus everything ``--resume`` needs to continue exactly."""
    return {"model": args.model, "num_classes": splits.num_classes,
            "in_channels": splits.in_channels, "image_size": splits.image_size,
            "architecture": models.architecture(args.model, vars(args)), "dataset": args.dataset,
            "args": vars(args), "state_dict": run.module.state_dict(),
            "epoch": epoch, "optimizer": run.optimizer.state_dict(),
            "lr_scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "history": run.history, "measured": run.measured,
            "rng": distributed.gather_objects(checkpointing.rng_states(), world_size)}


def non_finite_message(logits: Tensor, teacher_logits: Optional[Tensor], targets: Tensor,
                       args: argparse.Namespace, where: str) -> str:
    """What went wrong in a step whose logits or loss are not finite: the logits, the teacher's
    logits, or which term of the loss."""
    if not torch.isfinite(logits).all():
        return f"non-finite logits {where}"
    if teacher_logits is not None and not torch.isfinite(teacher_logits).all():
        return f"non-finite teacher logits {where}"
    hard = losses.smoothed_cross_entropy(logits.detach(), targets, args.label_smoothing,
                                         reduction="mean")
    term = "hard-target" if teacher_logits is None or not torch.isfinite(hard) else "distillation"
    return f"non-finite training loss {where} ({term} term)"


def train_one_epoch(model: nn.Module, teacher: Optional[nn.Module], loader: DataLoader,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    args: argparse.Namespace, device: torch.device, epoch: int,
                    show_progress: bool) -> dict:
    """One pass over the training split; loss, accuracy (and teacher gamma) summed over processes.

    The loss is ``losses.smoothed_cross_entropy`` or, with a teacher, ``losses.distillation_loss``
    (batch mean); gamma is accumulated with ``losses.incorrect_mass`` from the same tempered
    teacher probabilities the loss uses.  Raises :class:`NonFiniteError` (on every process) at
    the first step whose logits or loss hold a nan or inf.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    images_seen, gamma_sum, gamma_count = 0, 0.0, 0
    start = time.perf_counter()
    progress = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", leave=False, dynamic_ncols=True,
                    disable=not show_progress)
    teacher_logits = None
    for step, (images, targets) in enumerate(progress, start=1):
        images, targets = to_device(images, targets, device, args.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=args.amp):
            logits = model(images)
            if teacher is None:
                loss = losses.smoothed_cross_entropy(logits, targets, args.label_smoothing,
                                                     reduction="mean")
            else:
                with torch.inference_mode():
                    teacher_logits = teacher(images)
                teacher_probs = losses.tempered_probs(teacher_logits, args.distill_temperature)
                loss = losses.distillation_loss(logits, None, targets, beta=args.distill_weight,
                                                temperature=args.distill_temperature,
                                                alpha=args.label_smoothing, reduction="mean",
                                                teacher_probs=teacher_probs)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        finite = torch.isfinite(loss.detach()) & torch.isfinite(logits.detach()).all()
        if distributed.any_process(~finite):
            where = f"at epoch {epoch}, step {step}"
            message = None if finite else non_finite_message(logits, teacher_logits, targets, args, where)
            message = distributed.first_message(message, distributed.world_size())
            raise NonFiniteError(f"{message}: the training diverged (try a lower --lr)")
        if teacher is not None:
            batch_gamma_sum, batch_count = losses.incorrect_mass(teacher_probs, targets)
            gamma_sum += batch_gamma_sum
            gamma_count += batch_count
        loss_sum += loss.detach().double() * targets.numel()
        correct += logits.detach().argmax(-1).eq(targets).sum()
        images_seen += targets.numel()
        if show_progress and step % 10 == 0:
            progress.set_postfix(loss=f"{loss_sum.item() / images_seen:.4f}",
                                 acc=f"{correct.item() / images_seen:.4f}")
    seconds = time.perf_counter() - start
    totals = distributed.all_reduce_sum(torch.tensor(
        [loss_sum.item(), correct.item(), images_seen, gamma_sum, gamma_count], dtype=torch.float64),
        device)
    result = {"train_loss": float(totals[0] / totals[2]), "train_accuracy": float(totals[1] / totals[2]),
              "train_images_per_second": float(totals[2]) / seconds}
    if teacher is not None:
        result["teacher_gamma"] = float(totals[3] / totals[4])
    return result


if __name__ == "__main__":
    sys.exit(main())
