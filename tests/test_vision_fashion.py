"""ls-vision on the real Fashion-MNIST (Debian's dataset-fashion-mnist): reading against
torchvision, the fixed split, standardisation and augmentation, the MLP and Adam end to end on
a tiny subset of the real files, checked against a numpy forward pass."""
import gzip
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ls_plugins.vision import data, models, train

FILES = {split: [os.path.join(data.FASHION_MNIST_DIR, name + ".gz") for name in names]
         for split, names in data.FASHION_MNIST_FILES.items()}
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.skipif(
    not all(os.path.isfile(path) for paths in FILES.values() for path in paths),
    reason=f"Debian's dataset-fashion-mnist is not installed ({data.FASHION_MNIST_DIR})")]


def raw_bytes(path):
    with gzip.open(path, "rb") as handle:
        return handle.read()


def test_reading_matches_torchvision_fashion_mnist(tmp_path):
    """torchvision's FashionMNIST (download=False) on the decompressed Debian files is the
    reference for images, labels and class names."""
    from torchvision.datasets import FashionMNIST

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in FILES["test"]:
        (raw / os.path.basename(path)[:-3]).write_bytes(raw_bytes(path))
    for path in FILES["train"]:  # torchvision checks that they exist; train=False never reads them
        (raw / os.path.basename(path)[:-3]).touch()
    reference = FashionMNIST(str(tmp_path), train=False, download=False)
    images, labels = data.read_fashion_mnist(data.FASHION_MNIST_DIR, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images, reference.data) and torch.equal(labels, reference.targets)
    assert data.FASHION_MNIST_CLASSES == tuple(reference.classes)
    assert torch.bincount(labels).tolist() == [1000] * 10  # the test set is balanced
    # the same files in torchvision's own layout (uncompressed) read the same
    again, _ = data.read_fashion_mnist(str(tmp_path), "test")
    assert torch.equal(again, images)


@pytest.fixture(scope="module")
def splits():
    return data.build_splits("fashion-mnist")


def test_fashion_mnist_split_is_fixed_and_standardised(splits):
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    order = torch.randperm(60000, generator=torch.Generator().manual_seed(0)).tolist()
    assert splits.train.indices == order[:55000] and splits.val.indices == order[55000:]
    # standardised with the mean and standard deviation of the 55,000 training images (numpy)
    raw = np.frombuffer(raw_bytes(FILES["train"][0]), dtype=np.uint8, offset=16).reshape(60000, 28, 28)
    labels = np.frombuffer(raw_bytes(FILES["train"][1]), dtype=np.uint8, offset=8)
    train_pixels = raw[order[:55000]].astype(np.float64) / 255
    mean, std = train_pixels.mean(), train_pixels.std(ddof=1)
    for position in (0, 4999):  # validation images are not augmented
        image, label = splits.val[position]
        expected = (raw[order[55000 + position]] / 255 - mean) / std
        np.testing.assert_allclose(image[0].double().numpy(), expected, rtol=1e-4, atol=1e-4)
        assert label == labels[order[55000 + position]]
    test_image, _ = splits.test[123]
    test_raw = np.frombuffer(raw_bytes(FILES["test"][0]), dtype=np.uint8, offset=16).reshape(10000, 28, 28)
    np.testing.assert_allclose(test_image[0].double().numpy(), (test_raw[123] / 255 - mean) / std,
                               rtol=1e-4, atol=1e-4)


def test_fashion_mnist_training_images_are_shifted_by_at_most_two_pixels(splits):
    original = splits.train.base.images[splits.train.indices[7]]
    background = float(original.min())  # black pixels, standardised
    padded = F.pad(original, (2, 2, 2, 2), value=background)
    crops = [padded[:, dy:dy + 28, dx:dx + 28] for dy in range(5) for dx in range(5)]
    torch.manual_seed(0)
    views = [splits.train[7][0] for _ in range(150)]
    for view in views:
        assert any(torch.equal(view, crop) for crop in crops)
    assert len({tuple(v.flatten().tolist()) for v in views}) > 5
    assert any(torch.equal(view, original) for view in views)  # no shift is one of the 25


@pytest.mark.parametrize("seed", range(5))
def test_random_shift_equals_torchvision_random_crop(seed):
    """The same draws from the torch RNG give the same crops as torchvision's RandomCrop."""
    from torchvision import transforms

    image = torch.randn(1, 28, 28)
    torch.manual_seed(seed)
    ours = [data.RandomShift(2, -0.8)(image) for _ in range(20)]
    torch.manual_seed(seed)
    reference = [transforms.RandomCrop(28, padding=2, fill=-0.8)(image) for _ in range(20)]
    assert all(torch.equal(a, b) for a, b in zip(ours, reference))


def test_missing_or_corrupt_fashion_mnist_names_data_dir(tmp_path):
    with pytest.raises(data.DataUnavailableError) as error:
        data.build_splits("fashion-mnist", str(tmp_path / "nothing"))
    message = str(error.value)
    assert message.startswith("--data-dir: must be a directory holding Fashion-MNIST's idx files "
                              "(Debian: apt-get install dataset-fashion-mnist")
    assert "nothing" in message and "\n" not in message
    for path in FILES["train"] + FILES["test"]:
        shutil.copy(path, tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(os.urandom(100))
    with pytest.raises(data.DataUnavailableError, match="^--data-dir: must be a directory holding"):
        data.build_splits("fashion-mnist", str(tmp_path))


def write_subset(folder, n_train, n_test):
    """The first images of the real files, as idx .gz files of their own (headers rewritten)."""
    folder.mkdir()
    for split, count in (("train", n_train), ("test", n_test)):
        images, labels = (raw_bytes(path) for path in FILES[split])
        header = bytes([0, 0, 8, 3]) + count.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        with gzip.open(folder / os.path.basename(FILES[split][0]), "wb") as handle:
            handle.write(header + images[16:16 + count * 784])
        with gzip.open(folder / os.path.basename(FILES[split][1]), "wb") as handle:
            handle.write(bytes([0, 0, 8, 1]) + count.to_bytes(4, "big") + labels[8:8 + count])
    return np.frombuffer(raw_bytes(FILES["test"][0]), dtype=np.uint8, offset=16)[:n_test * 784]


def numpy_mlp(state, images):
    """The MLP's logits in float64 numpy: relu(x W1^T + b1) ... then the last layer."""
    hidden = images.reshape(len(images), -1)
    layer = 1
    while f"hidden.{layer}.weight" in state:
        hidden = np.maximum(hidden @ state[f"hidden.{layer}.weight"].double().numpy().T
                            + state[f"hidden.{layer}.bias"].double().numpy(), 0.0)
        layer += 3  # Linear, ReLU, Dropout
    return hidden @ state["last_layer.weight"].double().numpy().T + state["last_layer.bias"].double().numpy()


def test_tiny_fashion_mnist_trains_an_mlp_with_adam(tmp_path):
    tiny = tmp_path / "tiny"
    test_raw = write_subset(tiny, n_train=600, n_test=200).reshape(200, 28, 28)
    out = tmp_path / "run"
    train.main(["--dataset", "fashion-mnist", "--data-dir", str(tiny), "--val-size", "100",
                "--model", "mlp", "--mlp-depth", "2", "--mlp-width", "64", "--optimizer", "adam",
                "--epochs", "3", "--batch-size", "50", "--label-smoothing", "0.05", "--quiet",
                "--output-dir", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert (final["val"]["count"], final["test"]["count"]) == (100, 200)
    assert metrics["class_names"] == list(data.FASHION_MNIST_CLASSES)
    assert metrics["args"]["momentum"] is None and metrics["history"][0]["lr"] == 0.001  # Adam's default
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["architecture"] == {"depth": 2, "width": 64, "dropout": 0.0}
    assert set(checkpoint["optimizer"]["state"][0]) >= {"exp_avg", "exp_avg_sq"}  # Adam's moments
    # the test metrics against a numpy forward pass of the saved weights, standardised by hand
    order = torch.randperm(600, generator=torch.Generator().manual_seed(0)).tolist()
    train_raw = np.frombuffer(raw_bytes(FILES["train"][0]), dtype=np.uint8, offset=16)[:600 * 784]
    train_pixels = train_raw.reshape(600, 28, 28)[order[:500]] / 255
    mean, std = train_pixels.mean(), train_pixels.std(ddof=1)
    logits = numpy_mlp(checkpoint["state_dict"], (test_raw / 255 - mean) / std)
    labels = np.frombuffer(raw_bytes(FILES["test"][1]), dtype=np.uint8, offset=8)[:200]
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    assert final["test_accuracy"] == pytest.approx((logits.argmax(1) == labels).mean(), abs=1e-12)
    assert final["test_nll"] == pytest.approx(-log_probs[np.arange(200), labels].mean(), rel=1e-4)
    assert final["test_accuracy"] > 0.5  # it learns (chance is 0.1)
    # the checkpoint is a teacher: it loads with its architecture
    model, _ = models.load_trained_model(str(out / "checkpoint.pt"))
    assert model.last_layer.in_features == 64 and len(model.hidden) == 7


def test_model_only_mlp_checkpoint_is_evaluated_with_its_architecture(tmp_path):
    """A teacher-format checkpoint (no run options) of a narrow MLP: --test-only builds the MLP
    the checkpoint describes, not the default 512-wide one."""
    tiny = tmp_path / "tiny"
    write_subset(tiny, n_train=300, n_test=100)
    model = models.build_model("mlp", 10, 1, 28, depth=1, width=16)
    torch.save({"model": "mlp", "num_classes": 10, "in_channels": 1, "image_size": 28,
                "architecture": {"depth": 1, "width": 16, "dropout": 0.0}, "dataset": "fashion-mnist",
                "state_dict": model.state_dict()}, tmp_path / "mlp.pt")
    train.main(["--resume", str(tmp_path / "mlp.pt"), "--test-only", "--data-dir", str(tiny),
                "--val-size", "50", "--quiet", "--output-dir", str(tmp_path / "eval")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["args"]["mlp_depth"], metrics["args"]["mlp_width"]) == (1, 16)
    assert metrics["parameters"] == 784 * 16 + 16 + 16 * 10 + 10
    assert metrics["final"]["test"]["count"] == 100
