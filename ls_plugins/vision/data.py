"""Image classification data for ``ls-vision``: train / validation / test splits.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), used at
  their native size with one channel, pixel values ``x / 16`` standardised with the training
  split's mean and standard deviation.  A fixed, stratified split (seed 0) gives 1,077 training,
  360 validation and 360 test images.  Training augmentation: random crop with 1-pixel padding.
  Works offline; the default data set.
* ``cifar10`` / ``cifar100``: torchvision's CIFAR (``download=True``); the validation split is the
  last ``val_size`` images (default 5,000) of a fixed permutation (seed 0) of the 50,000 training
  images, the test split is the official 10,000.  Per-channel standardisation with the usual CIFAR
  means and standard deviations; training augmentation: random 32x32 crop of the image padded by
  4 pixels, then a random horizontal flip.
* ``fashion-mnist``: the real Fashion-MNIST (Xiao et al. 2017: 28x28 grey images of clothing,
  10 classes, 60,000 training and 10,000 test images) from the four standard idx ``.gz`` files
  that Debian's ``dataset-fashion-mnist`` installs in :data:`FASHION_MNIST_DIR` (or from
  ``--data-dir``; never downloaded).  The validation split is the last ``val_size`` images
  (default 5,000) of a fixed permutation (seed 0) of the training images; pixel values ``x / 255``
  are standardised with the mean and standard deviation of the remaining training images.
  Training augmentation: a random translation by up to 2 pixels (random 28x28 crop of the image
  padded with 2 pixels of background).
* ``synthetic``: CIFAR-shaped (3x32x32, 10 classes) images, each a smooth random class template
  plus Gaussian noise; 1,024 / 256 / 256 images; CIFAR's augmentation.  For tests and benchmarks.

The validation split is never augmented; it is where the softmax temperature is fitted.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from ls_plugins import cli

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "synthetic")
NUM_CLASSES = {"digits": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "synthetic": 10}

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_DEFAULT_VAL_SIZE = 5000  # also Fashion-MNIST's
# Data sets whose validation split is held out of the official training images (--val-size).
TRAIN_SIZES = {"fashion-mnist": 60000, "cifar10": 50000, "cifar100": 50000}
DEFAULT_DATA_DIRS = {"cifar10": "data", "cifar100": "data",
                     "fashion-mnist": "/usr/share/datasets/fashion-mnist"}
FASHION_MNIST_DIR = DEFAULT_DATA_DIRS["fashion-mnist"]
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_PAD = 2
SPLIT_SEED = 0


class DataUnavailableError(RuntimeError):
    """A data set is neither on disk nor downloadable; the message names ``--data-dir``."""


@dataclass
class Splits:
    """The three splits of one data set and the shape of its images."""
    train: Dataset        # augmented
    val: Dataset          # not augmented: temperature fitting
    test: Dataset         # not augmented
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple = ()  # for plots


class TransformedSubset(Dataset):
    """``(transform(image), label)`` for the examples ``indices`` of ``base``."""

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Optional[Callable]):
        self.base = base
        self.indices = list(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label = self.base[self.indices[i]]
        return (image if self.transform is None else self.transform(image)), int(label)


class TensorImages(Dataset):
    """In-memory images ``(N, C, H, W)`` with integer labels ``(N,)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


class RandomShift:
    """A random translation by ``(dy, dx)``, each uniform in ``[-pad, pad]``, filling with
    ``fill``: a random crop of the image padded by ``pad`` (torchvision's ``RandomCrop(size,
    padding=pad, fill=fill)`` on a tensor, drawn from the same torch RNG, at a third of the cost)."""

    def __init__(self, pad: int, fill: float):
        self.pad, self.fill = pad, fill

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        dy, dx = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
        height, width = image.shape[-2:]
        padded = torch.nn.functional.pad(image, (self.pad,) * 4, value=self.fill)
        return padded[..., dy:dy + height, dx:dx + width]

    def __repr__(self) -> str:
        return f"RandomShift(pad={self.pad}, fill={self.fill:.4f})"


def labels_of(split: TransformedSubset) -> torch.Tensor:
    """The labels of a split's examples, in its order, without reading (or augmenting) images."""
    base = split.base
    labels = base.labels if isinstance(base, TensorImages) else torch.as_tensor(base.targets)
    return labels[torch.as_tensor(split.indices, dtype=torch.int64)]


def without_augmentation(splits: Splits) -> TransformedSubset:
    """The training split's images with the evaluation transform (no random augmentation)."""
    return TransformedSubset(splits.train.base, splits.train.indices, splits.test.transform)


def train_transform(dataset: str) -> Callable:
    """The training augmentation of ``dataset`` (see the module docstring)."""
    from torchvision import transforms

    if dataset == "digits":
        return transforms.RandomCrop(8, padding=1)
    crop_flip = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    if dataset == "synthetic":
        return transforms.Compose(crop_flip)
    mean, std = CIFAR_STATS[dataset]
    return transforms.Compose(crop_flip + [transforms.ToTensor(), transforms.Normalize(mean, std)])


def eval_transform(dataset: str) -> Optional[Callable]:
    """The evaluation transform of ``dataset``: standardisation only (None for in-memory sets)."""
    if dataset not in CIFAR_STATS:
        return None
    from torchvision import transforms

    mean, std = CIFAR_STATS[dataset]
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


def build_splits(dataset: str, data_dir: Optional[str] = None, *,
                 val_size: Optional[int] = None, augment: bool = True) -> Splits:
    """Train (augmented), validation and test splits of ``dataset`` (one of :data:`DATASETS`).

    ``data_dir``: where CIFAR is (or is downloaded to; default ``data``) or where the
    Fashion-MNIST files are (default :data:`FASHION_MNIST_DIR`).  ``val_size`` applies to the
    data sets of :data:`TRAIN_SIZES` (default 5,000 held out of the training images).
    ``augment=False``: training images get the evaluation transform only.
    """
    if dataset == "digits":
        splits = _digits_splits()
    elif dataset == "synthetic":
        splits = _synthetic_splits()
    elif dataset in TRAIN_SIZES:
        data_dir = DEFAULT_DATA_DIRS[dataset] if data_dir is None else data_dir
        val_size = CIFAR_DEFAULT_VAL_SIZE if val_size is None else val_size
        if dataset == "fashion-mnist":
            splits = _fashion_mnist_splits(data_dir, val_size)
        else:
            splits = _cifar_splits(dataset, data_dir, val_size)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if not augment:
        splits.train.transform = splits.test.transform
    return splits


def _seeded_permutation(n: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()


def _digits_splits() -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    pixels, labels = load_digits(return_X_y=True)
    indices = list(range(len(labels)))
    rest, test_idx = train_test_split(indices, test_size=360, stratify=labels, random_state=SPLIT_SEED)
    train_idx, val_idx = train_test_split(rest, test_size=360, stratify=labels[rest],
                                          random_state=SPLIT_SEED)
    images = torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    train_pixels = images[train_idx]
    images = (images - train_pixels.mean()) / train_pixels.std()
    base = TensorImages(images, torch.as_tensor(labels, dtype=torch.int64))
    return Splits(train=TransformedSubset(base, train_idx, train_transform("digits")),
                  val=TransformedSubset(base, val_idx, None),
                  test=TransformedSubset(base, test_idx, None),
                  num_classes=10, in_channels=1, image_size=8,
                  class_names=tuple(str(digit) for digit in range(10)))


def _synthetic_splits(n_train: int = 1024, n_val: int = 256, n_test: int = 256,
                      noise: float = 1.0) -> Splits:
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    templates = torch.randn(10, 3, 8, 8, generator=generator)
    templates = templates.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)  # smooth 32x32
    n = n_train + n_val + n_test
    labels = torch.randperm(n, generator=generator) % 10
    images = templates[labels] + noise * torch.randn(n, 3, 32, 32, generator=generator)
    base = TensorImages(images, labels)
    return Splits(train=TransformedSubset(base, range(n_train), train_transform("synthetic")),
                  val=TransformedSubset(base, range(n_train, n_train + n_val), None),
                  test=TransformedSubset(base, range(n_train + n_val, n), None),
                  num_classes=10, in_channels=3, image_size=32,
                  class_names=tuple(f"template {k}" for k in range(10)))


def _cifar_splits(dataset: str, data_dir: str, val_size: int) -> Splits:
    from torchvision import datasets

    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    name = "CIFAR-10" if dataset == "cifar10" else "CIFAR-100"
    try:
        train_base = cls(data_dir, train=True, download=True)
        test_base = cls(data_dir, train=False, download=True)
    except Exception as error:  # URLError, OSError, RuntimeError (corrupt archive), ...
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DataUnavailableError(
            f"--data-dir: {name} is not in {os.path.abspath(data_dir)!r} and could not be "
            f"downloaded ({reason}); download it where there is internet access and point "
            f"--data-dir at the directory holding {cls.base_folder}") from error
    order = _seeded_permutation(len(train_base))
    train_idx, val_idx = order[:len(order) - val_size], order[len(order) - val_size:]
    return Splits(train=TransformedSubset(train_base, train_idx, train_transform(dataset)),
                  val=TransformedSubset(train_base, val_idx, eval_transform(dataset)),
                  test=TransformedSubset(test_base, range(len(test_base)), eval_transform(dataset)),
                  num_classes=NUM_CLASSES[dataset], in_channels=3, image_size=32,
                  class_names=tuple(train_base.classes))


def read_idx(path: str) -> torch.Tensor:
    """An idx file (the MNIST format), gzipped (``.gz``) or not, as a uint8 tensor.

    Layout: two zero bytes, the type byte ``0x08`` (unsigned bytes), the number of dimensions
    ``d``, ``d`` big-endian uint32 sizes, then the values in C order.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    header = 4 + 4 * raw[3]
    shape = struct.unpack(f">{raw[3]}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise ValueError(f"{path} holds {len(raw) - header} values, its header says {shape}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def _find_idx(data_dir: str, name: str) -> str:
    """``name`` or ``name.gz`` in ``data_dir`` or in torchvision's ``FashionMNIST/raw`` below it."""
    for folder in (data_dir, os.path.join(data_dir, "FashionMNIST", "raw")):
        for candidate in (os.path.join(folder, name + ".gz"), os.path.join(folder, name)):
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(f"no {name}.gz")


def read_fashion_mnist(data_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 28, 28) uint8, labels (N,) int64)`` of the ``train`` or ``test`` split."""
    try:
        images, labels = (read_idx(_find_idx(data_dir, name)) for name in FASHION_MNIST_FILES[split])
        if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
            raise ValueError(f"{len(images)} images of shape {tuple(images.shape[1:])} but "
                             f"{len(labels)} labels")
    except (OSError, EOFError, ValueError) as error:  # missing, truncated, corrupt gzip, not idx
        raise DataUnavailableError(
            f"--data-dir: must be a directory holding Fashion-MNIST's idx files (Debian: apt-get "
            f"install dataset-fashion-mnist, which puts them in {FASHION_MNIST_DIR}), got "
            f"{data_dir} ({' '.join(str(error).split())})") from None
    return images, labels.long()


def _fashion_mnist_splits(data_dir: str, val_size: int) -> Splits:
    train_images, train_labels = read_fashion_mnist(data_dir, "train")
    test_images, test_labels = read_fashion_mnist(data_dir, "test")
    if not 1 <= val_size < len(train_labels):
        raise cli.bad_value("--val-size", f"must be < {len(train_labels)}, the training images in "
                                          f"{data_dir}", val_size)
    order = _seeded_permutation(len(train_labels))
    train_idx, val_idx = order[:len(order) - val_size], order[len(order) - val_size:]
    pixels = train_images[train_idx].float() / 255
    mean, std = pixels.mean().item(), pixels.std().item()

    def standardised(images: torch.Tensor) -> torch.Tensor:
        return ((images.float() / 255 - mean) / std).unsqueeze(1)

    background = standardised(torch.zeros(1, 1, dtype=torch.uint8)).item()  # a black pixel
    shift = RandomShift(FASHION_MNIST_PAD, background)
    train_base = TensorImages(standardised(train_images), train_labels)
    test_base = TensorImages(standardised(test_images), test_labels)
    return Splits(train=TransformedSubset(train_base, train_idx, shift),
                  val=TransformedSubset(train_base, val_idx, None),
                  test=TransformedSubset(test_base, range(len(test_base)), None),
                  num_classes=10, in_channels=1, image_size=28, class_names=FASHION_MNIST_CLASSES)
