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
* ``synthetic``: CIFAR-shaped (3x32x32, 10 classes) images, each a smooth random class template
  plus Gaussian noise; 1,024 / 256 / 256 images; CIFAR's augmentation.  For tests and benchmarks.

The validation split is never augmented; it is where the softmax temperature is fitted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "synthetic": 10}

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_DEFAULT_VAL_SIZE = 5000
TRAIN_SIZES = {"cifar10": 50000, "cifar100": 50000}  # official training images (before --val-size)
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


def build_splits(dataset: str, data_dir: str = "data", *, val_size: Optional[int] = None) -> Splits:
    """Train (augmented), validation and test splits of ``dataset`` (one of :data:`DATASETS`).

    ``val_size`` applies to CIFAR only (default 5,000 held out of the training images).
    """
    if dataset == "digits":
        return _digits_splits()
    if dataset == "synthetic":
        return _synthetic_splits()
    if dataset in CIFAR_STATS:
        return _cifar_splits(dataset, data_dir, CIFAR_DEFAULT_VAL_SIZE if val_size is None else val_size)
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")


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
                  num_classes=10, in_channels=1, image_size=8)


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
                  num_classes=10, in_channels=3, image_size=32)


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
                  num_classes=NUM_CLASSES[dataset], in_channels=3, image_size=32)
