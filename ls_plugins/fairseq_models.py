"""The one place ls_plugins loads fairseq models: checkpoints, ensembles, dictionaries, output layers.

The sweep (``ls-sweep``), the teacher cache (``ls-cache-teacher``), ``--criterion
distillation_ce`` and the analysis commands all load models through this module:

* :func:`read_checkpoint`: a checkpoint's state and config, and the checkpoint's own task (its
  source and target dictionaries), read with torch's safe loading (``weights_only=True``, the
  default since torch 2.6, with fairseq's few checkpoint classes allowlisted by
  :mod:`ls_plugins.checkpoints`; safe loading is never switched off);
* :func:`check_dictionaries`: the pairing check: a model's source and target dictionaries must
  equal another task's symbol by symbol (never only by size); the error names the first
  differing symbol;
* :func:`load_ensemble`: ``a.pt:b.pt``: each checkpoint read, checked and built, in eval mode with
  frozen parameters;
* :func:`output_projection`: the model's output layer ``(W, b)``: ``logits = h W^T + b`` for the
  decoder's final hidden states ``h``;
* :func:`epoch_batches`: the batches of a dataset as fairseq builds them, with a ``--max-tokens``
  smaller than the longest example refused in one line.

Every error is a :class:`ls_plugins.cli.UsageError`: one line, ``<option>: <what is allowed>, got
<value>``, that starts with the option at fault.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from . import checkpoints, cli


@dataclass
class Checkpoint:
    """A fairseq checkpoint read by :func:`read_checkpoint`."""

    path: str
    state: dict  # as fairseq's ``load_checkpoint_to_cpu`` returns it (``model``, ``cfg``, ...)
    cfg: Any     # the checkpoint's configuration (an omegaconf ``DictConfig``)
    task: Any    # the checkpoint's own task: its dictionaries, no dataset loaded


def split_paths(spec: Union[str, Sequence[str]]) -> list[str]:
    """The checkpoints of an ensemble spec ``a.pt:b.pt`` (a list is returned as it is)."""
    if not isinstance(spec, str):
        return list(spec)
    return [path for path in spec.split(os.pathsep) if path]


def _reason(error: BaseException, path: str) -> str:
    """The first line of ``error`` without a leading ``<path>: `` (fairseq's loader adds it)."""
    return cli.first_line(error).removeprefix(f"{path}: ")


def read_checkpoint(path: str, *, option: str = "--path", data: Optional[str] = None,
                    data_option: str = "--data DIR", langs: Optional[Sequence] = None) -> Checkpoint:
    """Read the checkpoint ``path`` on CPU with safe loading and set up its own task.

    The task's dictionaries come from the data directory the checkpoint records, or from ``data``
    when given (``data_option`` is the option, in its usage form, that gives it: ``--teacher-data
    DIR``; a missing directory is refused with a hint to use it).  ``langs``: ``(source,
    target)`` languages to use when the checkpoint does not record its own.

    Raises :class:`~ls_plugins.cli.UsageError` naming ``option`` (or the data option) when the
    file is missing, is not a fairseq checkpoint, needs a global that safe loading refuses, or
    when its dictionaries cannot be found.
    """
    from fairseq import checkpoint_utils, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    cli.check_input_file(option, path)
    checkpoints.explain_unsafe_globals()  # a refused global is named in one line
    not_a_checkpoint = "must be a fairseq checkpoint that torch loads safely (weights_only)"
    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except Exception as err:  # pickle, zip, truncated file, a global safe loading refuses...
        raise cli.bad_value(option, not_a_checkpoint, f"{path} ({_reason(err, path)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise cli.bad_value(option, not_a_checkpoint, f"{path} (it holds no model weights)")
    if state.get("args") is not None:
        cfg = convert_namespace_to_omegaconf(state["args"])
    elif state.get("cfg") is not None:
        cfg = state["cfg"]
    else:
        raise cli.bad_value(option, not_a_checkpoint, f"{path} (it holds no cfg or args)")

    task_cfg = copy.deepcopy(cfg.task)
    if data:
        task_cfg.data = data
    for key, lang in zip(("source_lang", "target_lang"), langs or ()):
        if lang is not None and key in task_cfg and task_cfg[key] is None:
            task_cfg[key] = lang
    where = task_cfg.get("data") or ""
    data_flag = data_option.split()[0]
    findable = f"must be a checkpoint whose dictionaries can be found (else pass {data_option} " \
               f"holding them)"
    if data:
        cli.check_input_dir(data_flag, data)
    elif not (where and os.path.isdir(utils.split_paths(where)[0])):
        raise cli.bad_value(option, findable,
                            f"{path}, whose data directory {where!r} does not exist here")
    try:
        task = tasks.setup_task(task_cfg, from_checkpoint=True)
    except Exception as err:  # fairseq raises plain Exceptions for missing dictionaries/languages
        if data:
            raise cli.bad_value(data_flag, f"must name the directory holding the dictionaries of "
                                           f"{path}", f"{data} ({cli.first_line(err)})") from None
        raise cli.bad_value(option, findable, f"{path}, whose data directory {where} fails: "
                                              f"{cli.first_line(err)}") from None
    return Checkpoint(path, state, cfg, task)


def dictionary_difference(theirs: Sequence[str], ours: Sequence[str]) -> Optional[str]:
    """``None`` if the symbol lists are equal, else ``"at index i: 'a' instead of 'b'"`` for the
    first differing symbol (``theirs[i]`` instead of ``ours[i]``; ``the end`` past a list's end)."""
    for i in range(max(len(theirs), len(ours))):
        a = repr(theirs[i]) if i < len(theirs) else "the end"
        b = repr(ours[i]) if i < len(ours) else "the end"
        if a != b:
            return f"at index {i}: {a} instead of {b}"
    return None


def check_dictionaries(model_task, reference_task, *, option: str, path: str,
                       reference: str) -> None:
    """Refuse a model whose source or target dictionary differs from ``reference_task``'s.

    Compared symbol by symbol (a side that either task lacks is skipped); the error names the
    first differing symbol.  ``reference`` names the reference in the message (``the student``,
    ``DATA (data-bin)``).
    """
    for side in ("target", "source"):
        theirs = getattr(model_task, f"{side}_dictionary", None)
        ours = getattr(reference_task, f"{side}_dictionary", None)
        if theirs is None or ours is None:
            continue
        difference = dictionary_difference(list(theirs.symbols), list(ours.symbols))
        if difference:
            raise cli.bad_value(option, f"must use the {side} dictionary of {reference}",
                                f"{path}, whose {side} dictionary differs {difference}")


def build_model(checkpoint: Checkpoint, *, option: str = "--path") -> torch.nn.Module:
    """The model of a checkpoint, built with its own task, in eval mode, parameters frozen."""
    from fairseq import checkpoint_utils

    try:
        models, _, _ = checkpoint_utils.load_model_ensemble_and_task(
            [checkpoint.path], task=checkpoint.task, state=checkpoint.state)
    except Exception as err:
        raise cli.bad_value(option, "must be a checkpoint whose model can be built",
                            f"{checkpoint.path} ({cli.first_line(err)})") from None
    model = models[0]
    model.eval()
    model.requires_grad_(False)
    return model


def load_ensemble(spec: Union[str, Sequence[str]], task, *, option: str = "--path",
                  reference: str = "the data", data: Optional[str] = None,
                  data_option: str = "--data DIR",
                  preloaded: Optional[dict] = None) -> list[torch.nn.Module]:
    """The models of ``spec`` (``a.pt:b.pt``), each checked against ``task``'s dictionaries.

    ``data``/``data_option``: see :func:`read_checkpoint`; ``reference`` names ``task`` in the
    pairing error (:func:`check_dictionaries`); ``preloaded``: ``{path: Checkpoint}`` already
    read.  The models are on CPU, in eval mode, with frozen parameters.
    """
    paths = split_paths(spec)
    if not paths:
        raise cli.bad_value(option, "must name a checkpoint (or several separated by ':')",
                            repr(spec))
    task_cfg = getattr(task, "cfg", None)
    langs = (getattr(task_cfg, "source_lang", None), getattr(task_cfg, "target_lang", None))
    models = []
    for path in paths:
        checkpoint = (preloaded or {}).get(path) or read_checkpoint(
            path, option=option, data=data, data_option=data_option, langs=langs)
        check_dictionaries(checkpoint.task, task, option=option, path=path, reference=reference)
        models.append(build_model(checkpoint, option=option))
    return models


def output_projection(model: torch.nn.Module, *, option: str = "--path",
                      path: Optional[str] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(weight K x D, bias K or None)`` of the model's output layer: ``logits = h W^T + b``.

    Known: a plain linear output layer (fairseq's transformer decoders' ``output_projection``,
    shared with the embeddings or not) and the LSTM decoder's (``fc_out`` or the shared
    embeddings).  Anything else (an adaptive softmax, another decoder) is refused in one line.
    """
    from fairseq.models.lstm import LSTMDecoder

    decoder = getattr(model, "decoder", model)
    what = path or type(model).__name__
    allowed = "must be a model with a plain linear output layer"
    if getattr(decoder, "adaptive_softmax", None) is not None:
        raise cli.bad_value(option, allowed, f"{what}, whose decoder uses an adaptive softmax")
    if isinstance(decoder, LSTMDecoder):
        if decoder.share_input_output_embed:
            return decoder.embed_tokens.weight, None
        return decoder.fc_out.weight, decoder.fc_out.bias
    projection = getattr(decoder, "output_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return projection.weight, projection.bias
    raise cli.bad_value(option, allowed, f"{what}, whose decoder {type(decoder).__name__} has "
                                         f"no output layer ls_plugins knows")


def epoch_batches(task, split: str, *, max_tokens: Optional[int], batch_size: Optional[int] = None,
                  max_positions=None, ignore_invalid_inputs: bool = False,
                  required_batch_size_multiple: int = 1, seed: int = 1,
                  split_option: str = "--gen-subset"):
    """One unshuffled epoch of the batches of ``task``'s loaded ``split``, as ``fairseq-generate``
    builds them.

    A ``max_tokens`` smaller than the longest example is refused in one line (``--max-tokens``)
    instead of fairseq's assertion; so is, unless ``ignore_invalid_inputs``, an example longer
    than ``max_positions`` allows (named by ``split_option``).
    """
    dataset = task.dataset(split)
    try:
        return task.get_batch_iterator(
            dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size,
            max_positions=max_positions, ignore_invalid_inputs=ignore_invalid_inputs,
            required_batch_size_multiple=required_batch_size_multiple, seed=seed, num_workers=0,
            disable_iterator_cache=True,  # a cached iterator ignores these options
        ).next_epoch_itr(shuffle=False)
    except AssertionError as err:  # "Sentences lengths should not exceed max_tokens=N"
        if "max_tokens" not in str(err):
            raise
        longest = int(max(dataset.num_tokens(i) for i in range(len(dataset))))
        raise cli.bad_value("--max-tokens", f"must be at least the longest example of {split!r} "
                                            f"({longest} tokens)", max_tokens) from None
    except Exception as err:  # a plain Exception for an example longer than the models accept
        if "is invalid" not in str(err):
            raise
        raise cli.bad_value(split_option, "must hold only examples the models accept (or pass "
                                          "--skip-invalid-size-inputs-valid-test)",
                            f"{split} ({cli.first_line(err)})") from None
