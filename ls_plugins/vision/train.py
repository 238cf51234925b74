"""ls-vision: train image classifiers with label smoothing or distillation; measure calibration.

Training objective per example, averaged over the batch (``ls_plugins.losses``)::

    no teacher:    H(y_LS, p)                                   y_LS = y (1 - alpha) + alpha / K
    with teacher:  (1 - beta) H(y_LS, p) + beta H(p^t(T), p(T))  p(T) = softmax(z / T)

Evaluation after every epoch (``ls_plugins.calibration``, 15 equal-width bins by default):
accuracy, NLL, ECE and MCE of the test split at T = 1; the temperature
``T* = argmin_T NLL(softmax(z / T))`` fitted on the validation split; test ECE and NLL at ``T*``;
when distilling, the teacher's equivalent smoothing
``gamma = E[sum_k (1 - y_k) p^t_k(T) K / (K - 1)]`` over the (augmented) training images.

Outputs in ``--output-dir``: ``checkpoint.pt`` (written atomically after every epoch; the
teacher format for ``--teacher``), ``metrics.json`` (per-epoch history and final metrics) and
``reliability.png`` (test reliability diagram at T = 1 and at ``T*``).

    ls-vision --dataset digits --model smallcnn --label-smoothing 0.1
    torchrun --nproc_per_node 2 -m ls_plugins.vision.train --dataset cifar10 --model resnet20
    ls-vision --dataset digits --model smallcnn --resume runs/x/checkpoint.pt   # continue a run
    ls-vision --dataset digits --model smallcnn --resume runs/x/checkpoint.pt --test-only \\
        --output-dir runs/x-eval                                                    # evaluate only
    ls-vision plot RUN_DIR... --out fig2.png   # paper Fig. 2 from several runs
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from ls_plugins import calibration, losses, plots
from ls_plugins.atomic import atomic_write, write_json
from ls_plugins.vision import data, models

PROG = "ls-vision"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
RELIABILITY = "reliability.png"
TIMING_KEYS = ("epoch_seconds", "train_images_per_second", "eval_seconds")


# -- arguments ---------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except unset ones (None, False), whose help text explains them."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Train an image classifier with label smoothing or distillation and report "
                    "accuracy and calibration (When Does Label Smoothing Help?, sections 2-4). "
                    f"`{PROG} plot RUN_DIR... --out FIG.png` draws a Fig. 2-style diagram.")
    parser.add_argument("--dataset", default="digits", choices=data.DATASETS,
                        help="digits works offline; synthetic is for tests")
    parser.add_argument("--data-dir", default="data", help="where CIFAR is, or is downloaded to")
    parser.add_argument("--val-size", type=int, default=data.CIFAR_DEFAULT_VAL_SIZE,
                        help="CIFAR training images held out as the validation split")
    parser.add_argument("--model", default="smallcnn", choices=models.MODELS,
                        help="CIFAR ResNets, an AlexNet-style net, a small CNN for digits")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs")
    parser.add_argument("-b", "--batch-size", type=int, default=64, help="images per process and step")
    parser.add_argument("--eval-batch-size", type=int, default=256, help="images per process")
    parser.add_argument("--lr", type=float, default=0.05, help="initial learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    parser.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=5e-4,
                        help="L2 weight decay of SGD")
    parser.add_argument("--lr-scheduler", choices=("step", "cosine"), default="cosine",
                        help="step: multiply the lr by --lr-gamma at each of --lr-milestones; "
                             "cosine: lr * (1 + cos(pi * epoch / epochs)) / 2")
    parser.add_argument("--lr-milestones", type=int, nargs="+", default=[], metavar="EPOCH",
                        help="numbers of finished epochs after which the step schedule decays")
    parser.add_argument("--lr-gamma", type=float, default=0.1, help="step schedule factor")
    parser.add_argument("--label-smoothing", type=float, default=0.0, metavar="ALPHA",
                        help="alpha in [0, 1): targets y (1 - alpha) + alpha / K")
    parser.add_argument("--teacher", metavar="CKPT", help="an ls-vision checkpoint to distil from")
    parser.add_argument("--distill-temperature", type=float, metavar="T",
                        help="T > 0 of p(T) = softmax(z / T) (default 1 with --teacher)")
    parser.add_argument("--distill-weight", type=float, metavar="BETA",
                        help="beta in [0, 1], weight of H(p^t(T), p(T)) (default 1 with --teacher)")
    parser.add_argument("--calibration-bins", type=int, default=calibration.DEFAULT_BINS,
                        help="equal-width confidence bins of ECE and the reliability diagram")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, shuffling, augmentation")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms(True), no cuDNN autotuning")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=("cpu", "cuda"), help="under torchrun: one GPU per process")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="float16 autocast with gradient scaling (default: on with CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory format (default: on with CUDA)")
    parser.add_argument("-j", "--workers", type=int, default=None,
                        help="data loading processes per training process (default: 4 for CIFAR, "
                             "0 for the in-memory sets)")
    parser.add_argument("--output-dir", help="default: runs/<dataset>-<model>-ls<alpha>[-kd]")
    parser.add_argument("--resume", metavar="CKPT", help="continue training from this checkpoint")
    parser.add_argument("--test-only", action="store_true",
                        help="only evaluate the --resume checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject bad input with one ``ls-vision: error: ...`` line (exit code 2) before any work."""
    try:
        losses.check_probability("--label-smoothing", args.label_smoothing, upper_inclusive=False)
        if args.distill_weight is not None:
            losses.check_probability("--distill-weight", args.distill_weight, upper_inclusive=True)
        if args.distill_temperature is not None:
            losses.check_temperature("--distill-temperature", args.distill_temperature)
        losses.check_temperature("--lr", args.lr)
        calibration.check_bins(args.calibration_bins)
    except ValueError as error:
        parser.error(str(error))
    for option, value, minimum in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                                   ("--eval-batch-size", args.eval_batch_size, 1),
                                   ("--workers", args.workers, 0)):
        if value is not None and value < minimum:
            parser.error(f"{option}: must be >= {minimum}, got {value}")
    if not 0.0 <= args.momentum < 1.0:
        parser.error(f"--momentum: must be in [0, 1), got {args.momentum}")
    if not args.weight_decay >= 0.0:
        parser.error(f"--wd: must be >= 0, got {args.weight_decay}")
    if args.dataset in data.CIFAR_STATS and not 1 <= args.val_size < 50000:
        parser.error(f"--val-size: must be in [1, 50000), got {args.val_size}")
    if args.teacher is None:
        for option, value in (("--distill-temperature", args.distill_temperature),
                              ("--distill-weight", args.distill_weight)):
            if value is not None:
                parser.error(f"{option} needs --teacher")
    else:
        args.distill_temperature = 1.0 if args.distill_temperature is None else args.distill_temperature
        args.distill_weight = 1.0 if args.distill_weight is None else args.distill_weight
        if not os.path.isfile(args.teacher):
            parser.error(f"--teacher: no such file {args.teacher!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.amp and args.device != "cuda":
        parser.error("--amp needs --device cuda")
    args.amp = args.device == "cuda" if args.amp is None else args.amp
    args.channels_last = args.device == "cuda" if args.channels_last is None else args.channels_last
    if args.workers is None:
        args.workers = 4 if args.dataset in data.CIFAR_STATS else 0
    if args.output_dir is None:
        args.output_dir = os.path.join(
            "runs", f"{args.dataset}-{args.model}-ls{args.label_smoothing:g}"
                    + ("-kd" if args.teacher else ""))
    if args.test_only and args.resume is None:
        parser.error("--test-only needs --resume CKPT (the checkpoint to evaluate)")
    if args.resume is not None and not os.path.isfile(args.resume):
        parser.error(f"--resume: no such file {args.resume!r}")
    if args.test_only and os.path.abspath(args.output_dir) == os.path.dirname(os.path.abspath(args.resume)):
        parser.error("--output-dir must differ from the checkpoint's directory with --test-only "
                     "(the run's metrics.json would be overwritten)")
    if args.resume is None and os.path.exists(os.path.join(args.output_dir, CHECKPOINT)):
        parser.error(f"--output-dir {args.output_dir} already holds a checkpoint; pass "
                     f"--resume {os.path.join(args.output_dir, CHECKPOINT)} or another --output-dir")


def load_checkpoint(parser: argparse.ArgumentParser, option: str, path: str) -> tuple[nn.Module, dict]:
    """The model and checkpoint at ``path``, or a one-line error naming ``option``."""
    try:
        return models.load_trained_model(path)
    except Exception as error:  # unpickling, missing keys, shape mismatches: all one-line errors
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        parser.error(f"{option}: cannot load {path} as an ls-vision checkpoint ({reason})")


def check_compatible(parser: argparse.ArgumentParser, option: str, checkpoint: dict,
                     dataset: str, splits: data.Splits) -> None:
    """The checkpoint's model must take the data set's images and predict its classes."""
    if checkpoint["num_classes"] != splits.num_classes:
        parser.error(f"{option}: the checkpoint's model predicts {checkpoint['num_classes']} "
                     f"classes, but --dataset {dataset} has {splits.num_classes}")
    if (checkpoint["in_channels"], checkpoint["image_size"]) != (splits.in_channels, splits.image_size):
        parser.error(f"{option}: the checkpoint's model takes {checkpoint['in_channels']}x"
                     f"{checkpoint['image_size']}x{checkpoint['image_size']} images, the data set "
                     f"has {splits.in_channels}x{splits.image_size}x{splits.image_size}")


# -- distributed ---------------------------------------------------------------------------------
def init_distributed(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """``(rank, world_size, device)``; under ``torchrun`` joins the process group (gloo on CPU,
    NCCL on CUDA, one GPU per process)."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(args.device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.device == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    return rank, world_size, device


class ShardSampler(Sampler[int]):
    """Examples ``rank, rank + W, rank + 2W, ...``: every example exactly once over the ``W``
    processes (``DistributedSampler`` would pad the last shard with duplicates)."""

    def __init__(self, dataset, rank: int, world_size: int):
        self.indices = range(rank, len(dataset), world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def all_reduce_sum(values: Tensor, device: torch.device) -> Tensor:
    """Elementwise sum over processes (identity in a single process)."""
    if not dist.is_initialized():
        return values
    values = values.to(device)
    dist.all_reduce(values)
    return values.cpu()


def all_reduce_stats(stats: calibration.CalibrationStats, device: torch.device) -> calibration.CalibrationStats:
    """Sum the float64 per-bin counts, confidence and correct sums, NLL and Brier sums over
    processes: the merged statistics are exact, never an average of per-process metrics."""
    n = stats.n_bins
    packed = torch.cat([stats.counts, stats.conf_sums, stats.correct_sums,
                        torch.tensor([stats.nll_sum, stats.brier_sum], dtype=torch.float64)])
    packed = all_reduce_sum(packed, device)
    return calibration.CalibrationStats.from_sums(packed[:n], packed[n:2 * n], packed[2 * n:3 * n],
                                                  float(packed[3 * n]), float(packed[3 * n + 1]))


def gather_in_dataset_order(values: Tensor, world_size: int) -> Tensor:
    """Undo :class:`ShardSampler`: process ``r`` holds rows ``r, r + W, ...`` of the data set."""
    if world_size == 1:
        return values
    parts: list = [None] * world_size
    dist.all_gather_object(parts, values.cpu())
    gathered = torch.empty((sum(len(p) for p in parts), *values.shape[1:]), dtype=values.dtype)
    for rank, part in enumerate(parts):
        gathered[rank::world_size] = part
    return gathered


def sync_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics) before evaluating."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


# -- training and evaluation -----------------------------------------------------------------------
def to_device(images: Tensor, targets: Tensor, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def train_one_epoch(model: nn.Module, teacher: Optional[nn.Module], loader: DataLoader,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    args: argparse.Namespace, device: torch.device, epoch: int,
                    show_progress: bool) -> dict:
    """One pass over the training split; loss, accuracy (and teacher gamma) summed over processes.

    The loss is ``losses.smoothed_cross_entropy`` or, with a teacher, ``losses.distillation_loss``
    (batch mean); gamma is accumulated with ``losses.incorrect_mass`` from the same tempered
    teacher probabilities the loss uses.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    images_seen, gamma_sum, gamma_count = 0, 0.0, 0
    start = time.perf_counter()
    progress = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", leave=False, dynamic_ncols=True,
                    disable=not show_progress)
    for step, (images, targets) in enumerate(progress):
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
                batch_gamma_sum, batch_count = losses.incorrect_mass(teacher_probs, targets)
                gamma_sum += batch_gamma_sum
                gamma_count += batch_count
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach().double() * targets.numel()
        correct += logits.detach().argmax(-1).eq(targets).sum()
        images_seen += targets.numel()
        if show_progress and step % 10 == 0:
            progress.set_postfix(loss=f"{loss_sum.item() / images_seen:.4f}",
                                 acc=f"{correct.item() / images_seen:.4f}")
    seconds = time.perf_counter() - start
    totals = all_reduce_sum(torch.tensor([loss_sum.item(), correct.item(), images_seen, gamma_sum,
                                          gamma_count], dtype=torch.float64), device)
    result = {"train_loss": float(totals[0] / totals[2]), "train_accuracy": float(totals[1] / totals[2]),
              "train_images_per_second": float(totals[2]) / seconds}
    if teacher is not None:
        result["teacher_gamma"] = float(totals[3] / totals[4])
    return result


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, args: argparse.Namespace, device: torch.device,
             temperatures: tuple[float, ...] = (1.0,), keep_logits: bool = False):
    """One pass over ``loader``: a ``CalibrationStats`` of ``softmax(z / T)`` for each ``T`` in
    ``temperatures``, summed over processes; with ``keep_logits`` also every example's logits and
    target, gathered from all processes in data set order."""
    model.eval()
    stats = [calibration.CalibrationStats(args.calibration_bins) for _ in temperatures]
    kept_logits, kept_targets = [], []
    for images, targets in loader:
        images, targets = to_device(images, targets, device, args.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=args.amp):
            logits = model(images).float()
        for stat, temperature in zip(stats, temperatures):
            stat.update(logits, targets, temperature=temperature)
        if keep_logits:
            kept_logits.append(logits.cpu())
            kept_targets.append(targets.cpu())
    stats = [all_reduce_stats(stat, device) for stat in stats]
    if not keep_logits:
        return stats, None, None
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    return (stats, gather_in_dataset_order(torch.cat(kept_logits), world_size),
            gather_in_dataset_order(torch.cat(kept_targets), world_size))


def evaluate_splits(model: nn.Module, val_loader: DataLoader, test_loader: DataLoader,
                    args: argparse.Namespace, device: torch.device) -> dict:
    """Validation statistics and fitted ``T*``; test statistics at T = 1 and at ``T*``."""
    sync_buffers(model)
    (val,), val_logits, val_targets = evaluate(model, val_loader, args, device, keep_logits=True)
    temperature = calibration.fit_temperature(val_logits, val_targets)
    (test, test_scaled), _, _ = evaluate(model, test_loader, args, device,
                                         temperatures=(1.0, temperature))
    return {"val": val, "temperature": temperature, "test": test, "test_scaled": test_scaled}


def flat_metrics(result: dict) -> dict:
    """The scalar metrics of :func:`evaluate_splits`' result (for the history and the summary)."""
    val, test, scaled = result["val"], result["test"], result["test_scaled"]
    return {"val_accuracy": val.accuracy(), "val_nll": val.nll(), "val_ece": val.ece(),
            "temperature": result["temperature"],
            "test_accuracy": test.accuracy(), "test_nll": test.nll(), "test_ece": test.ece(),
            "test_mce": test.mce(), "test_confidence": test.confidence(),
            "test_overconfidence": test.confidence() - test.accuracy(),
            "test_ece_scaled": scaled.ece(), "test_nll_scaled": scaled.nll(),
            "test_mce_scaled": scaled.mce()}


# -- outputs -------------------------------------------------------------------------------------
def save_checkpoint(checkpoint: dict, path: str) -> None:
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def rng_states() -> dict:
    """This process's torch RNG states (CPU, and CUDA when used)."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}


def restore_rng_states(states: list, rank: int, world_size: int, seed: int, epoch: int) -> None:
    """Restore process ``rank``'s RNG states; with another number of processes, reseed instead."""
    if len(states) != world_size:
        print(f"{PROG}: checkpoint written by {len(states)} processes, resuming with {world_size}: "
              "random augmentations will differ from an uninterrupted run", file=sys.stderr)
        torch.manual_seed(seed + 1000 * epoch + rank)
        return
    torch.set_rng_state(states[rank]["cpu"])
    if states[rank]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states[rank]["cuda"])


def run_label(run_args: dict) -> str:
    """``α=<a>``, plus the teacher's temperature and weight when distilled."""
    label = f"α={run_args['label_smoothing']:g}"
    if run_args.get("teacher"):
        label += f", distilled T={run_args['distill_temperature']:g} β={run_args['distill_weight']:g}"
    return label


def draw_reliability(final: dict, run_args: dict, path: str, title: str) -> None:
    """The run's test reliability diagram at T = 1 and at the fitted T (paper Fig. 2 style)."""
    label = run_label(run_args)
    plots.reliability_diagram({label: final["test"],
                               f"{label}, T={final['temperature']:.2f}": final["test_scaled"]},
                              path, title)


def print_summary(metrics: dict, output_dir: str, seconds: float) -> None:
    """One screen: the final test metrics at T = 1 and at T*, and where the outputs are."""
    final, run_args = metrics["final"], metrics["args"]
    done = (f"evaluated {run_args['resume']}" if run_args["test_only"]
            else f"{metrics['epochs_trained']} epochs")
    lines = [f"{PROG} | {metrics['model']} on {metrics['dataset']} | {run_label(run_args)} | "
             f"{done} | {metrics['world_size']} process(es) | {seconds / 60:.1f} min",
             f"{'':22}{'accuracy':>10}{'NLL':>9}{'ECE':>9}{'MCE':>9}{'conf':>9}"]
    for name, key in (("test, T=1", "test"), (f"test, T*={final['temperature']:.3f}", "test_scaled")):
        stats = final[key]
        lines.append(f"{name:22}{stats['accuracy']:10.4f}{stats['nll']:9.4f}{stats['ece']:9.4f}"
                     f"{stats['mce']:9.4f}{stats['confidence']:9.4f}")
    lines.append(f"validation: accuracy {final['val_accuracy']:.4f}, NLL {final['val_nll']:.4f}; "
                 f"T* fitted on {final['val']['count']} validation images")
    if final.get("teacher_gamma") is not None:
        lines.append(f"teacher: equivalent smoothing gamma {final['teacher_gamma']:.4f} "
                     f"at T={run_args['distill_temperature']:g}")
    lines.append(f"outputs: {os.path.join(output_dir, METRICS)}, "
                 f"{os.path.join(output_dir, RELIABILITY)}"
                 + ("" if run_args["test_only"] else f", {os.path.join(output_dir, CHECKPOINT)}"))
    print("\n".join(lines), flush=True)


def gather_objects(value, world_size: int) -> list:
    """``[value of process 0, value of process 1, ...]`` on every process."""
    if world_size == 1:
        return [value]
    values: list = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def epoch_line(record: dict, epochs: int, distilling: bool) -> str:
    """One log line per epoch."""
    line = (f"epoch {record['epoch']}/{epochs} | lr {record['lr']:.4g} | train loss "
            f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | test acc "
            f"{record['test_accuracy']:.4f} nll {record['test_nll']:.4f} ece {record['test_ece']:.4f} "
            f"| T* {record['temperature']:.3f} ece(T*) {record['test_ece_scaled']:.4f}")
    if distilling:
        line += f" | teacher gamma {record['teacher_gamma']:.4f}"
    return line + f" | {record['train_images_per_second']:.0f} img/s"


# -- `ls-vision plot` ------------------------------------------------------------------------------
def plot_main(argv: list[str]) -> int:
    """Paper Fig. 2 from finished runs: each run's test curve at T = 1; runs trained with hard
    targets (alpha = 0, no teacher) also after temperature scaling at their fitted T."""
    parser = argparse.ArgumentParser(prog=f"{PROG} plot", description=plot_main.__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output directories of ls-vision")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default="Reliability diagram")
    args = parser.parse_args(argv)
    curves = {}
    for run in args.runs:
        path = os.path.join(run, METRICS)
        try:
            with open(path, encoding="utf-8") as handle:
                metrics = json.load(handle)
        except (OSError, ValueError) as error:
            parser.error(f"RUN_DIR {run}: cannot read {METRICS} ({error})")
        final = metrics.get("final")
        if final is None:
            parser.error(f"RUN_DIR {run}: {METRICS} has no final metrics (the run has not finished)")
        hard_targets = metrics["args"]["label_smoothing"] == 0 and not metrics["args"].get("teacher")
        label = "hard targets" if hard_targets else run_label(metrics["args"])
        if label in curves:
            label = f"{label} ({run})"
        curves[label] = final["test"]
        if hard_targets:
            curves[f"{label}, T={final['temperature']:.2f}"] = final["test_scaled"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plots.reliability_diagram(curves, args.out, args.title)
    print(f"{PROG} plot: wrote {args.out}")
    return 0


# -- main ----------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plot"]:
        return plot_main(argv[1:])
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    resumed = load_checkpoint(parser, "--resume", args.resume)[1] if args.resume else None
    if resumed is not None and resumed["model"] != args.model:
        parser.error(f"--resume: the checkpoint holds a {resumed['model']}, not --model {args.model}")
    training_state = ("epoch", "optimizer", "lr_scheduler", "scaler", "rng", "history")
    if resumed is not None and not args.test_only and not all(key in resumed for key in training_state):
        parser.error("--resume: the checkpoint holds a model but no training state "
                     "(use it with --test-only or --teacher)")
    teacher = None
    if args.teacher:
        teacher, teacher_checkpoint = load_checkpoint(parser, "--teacher", args.teacher)

    started = time.perf_counter()
    rank, world_size, device = init_distributed(args)
    torch.manual_seed(args.seed + rank)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.deterministic

    if rank != 0 and world_size > 1:
        dist.barrier()  # rank 0 downloads first
    try:
        splits = data.build_splits(args.dataset, args.data_dir, val_size=args.val_size)
    except data.DataUnavailableError as error:
        parser.error(str(error))
    if rank == 0 and world_size > 1:
        dist.barrier()
    if resumed is not None:
        check_compatible(parser, "--resume", resumed, args.dataset, splits)
    if teacher is not None:
        check_compatible(parser, "--teacher", teacher_checkpoint, args.dataset, splits)
        memory_format = torch.channels_last if args.channels_last else torch.preserve_format
        teacher = teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)

    model = models.build_model(args.model, splits.num_classes, splits.in_channels, splits.image_size)
    model.to(device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.nesterov)
    if args.lr_scheduler == "step":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_milestones, args.lr_gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp)
    start_epoch, history = 0, []
    if resumed is not None:
        model.load_state_dict(resumed["state_dict"])
        if not args.test_only:
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["lr_scheduler"])
            scaler.load_state_dict(resumed["scaler"])
            start_epoch, history = resumed["epoch"], list(resumed["history"])
            restore_rng_states(resumed["rng"], rank, world_size, args.seed, start_epoch)
    model_without_ddp = model
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    train_sampler = DistributedSampler(splits.train, num_replicas=world_size, rank=rank,
                                       shuffle=True, seed=args.seed)
    worker_seeds = torch.Generator()
    pin = device.type == "cuda"
    train_loader = DataLoader(splits.train, batch_size=args.batch_size, sampler=train_sampler,
                              num_workers=args.workers, pin_memory=pin, drop_last=True,
                              generator=worker_seeds)
    val_loader, test_loader = (
        DataLoader(split, batch_size=args.eval_batch_size, sampler=ShardSampler(split, rank, world_size),
                   num_workers=args.workers, pin_memory=pin, persistent_workers=args.workers > 0)
        for split in (splits.val, splits.test))

    is_main = rank == 0
    show_progress = is_main and not args.quiet and sys.stderr.isatty()
    if is_main:
        os.makedirs(args.output_dir, exist_ok=True)
    metrics = {"args": vars(args), "dataset": args.dataset, "model": args.model,
               "num_classes": splits.num_classes,
               "parameters": sum(p.numel() for p in model_without_ddp.parameters()),
               "world_size": world_size, "history": history}
    result = None
    for epoch in range(start_epoch, 0 if args.test_only else args.epochs):
        train_sampler.set_epoch(epoch)
        worker_seeds.manual_seed(args.seed * 1_000_003 + epoch * world_size + rank)
        epoch_start = time.perf_counter()
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record.update(train_one_epoch(model, teacher, train_loader, optimizer, scaler, args, device,
                                      epoch + 1, show_progress))
        scheduler.step()
        eval_start = time.perf_counter()
        result = evaluate_splits(model_without_ddp, val_loader, test_loader, args, device)
        record.update(flat_metrics(result))
        record["eval_seconds"] = time.perf_counter() - eval_start
        record["epoch_seconds"] = time.perf_counter() - epoch_start
        history.append(record)
        checkpoint = {"model": args.model, "num_classes": splits.num_classes,
                      "in_channels": splits.in_channels, "image_size": splits.image_size,
                      "dataset": args.dataset, "args": vars(args),
                      "state_dict": model_without_ddp.state_dict(), "epoch": epoch + 1,
                      "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
                      "scaler": scaler.state_dict(), "history": history,
                      "rng": gather_objects(rng_states(), world_size)}
        if is_main:
            write_json(os.path.join(args.output_dir, METRICS), metrics)
            save_checkpoint(checkpoint, os.path.join(args.output_dir, CHECKPOINT))
            if not args.quiet:
                print(epoch_line(record, args.epochs, teacher is not None), flush=True)
    if result is None:  # --test-only, or resuming a run that has finished
        result = evaluate_splits(model_without_ddp, val_loader, test_loader, args, device)

    final = flat_metrics(result)
    final["teacher_gamma"] = history[-1].get("teacher_gamma") if history else None
    final.update({name: result[name].to_dict() for name in ("val", "test", "test_scaled")})
    metrics["final"] = final
    metrics["epochs_trained"] = len(history)
    if is_main:
        write_json(os.path.join(args.output_dir, METRICS), metrics)
        draw_reliability(final, metrics["args"], os.path.join(args.output_dir, RELIABILITY),
                         f"{args.model} / {args.dataset} (test)")
        print_summary(metrics, args.output_dir, time.perf_counter() - started)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
