"""The decoder's final hidden states of fairseq translation models, teacher-forced (fairseq side).

What ``ls-nmt-analysis`` (:mod:`ls_plugins.translation_analysis`) measures, on models loaded by
:mod:`ls_plugins.fairseq_models` (eval mode: no dropout):

* the hidden states ``h`` that the output layer turns into logits, ``logits = h W^T + b``
  (``model(**net_input, features_only=True)``: fairseq's ``extract_features``, after the
  decoder's last layer norm and output-dimension projection), with the reference as the
  decoder's input;
* :func:`reference_positions`, :func:`sample_positions` and :func:`states_at`: the states at the
  positions whose reference token is one of a few chosen tokens (paper Fig. 1, with tokens as
  the classes);
* :class:`SplitGamma`: a teacher's equivalent smoothing ``gamma(T)`` over a whole split, streamed
  batch by batch, for the temperature bisection of distillation at equal ``gamma`` (Fig. 5).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cli
from .fairseq_models import output_projection
from .losses import ensemble_tempered_log_probs, incorrect_mass

SPACE = "\u2581"  # sentencepiece's word-start mark


def task_on_data(checkpoint, data: str):
    """The checkpoint's own task (its configuration) on the data directory ``data``."""
    from fairseq import tasks

    task_cfg = copy.deepcopy(checkpoint.cfg.task)
    task_cfg.data = data
    try:
        return tasks.setup_task(task_cfg)
    except Exception as err:  # fairseq raises plain Exceptions for missing dictionaries
        raise cli.bad_value("data", "must hold the dictionaries of the models' languages",
                            f"{data} ({cli.first_line(err)})") from None


def load_split(task, split: str, option: str):
    """``task``'s dataset ``split``, loaded (a missing split is refused naming ``option``)."""
    try:
        task.load_dataset(split)
    except Exception as err:  # FileNotFoundError, or fairseq's plain Exception
        raise cli.bad_value(option, f"must name splits of {task.cfg.data}",
                            f"{split} ({cli.first_line(err)})") from None
    return task.dataset(split)


def token_indices(dictionary, symbols: Sequence[str], option: str = "--tokens") -> list[int]:
    """The dictionary indices of ``symbols``: each as written, else with sentencepiece's ``▁``
    prefixed (``the`` finds ``▁the``).  A symbol found neither way is refused naming ``option``."""
    indices = []
    for symbol in symbols:
        for candidate in (symbol, SPACE + symbol):
            if candidate in dictionary.indices:
                indices.append(dictionary.indices[candidate])
                break
        else:
            raise cli.bad_value(option, f"must be symbols of the target dictionary ({len(dictionary)}"
                                        f" symbols; '{SPACE}' may be left out)", repr(symbol))
    if len(set(indices)) != len(indices):
        raise cli.bad_value(option, "must name distinct dictionary symbols",
                            ", ".join(repr(dictionary[i]) for i in indices))
    return indices


def reference_positions(dataset, tokens: Sequence[int]) -> Tensor:
    """Every ``(example id, position, token)`` of ``dataset`` whose reference target token is one
    of ``tokens`` (positions index the target as fairseq collates it, EOS included): ``M x 3``."""
    wanted = torch.tensor(list(tokens), dtype=torch.int64)
    rows = []
    for i in range(len(dataset)):
        target = dataset[i]["target"]
        positions = torch.isin(target, wanted).nonzero().squeeze(1)
        if positions.numel():
            rows.append(torch.stack([torch.full_like(positions, i), positions,
                                     target[positions].long()], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.int64)


def sample_positions(positions: Tensor, tokens: Sequence[int], max_per_token: Optional[int],
                     seed: int) -> Tensor:
    """At most ``max_per_token`` rows of ``positions`` per token (all when None), drawn uniformly
    without replacement by a generator seeded with ``seed``, token by token in the order of
    ``tokens``; each token's rows stay in their order in ``positions``."""
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for token in tokens:
        rows = (positions[:, 2] == token).nonzero().squeeze(1)
        if max_per_token is not None and rows.numel() > max_per_token:
            drawn = torch.randperm(rows.numel(), generator=generator)[:max_per_token]
            rows = rows[drawn.sort().values]
        kept.append(rows)
    return positions[torch.cat(kept)]


@torch.inference_mode()
def decoder_states(model, net_input: dict) -> Tensor:
    """The decoder's final hidden states ``B x T x D``, teacher-forced (``features_only``)."""
    return model(**net_input, features_only=True)[0]


def _to(sample: dict, device) -> dict:
    from fairseq import utils

    return utils.move_to_cuda(sample, device=device) if torch.device(device).type == "cuda" else sample


def states_at(models: Sequence, dataset, positions: Tensor, *, device="cpu",
              sentences_per_batch: int = 64) -> list[Tensor]:
    """Per model, the hidden states (``M x D``, float32 on the CPU) at the ``M`` rows
    ``(example id, position, token)`` of ``positions``.

    The examples holding those positions are collated by ``dataset`` (shortest first, in groups
    of ``sentences_per_batch``) and every model runs once on each group.
    """
    examples = sorted(torch.unique(positions[:, 0]).tolist(), key=dataset.num_tokens)
    parts: list[list[Tensor]] = [[] for _ in models]
    order = []
    for start in range(0, len(examples), sentences_per_batch):
        group = examples[start:start + sentences_per_batch]
        sample = _to(dataset.collater([dataset[i] for i in group]), device)
        row_of = {int(example): row for row, example in enumerate(sample["id"].tolist())}
        mine = torch.isin(positions[:, 0], torch.tensor(group)).nonzero().squeeze(1)
        rows = torch.tensor([row_of[int(e)] for e in positions[mine, 0]], dtype=torch.int64)
        target = sample["target"].cpu()
        columns = positions[mine, 1]
        if getattr(dataset, "left_pad_target", False):  # padding before each target
            columns = columns + (target.size(1) - target.ne(dataset.tgt_dict.pad()).sum(1))[rows]
        assert torch.equal(target[rows, columns], positions[mine, 2]), "collation moved targets"
        for m, model in enumerate(models):
            hidden = decoder_states(model, sample["net_input"]).float().cpu()
            parts[m].append(hidden[rows, columns])
        order.append(mine)
    if not order:
        return [torch.zeros(0, 0) for _ in models]
    inverse = torch.argsort(torch.cat(order))
    return [torch.cat(part)[inverse] for part in parts]


class SplitGamma:
    """``gamma(T) = E[sum_k (1 - y_k) p^t_k(T) K/(K-1)]`` of a teacher (or an ensemble, whose
    tempered probabilities are averaged) over every non-pad target position of a split.

    Called with ``T``, it streams the batches: per batch the logits ``h W^T + b`` of each model
    at ``T`` (:func:`ls_plugins.losses.ensemble_tempered_log_probs`) and the summable
    incorrect mass (:func:`ls_plugins.losses.incorrect_mass`); never more than one batch's
    ``positions x K`` logits.  ``gamma`` needs the whole softmax at every ``T`` (its normaliser
    sums over all ``K`` classes), so no top-k summary suffices; what is kept between calls is
    the models' hidden states ``h`` of the non-pad positions (``D`` floats a position instead of
    ``K`` logits: 16 times less for D = 256, K = 4000), as long as they fit in ``cache_bytes``.
    A batch beyond that budget is recomputed by a forward pass at every call.  Either way a
    call is deterministic, as bisection needs.
    """

    def __init__(self, models: Sequence, batches: Sequence[dict], *, pad: int, device="cpu",
                 cache_bytes: int = 0):
        self.models = list(models)
        self.layers = [output_projection(model) for model in self.models]
        self.batches = list(batches)
        self.pad = pad
        self.device = device
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0
        self._cache: dict[int, tuple[list[Tensor], Tensor]] = {}
        self.positions = 0  # non-pad target positions of the split, known after the first call

    def _states(self, index: int) -> tuple[list[Tensor], Tensor]:
        """(per model the ``N x D`` states of the batch's non-pad positions, their targets)."""
        if index in self._cache:
            return self._cache[index]
        sample = _to(self.batches[index], self.device)
        keep = sample["target"].ne(self.pad)
        states = [decoder_states(model, sample["net_input"])[keep] for model in self.models]
        entry = (states, sample["target"][keep])
        size = sum(s.numel() * s.element_size() for s in states)
        if self.cached_bytes + size <= self.cache_bytes:
            self._cache[index] = entry
            self.cached_bytes += size
        return entry

    @torch.inference_mode()
    def __call__(self, temperature: float) -> float:
        total, count = 0.0, 0
        for index in range(len(self.batches)):
            states, target = self._states(index)
            logits = [F.linear(h, weight, bias) for h, (weight, bias) in zip(states, self.layers)]
            log_probs = ensemble_tempered_log_probs(logits, temperature)
            mass, positions = incorrect_mass(log_probs.exp(), target)
            total += mass
            count += positions
        if count == 0:
            raise cli.bad_value("--split", "must hold target tokens", "an empty split")
        self.positions = count
        return total / count

    @property
    def cached_batches(self) -> int:
        return len(self._cache)
