"""scripts/seq_distill.sh: sequence-level distillation (Kim & Rush 2016) with stock fairseq."""
import numpy as np
import pytest

from conftest import REPO, TINY_TRANSFORMER, run

STUDENT = ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
           "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64"]


def load_split(directory, split, lang):
    from fairseq.data import data_utils
    return data_utils.load_indexed_dataset(str(directory / f"{split}.es-en.{lang}"), None)


def seq_distill(teacher, data, out, *student_args, **env):
    return run(["env", *[f"{k}={v}" for k, v in env.items()], "bash",
                REPO / "scripts" / "seq_distill.sh", teacher, data, out, *student_args])


def check_distilled_corpus(bible, out, subset, n):
    srcs = (out / "text" / f"{subset}.es").read_text().splitlines()
    hyps = (out / "text" / f"{subset}.en").read_text().splitlines()
    assert len(srcs) == len(hyps) == n
    # sources come back in example-id order, token for token
    assert srcs == (bible / "spm" / f"{subset}.es").read_text().splitlines()
    original = load_split(bible / "bin", subset, "es")
    distilled_src = load_split(out / "bin", "train", "es")
    distilled_tgt = load_split(out / "bin", "train", "en")
    assert len(distilled_src) == len(distilled_tgt) == n
    for i in (0, n // 2, n - 1):
        assert np.array_equal(distilled_src[i].numpy(), original[i].numpy())
        assert len(distilled_tgt[i]) == len(hyps[i].split()) + 1  # + </s>
    # validation stays on the real references
    assert (out / "bin" / "valid.es-en.en.bin").resolve() == (bible / "bin" / "valid.es-en.en.bin").resolve()
    assert (out / "bin" / "dict.en.txt").read_text() == (bible / "bin" / "dict.en.txt").read_text()


def test_seq_distill_on_a_small_split(bible, ls_checkpoint, tmp_path):
    out = tmp_path / "seqkd"
    result = seq_distill(ls_checkpoint, bible / "bin", out, *TINY_TRANSFORMER, *STUDENT,
                         "--criterion", "smoothed_ce", "--max-update", "3",
                         SUBSET="valid", BEAM="1", MAX_LEN_B="10")
    check_distilled_corpus(bible, out, "valid", 100)
    assert "done training" in result.stdout
    assert (out / "checkpoints" / "checkpoint_last.pt").exists()


def test_seq_distill_refuses_bad_input(bible, tmp_path):
    result = run(["bash", REPO / "scripts" / "seq_distill.sh", tmp_path / "nope.pt", bible / "bin",
                  tmp_path / "out"], check=False)
    assert result.returncode == 2 and "no such teacher checkpoint" in result.stderr


@pytest.mark.slow
def test_seq_distill_whole_training_set(bible, ls_checkpoint, tmp_path):
    out = tmp_path / "seqkd"
    seq_distill(ls_checkpoint, bible / "bin", out, *TINY_TRANSFORMER, *STUDENT,
                "--criterion", "smoothed_ce", "--max-update", "20", BEAM="2", MAX_LEN_B="20")
    check_distilled_corpus(bible, out, "train", 1500)
    assert (out / "checkpoints" / "checkpoint_last.pt").exists()
