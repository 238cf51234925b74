"""Writing a teacher cache (the format: :mod:`ls_plugins.teacher_cache`).

:func:`build_cache` runs the teachers over one split and writes ``out_dir/<split>``.  The split
is written into a temporary directory ``out_dir/.tmp-<split>-<pid>`` and renamed into place
when complete, so that a reader never sees half a cache; temporary directories that a killed
run left behind (their process is gone) are removed by the next run on the same split.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from typing import Optional

import numpy as np
import torch

from . import cli
from .fairseq_models import epoch_batches
from .losses import topk_log_probs
from .teacher_cache import (CACHE_FORMAT, DICT_FILE, MANIFEST, dictionary_symbols,
                            symbols_sha256)
from .teachers import TeacherEnsemble

WORK_PREFIXES = (".tmp-", ".old-")  # + "<split>-<pid>": the directories of a run in progress


def _index_dtype(num_classes: int):
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return False


def remove_stale_work(out_dir: str, split: str) -> None:
    """Remove ``out_dir``'s work directories of ``split`` whose process is gone (a killed run)."""
    if not os.path.isdir(out_dir):
        return
    for name in os.listdir(out_dir):
        for prefix in WORK_PREFIXES:
            pid = name[len(prefix) + len(split) + 1:]
            if name.startswith(f"{prefix}{split}-") and pid.isdigit() and _process_is_gone(int(pid)):
                shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def _install_atomically(tmp_dir: str, out_dir: str, split: str) -> None:
    final_dir = os.path.join(out_dir, split)
    old = None
    if os.path.lexists(final_dir):
        old = os.path.join(out_dir, f".old-{split}-{os.getpid()}")
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def teacher_batches(task, split: str, teachers: TeacherEnsemble, *, max_tokens: Optional[int],
                    batch_size: Optional[int] = None):
    """The batches of ``task``'s loaded ``split`` for the teachers (examples longer than they
    accept are skipped); a ``max_tokens`` below the longest example is refused in one line."""
    from fairseq import utils

    positions = utils.resolve_max_positions(task.max_positions(),
                                            *[m.max_positions() for m in teachers.models])
    return epoch_batches(task, split, max_tokens=max_tokens, batch_size=batch_size,
                         max_positions=positions, ignore_invalid_inputs=True, split_option="--split")


def build_cache(task, split: str, teachers: TeacherEnsemble, out_dir: str, batches, *, k: int,
                temperature: float = 1.0, device: str = "cpu", dtype=torch.float32,
                data: str = "", progress: bool = True) -> dict:
    """Run ``teachers`` over ``batches`` (:func:`teacher_batches` of ``task``'s ``split``) and
    write ``out_dir/<split>``; returns the manifest."""
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
    remove_stale_work(out_dir, split)
    tmp = os.path.join(out_dir, f".tmp-{split}-{os.getpid()}")
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
        for sample in tqdm(batches, total=len(batches), desc=f"teacher on {split}",
                           disable=not progress, file=sys.stderr, mininterval=1.0):
            sample = utils.move_to_cuda(sample) if device.startswith("cuda") else sample
            lprobs = teachers.log_probs(sample["net_input"], temperature)
            target = sample["target"]
            mask = target.ne(pad)
            ids = sample["id"].cpu().numpy().astype(np.int64)
            counts = mask.sum(1).cpu().numpy()
            if not np.array_equal(counts, lengths[ids]):
                bad = int(ids[counts != lengths[ids]][0])
                raise cli.bad_value("--split", "must hold targets as long as its dataset sizes",
                                    f"{split} (example {bad} differs)")
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
        _install_atomically(tmp, out_dir, split)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
