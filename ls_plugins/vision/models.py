"""Classifiers for ``ls-vision``; each computes ``logits = last_layer(penultimate(x))``.

Every model exposes ``penultimate(x)``, the ``(N, D)`` activations entering the last layer, and
``last_layer``, an ``nn.Linear(D, K)`` (weights ``w_k`` and biases are the paper's templates,
section 2).

* ``resnet20/32/56/110``: the CIFAR ResNets of He et al. (2016, section 4.2): a 3x3 convolution
  with 16 channels, three stages of ``n`` basic blocks with 16, 32 and 64 channels (stride 2 at
  the first block of stages 2 and 3), global average pooling (D = 64), linear; depth ``6n + 2``.
  Option-A shortcuts: identity, or stride-2 subsampling with zero-padded extra channels, so the
  shortcuts have no parameters (ResNet-56: 853,018 parameters with 10 classes).
* ``alexnet``: the AlexNet-style CIFAR network of the TensorFlow CIFAR-10 tutorial and Zhang et
  al. (2017): two [5x5 convolution (64 channels), ReLU, 3x3/2 max-pool, local response
  normalisation] blocks, fully connected layers of 384 and 192 units (D = 192), linear.
* ``mlp``: a multi-layer perceptron on the flattened image: ``depth`` hidden layers of ``width``
  units, each [linear, ReLU, dropout ``p``] (D = width), linear.  784-512-512-10 (depth 2, width
  512, the default) has 669,706 parameters on 28x28 Fashion-MNIST.
* ``smallcnn``: three 3x3 convolutions (32, 64, 128 channels) with batch normalisation and ReLU,
  a 2x2 max-pool after the second, global average pooling (D = 128), linear.  Trains on
  ``digits`` on a CPU in about a minute.

All models take ``in_channels`` and ``image_size`` so that they run on 8x8 digits and 32x32 CIFAR.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}
MODELS = tuple(RESNET_DEPTHS) + ("alexnet", "smallcnn", "mlp")


class Classifier(nn.Module):
    """Base class: ``forward(x) = last_layer(penultimate(x))``."""

    last_layer: nn.Linear

    def penultimate(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(self.penultimate(x))


class ShortcutA(nn.Module):
    """He et al.'s option A: ``x[:, :, ::2, ::2]`` with ``pad`` zero channels on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` with 3x3 convolutions."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = ShortcutA((planes - in_planes) // 2)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Classifier):
    """CIFAR ResNet of depth ``6n + 2`` (see the module docstring)."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.last_layer = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def penultimate(self, x: Tensor) -> Tensor:
        out = self.stages(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class AlexNetCifar(Classifier):
    """AlexNet-style CIFAR network (see the module docstring)."""

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32):
        super().__init__()

        def block(channels_in: int) -> list[nn.Module]:
            return [nn.Conv2d(channels_in, 64, 5, padding=2), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, stride=2, padding=1),
                    nn.LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1.0)]

        self.features = nn.Sequential(*block(in_channels), *block(64))
        side = image_size
        for _ in range(2):
            side = (side - 1) // 2 + 1  # 3x3/2 max-pool with padding 1: ceil(side / 2)
        self.fully_connected = nn.Sequential(
            nn.Linear(64 * side * side, 384), nn.ReLU(inplace=True),
            nn.Linear(384, 192), nn.ReLU(inplace=True))
        self.last_layer = nn.Linear(192, num_classes)

    def penultimate(self, x: Tensor) -> Tensor:
        return self.fully_connected(self.features(x).flatten(1))


class SmallCNN(Classifier):
    """Small convolutional network for ``digits`` (see the module docstring)."""

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()

        def conv(channels_in: int, channels_out: int) -> list[nn.Module]:
            return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*conv(in_channels, 32), *conv(32, 64), nn.MaxPool2d(2),
                                      *conv(64, 128))
        self.last_layer = nn.Linear(128, num_classes)

    def penultimate(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


class MLP(Classifier):
    """Multi-layer perceptron on the flattened image (see the module docstring)."""

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28, *,
                 depth: int = 2, width: int = 512, dropout: float = 0.0):
        super().__init__()
        if depth < 1 or width < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP needs depth >= 1, width >= 1 and dropout in [0, 1), got "
                             f"{depth}, {width}, {dropout}")
        layers, features = [nn.Flatten()], in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            features = width
        self.hidden = nn.Sequential(*layers)
        self.last_layer = nn.Linear(width, num_classes)

    def penultimate(self, x: Tensor) -> Tensor:
        return self.hidden(x)


def architecture(name: str, run_args: Mapping[str, Any]) -> dict:
    """The keyword arguments of :func:`build_model` that a run's options (``mlp_depth``,
    ``mlp_width``, ``mlp_dropout``) set for model ``name``; recorded in checkpoints."""
    if name != "mlp":
        return {}
    return {"depth": run_args["mlp_depth"], "width": run_args["mlp_width"],
            "dropout": run_args["mlp_dropout"]}


def build_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32,
                **options) -> Classifier:
    """A freshly initialised model ``name`` (one of :data:`MODELS`); ``options`` are the MLP's
    ``depth``, ``width`` and ``dropout``."""
    if name == "mlp":
        return MLP(num_classes, in_channels, image_size, **options)
    if options:
        raise ValueError(f"model {name!r} takes no options, got {sorted(options)}")
    if name in RESNET_DEPTHS:
        return CifarResNet(RESNET_DEPTHS[name], num_classes, in_channels)
    if name == "alexnet":
        return AlexNetCifar(num_classes, in_channels, image_size)
    if name == "smallcnn":
        return SmallCNN(num_classes, in_channels)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def read_checkpoint(path: str, map_location="cpu") -> dict:
    """The ``ls-vision`` checkpoint at ``path``, loaded safely (``torch.load(weights_only=True)``:
    tensors and plain types only).  It records ``model``, ``num_classes``, ``in_channels``,
    ``image_size``, ``architecture`` (the MLP's options), ``dataset``, ``state_dict`` and the
    training ``args``."""
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    keys = ("model", "num_classes", "in_channels", "image_size", "state_dict")
    missing = [key for key in keys if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in it")
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> Classifier:
    """The checkpoint's model with its weights, in eval mode."""
    model = build_model(checkpoint["model"], checkpoint["num_classes"], checkpoint["in_channels"],
                        checkpoint["image_size"], **checkpoint.get("architecture", {}))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def load_trained_model(path: str, map_location="cpu") -> tuple[Classifier, dict]:
    """``(model in eval mode, checkpoint)`` from an ``ls-vision`` checkpoint (see
    :func:`read_checkpoint`)."""
    checkpoint = read_checkpoint(path, map_location)
    return model_from_checkpoint(checkpoint), checkpoint
