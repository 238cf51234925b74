"""Corpus BLEU with Poisson-bootstrap intervals (ls_plugins/bleu_bootstrap.py) against sacreBLEU."""
import random

import numpy as np
import pytest
import sacrebleu
import torch

from ls_plugins.bleu_bootstrap import (bleu_from_statistics, bleu_with_interval,
                                       paired_bleu_interval, read_generate_output,
                                       replicate_bleu, sentence_statistics)
from ls_plugins.calibration import CalibrationStats
from ls_plugins.cli import UsageError

# Hypotheses shorter than their references in total (brevity penalty < 1), an empty hypothesis,
# sentences without any 4-gram match, punctuation that 13a splits.
REFERENCES = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good.",
    "And God called the light Day, and the darkness he called Night.",
    "And the evening and the morning were the first day.",
    "These are the generations of the heavens and of the earth.",
    "And the LORD God formed man of the dust of the ground.",
]
HYPOTHESES = [
    "In the beginning God made the heaven and the earth.",
    "The earth was empty and void, and darkness upon the deep.",
    "God said: let light be, and light was.",
    "",
    "God named the light day and the dark night.",
    "And the evening and the morning were the first day.",
    "Those are the generations of heaven and earth.",
    "The Lord formed a man from dust.",
]
IDS = [7, 3, 12, 0, 5, 9, 1, 4]  # sentence ids, not positions


def test_summed_statistics_are_sacrebleu_corpus_bleu():
    stats = sentence_statistics(HYPOTHESES, REFERENCES)
    assert stats.shape == (8, 10) and stats.dtype == np.int64
    corpus = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES])
    assert corpus.bp < 1.0
    assert bleu_from_statistics(stats.sum(axis=0)) == corpus.score
    # empty hypothesis: "And God saw the light , that it was good ." has 11 13a tokens
    assert stats[3].tolist() == [0] * 8 + [0, 11]
    assert stats[7, 3] == 0 and stats[7, 7] > 0  # no 4-gram match, some 4-grams
    one = sacrebleu.corpus_bleu([HYPOTHESES[2]], [[REFERENCES[2]]])
    assert stats[2].tolist() == [*one.counts, *one.totals, one.sys_len, one.ref_len]
    # no 4-gram match in the whole corpus: sacreBLEU's exp smoothing decides the score
    subset = [2, 3, 4, 7]
    hyps, refs = [HYPOTHESES[i] for i in subset], [REFERENCES[i] for i in subset]
    assert stats[subset, 3].sum() == 0
    assert bleu_from_statistics(stats[subset].sum(axis=0)) == sacrebleu.corpus_bleu(hyps, [refs]).score
    # tokenizer and case options reach sacreBLEU
    lowered = sentence_statistics(HYPOTHESES, REFERENCES, tokenize="none", lowercase=True)
    expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], tokenize="none", lowercase=True)
    assert bleu_from_statistics(lowered.sum(axis=0)) == expected.score != corpus.score


def test_replicate_is_bleu_of_the_corpus_expanded_by_its_weights():
    """The weights come from calibration statistics of the same sentences and seed (one
    prediction per sentence, each in its own bin): replicate r counts sentence g w[r, g] times."""
    bootstrap, seed = 30, 11
    calibration = CalibrationStats(n_bins=len(IDS), bootstrap=bootstrap, seed=seed)
    confidence = (torch.arange(len(IDS), dtype=torch.float64) + 0.5) / len(IDS)
    calibration.update_confidences(confidence, torch.ones(len(IDS), dtype=torch.bool),
                                   groups=torch.tensor(IDS))
    weights = calibration.replicate_sums[:, :len(IDS)].long().tolist()
    result = bleu_with_interval(sentence_statistics(HYPOTHESES, REFERENCES), IDS, bootstrap, seed)
    assert result["bleu"] == sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score
    assert (result["bootstrap"], result["seed"], len(result["replicates"])) == (bootstrap, seed, bootstrap)
    checked = 0
    for r in range(bootstrap):
        hyps = [h for g, h in enumerate(HYPOTHESES) for _ in range(weights[r][g])]
        refs = [t for g, t in enumerate(REFERENCES) for _ in range(weights[r][g])]
        if len(set(weights[r])) > 2 and hyps:  # weights of 0, 1 and more
            assert result["replicates"][r] == pytest.approx(
                sacrebleu.corpus_bleu(hyps, [refs]).score, rel=1e-12, abs=1e-12)
            checked += 1
    assert checked >= 5
    assert len(set(result["replicates"])) > bootstrap // 2
    assert result["interval"] == pytest.approx(np.quantile(result["replicates"], [0.025, 0.975]).tolist())


def _noisy_copy(words, rng, rate):
    return " ".join(w if rng.random() > rate else rng.choice(["a", "the", "of", "it"]) for w in words)


def test_paired_interval_is_narrower_than_independent_replicates():
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(60)]
    references = [[rng.choice(vocabulary) for _ in range(rng.randint(6, 14))] for _ in range(60)]
    system_a = [_noisy_copy(words, rng, 0.3) for words in references]
    system_b = list(system_a)
    for g in (2, 17, 31, 44, 58):
        system_b[g] = _noisy_copy(references[g], rng, 0.6)
    references = [" ".join(words) for words in references]
    ids = list(range(100, 160))
    stats_a, stats_b = (sentence_statistics(s, references) for s in (system_a, system_b))
    low, high = paired_bleu_interval(stats_a, stats_b, ids, 200, seed=5)
    difference = (sacrebleu.corpus_bleu(system_a, [references]).score
                  - sacrebleu.corpus_bleu(system_b, [references]).score)
    assert 0.0 < low < difference < high
    unpaired = replicate_bleu(stats_a, ids, 200, seed=5) - replicate_bleu(stats_b, ids, 200, seed=6)
    unpaired_low, unpaired_high = np.quantile(unpaired, [0.025, 0.975])
    assert high - low < 0.5 * (unpaired_high - unpaired_low)
    assert paired_bleu_interval(stats_a, stats_a, ids, 200, seed=5) == (0.0, 0.0)


GENERATE_OUTPUT = """\
2026-11-25 10:00:00 | INFO | fairseq_cli.generate | Namespace(nbest=2, beam=5)
2026-11-25 10:00:01 | INFO | fairseq.tasks.translation | [de] dictionary: 1000 types
S-12\tim anfang schuf gott
T-12\tIn the beginning God created
H-12\t-0.31\tIn the beginning God made
D-12\t-0.31\tIn the beginning God made
P-12\t-0.1 -0.2 -0.3 -0.4 -0.5 -0.6
H-12\t-0.52\tAt first God made
D-12\t-0.52\tAt first God made
P-12\t-0.2 -0.3 -0.4 -0.5 -0.6
S-3\tund es ward licht
T-3\tAnd there was light.
H-3\t-1.20\t
D-3\t-1.20\t
P-3\t-1.20
H-3\t-1.35\tlight
D-3\t-1.35\tlight
P-3\t-0.9 -0.45
S-0\tgott sah
T-0\tGod saw\tthe light
H-0\t-0.70\tGod saw the light
D-0\t-0.70\tGod saw the light
P-0\t-0.7 -0.7 -0.7 -0.7 -0.7
2026-11-25 10:00:02 | INFO | fairseq_cli.generate | Translated 3 sentences (14 tokens) in 0.1s
Generate test with beam=5: BLEU4 = 41.20, 70.0/50.0/40.0/30.0 (BP=1.000, ratio=1.0)
"""


def test_read_generate_output(tmp_path):
    path = tmp_path / "generate-test.txt"
    path.write_text(GENERATE_OUTPUT, encoding="utf-8")
    assert read_generate_output(str(path)) == {
        0: ("God saw the light", "God saw\tthe light"),
        3: ("", "And there was light."),
        12: ("In the beginning God made", "In the beginning God created"),
    }
    path.write_text(GENERATE_OUTPUT.replace("T-3\t", "X-3\t"), encoding="utf-8")
    with pytest.raises(UsageError, match="no T-3"):
        read_generate_output(str(path))
    path.write_text("2026-11-25 10:00:00 | INFO | nothing generated\n", encoding="utf-8")
    with pytest.raises(UsageError, match="D-<id> lines"):
        read_generate_output(str(path))


def test_bad_input_is_rejected():
    stats = sentence_statistics(HYPOTHESES, REFERENCES)
    with pytest.raises(UsageError, match="ids: 8 distinct sentence ids"):
        bleu_with_interval(stats, IDS[:-1] + [IDS[0]], 10, 0)
    with pytest.raises(UsageError, match="level: must be in"):
        paired_bleu_interval(stats, stats, IDS, 10, 0, level=1.0)
    with pytest.raises(UsageError, match="bootstrap"):
        bleu_with_interval(stats, IDS, 0, 0)
    with pytest.raises(UsageError, match="references: one per hypothesis"):
        sentence_statistics(HYPOTHESES, REFERENCES[:-1])
