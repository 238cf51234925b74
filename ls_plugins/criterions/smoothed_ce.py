"""``--criterion smoothed_ce``: cross entropy against label-smoothed targets (paper section 1.1).

A thin fairseq wrapper around :func:`ls_plugins.losses.smoothed_nll_from_lprobs`.  The smoothing
follows the paper, ``y (1 - alpha) + alpha * prior`` with ``prior`` uniform over all ``K`` symbols
of the target dictionary (or the dictionary's unigram frequencies).  fairseq's built-in
``label_smoothed_cross_entropy --label-smoothing eps`` gives the same loss for
``eps = alpha (K - 1) / K``.

Bad options stop with one line, from ``fairseq-train`` (while parsing: :data:`COMMON_CHECKS`)
and from ``fairseq-hydra-train`` (when fairseq builds the criterion), and a nan or inf loss stops
training with one line naming the term (see :mod:`ls_plugins.criterions.guards`).
"""
from dataclasses import dataclass, field

import torch
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from omegaconf import II

from .. import cli
from ..calibration import DEFAULT_BINS
from ..linear_losses import linear_loss_terms
from ..losses import check_probability, smoothed_nll_from_lprobs, unigram_prior
from ..tasks.batching import keep_every_example
from . import fused_output
from .common import (accuracy_logging_output, calibration_logging_output, reduce_loss_metrics,
                     sentence_ids)
from .guards import check_finite_terms, non_finite_summary, refuse, refusing_bad_input

SMOOTHING_PRIORS = ("uniform", "unigram")
BOOTSTRAP_HELP = (
    "Poisson-bootstrap replicates (>= 0) over validation sentences for the 95%% intervals of "
    "ece, nll_loss and (with --report-accuracy) accuracy logged on validation (ece_low/ece_high, "
    "...); 0 = off (the default: training validates every epoch); fairseq-validate users pass "
    "e.g. 200")


@dataclass
class SmoothedCrossEntropyConfig(FairseqDataclass):
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "alpha in [0, 1): train against y(1-alpha) + alpha*prior (the paper's "
                          "definition; NOT fairseq's eps/(V-1) form)"})
    # a plain str, checked by the criterion: an enum would fail inside omegaconf's merge, before
    # the criterion can refuse it in one line (fairseq-hydra-train)
    smoothing_prior: str = field(
        default="uniform",
        metadata={"help": "where the smoothing mass goes: uniform (1/K over the whole target "
                          "dictionary) or unigram (target-dictionary frequencies, Pereyra et al. 2017)"})
    report_accuracy: bool = field(default=False, metadata={"help": "report next-token accuracy"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "ignore the first N target tokens"})
    calibration_bins: int = field(
        default=DEFAULT_BINS,
        metadata={"help": "equal-width bins (>= 1) for the token-level ECE logged on validation"})
    calibration_bootstrap: int = field(default=0, metadata={"help": BOOTSTRAP_HELP})
    calibration_seed: int = field(
        default=0, metadata={"help": "seed (>= 0) of the --calibration-bootstrap weights"})
    memory_efficient_output: bool = field(default=False, metadata={"help": fused_output.HELP})
    sentence_avg: bool = II("optimization.sentence_avg")


def check_choice(option: str, value, choices) -> str:
    """``value`` (a string or an enum member) as a string if it is one of ``choices``."""
    value = str(getattr(value, "value", value))
    if value not in choices:
        raise cli.bad_value(option, f"must be one of {', '.join(choices)}", repr(value))
    return value


def validate_common_options(label_smoothing: float, calibration_bins: int,
                            ignore_prefix_size: int, calibration_bootstrap: int = 0,
                            calibration_seed: int = 0) -> None:
    """The constructor's checks of the options :data:`COMMON_CHECKS` checks while parsing."""
    check_probability("--label-smoothing", label_smoothing, upper_inclusive=False)
    cli.check_int_at_least("--calibration-bins", calibration_bins, 1)
    cli.check_int_at_least("--ignore-prefix-size", ignore_prefix_size, 0)
    cli.check_int_at_least("--calibration-bootstrap", calibration_bootstrap, 0)
    cli.check_int_at_least("--calibration-seed", calibration_seed, 0)


COMMON_CHECKS = {
    "--label-smoothing": cli.probability("--label-smoothing"),
    "--calibration-bins": cli.int_at_least("--calibration-bins", 1),
    "--ignore-prefix-size": cli.int_at_least("--ignore-prefix-size", 0),
    "--calibration-bootstrap": cli.int_at_least("--calibration-bootstrap", 0),
    "--calibration-seed": cli.int_at_least("--calibration-seed", 0),
}


class LabelSmoothingCriterionBase(FairseqCriterion):
    """Shared plumbing: lprobs/target with prefix removal, logging of accuracy and calibration.

    Constructors raise :class:`ls_plugins.cli.UsageError` on bad options; built by fairseq, the
    error ends in one line (:func:`~ls_plugins.criterions.guards.refusing_bad_input`).
    """

    @classmethod
    def build_criterion(cls, cfg, task):
        with refusing_bad_input():
            return super().build_criterion(cfg, task)

    def __init__(self, task, sentence_avg, label_smoothing=0.0, report_accuracy=False,
                 ignore_prefix_size=0, calibration_bins=DEFAULT_BINS,
                 memory_efficient_output=False, calibration_bootstrap=0, calibration_seed=0):
        super().__init__(task)
        validate_common_options(label_smoothing, calibration_bins, ignore_prefix_size,
                                calibration_bootstrap, calibration_seed)
        keep_every_example(task)  # validation statistics over every sentence (tasks/batching.py)
        self.sentence_avg = sentence_avg
        self.alpha = label_smoothing
        self.report_accuracy = report_accuracy
        self.ignore_prefix_size = ignore_prefix_size
        self.calibration_bins = calibration_bins
        self.calibration_bootstrap = calibration_bootstrap
        self.calibration_seed = calibration_seed
        self.memory_efficient_output = bool(memory_efficient_output)

    def fused_output_layer(self, model):
        """The output projection to fuse the loss with (``--memory-efficient-output``, in
        training), else ``None``; a model it cannot fuse stops with one line."""
        if not self.memory_efficient_output:
            return None
        try:
            projection = fused_output.output_projection(model)
        except cli.UsageError as err:
            refuse(str(err))
        return projection if model.training else None

    def lprobs_and_target(self, model, net_output, sample):
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        target = model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            lprobs = lprobs[:, self.ignore_prefix_size:, :].contiguous()
            target = target[:, self.ignore_prefix_size:].contiguous()
        return lprobs.view(-1, lprobs.size(-1)), target.view(-1)

    def base_logging_output(self, model, sample, lprobs, target, loss, nll_loss,
                            predicted=None) -> tuple[int, dict]:
        """``predicted``: the arg-max classes, when there are no ``lprobs`` (fused output)."""
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        output = {"loss": loss.data, "nll_loss": nll_loss.data, "ntokens": sample["ntokens"],
                  "nsentences": sample["target"].size(0), "sample_size": sample_size}
        with torch.no_grad():
            if self.report_accuracy:
                output.update(accuracy_logging_output(
                    lprobs.argmax(-1) if predicted is None else predicted, target,
                    self.padding_idx))
            if not model.training:
                output.update(calibration_logging_output(
                    lprobs, target, self.padding_idx, self.calibration_bins,
                    bootstrap=self.calibration_bootstrap, seed=self.calibration_seed,
                    groups=sentence_ids(sample, target)))
        return sample_size, output

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@register_criterion("smoothed_ce", dataclass=SmoothedCrossEntropyConfig)
class SmoothedCrossEntropyCriterion(LabelSmoothingCriterionBase):
    def __init__(self, task, sentence_avg, label_smoothing=0.0, smoothing_prior="uniform",
                 report_accuracy=False, ignore_prefix_size=0, calibration_bins=DEFAULT_BINS,
                 memory_efficient_output=False, calibration_bootstrap=0, calibration_seed=0):
        super().__init__(task, sentence_avg, label_smoothing, report_accuracy,
                         ignore_prefix_size, calibration_bins, memory_efficient_output,
                         calibration_bootstrap, calibration_seed)
        smoothing_prior = check_choice("--smoothing-prior", smoothing_prior, SMOOTHING_PRIORS)
        prior = None
        if smoothing_prior == "unigram":
            prior = unigram_prior(task.target_dictionary.count)
        self.register_buffer("prior", prior, persistent=False)

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        cli.install_checks(parser, {
            **COMMON_CHECKS,
            "--smoothing-prior": cli.one_of("--smoothing-prior", SMOOTHING_PRIORS)})

    def forward(self, model, sample, reduce=True):
        projection = self.fused_output_layer(model)
        if projection is not None:
            return self.fused_forward(model, sample, projection, reduce)
        net_output = model(**sample["net_input"])
        lprobs, target = self.lprobs_and_target(model, net_output, sample)
        loss, nll_loss = smoothed_nll_from_lprobs(
            lprobs, target, self.alpha, prior=self.prior, ignore_index=self.padding_idx,
            reduction="sum" if reduce else "none")
        check_finite_terms("smoothed_ce", {"nll": nll_loss, "smoothing": loss},
                           logits=net_output[0], training=model.training,
                           details=lambda: non_finite_summary("the model's log-probabilities",
                                                              lprobs))
        sample_size, logging_output = self.base_logging_output(model, sample, lprobs, target,
                                                               loss, nll_loss)
        return loss, sample_size, logging_output

    def fused_forward(self, model, sample, projection, reduce):
        """The same loss and logs from the decoder's hidden states (no N x K logits)."""
        features, target = fused_output.features_and_target(model, sample,
                                                            self.ignore_prefix_size)
        loss, nll_loss, _, predicted = linear_loss_terms(
            features, projection.weight, target, bias=projection.bias, alpha=self.alpha,
            prior=self.prior, ignore_index=self.padding_idx,
            reduction="sum" if reduce else "none", predict=self.report_accuracy)
        check_finite_terms("smoothed_ce", {"nll": nll_loss, "smoothing": loss},
                           logits=features, training=model.training,
                           details=lambda: non_finite_summary("the decoder's hidden states",
                                                              features))
        sample_size, logging_output = self.base_logging_output(
            model, sample, None, target, loss, nll_loss, predicted=predicted)
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        reduce_loss_metrics(logging_outputs)
