"""ls_plugins.vision.models and ls_plugins.vision.data: architectures, splits, augmentation."""
import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ls_plugins.vision import data, models


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- models ---------------------------------------------------------------------------------------
# He et al. (2016) Table 6 reports 0.27M / 0.46M / 0.85M / 1.7M parameters; the exact counts of
# option-A CIFAR ResNets with 10 classes (16*9*3 stem, BN, 6n 3x3 convs, 64x10 linear) are these.
@pytest.mark.parametrize("name, expected", [("resnet20", 269_722), ("resnet32", 464_154),
                                            ("resnet56", 853_018), ("resnet110", 1_727_962)])
def test_cifar_resnet_parameter_counts(name, expected):
    model = models.build_model(name, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet_depth_counts_conv_and_linear_layers():
    model = models.build_model("resnet56", num_classes=100)
    weighted = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weighted) == 56  # 1 stem conv + 3 stages x 9 blocks x 2 convs + 1 linear


def test_option_a_shortcut_is_subsampling_with_zero_channels():
    x = torch.randn(2, 16, 8, 8)
    out = models.ShortcutA(pad=8)(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(out[:, :8]) == 0 and torch.count_nonzero(out[:, 24:]) == 0


# Where each model's penultimate activations come from, seen from outside: the module whose output
# a forward hook records during model(x), and what turns that output into the activations.
PENULTIMATE_SOURCE = {
    "resnet20": (lambda m: m.stages, lambda out: out.mean(dim=(2, 3))),       # global average pool
    "alexnet": (lambda m: m.fully_connected[2], torch.relu),                 # fc 384 -> 192, ReLU
    "smallcnn": (lambda m: m.features, lambda out: out.mean(dim=(2, 3))),     # global average pool
    "mlp": (lambda m: m.hidden[-3], torch.relu),                             # last hidden linear, ReLU
}


@pytest.mark.parametrize("name, width", [("resnet20", 64), ("alexnet", 192), ("smallcnn", 128),
                                         ("mlp", 512)])
@pytest.mark.parametrize("in_channels, size", [(3, 32), (1, 8)])
def test_models_expose_penultimate_activations_and_last_layer(name, width, in_channels, size):
    """penultimate(x) equals the activations recorded by a forward hook inside model(x), pooled
    or rectified by hand; the logits are those activations times the last layer's weights plus
    its bias, computed here with numpy in float64."""
    torch.manual_seed(0)
    model = models.build_model(name, num_classes=7, in_channels=in_channels, image_size=size).eval()
    source, to_activations = PENULTIMATE_SOURCE[name]
    recorded = []
    source(model).register_forward_hook(lambda module, inputs, output: recorded.append(output.clone()))
    x = torch.randn(5, in_channels, size, size)
    with torch.no_grad():
        logits = model(x)
        (hooked,) = recorded
        features = model.penultimate(x)
    assert isinstance(model.last_layer, torch.nn.Linear)
    assert features.shape == (5, width) and model.last_layer.in_features == width
    torch.testing.assert_close(features, to_activations(hooked), rtol=1e-5, atol=1e-6)
    weight = model.last_layer.weight.detach().double().numpy()
    bias = model.last_layer.bias.detach().double().numpy()
    expected = to_activations(hooked).double().numpy() @ weight.T + bias
    np.testing.assert_allclose(logits.double().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_mlp_is_784_512_512_10_with_dropout_only_in_training():
    model = models.build_model("mlp", 10, 1, 28)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 512), (512, 512), (512, 10)]
    assert sum(p.numel() for p in model.parameters()) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
    model = models.build_model("mlp", 10, 1, 28, depth=1, width=256, dropout=0.5)
    x = torch.rand(64, 1, 28, 28)
    torch.manual_seed(0)
    with torch.no_grad():
        kept = model.eval().penultimate(x)
        dropped = model.train().penultimate(x)
    active = kept > 0
    zeroed = (dropped[active] == 0).float().mean().item()
    assert 0.45 < zeroed < 0.55  # p = 0.5 of the active units dropped ...
    survivors = active & (dropped != 0)
    torch.testing.assert_close(dropped[survivors], 2 * kept[survivors])  # ... the rest scaled by 1/(1-p)
    with pytest.raises(ValueError, match="model 'smallcnn' takes no options"):
        models.build_model("smallcnn", 10, 1, 8, width=3)


def test_unknown_model_is_a_value_error():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        models.build_model("vgg", 10)


# -- digits and synthetic ---------------------------------------------------------------------------
def test_digits_split_is_fixed_disjoint_stratified_and_standardised():
    from sklearn.datasets import load_digits

    splits = data.build_splits("digits")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1077, 360, 360)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 8)
    train, val, test = (set(s.indices) for s in (splits.train, splits.val, splits.test))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 1797
    assert splits.test.indices == data.build_splits("digits").test.indices  # fixed seed
    labels = load_digits().target
    counts = np.bincount(labels[splits.test.indices], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # stratified: 360 / 10 classes
    train_pixels = splits.train.base.images[splits.train.indices]
    assert abs(float(train_pixels.mean())) < 1e-5 and abs(float(train_pixels.std()) - 1) < 1e-5
    # the stored images are x / 16 standardised: recover sklearn's raw pixels
    raw = torch.as_tensor(load_digits().data[:5], dtype=torch.float32).reshape(-1, 1, 8, 8)
    recovered = splits.train.base.images[:5]
    corr = np.corrcoef(raw.flatten(), recovered.flatten())[0, 1]
    assert corr > 0.999999


def test_digits_training_images_are_augmented_and_evaluation_images_are_not():
    splits = data.build_splits("digits")
    torch.manual_seed(0)
    crops = torch.stack([splits.train[0][0] for _ in range(20)])
    assert crops.shape == (20, 1, 8, 8)
    assert len({tuple(c.flatten().tolist()) for c in crops}) > 1  # random 1-pixel shifts
    original = splits.train.base.images[splits.train.indices[0]]
    assert any(torch.equal(c, original) for c in crops)  # the unshifted crop occurs
    assert torch.equal(splits.test[3][0], splits.test.base.images[splits.test.indices[3]])
    assert splits.test[3][1] == int(splits.test.base.labels[splits.test.indices[3]])


def test_no_augment_gives_training_images_the_evaluation_transform():
    splits = data.build_splits("digits", augment=False)
    original = splits.train.base.images[splits.train.indices[0]]
    torch.manual_seed(0)
    assert all(torch.equal(splits.train[0][0], original) for _ in range(20))
    assert splits.train.indices == data.build_splits("digits").train.indices


def test_synthetic_set_is_cifar_shaped_and_flip_crop_augmented():
    splits = data.build_splits("synthetic")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1024, 256, 256)
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    torch.manual_seed(1)
    views = [splits.train[0][0] for _ in range(30)]
    padded = F.pad(splits.train.base.images[0], (4, 4, 4, 4))
    crops = [image[:, dy:dy + 32, dx:dx + 32] for image in (padded, padded.flip(-1))
             for dy in range(9) for dx in range(9)]
    for view in views:  # a 32x32 crop of the 4-pixel zero-padded image, maybe mirrored
        assert any(torch.equal(view, crop) for crop in crops)
    assert len({tuple(v.flatten().tolist()) for v in views}) > 5


# -- CIFAR without downloading -------------------------------------------------------------------
def write_fake_cifar10(root, per_batch=8, seed=0):
    """torchvision's on-disk CIFAR-10 format (python pickles) with a few random images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)


@pytest.fixture
def no_network_cifar(monkeypatch):
    """CIFAR's md5 checks pass for any existing file; downloading fails as without internet."""
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)


def test_cifar_splits_hold_out_validation_and_standardise(tmp_path, no_network_cifar):
    write_fake_cifar10(tmp_path)
    splits = data.build_splits("cifar10", str(tmp_path), val_size=10)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 8)
    assert not set(splits.train.indices) & set(splits.val.indices)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 3, 32)
    raw, label = splits.test.base.data[2], splits.test.base.targets[2]  # HWC uint8
    mean, std = data.CIFAR_STATS["cifar10"]
    expected = (torch.as_tensor(raw).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]) \
        / torch.tensor(std)[:, None, None]
    image, got_label = splits.test[2]
    torch.testing.assert_close(image, expected)
    assert got_label == label
    torch.manual_seed(0)
    views = torch.stack([splits.train[0][0] for _ in range(10)])
    assert views.shape == (10, 3, 32, 32) and len({float(v.sum()) for v in views}) > 1


def test_missing_cifar_that_cannot_download_names_data_dir(tmp_path, no_network_cifar):
    with pytest.raises(data.DataUnavailableError) as error:
        data.build_splits("cifar100", str(tmp_path / "nothing"))
    message = str(error.value)
    assert message.startswith("--data-dir: CIFAR-100 is not in")
    assert "Temporary failure in name resolution" in message and "\n" not in message


def test_fake_cifar_trains_end_to_end_with_resnet20(tmp_path, no_network_cifar):
    from ls_plugins.vision import train

    write_fake_cifar10(tmp_path / "cifar", per_batch=16)
    out = tmp_path / "run"
    train.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--val-size", "16",
                "--model", "resnet20", "--epochs", "1", "--batch-size", "16", "--workers", "1",
                "--quiet", "--output-dir", str(out)])
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["model"] == "resnet20" and checkpoint["num_classes"] == 10
    assert checkpoint["optimizer"]["state"]  # momentum buffers exist: it took SGD steps


def test_unknown_dataset_is_a_value_error():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.build_splits("mnist")
