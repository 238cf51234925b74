"""The command line of ``ls-vision``: options, their checks, and what ``--resume`` keeps.

Every bad value stops with one line ``ls-vision: error: <option>: <allowed>, got <value>`` and
exit code 2 (:mod:`ls_plugins.cli`), before any data or model is loaded and before anything is
written.  :func:`parse` returns the checked options and, with ``--resume``, the checkpoint.

Resuming continues the run the checkpoint recorded: the options of :data:`RUN_OPTIONS` (data,
model, objective, optimiser, schedule, epochs, batch size, seed) not given on the command line
take the checkpoint's values, and one given with another value is refused (a longer ``--epochs``
would, for instance, stretch a cosine schedule that is already half-way through).
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Any, Callable, Optional

import torch

from ls_plugins import calibration, cli
from ls_plugins.analysis.checks import class_indices
from ls_plugins.vision import checkpointing, data, models
from ls_plugins.vision.report import CHECKPOINT, PROG
DEFAULT_LR_GAMMA = 0.1

# The options that define a run (argparse dest -> option): fixed when resuming.
RUN_OPTIONS = {
    "dataset": "--dataset", "val_size": "--val-size", "augment": "--augment", "model": "--model",
    "mlp_depth": "--mlp-depth", "mlp_width": "--mlp-width", "mlp_dropout": "--mlp-dropout",
    "epochs": "--epochs", "batch_size": "--batch-size", "optimizer": "--optimizer", "lr": "--lr",
    "momentum": "--momentum",
    "nesterov": "--nesterov", "weight_decay": "--wd", "lr_scheduler": "--lr-scheduler",
    "lr_milestones": "--lr-milestones", "lr_gamma": "--lr-gamma",
    "label_smoothing": "--label-smoothing", "teacher": "--teacher",
    "distill_temperature": "--distill-temperature", "distill_weight": "--distill-weight",
    "match_gamma": "--match-gamma", "mi_every": "--mi-every", "mi_classes": "--mi-classes",
    "mi_examples": "--mi-examples", "mi_augmentations": "--mi-augmentations",
    "calibration_bins": "--calibration-bins", "calibration_bootstrap": "--calibration-bootstrap",
    "calibration_seed": "--calibration-seed", "seed": "--seed",
}
# What --test-only may change: it evaluates the checkpoint, perhaps on another compatible split.
EVALUATION_OPTIONS = ("dataset", "val_size", "calibration_bins", "calibration_bootstrap",
                      "calibration_seed")
# Options whose default depends on another option: dest -> (that option's dest, {its value:
# default}); for other values of that option the option does not apply (and stays None).
DEPENDENT_DEFAULTS = {
    "lr": ("optimizer", {"sgd": 0.05, "adam": 1e-3}),
    "weight_decay": ("optimizer", {"sgd": 5e-4, "adam": 0.0}),
    "momentum": ("optimizer", {"sgd": 0.9}),
    "mlp_depth": ("model", {"mlp": 2}),
    "mlp_width": ("model", {"mlp": 512}),
    "mlp_dropout": ("model", {"mlp": 0.0}),
}
# The mutual information probe's options and their defaults (the paper: N = 600 from two classes).
MI_DEFAULTS = {"mi_classes": [0, 1], "mi_examples": 600, "mi_augmentations": 8}


class _NotGiven:
    """Marks a run option absent from the command line (argparse keeps preset attributes)."""

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN = _NotGiven()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except unset ones (None, False), whose help text explains them."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def argument_type(option: str, check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type``: ``check(text)`` returns the value or raises ``ValueError`` (e.g.
    :func:`cli.bad_value`); argparse then reports the message through the parser, so the line
    starts with ``ls-vision`` however the trainer was started (``python -m``, torchrun or
    in-process), and the option is named once."""
    def convert(text: str):
        try:
            return check(text)
        except ValueError as error:
            message = str(error)
            raise argparse.ArgumentTypeError(message.removeprefix(f"{option}: ")) from None
    convert.__name__ = option.lstrip("-").replace("-", "_")
    return convert


def integer(option: str, minimum: int):
    """An integer >= ``minimum``."""
    return argument_type(option, lambda text: cli.check_int_at_least(option, text, minimum))


def number(option: str, allowed: str, accept: Callable[[float], bool]):
    """A number for which ``accept(value)`` holds (``allowed`` says which, for the message)."""
    def check(text: str) -> float:
        value = cli.parse_float(option, text)
        if not accept(value):  # nan fails every comparison, so every range refuses it
            raise cli.bad_value(option, allowed, value)
        return value
    return argument_type(option, check)


def positive(option: str):
    return number(option, "must be a finite number > 0", lambda v: 0.0 < v < math.inf)


def non_negative(option: str):
    return number(option, "must be a finite number >= 0", lambda v: 0.0 <= v < math.inf)


def probability(option: str, *, upper_inclusive: bool = False):
    if upper_inclusive:
        return number(option, "must be in [0, 1]", lambda v: 0.0 <= v <= 1.0)
    return number(option, "must be in [0, 1)", lambda v: 0.0 <= v < 1.0)


def open_unit(option: str):
    return number(option, "must be in (0, 1)", lambda v: 0.0 < v < 1.0)


def class_pair(option: str):
    """Two class indices written ``A,B`` (their range is checked against the data set later)."""
    def check(text: str) -> list[int]:
        parts = text.split(",")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise cli.bad_value(option, "must be two class indices separated by a comma, e.g. 0,6",
                                repr(text))
        return [int(part) for part in parts]
    return argument_type(option, check)


def decay_factor(option: str):
    """A factor in (0, 1]: a step schedule decays the lr, never grows or flips it."""
    return number(option, "must be in (0, 1]", lambda v: 0.0 < v <= 1.0)


def choice(option: str, choices) -> dict:
    """``type`` and ``metavar`` for an option with fixed choices."""
    def check(text: str) -> str:
        if text not in choices:
            raise cli.bad_value(option, f"must be one of {', '.join(choices)}", repr(text))
        return text
    return {"type": argument_type(option, check), "metavar": "{" + ",".join(choices) + "}"}


def get_args_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Train an image classifier with label smoothing or distillation and report "
                    "accuracy and calibration (When Does Label Smoothing Help?, sections 2-4). "
                    f"`{PROG} plot RUN_DIR... --out FIG.png` draws a Fig. 2-style diagram; "
                    f"`{PROG} project`, `{PROG} plot-mi` and `{PROG} plot-fig5` draw Figs. 1, 6 "
                    "and 5 (each with its own --help).")
    parser.add_argument("--dataset", default="digits", **choice("--dataset", data.DATASETS),
                        help="digits and fashion-mnist work offline; synthetic is for tests")
    parser.add_argument("--data-dir",
                        help="where CIFAR is, or is downloaded to (default: data); where the "
                             "Fashion-MNIST idx files are (default: "
                             f"{data.FASHION_MNIST_DIR}, Debian's dataset-fashion-mnist)")
    parser.add_argument("--val-size", type=integer("--val-size", 1),
                        default=data.CIFAR_DEFAULT_VAL_SIZE,
                        help="training images held out as the validation split (Fashion-MNIST, "
                             "CIFAR; digits and synthetic have fixed splits)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random training augmentation (digits: 1-pixel shifts; "
                             "Fashion-MNIST: shifts of up to 2 pixels; CIFAR, synthetic: crops "
                             "of the 4-pixel-padded image and horizontal flips)")
    parser.add_argument("--model", default="smallcnn", **choice("--model", models.MODELS),
                        help="CIFAR ResNets, an AlexNet-style net, a small CNN for digits, a "
                             "multi-layer perceptron")
    parser.add_argument("--mlp-depth", type=integer("--mlp-depth", 1),
                        help="hidden layers of the mlp (default 2)")
    parser.add_argument("--mlp-width", type=integer("--mlp-width", 1),
                        help="units per hidden layer of the mlp (default 512)")
    parser.add_argument("--mlp-dropout", type=probability("--mlp-dropout"),
                        help="dropout probability after each hidden layer of the mlp, in [0, 1) "
                             "(default 0)")
    parser.add_argument("--epochs", type=integer("--epochs", 1), default=40,
                        help="training epochs")
    parser.add_argument("--batch-size", "-b", type=integer("--batch-size", 1), default=64,
                        help="images per process and step")
    parser.add_argument("--eval-batch-size", type=integer("--eval-batch-size", 1),
                        default=256, help="images per process")
    parser.add_argument("--optimizer", default="sgd", **choice("--optimizer", ("sgd", "adam")),
                        help="SGD with momentum, or Adam (betas 0.9, 0.999)")
    parser.add_argument("--lr", type=positive("--lr"),
                        help="initial learning rate (default 0.05 with sgd, 0.001 with adam)")
    parser.add_argument("--momentum", type=probability("--momentum"),
                        help="SGD momentum, in [0, 1) (default 0.9; sgd only)")
    parser.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    parser.add_argument("--wd", "--weight-decay", dest="weight_decay", type=non_negative("--wd"),
                        help="L2 weight decay, >= 0 (default 5e-4 with sgd, 0 with adam)")
    parser.add_argument("--lr-scheduler", default="cosine", **choice("--lr-scheduler", ("step", "cosine")),
                        help="step: multiply the lr by --lr-gamma at each of --lr-milestones "
                             "(constant without milestones); cosine: lr * (1 + cos(pi * epoch / "
                             "epochs)) / 2")
    parser.add_argument("--lr-milestones", type=integer("--lr-milestones", 1), nargs="+",
                        default=[], metavar="EPOCH",
                        help="increasing numbers of finished epochs (< --epochs) after which the "
                             "step schedule decays")
    parser.add_argument("--lr-gamma", type=decay_factor("--lr-gamma"), default=DEFAULT_LR_GAMMA,
                        help="step schedule factor, in (0, 1]")
    parser.add_argument("--label-smoothing", type=probability("--label-smoothing"), default=0.0,
                        metavar="ALPHA", help="alpha in [0, 1): targets y (1 - alpha) + alpha / K")
    parser.add_argument("--teacher", metavar="CKPT", help="an ls-vision checkpoint to distil from")
    parser.add_argument("--distill-temperature", type=positive("--distill-temperature"),
                        metavar="T", help="T > 0 of p(T) = softmax(z / T) (default 1 with --teacher)")
    parser.add_argument("--distill-weight", metavar="BETA",
                        type=probability("--distill-weight", upper_inclusive=True),
                        help="beta in [0, 1], weight of H(p^t(T), p(T)) (default 1 with --teacher)")
    parser.add_argument("--match-gamma", type=open_unit("--match-gamma"), metavar="GAMMA",
                        help="distil at the T where the teacher's equivalent smoothing gamma over "
                             "the training split (no augmentation) equals GAMMA in (0, 1), to "
                             "1e-3, found by bisection (paper Fig. 5); instead of "
                             "--distill-temperature")
    parser.add_argument("--mi-every", type=integer("--mi-every", 1), metavar="E",
                        help="estimate the mutual information between training examples and "
                             "their logit difference (paper Fig. 6) before training, every E "
                             "epochs and after the last; metrics.json: mutual_information")
    parser.add_argument("--mi-classes", type=class_pair("--mi-classes"), metavar="A,B",
                        help="the probe's two classes (default 0,1)")
    parser.add_argument("--mi-examples", type=integer("--mi-examples", 2), metavar="N",
                        help="the probe's training examples, half from each class (default 600)")
    parser.add_argument("--mi-augmentations", type=integer("--mi-augmentations", 2), metavar="L",
                        help="draws of the training augmentation per probed example (default 8)")
    parser.add_argument("--calibration-bins", type=integer("--calibration-bins", 1),
                        default=calibration.DEFAULT_BINS,
                        help="equal-width confidence bins of ECE and the reliability diagram")
    parser.add_argument("--calibration-bootstrap", type=integer("--calibration-bootstrap", 0),
                        default=200, metavar="B",
                        help="Poisson bootstrap replicates over images for the 95%% intervals of "
                             "the final evaluation (metrics.json final; 0: none); the per-epoch "
                             "evaluations have no intervals")
    parser.add_argument("--calibration-seed", type=integer("--calibration-seed", 0), default=0, metavar="S",
                        help="seed of the bootstrap weights: runs evaluated on the same split "
                             "with the same seed get paired replicates")
    parser.add_argument("--seed", type=integer("--seed", 0), default=0,
                        help="initialisation, shuffling, augmentation")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms(True), no cuDNN autotuning")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        **choice("--device", ("cpu", "cuda")), help="under torchrun: one GPU per process")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="float16 autocast with gradient scaling (default: on with CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="channels_last memory format (default: on with CUDA)")
    parser.add_argument("--workers", "-j", type=integer("--workers", 0), default=None,
                        help="data loading processes per training process (default: 4 for CIFAR, "
                             "0 for the in-memory sets)")
    parser.add_argument("--output-dir", help="default: runs/<dataset>-<model>-ls<alpha>[-kd]")
    parser.add_argument("--resume", metavar="CKPT",
                        help="continue the run of this checkpoint: options that define the run ("
                             + ", ".join(RUN_OPTIONS.values()) + ") default to the checkpoint's "
                             "values, and giving one with another value is an error")
    parser.add_argument("--test-only", action="store_true",
                        help="only evaluate the --resume checkpoint (--dataset, --val-size and "
                             "the --calibration-* options may then differ from the checkpoint's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    return parser


def parse(parser: cli.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, Optional[dict]]:
    """``(args, resumed checkpoint or None)``: the options checked, completed from the
    ``--resume`` checkpoint, and the output directory checked.  Raises :class:`cli.UsageError`."""
    args = parser.parse_args(argv, argparse.Namespace(**{dest: NOT_GIVEN for dest in RUN_OPTIONS}))
    if args.match_gamma is not NOT_GIVEN and args.distill_temperature is not NOT_GIVEN:
        raise cli.bad_value("--match-gamma", "cannot be combined with --distill-temperature (it "
                                             "finds the temperature)",
                            f"--match-gamma {args.match_gamma} --distill-temperature "
                            f"{args.distill_temperature}")
    if args.output_dir is not None:
        cli.check_output_dir("--output-dir", args.output_dir)
    if args.test_only and args.resume is None:
        raise cli.UsageError("--test-only: needs --resume CKPT (the checkpoint to evaluate)")
    resumed = None
    if args.resume is not None:
        resumed = checkpointing.load("--resume", args.resume)[1]
        if not args.test_only:
            checkpointing.check_training_state(resumed)
    complete_run_options(args, parser, resumed)
    check_args(args)
    check_output(args)
    if args.teacher is not None:
        cli.check_input_file("--teacher", args.teacher)
    return args, resumed


def recorded_options(checkpoint: dict) -> dict:
    """The run options a checkpoint recorded (its model, architecture and data set also outside
    ``args``)."""
    recorded = dict(checkpoint.get("args") or {})
    recorded.setdefault("model", checkpoint["model"])
    for name, value in (checkpoint.get("architecture") or {}).items():
        recorded.setdefault(f"mlp_{name}", value)
    if "dataset" in checkpoint:
        recorded.setdefault("dataset", checkpoint["dataset"])
    return {dest: value for dest, value in recorded.items() if dest in RUN_OPTIONS}


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "none"
    return "none" if value is None else str(value)


def _same(dest: str, given: Any, recorded: Any) -> bool:
    if dest == "teacher" and given is not None and recorded is not None:
        return given == recorded or (os.path.exists(given) and os.path.exists(recorded)
                                     and os.path.samefile(given, recorded))
    if isinstance(recorded, (list, tuple)):
        return list(given) == list(recorded)
    return given == recorded


def complete_run_options(args: argparse.Namespace, parser: argparse.ArgumentParser,
                         resumed: Optional[dict]) -> None:
    """Give every run option not on the command line the checkpoint's value (``--resume``) or
    its default (:data:`DEPENDENT_DEFAULTS`); refuse a given one that differs from the
    checkpoint's, and one that does not apply (``--momentum`` with Adam, ``--mlp-width`` with a
    CNN)."""
    recorded = recorded_options(resumed) if resumed is not None else {}
    for dest, option in RUN_OPTIONS.items():
        given = getattr(args, dest)
        if dest not in recorded:
            if given is NOT_GIVEN:
                setattr(args, dest, parser.get_default(dest))
        elif given is NOT_GIVEN:
            setattr(args, dest, recorded[dest])
        elif not _same(dest, given, recorded[dest]) and not (args.test_only and dest in EVALUATION_OPTIONS):
            raise cli.bad_value(option, f"must equal the checkpoint's {_show(recorded[dest])} when "
                                        f"resuming", _show(given))
    for dest, (selector, defaults) in DEPENDENT_DEFAULTS.items():
        value, key = getattr(args, dest), getattr(args, selector)
        if value is None:
            setattr(args, dest, defaults.get(key))
        elif key not in defaults:
            raise cli.bad_value(RUN_OPTIONS[dest], f"only with {RUN_OPTIONS[selector]} "
                                                   f"{' or '.join(defaults)}", value)


def check_args(args: argparse.Namespace) -> None:
    """Checks between options, then the defaults that depend on others."""
    fixed_split = args.dataset not in data.TRAIN_SIZES
    if args.val_size != data.CIFAR_DEFAULT_VAL_SIZE and fixed_split:
        raise cli.bad_value("--val-size", f"only for {', '.join(data.TRAIN_SIZES)} (--dataset "
                                          f"{args.dataset} has a fixed split)", args.val_size)
    if not fixed_split and args.val_size >= data.TRAIN_SIZES[args.dataset]:
        raise cli.bad_value("--val-size", f"must be < {data.TRAIN_SIZES[args.dataset]}, the "
                                          f"training images of {args.dataset}", args.val_size)
    if args.nesterov and not args.momentum:
        raise cli.bad_value("--nesterov", "needs --optimizer sgd and --momentum > 0",
                            f"--optimizer {args.optimizer} --momentum {_show(args.momentum)}")
    check_schedule(args)
    check_probe(args)
    if args.teacher is None:
        for option, value in (("--distill-temperature", args.distill_temperature),
                              ("--distill-weight", args.distill_weight),
                              ("--match-gamma", args.match_gamma)):
            if value is not None:
                raise cli.bad_value(option, "only with --teacher", value)
    else:
        if args.match_gamma is None and args.distill_temperature is None:
            args.distill_temperature = 1.0  # with --match-gamma it is found after loading the data
        args.distill_weight = 1.0 if args.distill_weight is None else args.distill_weight
    if args.device == "cuda" and not torch.cuda.is_available():
        raise cli.bad_value("--device", "cpu (no CUDA device is available)", "cuda")
    if args.amp and args.device != "cuda":
        raise cli.bad_value("--amp", "needs --device cuda", f"--device {args.device}")
    args.amp = args.device == "cuda" if args.amp is None else args.amp
    args.channels_last = args.device == "cuda" if args.channels_last is None else args.channels_last
    if args.workers is None:
        args.workers = 4 if args.dataset in data.CIFAR_STATS else 0


def check_probe(args: argparse.Namespace) -> None:
    """The probe's options need --mi-every and the training augmentation; its classes exist."""
    if args.mi_every is None:
        for dest in MI_DEFAULTS:
            if getattr(args, dest) is not None:
                raise cli.bad_value(RUN_OPTIONS[dest], "only with --mi-every", _show(getattr(args, dest)))
        return
    for dest, default in MI_DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
    if not args.augment:
        raise cli.bad_value("--mi-every", "needs the random training augmentation (the estimate's "
                                          "source of randomness)", "--no-augment")
    class_indices("--mi-classes", args.mi_classes, data.NUM_CLASSES[args.dataset], exactly=2)


def check_schedule(args: argparse.Namespace) -> None:
    """Milestones increase, lie inside the run, and come with the step schedule (as its factor)."""
    milestones = args.lr_milestones
    if args.lr_scheduler != "step":
        if milestones:
            raise cli.bad_value("--lr-milestones", "only with --lr-scheduler step", _show(milestones))
        if args.lr_gamma != DEFAULT_LR_GAMMA:
            raise cli.bad_value("--lr-gamma", "only with --lr-scheduler step", args.lr_gamma)
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise cli.bad_value("--lr-milestones", "must increase", _show(milestones))
    if milestones and milestones[-1] >= args.epochs:
        raise cli.bad_value("--lr-milestones", f"must be < --epochs {args.epochs}", _show(milestones))


def default_output_dir(args: argparse.Namespace) -> str:
    return os.path.join("runs", f"{args.dataset}-{args.model}-ls{args.label_smoothing:g}"
                                + ("-kd" if args.teacher else ""))


def check_output(args: argparse.Namespace) -> None:
    """The output directory can be written, is not the evaluated run's own, and holds no other
    run's checkpoint (which training would overwrite)."""
    if args.output_dir is None:
        args.output_dir = default_output_dir(args)
        cli.check_output_dir("--output-dir", args.output_dir)
    output_dir = os.path.abspath(args.output_dir)
    if args.test_only and output_dir == os.path.dirname(os.path.abspath(args.resume)):
        raise cli.bad_value("--output-dir", "must differ from the --resume checkpoint's directory "
                                            "with --test-only (its metrics.json would be "
                                            "overwritten)", args.output_dir)
    existing = os.path.join(args.output_dir, CHECKPOINT)
    if args.resume is None and os.path.exists(existing):
        raise cli.bad_value("--output-dir", f"must not hold a checkpoint unless --resume "
                                            f"{existing} continues it", args.output_dir)
