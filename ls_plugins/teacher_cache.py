"""Distillation teachers for fairseq: safe loading, pairing checks, and a top-k teacher cache.

``ls-cache-teacher DATA --teacher-path CKPT[:CKPT...] --split train --topk 8 --out DIR`` runs the
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

import argparse
import copy
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch

from . import cli
from .losses import ensemble_tempered_log_probs, topk_log_probs

logger = logging.getLogger(__name__)

CACHE_FORMAT = "ls_plugins.teacher_cache/1"
MANIFEST = "manifest.json"
DICT_FILE = "target_dict.txt"


class TeacherError(ValueError):
    """A teacher or cache that cannot be paired with the student; the message is one line that
    starts with the option at fault (``--teacher-path: ...``)."""


# ------------------------------------------------------------------------------------------------
# dictionaries
# ------------------------------------------------------------------------------------------------

def dictionary_symbols(dictionary) -> list[str]:
    return list(dictionary.symbols)


def symbols_sha256(symbols: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(symbols).encode("utf-8")).hexdigest()


def first_difference(theirs: Sequence[str], ours: Sequence[str], their_name: str = "teacher",
                     our_name: str = "student") -> Optional[str]:
    """``None`` if the symbol lists are equal, else a phrase naming the first differing symbol."""
    for i, (a, b) in enumerate(zip(theirs, ours)):
        if a != b:
            return f"first difference at index {i}: {their_name} {a!r}, {our_name} {b!r}"
    if len(theirs) != len(ours):
        n = min(len(theirs), len(ours))
        longer, name = (theirs, their_name) if len(theirs) > len(ours) else (ours, our_name)
        return (f"{their_name} has {len(theirs)} symbols, {our_name} {len(ours)}; first extra "
                f"symbol (index {n}, {name}): {longer[n]!r}")
    return None


def check_dictionaries(teacher_task, student_task, path: str, option: str = "--teacher-path") -> None:
    """Refuse a teacher whose source or target dictionary differs from the student's."""
    for side in ("target", "source"):
        theirs = getattr(teacher_task, f"{side}_dictionary", None)
        ours = getattr(student_task, f"{side}_dictionary", None)
        if theirs is None or ours is None:
            continue
        diff = first_difference(dictionary_symbols(theirs), dictionary_symbols(ours))
        if diff:
            raise TeacherError(f"{option}: {path} and the student use different {side} "
                               f"dictionaries ({diff})")


# ------------------------------------------------------------------------------------------------
# teachers
# ------------------------------------------------------------------------------------------------

def split_paths(spec: str) -> list[str]:
    return [p for p in (spec or "").split(":") if p]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_teacher(path: str, teacher_data: Optional[str] = None, option: str = "--teacher-path",
                 langs: Optional[tuple] = None):
    """``(state, cfg, task)`` of a checkpoint, loaded safely (``weights_only=True``) on CPU.

    The teacher's dictionaries come from the data directory recorded in the checkpoint, or from
    ``teacher_data`` when given.  ``langs``: the student's ``(source, target)`` languages, used
    when the checkpoint does not record its own (fairseq infers them from the data files).
    """
    from fairseq import checkpoint_utils, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    if not os.path.exists(path):
        raise TeacherError(f"{option}: no such checkpoint: {path}")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise TeacherError(f"{option}: not a readable file: {path}")
    overrides = {"data": teacher_data} if teacher_data else None
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides=overrides)
    except Exception as err:  # pickle, zip, truncated file, unsafe global...
        raise TeacherError(f"{option}: cannot read checkpoint {path}: {_first_line(err)}") from None
    if state.get("args") is not None:
        cfg = convert_namespace_to_omegaconf(state["args"])
    elif state.get("cfg") is not None:
        cfg = state["cfg"]
    else:
        raise TeacherError(f"{option}: {path} is not a fairseq checkpoint (no cfg or args)")
    if "model" not in state:
        raise TeacherError(f"{option}: {path} holds no model weights")
    if langs is not None:
        for key, lang in zip(("source_lang", "target_lang"), langs):
            if lang is not None and key in cfg.task and cfg.task[key] is None:
                cfg.task[key] = lang
    try:
        task = tasks.setup_task(cfg.task, from_checkpoint=True)
    except Exception as err:
        where = getattr(cfg.task, "data", None)
        raise TeacherError(f"{option}: cannot load the dictionaries of {path} from {where} "
                           f"({_first_line(err)}); pass --teacher-data DIR holding the teacher's "
                           f"dictionaries") from None
    return state, cfg, task


def build_teacher(state, cfg, task, path: str, option: str = "--teacher-path") -> torch.nn.Module:
    from fairseq import checkpoint_utils

    try:
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task([path], task=task, state=state)
    except Exception as err:
        raise TeacherError(f"{option}: cannot build the model of {path}: {_first_line(err)}") from None
    model = models[0]
    model.eval()
    model.requires_grad_(False)
    return model


class TeacherEnsemble:
    """One or more frozen teacher models; their tempered probabilities are averaged.

    Deliberately not an ``nn.Module`` attribute of the criterion: the teachers' weights must not
    reach the optimizer, the student's checkpoints or a DistributedDataParallel wrapper.
    """

    def __init__(self, models: Sequence[torch.nn.Module], paths: Sequence[str]):
        self.models = list(models)
        self.paths = list(paths)
        self._placement = None

    def __len__(self) -> int:
        return len(self.models)

    def place_like(self, tensor: torch.Tensor) -> None:
        """Move the teachers to ``tensor``'s device and floating dtype (the student's), once."""
        key = (tensor.device, tensor.dtype)
        if key != self._placement:
            for model in self.models:
                model.to(device=tensor.device, dtype=tensor.dtype)
                model.eval()
            self._placement = key

    def log_probs(self, net_input: dict, temperature: float = 1.0) -> torch.Tensor:
        """``log p^t(T)`` of the (averaged) teachers, ``(batch, length, K)``, float32 or wider.

        The forward passes run under ``torch.inference_mode``; the tempering and averaging run
        under ``no_grad`` so that the result is an ordinary tensor the loss may save for backward.
        """
        with torch.inference_mode():
            outs = []
            for model in self.models:
                net_output = model(**net_input)
                outs.append(model.get_normalized_probs(net_output, log_probs=True))
        with torch.no_grad():
            return ensemble_tempered_log_probs(outs, temperature)


def load_teachers(spec: str, student_task, teacher_data: Optional[str] = None,
                  option: str = "--teacher-path", preloaded: Optional[dict] = None) -> TeacherEnsemble:
    """Load the checkpoints of ``spec`` (``a.pt:b.pt``) and check each against ``student_task``."""
    paths = split_paths(spec)
    if not paths:
        raise TeacherError(f"{option}: no checkpoint given")
    task_cfg = getattr(student_task, "cfg", None)
    langs = (getattr(task_cfg, "source_lang", None), getattr(task_cfg, "target_lang", None))
    models = []
    for path in paths:
        state, cfg, task = ((preloaded or {}).get(path)
                            or read_teacher(path, teacher_data, option, langs))
        check_dictionaries(task, student_task, path, option)
        models.append(build_teacher(state, cfg, task, path, option))
    return TeacherEnsemble(models, [os.path.abspath(p) for p in paths])


# ------------------------------------------------------------------------------------------------
# the cache, reading side
# ------------------------------------------------------------------------------------------------

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
            raise TeacherError(f"{option}: no cache for split {split!r} in {root}{hint}; build "
                               f"it with ls-cache-teacher DATA --split {split} --out {root}")
        try:
            with open(manifest_path, encoding="utf-8") as f:
                self.manifest = json.load(f)
        except (OSError, ValueError) as err:
            raise TeacherError(f"{option}: unreadable manifest {manifest_path}: {_first_line(err)}") from None
        m = self.manifest
        if m.get("format") != CACHE_FORMAT:
            raise TeacherError(f"{option}: {self.dir} is not a teacher cache of format "
                               f"{CACHE_FORMAT} (got {m.get('format')!r})")
        if m.get("split") != split:
            raise TeacherError(f"{option}: {self.dir} was built for split {m.get('split')!r}, "
                               f"not {split!r}")
        ours = dictionary_symbols(target_dictionary)
        if m.get("target_dict_sha256") != symbols_sha256(ours):
            theirs = []
            try:
                with open(os.path.join(self.dir, DICT_FILE), encoding="utf-8") as f:
                    theirs = f.read().split("\n")
            except OSError:
                pass
            diff = first_difference(theirs, ours, "cache", "student") if theirs else None
            raise TeacherError(f"{option}: {self.dir} was built with another target dictionary "
                               f"than the student's ({diff or 'sha256 differs'})")
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
            raise TeacherError(f"{option}: {self.dir} is incomplete: {_first_line(err)}") from None
        if self.values.shape != (int(self.offsets[-1]), self.k):
            raise TeacherError(f"{option}: {self.dir} is inconsistent (values {self.values.shape}, "
                               f"{int(self.offsets[-1])} rows of k={self.k} expected)")
        self._checked_dataset = None

    @property
    def num_examples(self) -> int:
        return len(self.offsets) - 1

    def check_dataset(self, dataset) -> None:
        """Compare example count and target lengths with the student's dataset (once per object)."""
        if dataset is None or dataset is self._checked_dataset:
            return
        if len(dataset) != self.num_examples:
            raise TeacherError(f"{self.option}: {self.dir} holds {self.num_examples} examples but "
                               f"the student's {self.split!r} split has {len(dataset)}; rebuild "
                               f"the cache for this data")
        sizes = getattr(dataset, "tgt_sizes", None)
        if sizes is not None and not np.array_equal(np.asarray(sizes), np.diff(self.offsets)):
            bad = int(np.flatnonzero(np.asarray(sizes) != np.diff(self.offsets))[0])
            raise TeacherError(f"{self.option}: {self.dir} does not match the student's "
                               f"{self.split!r} split (example {bad} has another target length); "
                               f"rebuild the cache for this data")
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
            raise TeacherError(f"{self.option}: {self.dir} does not match the batch ({err}); "
                               f"rebuild the cache for this data") from None
        ids_np = ids.cpu().numpy().astype(np.int64)
        if not self.present[ids_np].all():
            missing = int(ids_np[~self.present[ids_np]][0])
            raise TeacherError(f"{self.option}: example {missing} of split {self.split!r} is not "
                               f"in the cache (the teacher skipped it as too long)")
        target_np = target.cpu().numpy()
        mask_np = mask.cpu().numpy()
        cached_targets = np.asarray(self.targets[rows]).astype(np.int64)
        if not np.array_equal(cached_targets, target_np[mask_np]):
            bad = int(np.flatnonzero(cached_targets != target_np[mask_np])[0])
            row_of = np.nonzero(mask_np)[0][bad]
            raise TeacherError(f"{self.option}: {self.dir} does not match the batch (example "
                               f"{int(ids_np[row_of])}: cached target differs); rebuild the cache "
                               f"for this data")
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


# ------------------------------------------------------------------------------------------------
# the cache, writing side
# ------------------------------------------------------------------------------------------------

def _index_dtype(num_classes: int):
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


def _install_atomically(tmp_dir: str, final_dir: str) -> None:
    old = None
    if os.path.exists(final_dir):
        old = f"{final_dir}.old-{os.getpid()}"
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def build_cache(task, split: str, teachers: TeacherEnsemble, out_dir: str, *, k: int,
                temperature: float = 1.0, max_tokens: Optional[int] = 4000,
                batch_size: Optional[int] = None, device: str = "cpu", dtype=torch.float32,
                data: str = "", progress: bool = True) -> dict:
    """Run ``teachers`` over ``task``'s ``split`` and write ``out_dir/<split>``; returns the manifest."""
    from fairseq import utils
    from tqdm import tqdm

    dataset = task.dataset(split)
    tgt_dict = task.target_dictionary
    num_classes, pad = len(tgt_dict), tgt_dict.pad()
    n = len(dataset)
    sizes = getattr(dataset, "tgt_sizes", None)
    if sizes is None:
        sizes = [len(dataset[i]["target"]) for i in range(n)]
    lengths = np.asarray(sizes, dtype=np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = int(offsets[-1])

    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".tmp-{split}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        mm = lambda name, shape, dt: np.lib.format.open_memmap(  # noqa: E731
            os.path.join(tmp, name), mode="w+", dtype=dt, shape=shape)
        values = mm("values.npy", (rows, k), np.float32)
        indices = mm("indices.npy", (rows, k), _index_dtype(num_classes))
        tail = mm("tail.npy", (rows,), np.float32)
        targets = mm("targets.npy", (rows,), _index_dtype(num_classes))
        present = np.zeros(n, dtype=bool)

        for model in teachers.models:
            model.to(device=device, dtype=dtype)
        max_positions = utils.resolve_max_positions(task.max_positions(),
                                                    *[m.max_positions() for m in teachers.models])
        itr = task.get_batch_iterator(dataset=dataset, max_tokens=max_tokens,
                                      max_sentences=batch_size, max_positions=max_positions,
                                      ignore_invalid_inputs=True, seed=1).next_epoch_itr(shuffle=False)
        for sample in tqdm(itr, total=len(itr), desc=f"teacher on {split}", disable=not progress,
                           file=sys.stderr, mininterval=1.0):
            sample = utils.move_to_cuda(sample) if device.startswith("cuda") else sample
            lprobs = teachers.log_probs(sample["net_input"], temperature)
            target = sample["target"]
            mask = target.ne(pad)
            ids = sample["id"].cpu().numpy().astype(np.int64)
            counts = mask.sum(1).cpu().numpy()
            if not np.array_equal(counts, lengths[ids]):
                raise TeacherError(f"split {split!r}: example {int(ids[counts != lengths[ids]][0])}"
                                   f" has another target length than its dataset size")
            top_v, top_i, top_t = topk_log_probs(lprobs[mask].float(), k)
            rank = (mask.long().cumsum(1) - 1).cpu().numpy()
            where = (offsets[ids][:, None] + rank)[mask.cpu().numpy()]
            values[where] = top_v.cpu().numpy()
            indices[where] = top_i.cpu().numpy()
            tail[where] = top_t.cpu().numpy()
            targets[where] = target[mask].cpu().numpy()
            present[ids] = True
        for array in (values, indices, tail, targets):
            array.flush()
        del values, indices, tail, targets
        np.save(os.path.join(tmp, "offsets.npy"), offsets)
        np.save(os.path.join(tmp, "present.npy"), present)
        symbols = dictionary_symbols(tgt_dict)
        with open(os.path.join(tmp, DICT_FILE), "w", encoding="utf-8") as f:
            f.write("\n".join(symbols))
        src_dict = getattr(task, "source_dictionary", None)
        manifest = {
            "format": CACHE_FORMAT, "split": split, "data": os.path.abspath(data) if data else "",
            "k": k, "num_classes": num_classes, "temperature": temperature,
            "teacher_paths": teachers.paths, "n_teachers": len(teachers),
            "target_dict_sha256": symbols_sha256(symbols),
            "source_dict_sha256": symbols_sha256(dictionary_symbols(src_dict)) if src_dict else None,
            "num_examples": n, "num_rows": rows, "num_present": int(present.sum()),
            "lengths_sha256": hashlib.sha256(lengths.tobytes()).hexdigest(),
            "value_dtype": "float32", "index_dtype": np.dtype(_index_dtype(num_classes)).name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
        _install_atomically(tmp, os.path.join(out_dir, split))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ------------------------------------------------------------------------------------------------
# console script
# ------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ls-cache-teacher",
        description="Store a distillation teacher's top-k log-probabilities per target position "
                    "of a fairseq data split, for `--criterion distillation_ce --teacher-cache`.")
    parser.add_argument("data", help="fairseq binarised data directory (the student's)")
    parser.add_argument("--teacher-path", required=True,
                        help="teacher checkpoint, or several separated by ':' (probabilities averaged)")
    parser.add_argument("--teacher-data", default=None,
                        help="directory with the teacher's dictionaries (default: the data "
                             "directory recorded in its checkpoint)")
    parser.add_argument("--out", required=True, help="cache directory (one subdirectory per split)")
    parser.add_argument("--split", default="train",
                        help="split(s) to cache, comma-separated (default: train)")
    parser.add_argument("--topk", type=cli.int_at_least("--topk", 1), default=8,
                        help="classes kept per position, 1 <= k <= K (default 8)")
    parser.add_argument("--temperature", type=cli.positive_float("--temperature"), default=1.0,
                        help="T_c the log-probabilities are stored at; with one teacher any "
                             "training T works (the tail is exact at T_c), an ensemble needs "
                             "the training T (default 1)")
    parser.add_argument("--max-tokens", type=cli.int_at_least("--max-tokens", 1), default=4000)
    parser.add_argument("--batch-size", type=cli.int_at_least("--batch-size", 1), default=None)
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if CUDA is available")
    parser.add_argument("--fp16", action="store_true", help="run the teacher in float16 (CUDA)")
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO, stream=sys.stdout)
    import ls_plugins

    ls_plugins.register_fairseq()
    from fairseq import tasks

    if not os.path.isdir(args.data):
        cli.exit_with_error(f"data: no such directory: {args.data}")
    splits = [s for s in args.split.split(",") if s]
    if not splits:
        cli.exit_with_error("--split: no split given")
    paths = split_paths(args.teacher_path)
    try:
        if not paths:
            raise TeacherError("--teacher-path: no checkpoint given")
        from fairseq.data import data_utils

        langs = data_utils.infer_language_pair(args.data)
        first = read_teacher(paths[0], args.teacher_data, langs=langs)
        task_cfg = copy.deepcopy(first[1].task)
        task_cfg.data = args.data
        try:
            task = tasks.setup_task(task_cfg)
        except Exception as err:
            raise TeacherError(f"data: cannot load the dictionaries of {args.data}: "
                               f"{_first_line(err)}") from None
        teachers = load_teachers(args.teacher_path, task, args.teacher_data,
                                 preloaded={paths[0]: first})
        num_classes = len(task.target_dictionary)
        if args.topk > num_classes:
            raise TeacherError(f"--topk must be <= K={num_classes} (the target dictionary), "
                               f"got {args.topk}")
        for split in splits:
            try:
                task.load_dataset(split, combine=split == "train")
            except Exception as err:
                raise TeacherError(f"--split: cannot load split {split!r} of {args.data}: "
                                   f"{_first_line(err)}") from None
    except TeacherError as err:
        cli.exit_with_error(str(err))

    use_cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if use_cuda else "cpu"
    dtype = torch.float16 if (args.fp16 and use_cuda) else torch.float32
    for split in splits:
        start = time.time()
        manifest = build_cache(task, split, teachers, args.out, k=args.topk,
                               temperature=args.temperature, max_tokens=args.max_tokens,
                               batch_size=args.batch_size, device=device, dtype=dtype,
                               data=args.data, progress=not args.no_progress_bar)
        logger.info(f"cached split {split}: {manifest['num_present']}/{manifest['num_examples']} "
                    f"examples, {manifest['num_rows']} positions, k={args.topk} of "
                    f"K={num_classes}, T_c={args.temperature} in {time.time() - start:.1f}s -> "
                    f"{os.path.join(args.out, split)}")


if __name__ == "__main__":
    main()
