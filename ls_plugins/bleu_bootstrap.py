"""Corpus BLEU with Poisson-bootstrap intervals over sentences, alone and paired.

Corpus BLEU is a function of summed per-sentence statistics.  Sentence ``g`` contributes the row
``s[g] = (m_1..m_4, t_1..t_4, c, r)``: matched (clipped) n-gram counts, hypothesis n-gram totals,
hypothesis length and reference length, exactly as sacreBLEU counts them.  With ``S = sum_g s[g]``

    BLEU(S) = 100 * BP * exp(1/4 * sum_n log p_n),   BP = min(1, exp(1 - r/c)),  p_n = m_n / t_n

with sacreBLEU's corpus default ``exp`` smoothing (a p_n with m_n = 0 becomes 1 / (2^k t_n), k
counting such orders so far), computed by ``sacrebleu.BLEU.compute_bleu``; ``BLEU(S)`` is then
``sacrebleu.corpus_bleu(hypotheses, [references]).score``.

Bootstrap replicate ``r`` weights every sentence with ``w[r, g] ~ Poisson(1)`` from
:func:`ls_plugins.bootstrap.poisson_weights` (``seed``, sentence ids, the group stream of the
calibration statistics, so the same seed and ids give the same weights as every other interval
of a report):

    BLEU_r = BLEU(sum_g w[r, g] s[g])                  (sentence g counted w[r, g] times)

The interval is the percentile interval of the ``BLEU_r``; the paired interval of two systems on
the same sentences is the percentile interval of ``BLEU_r(a) - BLEU_r(b)``, replicate by replicate.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import sacrebleu
import torch

from .bootstrap import percentile_interval, poisson_weights
from .calibration import GROUP_STREAM
from .cli import bad_value, check_int_at_least, check_open_unit

ORDER = 4
STATISTICS = tuple(f"matched_{n}" for n in range(1, ORDER + 1)) \
    + tuple(f"total_{n}" for n in range(1, ORDER + 1)) + ("hypothesis_length", "reference_length")


def sentence_statistics(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a",
                        lowercase: bool = False) -> np.ndarray:
    """``(n, 10)`` int64 rows of :data:`STATISTICS`, one per sentence (one reference each).

    sacreBLEU's sentence score carries the raw counts (its smoothing and effective order only
    change the score, never ``counts``, ``totals``, ``sys_len``, ``ref_len``)."""
    if len(hypotheses) != len(references):
        raise bad_value("references", f"one per hypothesis ({len(hypotheses)})", len(references))
    metric = sacrebleu.BLEU(tokenize=tokenize, lowercase=lowercase, effective_order=True)
    rows = []
    for hypothesis, reference in zip(hypotheses, references):
        score = metric.sentence_score(hypothesis, [reference])
        rows.append([*score.counts, *score.totals, score.sys_len, score.ref_len])
    return np.array(rows, dtype=np.int64).reshape(len(rows), len(STATISTICS))


def bleu_from_statistics(sums: Sequence[float]) -> float:
    """Corpus BLEU (0..100) of one row of summed :data:`STATISTICS` (``exp`` smoothing); the
    sums are whole numbers (counts weighted by Poisson draws)."""
    values = np.asarray(sums, dtype=np.float64).reshape(-1)
    if len(values) != len(STATISTICS) or not np.array_equal(values, np.rint(values)):
        raise bad_value("sums", f"{len(STATISTICS)} whole-number statistics {STATISTICS}", sums)
    sums = [int(x) for x in values]
    return float(sacrebleu.BLEU.compute_bleu(sums[:ORDER], sums[ORDER:2 * ORDER], sums[-2], sums[-1],
                                             smooth_method="exp").score)


def _checked(stats: np.ndarray, ids) -> tuple[np.ndarray, torch.Tensor]:
    stats = np.asarray(stats, dtype=np.float64)
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
    if stats.ndim != 2 or stats.shape[1] != len(STATISTICS):
        raise bad_value("stats", f"an (n, {len(STATISTICS)}) array", tuple(stats.shape))
    if len(ids) != len(stats) or len(torch.unique(ids)) != len(ids):
        raise bad_value("ids", f"{len(stats)} distinct sentence ids", ids.tolist())
    return stats, ids


def replicate_bleu(stats: np.ndarray, ids, bootstrap: int, seed: int) -> np.ndarray:
    """``bootstrap`` values ``BLEU_r = BLEU(sum_g w[r, g] stats[g])`` (``ids[g]``: sentence ids)."""
    stats, ids = _checked(stats, ids)
    weights = poisson_weights(seed, ids, check_int_at_least("bootstrap", bootstrap, 1), GROUP_STREAM)
    return np.array([bleu_from_statistics(row) for row in weights.numpy() @ stats])


def bleu_with_interval(stats: np.ndarray, ids, bootstrap: int, seed: int,
                       level: float = 0.95) -> dict:
    """Corpus BLEU of ``stats`` with its percentile interval over ``bootstrap`` replicates:
    ``{"bleu", "interval": [lo, hi], "level", "replicates", "bootstrap", "seed"}`` (JSON-ready)."""
    level = check_open_unit("level", level)
    replicates = replicate_bleu(stats, ids, bootstrap, seed)
    low, high = percentile_interval(torch.from_numpy(replicates), level)
    return {"bleu": bleu_from_statistics(np.asarray(stats).sum(axis=0)), "interval": [low, high],
            "level": level, "replicates": replicates.tolist(), "bootstrap": int(bootstrap),
            "seed": int(seed)}


def paired_bleu_interval(stats_a: np.ndarray, stats_b: np.ndarray, ids, bootstrap: int, seed: int,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``BLEU_r(a) - BLEU_r(b)``: rows of both belong to the sentences
    ``ids`` in the same order (same weights for both systems)."""
    level = check_open_unit("level", level)
    difference = replicate_bleu(stats_a, ids, bootstrap, seed) - replicate_bleu(stats_b, ids, bootstrap, seed)
    return percentile_interval(torch.from_numpy(difference), level)


_LINE = re.compile(r"^([TD])-(\d+)\t(.*)$")


def read_generate_output(path: str) -> dict[int, tuple[str, str]]:
    """``{sentence id: (hypothesis, reference)}`` from fairseq-generate's printed output: the
    detokenized hypothesis of the first ``D-<id>\\t<score>\\t<text>`` line of each id (the best
    of ``--nbest``) and the ``T-<id>\\t<text>`` reference; every other line is ignored."""
    hypotheses: dict[int, str] = {}
    references: dict[int, str] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            match = _LINE.match(line.rstrip("\r\n"))
            if match is None:
                continue
            kind, sentence, text = match.group(1), int(match.group(2)), match.group(3)
            if kind == "T":
                references.setdefault(sentence, text)
            else:
                hypotheses.setdefault(sentence, text.split("\t", 1)[1] if "\t" in text else "")
    if not hypotheses:
        raise bad_value(path, "fairseq-generate output with D-<id> lines", "none")
    for sentence in sorted(set(hypotheses) ^ set(references)):
        missing = "T-" if sentence in hypotheses else "D-"
        raise bad_value(path, "a T- and a D- line for every sentence id", f"no {missing}{sentence}")
    return {sentence: (hypotheses[sentence], references[sentence]) for sentence in sorted(hypotheses)}
