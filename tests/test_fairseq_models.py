"""ls_plugins.fairseq_models: checkpoints, ensembles, the dictionary pairing check, output layers."""
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import fairseq_setup, first_batch


class NotAllowlisted:
    """A class no allowlist holds: a checkpoint pickling one must be refused by safe loading."""


def tiny_dictionary(symbols):
    return types.SimpleNamespace(symbols=list(symbols))


def tiny_task(target, source=None):
    return types.SimpleNamespace(target_dictionary=tiny_dictionary(target),
                                 source_dictionary=None if source is None else tiny_dictionary(source))


def test_dictionary_difference_names_index_and_symbols():
    from ls_plugins.fairseq_models import dictionary_difference

    assert dictionary_difference(["<s>", "a", "b"], ["<s>", "a", "b"]) is None
    assert dictionary_difference(["<s>", "a", "c"], ["<s>", "a", "b"]) == "at index 2: 'c' instead of 'b'"
    assert dictionary_difference(["<s>", "a"], ["<s>", "a", "c"]) == "at index 2: the end instead of 'c'"
    assert dictionary_difference(["<s>", "a", "c"], ["<s>", "a"]) == "at index 2: 'c' instead of the end"


def test_check_dictionaries_compares_symbols_on_both_sides():
    from ls_plugins import cli
    from ls_plugins.fairseq_models import check_dictionaries

    ours = tiny_task(["<s>", "a", "b"], source=["<s>", "x", "y"])
    check_dictionaries(tiny_task(["<s>", "a", "b"], source=["<s>", "x", "y"]), ours,
                       option="--path", path="m.pt", reference="DATA")
    # same sizes, other symbols: refused on each side, target first
    with pytest.raises(cli.UsageError) as err:
        check_dictionaries(tiny_task(["<s>", "b", "a"], source=["<s>", "y", "x"]), ours,
                           option="--model m", path="m.pt", reference="DATA")
    assert str(err.value) == ("--model m: must use the target dictionary of DATA, got m.pt, whose "
                              "target dictionary differs at index 1: 'b' instead of 'a'")
    with pytest.raises(cli.UsageError) as err:
        check_dictionaries(tiny_task(["<s>", "a", "b"], source=["<s>", "x", "z"]), ours,
                           option="--path", path="m.pt", reference="the student")
    assert str(err.value) == ("--path: must use the source dictionary of the student, got m.pt, "
                              "whose source dictionary differs at index 2: 'z' instead of 'y'")
    # a side one task lacks (a language model) is not compared
    check_dictionaries(tiny_task(["<s>", "a", "b"]), ours, option="--path", path="m.pt",
                       reference="DATA")


def test_split_paths():
    from ls_plugins.fairseq_models import split_paths

    assert split_paths("a.pt:b.pt") == ["a.pt", "b.pt"]
    assert split_paths("a.pt::") == ["a.pt"]
    assert split_paths(["a.pt"]) == ["a.pt"]


def test_read_checkpoint_refuses_in_one_line(ls_checkpoint, tmp_path):
    import ls_plugins
    from ls_plugins import cli
    from ls_plugins.fairseq_models import read_checkpoint

    ls_plugins.register_fairseq()
    state = torch.load(ls_checkpoint, weights_only=True)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    unsafe = tmp_path / "unsafe.pt"
    torch.save({**state, "extra": NotAllowlisted()}, unsafe)
    no_model = tmp_path / "no_model.pt"
    torch.save({key: value for key, value in state.items() if key != "model"}, no_model)
    no_cfg = tmp_path / "no_cfg.pt"
    torch.save({key: value for key, value in state.items() if key not in ("cfg", "args")}, no_cfg)
    safely = "must be a fairseq checkpoint that torch loads safely (weights_only)"
    for path, start in [
            (tmp_path / "nope.pt", f"--path: must name an existing file, got {tmp_path / 'nope.pt'} "
                                   f"(no such file)"),
            (tmp_path, f"--path: must name a file, got {tmp_path} (a directory)"),
            (garbage, f"--path: {safely}, got {garbage} ("),
            (unsafe, f"--path: {safely}, got {unsafe} ("),
            (no_model, f"--path: {safely}, got {no_model} (it holds no model weights)"),
            (no_cfg, f"--path: {safely}, got {no_cfg} (it holds no cfg or args)")]:
        with pytest.raises(cli.UsageError) as err:
            read_checkpoint(str(path))
        message = str(err.value)
        assert message.startswith(start) and "\n" not in message, message
    with pytest.raises(cli.UsageError) as err:
        read_checkpoint(str(unsafe))
    assert "NotAllowlisted" in str(err.value)  # the refused global is named


def test_read_checkpoint_finds_the_dictionaries_or_says_how_to_give_them(bible, ls_checkpoint,
                                                                          tmp_path):
    import ls_plugins
    from ls_plugins import cli
    from ls_plugins.fairseq_models import read_checkpoint

    ls_plugins.register_fairseq()
    checkpoint = read_checkpoint(str(ls_checkpoint))
    assert list(checkpoint.task.target_dictionary.symbols) == \
        ["<s>", "<pad>", "</s>", "<unk>"] + [line.split()[0] for line in
                                             (bible / "bin" / "dict.en.txt").read_text().splitlines()]
    moved = tmp_path / "moved.pt"
    state = torch.load(ls_checkpoint, weights_only=True)
    state["cfg"]["task"]["data"] = "relative/data-bin"
    torch.save(state, moved)
    with pytest.raises(cli.UsageError) as err:
        read_checkpoint(str(moved), option="--teacher-path", data_option="--teacher-data DIR")
    assert str(err.value) == (
        f"--teacher-path: must be a checkpoint whose dictionaries can be found (else pass "
        f"--teacher-data DIR holding them), got {moved}, whose data directory 'relative/data-bin' "
        f"does not exist here")
    found = read_checkpoint(str(moved), data=str(bible / "bin"))
    assert list(found.task.target_dictionary.symbols) == list(checkpoint.task.target_dictionary.symbols)
    with pytest.raises(cli.UsageError) as err:
        read_checkpoint(str(moved), data=str(tmp_path), data_option="--teacher-data DIR",
                        langs=("es", "en"))
    assert str(err.value).startswith(f"--teacher-data: must name the directory holding the "
                                     f"dictionaries of {moved}, got {tmp_path} (")


def test_load_ensemble_equals_fairseq_loading(bible, ls_checkpoint):
    """Each model of ``a.pt:a.pt`` computes what fairseq's own loader's model computes; eval mode,
    frozen."""
    from fairseq import checkpoint_utils

    from ls_plugins.fairseq_models import load_ensemble

    _, task, _ = fairseq_setup(bible / "bin")
    models = load_ensemble(f"{ls_checkpoint}:{ls_checkpoint}", task)
    reference, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(ls_checkpoint)], task=task)
    reference[0].eval()
    sample = first_batch(task)
    with torch.no_grad():
        want = reference[0](**sample["net_input"])[0]
        for model in models:
            assert not model.training and not any(p.requires_grad for p in model.parameters())
            assert torch.equal(model(**sample["net_input"])[0], want)


def lstm(bible, *extra):
    """A tiny LSTM translation model on the Bible data (untrained)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(bible / "bin"), "--task", "translation", "--arch", "lstm", "--encoder-embed-dim", "16",
        "--decoder-embed-dim", "16", "--encoder-hidden-size", "16", "--decoder-hidden-size", "16",
        "--decoder-out-embed-dim", "16", "--optimizer", "adam", "--lr", "0.001", *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(1)
    return task, task.build_model(cfg.model).eval()


@pytest.mark.parametrize("kind", ["transformer", "lstm", "lstm-shared"])
def test_output_projection_gives_the_logits(bible, kind):
    """``features @ W.T + b`` equals the model's own logits (the whole forward pass)."""
    from ls_plugins.fairseq_models import output_projection

    if kind == "transformer":
        _, task, model = fairseq_setup(bible / "bin")
        model.eval()
    else:
        task, model = lstm(bible, *(["--share-decoder-input-output-embed"]
                                    if kind == "lstm-shared" else []))
    sample = first_batch(task)
    weight, bias = output_projection(model)
    assert weight.shape == (len(task.target_dictionary), weight.size(1))
    assert (bias is None) == (kind != "lstm")
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]
        encoder_out = model.encoder(sample["net_input"]["src_tokens"],
                                    src_lengths=sample["net_input"]["src_lengths"])
        features, _ = model.decoder.extract_features(sample["net_input"]["prev_output_tokens"],
                                                     encoder_out=encoder_out)
    assert torch.allclose(F.linear(features, weight, bias), logits, atol=1e-5, rtol=1e-5)


def test_output_projection_refuses_other_output_layers(bible):
    from ls_plugins import cli
    from ls_plugins.fairseq_models import output_projection

    cfg, task, _ = fairseq_setup(bible / "bin")
    for key, value in {"adaptive_softmax_cutoff": "100", "share_all_embeddings": False,
                       "share_decoder_input_output_embed": False}.items():
        setattr(cfg.model, key, value)
    adaptive = task.build_model(cfg.model)
    with pytest.raises(cli.UsageError) as err:
        output_projection(adaptive, option="--model a", path="a.pt")
    assert str(err.value) == ("--model a: must be a model with a plain linear output layer, got "
                              "a.pt, whose decoder uses an adaptive softmax")
    unknown = torch.nn.Module()
    unknown.decoder = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(cli.UsageError) as err:
        output_projection(unknown)
    assert str(err.value) == ("--path: must be a model with a plain linear output layer, got "
                              "Module, whose decoder Sequential has no output layer ls_plugins knows")


def test_epoch_batches_refuses_too_small_max_tokens(bible):
    from ls_plugins import cli
    from ls_plugins.fairseq_models import epoch_batches

    _, task, _ = fairseq_setup(bible / "bin")
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    longest = int(max(max(s, t) for s, t in zip(dataset.src_sizes, dataset.tgt_sizes)))
    batches = list(epoch_batches(task, "valid", max_tokens=longest))
    assert sorted(int(i) for b in batches for i in b["id"]) == list(range(len(dataset)))
    assert max(int(b["net_input"]["src_tokens"].numel()) for b in batches) <= longest
    with pytest.raises(cli.UsageError) as err:  # after a call with other options
        epoch_batches(task, "valid", max_tokens=longest - 1)
    assert str(err.value) == (f"--max-tokens: must be at least the longest example of 'valid' "
                              f"({longest} tokens), got {longest - 1}")
