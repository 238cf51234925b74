"""``ls-cache-teacher``: store a distillation teacher's top-k log-probabilities for a data split.

``ls-cache-teacher DATA --teacher-path CKPT[:CKPT...] --split train,valid --topk 8 --out DIR``
writes one cache directory per split (format: :mod:`ls_plugins.teacher_cache`; the work:
:mod:`ls_plugins.teacher_cache_writer`) for ``fairseq-train --criterion distillation_ce
--teacher-cache DIR``.  Every check (paths, teachers, dictionaries, splits, ``--topk``,
``--max-tokens``) runs before anything is written; bad input ends in one line, exit code 2.
"""
from __future__ import annotations

import copy
import logging
import os
import sys
import time
from typing import Optional, Sequence

from . import cli

logger = logging.getLogger("ls_plugins.cache_teacher")


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
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
    parser.add_argument("--max-tokens", type=cli.int_at_least("--max-tokens", 1), default=4000,
                        help="tokens per batch, at least the longest example (default 4000)")
    parser.add_argument("--batch-size", type=cli.int_at_least("--batch-size", 1), default=None)
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if CUDA is available")
    parser.add_argument("--fp16", action="store_true", help="run the teacher in float16 (CUDA)")
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser


def check_paths(args) -> list[str]:
    """The splits, once DATA, ``--out`` and each ``--out/<split>`` are known to be usable."""
    cli.check_input_dir("data", args.data)
    splits = [s for s in args.split.split(",") if s]
    if not splits:
        raise cli.bad_value("--split", "must name at least one split", repr(args.split))
    cli.check_output_dir("--out", args.out)
    for split in splits:
        cli.check_output_dir("--out", os.path.join(args.out, split))
    return splits


def prepare(args, splits: Sequence[str]):
    """``(task, teachers, batches per split)``: everything loaded and checked, nothing written."""
    from fairseq import tasks
    from fairseq.data import data_utils

    from .fairseq_models import read_checkpoint, split_paths
    from .teacher_cache_writer import teacher_batches
    from .teachers import load_teachers

    paths = split_paths(args.teacher_path)
    if not paths:
        raise cli.bad_value("--teacher-path", "must name a checkpoint (or several separated by "
                                              "':')", repr(args.teacher_path))
    first = read_checkpoint(paths[0], option="--teacher-path", data=args.teacher_data,
                            data_option="--teacher-data DIR",
                            langs=data_utils.infer_language_pair(args.data))
    task_cfg = copy.deepcopy(first.cfg.task)  # the student's task: the teacher's, on DATA
    task_cfg.data = args.data
    try:
        task = tasks.setup_task(task_cfg)
    except Exception as err:  # fairseq raises plain Exceptions for missing dictionaries
        raise cli.bad_value("data", "must hold the student's dictionaries",
                            f"{args.data} ({cli.first_line(err)})") from None
    teachers = load_teachers(args.teacher_path, task, args.teacher_data,
                             preloaded={paths[0]: first})
    num_classes = len(task.target_dictionary)
    if args.topk > num_classes:
        raise cli.bad_value("--topk", f"must be <= K={num_classes} (the target dictionary's size)",
                            args.topk)
    batches = {}
    for split in splits:
        try:
            task.load_dataset(split, combine=split == "train")
        except Exception as err:
            raise cli.bad_value("--split", f"must name splits of {args.data}",
                                f"{split} ({cli.first_line(err)})") from None
        batches[split] = teacher_batches(task, split, teachers, max_tokens=args.max_tokens,
                                         batch_size=args.batch_size)
    return task, teachers, batches


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    with cli.exit_on_usage_error():
        splits = check_paths(args)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO, stream=sys.stdout)
    import torch

    import ls_plugins
    from .teacher_cache_writer import build_cache

    ls_plugins.register_fairseq()
    with cli.exit_on_usage_error():
        task, teachers, batches = prepare(args, splits)
    use_cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if use_cuda else "cpu"
    dtype = torch.float16 if (args.fp16 and use_cuda) else torch.float32
    for split in splits:
        start = time.time()
        with cli.exit_on_usage_error():
            manifest = build_cache(task, split, teachers, args.out, batches[split], k=args.topk,
                                   temperature=args.temperature, device=device, dtype=dtype,
                                   data=args.data, progress=not args.no_progress_bar)
        logger.info(f"cached split {split}: {manifest['num_present']}/{manifest['num_examples']} "
                    f"examples, {manifest['num_rows']} positions, k={args.topk} of "
                    f"K={manifest['num_classes']}, T_c={args.temperature} in "
                    f"{time.time() - start:.1f}s -> {os.path.join(args.out, split)}")


if __name__ == "__main__":
    main()
