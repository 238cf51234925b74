"""``--criterion distillation_ce``: knowledge distillation from a teacher (paper section 4).

The loss per target token is :func:`ls_plugins.losses.distillation_terms`::

    (1 - beta) * H(y_LS(alpha), p) + beta * s * H(p^t(T), p(T))

with ``p(T) = softmax(z / T)`` for student and teacher, ``y_LS = y (1 - alpha) + alpha / K``
(``--label-smoothing``, the paper's form over the whole target dictionary), ``beta =
--distill-weight``, ``T = --distill-temperature`` and ``s = 1`` (the paper's formula) or ``s = T**2``
with ``--distill-scale-t2`` (Hinton et al. 2015, which keeps the soft term's gradients the same
size across temperatures).  The paper's Fig. 5 experiments use ``beta = 1``.

The teacher is either live (``--teacher-path a.pt[:b.pt...]``: loaded once with safe loading,
kept in eval mode on the student's device and dtype, run under ``torch.inference_mode``;
several checkpoints have their tempered probabilities averaged), or a top-k cache written by
``ls-cache-teacher`` (``--teacher-cache DIR``, see :mod:`ls_plugins.teacher_cache`).  With both,
the cache serves the splits it holds and the live teacher the others.  ``--teacher-topk k``
truncates either teacher to its ``k`` most probable classes; ``--teacher-tail`` says what happens
to the rest (``uniform``: its mass spread evenly over the other classes; ``drop``: renormalised
away), see :func:`ls_plugins.losses.topk_teacher_from_log_probs`.

Logged (all summable over batches and workers): ``loss`` (per sample_size, base 2), ``nll_loss``
(``-log2 p_y`` per token at T = 1), ``soft_loss`` (``H(p^t(T), p(T))`` per token in bits,
unscaled: without ``beta`` and ``T**2``), ``teacher_gamma`` (the teacher's equivalent label
smoothing ``gamma`` on the data seen, derived from summed incorrect mass and token counts) and,
on validation, ``ece``, ``mce``, ``confidence`` and ``brier`` (as ``smoothed_ce``, with the same
bootstrap intervals under ``--calibration-bootstrap``).
"""
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from .. import cli
from ..calibration import DEFAULT_BINS
from ..linear_losses import linear_loss_terms
from ..losses import (TAIL_MODES, check_probability, check_temperature, distillation_terms,
                      incorrect_mass, topk_teacher, topk_teacher_from_log_probs)
from ..fairseq_models import split_paths
from ..teacher_cache import TeacherCache
from ..teachers import load_teachers
from ..topk_teacher import TopKTeacher
from . import fused_output
from .common import reduce_loss_metrics
from .guards import check_finite_terms, non_finite_summary, refuse
from .smoothed_ce import BOOTSTRAP_HELP, COMMON_CHECKS, LabelSmoothingCriterionBase, check_choice


@dataclass
class DistillationCrossEntropyConfig(FairseqDataclass):
    teacher_path: Optional[str] = field(
        default=None,
        metadata={"help": "teacher checkpoint, or several separated by ':' whose tempered "
                          "probabilities are averaged"})
    teacher_data: Optional[str] = field(
        default=None,
        metadata={"help": "directory with the teacher's dictionaries (default: the data directory "
                          "recorded in its checkpoint); they must equal the student's"})
    teacher_cache: Optional[str] = field(
        default=None,
        metadata={"help": "directory written by ls-cache-teacher (one subdirectory per split): "
                          "train from the teacher's cached top-k instead of a live teacher"})
    teacher_topk: Optional[int] = field(
        default=None,
        metadata={"help": "keep the teacher's k most probable classes per token (1 <= k <= K; "
                          "with a cache, <= its k). Default: the full distribution / all cached"})
    teacher_tail: str = field(  # a str, not an enum: see SmoothedCrossEntropyConfig
        default="uniform",
        metadata={"help": "mass outside the top-k: uniform (kept, spread evenly over the other "
                          "classes) or drop (renormalise over the top-k)"})
    distill_temperature: float = field(
        default=1.0, metadata={"help": "T > 0: both softmaxes of the soft term are taken at z/T"})
    distill_weight: float = field(
        default=0.5,
        metadata={"help": "beta in [0, 1]: (1-beta)*H(y_LS, p) + beta*H(p_t(T), p(T)); the "
                          "paper's Fig. 5 uses 1"})
    distill_scale_t2: bool = field(
        default=False,
        metadata={"help": "multiply the soft term by T^2 (Hinton et al. 2015); default: the "
                          "paper's unscaled form"})
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "alpha in [0, 1) for the hard-target term: y(1-alpha) + alpha/K"})
    report_accuracy: bool = field(default=False, metadata={"help": "report next-token accuracy"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N target tokens"})
    calibration_bins: int = field(
        default=DEFAULT_BINS,
        metadata={"help": "equal-width bins (>= 1) for the token-level ECE logged on validation"})
    calibration_bootstrap: int = field(default=0, metadata={"help": BOOTSTRAP_HELP})
    calibration_seed: int = field(
        default=0, metadata={"help": "seed (>= 0) of the --calibration-bootstrap weights"})
    memory_efficient_output: bool = field(
        default=False, metadata={"help": fused_output.HELP + " (top-k teachers; a dense teacher "
                                                             "falls back to the unfused loss)"})
    sentence_avg: bool = II("optimization.sentence_avg")
    train_subset: str = II("dataset.train_subset")
    valid_subset: str = II("dataset.valid_subset")
    disable_validation: bool = II("dataset.disable_validation")


def existing_checkpoints(option: str):
    """argparse type for ``a.pt[:b.pt...]``: every file must exist (read when the teacher loads)."""
    def check(spec: str) -> str:
        for path in split_paths(spec):
            if not os.path.exists(path):
                cli.check_input_file(option, path)  # raises: no such file
        return spec
    return cli.checked(option, check)


DISTILLATION_CHECKS = {  # refused while parsing, before fairseq creates --save-dir
    **COMMON_CHECKS,
    "--teacher-path": existing_checkpoints("--teacher-path"),
    "--teacher-cache": cli.checked("--teacher-cache",
                                   lambda path: cli.check_input_dir("--teacher-cache", path)),
    "--teacher-data": cli.checked("--teacher-data",
                                  lambda path: cli.check_input_dir("--teacher-data", path)),
    "--distill-weight": cli.probability("--distill-weight", upper_inclusive=True),
    "--distill-temperature": cli.positive_float("--distill-temperature"),
    "--teacher-topk": cli.int_at_least("--teacher-topk", 1),
    "--teacher-tail": cli.one_of("--teacher-tail", TAIL_MODES),
}


@register_criterion("distillation_ce", dataclass=DistillationCrossEntropyConfig)
class DistillationCrossEntropyCriterion(LabelSmoothingCriterionBase):
    def __init__(self, task, sentence_avg, teacher_path=None, teacher_data=None,
                 teacher_cache=None, teacher_topk=None, teacher_tail="uniform",
                 distill_temperature=1.0, distill_weight=0.5, distill_scale_t2=False,
                 label_smoothing=0.0, report_accuracy=False, ignore_prefix_size=0,
                 calibration_bins=DEFAULT_BINS, train_subset="train", valid_subset="valid",
                 disable_validation=False, memory_efficient_output=False,
                 calibration_bootstrap=0, calibration_seed=0):
        super().__init__(task, sentence_avg, label_smoothing, report_accuracy,
                         ignore_prefix_size, calibration_bins, memory_efficient_output,
                         calibration_bootstrap, calibration_seed)
        self.beta = check_probability("--distill-weight", distill_weight, upper_inclusive=True)
        self.temperature = check_temperature("--distill-temperature", distill_temperature)
        self.scale_by_t2 = bool(distill_scale_t2)
        self.tail = check_choice("--teacher-tail", teacher_tail, TAIL_MODES)
        num_classes = len(task.target_dictionary)
        self.topk = None
        if teacher_topk is not None:
            self.topk = cli.check_int_at_least("--teacher-topk", teacher_topk, 1)
            if self.topk > num_classes:
                raise cli.bad_value("--teacher-topk", f"must be an integer in [1, K={num_classes}] "
                                                      f"(K: the target dictionary)", teacher_topk)
        self.train_subset = str(train_subset)
        self.valid_subsets = [] if disable_validation else [s for s in str(valid_subset).split(",") if s]
        if not teacher_path and not teacher_cache:
            raise cli.bad_value("--teacher-path", "must give distillation_ce a teacher "
                                "(--teacher-path CKPT[:CKPT...], or --teacher-cache DIR)", "neither")
        try:
            self.caches = self._open_caches(teacher_cache, need_all=not teacher_path)
            # a plain attribute, not a submodule: see TeacherEnsemble
            self.teachers = (load_teachers(teacher_path, task, teacher_data)
                             if teacher_path else None)
        except cli.UsageError as err:  # TeacherError, or a teacher that cannot be loaded
            cli.exit_with_error(str(err))

    def _open_caches(self, root, need_all: bool) -> dict:
        if not root:
            return {}
        cli.check_input_dir("--teacher-cache", root)
        caches = {}
        for split in [self.train_subset, *self.valid_subsets]:
            if split in caches:
                continue
            if not need_all and not os.path.isdir(os.path.join(root, split)):
                continue  # the live teacher serves this split
            cache = TeacherCache(root, split, self.task.target_dictionary)
            if self.topk is not None and self.topk > cache.k:
                raise cli.bad_value("--teacher-topk", f"must be <= k={cache.k}, the k the cache "
                                                      f"{cache.dir} was built with", self.topk)
            if cache.n_teachers > 1 and self.temperature != cache.temperature:
                raise cli.bad_value("--distill-temperature", f"must be {cache.temperature}, the "
                                    f"temperature the ensemble cache {cache.dir} was built at (an "
                                    f"ensemble's average cannot be re-tempered)", self.temperature)
            caches[split] = cache
        return caches

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        cli.install_checks(parser, DISTILLATION_CHECKS)

    # -- the teacher's distribution for a batch ------------------------------------------------

    def _cache_for(self, training: bool, sample) -> Optional[TeacherCache]:
        if training:
            split = self.train_subset
            cache = self.caches.get(split)
        else:
            candidates = [self.caches[s] for s in self.valid_subsets if s in self.caches]
            cache = None
            if len(candidates) == 1 and len(self.valid_subsets) == 1:
                cache = candidates[0]
            else:
                for candidate in candidates:
                    if candidate.matches(sample["id"], sample["target"], self.padding_idx):
                        cache = candidate
                        break
            if cache is None and self.teachers is None:
                raise cli.bad_value("--teacher-cache", "must hold every validation split when no "
                                    "--teacher-path is given", "a validation batch that no "
                                    "cached split matches")
        if cache is not None:
            cache.check_dataset(self.task.datasets.get(cache.split))
        return cache

    def _strip_prefix(self, x):
        return x[:, self.ignore_prefix_size:] if self.ignore_prefix_size > 0 else x

    def teacher_distribution(self, model, sample, num_classes: int):
        """Dense tempered teacher probabilities ``(N, K)``, or a ``TopKTeacher``."""
        cache = self._cache_for(model.training, sample)
        if cache is not None:
            values, indices, tail = cache.lookup(sample["id"], sample["target"], self.padding_idx)
            values, indices, tail = (self._strip_prefix(x) for x in (values, indices, tail))
            return topk_teacher_from_log_probs(
                values.reshape(-1, cache.k), indices.reshape(-1, cache.k), num_classes,
                temperature=self.temperature, source_temperature=cache.temperature,
                tail_log_mass=tail.reshape(-1), tail=self.tail, keep=self.topk)
        self.teachers.place_like(next(model.parameters()))
        log_probs = self._strip_prefix(self.teachers.log_probs(sample["net_input"], self.temperature))
        log_probs = log_probs.reshape(-1, log_probs.size(-1))
        if log_probs.size(-1) != num_classes:
            raise cli.bad_value("--teacher-path", f"must predict the student's K={num_classes} "
                                "classes", f"a teacher of {log_probs.size(-1)}")
        if self.topk is None or self.topk == num_classes:
            return log_probs.exp()
        return topk_teacher(log_probs, self.topk, tail=self.tail)

    def forward(self, model, sample, reduce=True):
        projection = self.fused_output_layer(model)  # --memory-efficient-output, in training
        if projection is None:
            net_output = model(**sample["net_input"])
            lprobs, target = self.lprobs_and_target(model, net_output, sample)
            student, student_name, num_classes = net_output[0], "log-probabilities", lprobs.size(-1)
        else:
            student, target = fused_output.features_and_target(model, sample,
                                                               self.ignore_prefix_size)
            lprobs, student_name, num_classes = None, "hidden states", projection.weight.size(0)
        try:
            teacher = self.teacher_distribution(model, sample, num_classes)
        except cli.UsageError as err:  # a cache that does not match the data, for one
            refuse(str(err))
        predicted, options = None, dict(
            beta=self.beta, temperature=self.temperature, alpha=self.alpha,
            ignore_index=self.padding_idx, reduction="sum" if reduce else "none",
            scale_by_t2=self.scale_by_t2)
        if projection is not None and isinstance(teacher, TopKTeacher):
            loss, nll_loss, soft, predicted = linear_loss_terms(
                student, projection.weight, target, bias=projection.bias, teacher=teacher,
                predict=self.report_accuracy, **options)
        else:
            if lprobs is None:  # a dense teacher holds N x K numbers anyway: the unfused loss
                lprobs = model.get_normalized_probs((projection(student), None), log_probs=True)
            # log-probabilities are valid logits: the soft term re-tempers them when T != 1
            loss, nll_loss, soft = distillation_terms(None, None, target, teacher_probs=teacher,
                                                      student_lprobs=lprobs, **options)
        check_finite_terms(
            "distillation_ce", {"nll": nll_loss, "soft (teacher)": soft, "smoothing": loss},
            logits=student, training=model.training,
            details=lambda: "; ".join(non_finite_summary(what, values) for what, values in (
                (f"the student's {student_name}", student if lprobs is None else lprobs),
                ("the teacher's probabilities",
                 teacher.probs if isinstance(teacher, TopKTeacher) else teacher))))
        sample_size, logging_output = self.base_logging_output(model, sample, lprobs, target,
                                                               loss, nll_loss, predicted)
        incorrect, positions = incorrect_mass(teacher, target, self.padding_idx)
        logging_output.update({"soft_loss": soft.data, "teacher_incorrect": incorrect,
                               "teacher_tokens": positions})
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        reduce_loss_metrics(logging_outputs, extra_token_sums=("soft_loss",))
        tokens = utils.item(sum(log.get("teacher_tokens", 0) for log in logging_outputs))
        if tokens > 0:
            metrics.log_scalar_sum("_teacher_incorrect", utils.item(
                sum(log.get("teacher_incorrect", 0) for log in logging_outputs)))
            metrics.log_scalar_sum("_teacher_tokens", tokens)
            metrics.log_derived(
                "teacher_gamma",
                lambda meters: round(meters["_teacher_incorrect"].sum / meters["_teacher_tokens"].sum, 4)
                if meters["_teacher_tokens"].sum > 0 else float("nan"))
