"""Batches that hold every example: fairseq's, plus the last one it drops.

fairseq's ``data_utils.batch_by_size`` makes every batch a multiple of
``--required-batch-size-multiple`` (default 8) and then *drops* a last batch whose size is not
one (``if bsz_mult > 1 and len(b[-1]) % bsz_mult != 0: b = b[:-1]``; fairseq issues #5036,
#5094, #5351): stock ``fairseq-generate`` translates 496 of a 500-sentence test set, and
``fairseq-validate`` scores 96 of 100 sentences.  :class:`EveryExampleDataset` keeps fairseq's
batches exactly as they are and appends the dropped examples as a last batch of their own (those
that ``--skip-invalid-size-inputs-valid-test`` skips stay skipped).

Training batches are left as fairseq makes them (a training epoch is not a measurement): the
training iterator is the one ``get_batch_iterator`` call that passes ``update_epoch_batch_itr``
(fairseq's ``Trainer.get_train_iterator``; generation, validation and our tools never do).
"""
from __future__ import annotations

import numpy as np
from fairseq.data import BaseWrapperDataset


class EveryExampleDataset(BaseWrapperDataset):
    """A dataset whose ``batch_by_size`` never drops examples (everything else delegated)."""

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None,
                      required_batch_size_multiple=1):
        batches = list(self.dataset.batch_by_size(
            indices, max_tokens=max_tokens, max_sentences=max_sentences,
            required_batch_size_multiple=required_batch_size_multiple))
        indices = np.asarray(indices, dtype=np.int64)
        batched = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        if len(batched) < len(indices):
            dropped = indices[~np.isin(indices, batched)]  # in fairseq's order (by size)
            batches += list(self.dataset.batch_by_size(
                dropped, max_tokens=max_tokens, max_sentences=max_sentences,
                required_batch_size_multiple=1))
        return batches


def is_training_call(kwargs: dict) -> bool:
    """Whether a ``get_batch_iterator`` call comes from fairseq's training iterator."""
    return "update_epoch_batch_itr" in kwargs


class EveryExample:
    """A task's ``get_batch_iterator`` that batches every example outside training.

    One :class:`EveryExampleDataset` per dataset, kept, so that fairseq's iterator cache (keyed
    by the dataset) works as before.
    """

    def __init__(self, get_batch_iterator):
        self.get_batch_iterator = get_batch_iterator
        self.wrappers: dict[int, tuple] = {}

    def __call__(self, dataset, *args, **kwargs):
        if not is_training_call(kwargs):
            known = self.wrappers.get(id(dataset))
            if known is None or known[0] is not dataset:
                known = self.wrappers[id(dataset)] = (dataset, EveryExampleDataset(dataset))
            dataset = known[1]
        return self.get_batch_iterator(dataset, *args, **kwargs)


def keep_every_example(task) -> None:
    """Make ``task`` (any fairseq task, e.g. the checkpoint's own in ``fairseq-validate``) batch
    every example outside training; idempotent."""
    get_batch_iterator = getattr(task, "get_batch_iterator", None)
    if get_batch_iterator is not None and not isinstance(get_batch_iterator, EveryExample):
        task.get_batch_iterator = EveryExample(get_batch_iterator)
