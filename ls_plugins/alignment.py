"""Which generated tokens are correct: a minimum-edit-distance alignment to the reference.

Used for *hypothesis* calibration (inference calibration, Wang et al. ACL 2020): a token that
beam search generated counts as correct when a Levenshtein alignment of the hypothesis with the
reference aligns it to an identical reference token.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .cli import bad_value


def _token_ids(option: str, tokens: Union[Tensor, Sequence[int]]) -> np.ndarray:
    tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise bad_value(option, "must be a 1-D sequence of token ids", f"shape {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.is_floating_point() or tokens.is_complex()
                           or tokens.dtype == torch.bool):
        raise bad_value(option, "must hold integer token ids", tokens.dtype)
    return tokens.detach().cpu().to(torch.int64).numpy()


def hypothesis_correctness(hypothesis: Union[Tensor, Sequence[int]],
                           reference: Union[Tensor, Sequence[int]]) -> Tensor:
    """Per hypothesis token, whether a minimum-edit-distance alignment aligns it to an identical
    reference token (a BoolTensor as long as ``hypothesis``).

    Alignments are scored lexicographically: fewest edits (substitutions, insertions and
    deletions, each costing 1), then most matches ("matches preferred on ties").  The dynamic
    programme adds ``E = len(hypothesis) + len(reference) + 1`` per edit and ``-1`` per match
    (``E`` exceeds any number of matches, so the order is lexicographic); each row is solved in
    numpy with a running minimum for the within-row (reference-skipping) moves.  The backtrace
    from the end prefers, among moves on an optimal path: a match, then a substitution, then
    leaving the hypothesis token unmatched, then skipping the reference token.  Substituted and
    unmatched hypothesis tokens are incorrect.

    >>> hypothesis_correctness([5, 6, 7, 8], [5, 9, 7, 8]).tolist()
    [True, False, True, True]
    >>> hypothesis_correctness([1, 2], [2, 1]).tolist()  # a swap: one token can match
    [True, False]
    """
    hyp, ref = _token_ids("hypothesis", hypothesis), _token_ids("reference", reference)
    m, n = len(hyp), len(ref)
    correct = np.zeros(m, dtype=bool)
    if m == 0 or n == 0:
        return torch.from_numpy(correct)
    edit = m + n + 1
    skip_cost = np.arange(n + 1, dtype=np.int64) * edit
    cost = np.empty((m + 1, n + 1), dtype=np.int64)
    cost[0] = skip_cost
    for i in range(1, m + 1):
        best = cost[i - 1] + edit                                   # hypothesis token unmatched
        diagonal = cost[i - 1, :-1] + np.where(ref == hyp[i - 1], -1, edit)
        np.minimum(best[1:], diagonal, out=best[1:])                # match or substitution
        # skipping reference tokens: cost[i, j] = min_{j' <= j} best[j'] + (j - j') * edit
        cost[i] = np.minimum.accumulate(best - skip_cost) + skip_cost
    i, j = m, n
    while i > 0 and j > 0:
        here = cost[i, j]
        if hyp[i - 1] == ref[j - 1] and here == cost[i - 1, j - 1] - 1:
            correct[i - 1] = True
            i, j = i - 1, j - 1
        elif hyp[i - 1] != ref[j - 1] and here == cost[i - 1, j - 1] + edit:
            i, j = i - 1, j - 1
        elif here == cost[i - 1, j] + edit:
            i -= 1
        else:
            j -= 1
    return torch.from_numpy(correct)
