"""The teacher cache: its format on disk and its reader (``--criterion distillation_ce --teacher-cache``).

``ls-cache-teacher DATA --teacher-path CKPT[:CKPT...] --split train --topk 8 --out DIR``
(:mod:`ls_plugins.cache_teacher`, written by :mod:`ls_plugins.teacher_cache_writer`) runs the
teacher once over a data split and stores, for every target position of every example, the
teacher's ``k`` largest log-probabilities at temperature ``T_c`` (``--temperature``), their
classes and the log of the probability mass of all other classes.  ``fairseq-train --criterion
distillation_ce --teacher-cache DIR`` then trains without a teacher forward pass per step.

Cache layout, one directory per split (``DIR/<split>/``), numpy ``.npy`` files read memory-mapped:

* ``offsets.npy``  int64 ``[n + 1]``: example ``id`` (fairseq's dataset index, carried by every
  batch as ``sample["id"]``, so it survives batching and shuffling) -> first row of its target;
  row ``offsets[id] + j`` holds the ``j``-th non-pad target token;
* ``values.npy`` float32 ``[rows, k]``: ``log p^t(T_c)`` of the kept classes, sorted descending;
* ``indices.npy`` int16/int32 ``[rows, k]``: the kept classes;
* ``tail.npy`` float32 ``[rows]``: ``log`` of the teacher's mass on the other ``K - k`` classes
  (``-inf`` when ``k == K``), summed from those classes (exact, no ``1 - sum`` cancellation);
* ``targets.npy`` int16/int32 ``[rows]``: the target tokens, checked against every batch;
* ``present.npy`` bool ``[n]``: examples the teacher could process (too long ones are skipped);
* ``target_dict.txt``: the target dictionary's symbols; ``manifest.json``: split, dictionary
  sha256, ``k``, ``K``, ``T_c``, teacher paths, sizes.

A directory is written under a temporary name and renamed into place when complete.
How ``distillation_ce`` rebuilds the teacher from the top-k (and what happens to the tail) is
:func:`ls_plugins.losses.topk_teacher_from_log_probs`.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np
import torch

from . import cli
from .fairseq_models import dictionary_difference

CACHE_FORMAT = "ls_plugins.teacher_cache/1"
MANIFEST = "manifest.json"
DICT_FILE = "target_dict.txt"


class TeacherError(cli.UsageError):
    """A teacher cache that cannot serve the student; one line that starts with the option at
    fault (``--teacher-cache: ...``)."""


def dictionary_symbols(dictionary) -> list[str]:
    return list(dictionary.symbols)


def symbols_sha256(symbols: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(symbols).encode("utf-8")).hexdigest()


class TeacherCache:
    """One split of a teacher cache, memory-mapped, verified against the student's dictionary."""

    def __init__(self, root: str, split: str, target_dictionary, option: str = "--teacher-cache"):
        self.option = option
        self.split = split
        self.dir = os.path.join(root, split)
        manifest_path = os.path.join(self.dir, MANIFEST)
        if not os.path.isfile(manifest_path):
            hint = (" (it is the cache of one split; pass its parent directory)"
                    if os.path.isfile(os.path.join(root, MANIFEST)) else "")
            raise self.refuse(f"must hold a cache of split {split!r} (build it with "
                              f"ls-cache-teacher DATA --split {split} --out {root})", f"{root}{hint}")
        try:
            with open(manifest_path, encoding="utf-8") as f:
                self.manifest = json.load(f)
        except (OSError, ValueError) as err:
            raise self.refuse(f"must hold a readable {MANIFEST}",
                              f"{manifest_path} ({cli.first_line(err)})") from None
        m = self.manifest
        if m.get("format") != CACHE_FORMAT:
            raise self.refuse(f"must be a teacher cache of format {CACHE_FORMAT}",
                              f"{self.dir} (format {m.get('format')!r})")
        if m.get("split") != split:
            raise self.refuse(f"must be built for split {split!r}",
                              f"{self.dir} (built for split {m.get('split')!r})")
        ours = dictionary_symbols(target_dictionary)
        if m.get("target_dict_sha256") != symbols_sha256(ours):
            theirs = []
            try:
                with open(os.path.join(self.dir, DICT_FILE), encoding="utf-8") as f:
                    theirs = f.read().split("\n")
            except OSError:
                pass
            difference = dictionary_difference(theirs, ours) if theirs else None
            raise self.refuse("must be built with the target dictionary of the student",
                              f"{self.dir}, whose target dictionary differs "
                              f"{difference or '(its sha256)'}")
        self.k = int(m["k"])
        self.num_classes = int(m["num_classes"])
        self.temperature = float(m["temperature"])
        self.n_teachers = int(m.get("n_teachers", 1))
        try:
            load = lambda name: np.load(os.path.join(self.dir, name), mmap_mode="r")  # noqa: E731
            self.offsets = np.asarray(load("offsets.npy"))
            self.present = np.asarray(load("present.npy"))
            self.values, self.indices = load("values.npy"), load("indices.npy")
            self.tail, self.targets = load("tail.npy"), load("targets.npy")
        except (OSError, ValueError) as err:
            raise self.refuse("must be a complete teacher cache",
                              f"{self.dir} ({cli.first_line(err)})") from None
        if self.values.shape != (int(self.offsets[-1]), self.k):
            raise self.refuse("must be a consistent teacher cache",
                              f"{self.dir} (values {self.values.shape}, {int(self.offsets[-1])} "
                              f"rows of k={self.k} expected)")
        self._checked_dataset = None

    def refuse(self, allowed: str, value) -> TeacherError:
        """``TeacherError("<option>: <allowed>, got <value>")``, to raise."""
        return TeacherError(f"{self.option}: {allowed}, got {value}")

    @property
    def num_examples(self) -> int:
        return len(self.offsets) - 1

    def check_dataset(self, dataset) -> None:
        """Compare example count and target lengths with the student's dataset (once per object)."""
        if dataset is None or dataset is self._checked_dataset:
            return
        if len(dataset) != self.num_examples:
            raise self.refuse(f"must be built for the student's {self.split!r} split of "
                              f"{len(dataset)} examples (rebuild the cache for this data)",
                              f"{self.dir} ({self.num_examples} examples)")
        sizes = getattr(dataset, "tgt_sizes", None)
        if sizes is not None and not np.array_equal(np.asarray(sizes), np.diff(self.offsets)):
            bad = int(np.flatnonzero(np.asarray(sizes) != np.diff(self.offsets))[0])
            raise self.refuse(f"must be built for the student's {self.split!r} split (rebuild "
                              f"the cache for this data)",
                              f"{self.dir} (example {bad} has another target length)")
        self._checked_dataset = dataset

    def matches(self, ids: torch.Tensor, target: torch.Tensor, pad: int) -> bool:
        """Whether this cache's targets are those of the batch (used to pick among valid splits)."""
        try:
            rows, mask = self._rows(ids, target, pad)
        except IndexError:
            return False
        return bool(np.array_equal(np.asarray(self.targets[rows]),
                                   target.cpu().numpy()[mask.cpu().numpy()]))

    def _rows(self, ids: torch.Tensor, target: torch.Tensor, pad: int):
        """Cache rows of the batch's non-pad target positions (row-major); ``IndexError`` when
        an id or a target length does not fit this cache."""
        mask = target.ne(pad)
        ids_np = ids.cpu().numpy().astype(np.int64)
        if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= self.num_examples):
            raise IndexError(f"example id {int(ids_np.max())} out of range")
        counts = mask.sum(1).cpu().numpy()
        lengths = self.offsets[ids_np + 1] - self.offsets[ids_np]
        if not np.array_equal(counts, lengths):
            bad = int(np.flatnonzero(counts != lengths)[0])
            raise IndexError(f"example {int(ids_np[bad])} has {int(counts[bad])} target tokens, "
                             f"the cache {int(lengths[bad])}")
        rank = (mask.long().cumsum(1) - 1).cpu().numpy()
        mask_np = mask.cpu().numpy()
        rows = (self.offsets[ids_np][:, None] + rank)[mask_np]
        return rows, mask

    def lookup(self, ids: torch.Tensor, target: torch.Tensor, pad: int):
        """``(values, indices, tail_log_mass)`` for a batch, shaped like ``target`` (+ ``k``).

        Pad positions get finite dummies (values 0, class 0, tail ``-inf``).  Refuses (one line)
        a batch whose targets differ from the cached ones.
        """
        try:
            rows, mask = self._rows(ids, target, pad)
        except IndexError as err:
            raise self.refuse("must match the batch (rebuild the cache for this data)",
                              f"{self.dir} ({err})") from None
        ids_np = ids.cpu().numpy().astype(np.int64)
        if not self.present[ids_np].all():
            missing = int(ids_np[~self.present[ids_np]][0])
            raise self.refuse(f"must hold every example of split {self.split!r}",
                              f"{self.dir} (the teacher skipped example {missing} as too long)")
        target_np = target.cpu().numpy()
        mask_np = mask.cpu().numpy()
        cached_targets = np.asarray(self.targets[rows]).astype(np.int64)
        if not np.array_equal(cached_targets, target_np[mask_np]):
            bad = int(np.flatnonzero(cached_targets != target_np[mask_np])[0])
            row_of = np.nonzero(mask_np)[0][bad]
            raise self.refuse("must match the batch (rebuild the cache for this data)",
                              f"{self.dir} (example {int(ids_np[row_of])}: the cached target "
                              f"differs)")
        bsz, length = target.shape
        values = np.zeros((bsz, length, self.k), dtype=np.float32)
        indices = np.zeros((bsz, length, self.k), dtype=np.int64)
        tail = np.full((bsz, length), -np.inf, dtype=np.float32)
        values[mask_np] = self.values[rows]
        indices[mask_np] = self.indices[rows]
        tail[mask_np] = self.tail[rows]
        device = target.device
        return (torch.from_numpy(values).to(device), torch.from_numpy(indices).to(device),
                torch.from_numpy(tail).to(device))
