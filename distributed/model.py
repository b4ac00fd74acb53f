"""ResNet18, CIFAR variant (after kuangliu/pytorch-cifar): 3x3 stem, no max-pool.

Stable module names `layer1..layer4` are part of the interface: GradCAM and the
report address layers by these names.  10 classes -> 11,173,962 parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NAMES = ("layer1", "layer2", "layer3", "layer4")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # 1x1 projection when the shape changes, as in the original ResNet (option B).
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks: tuple[int, int, int, int], num_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_planes = 64
        # 3x3 stride-1 stem and no max-pool: 32x32 inputs keep their resolution into layer1.
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], stride=1)   # 32x32
        self.layer2 = self._make_layer(128, num_blocks[1], stride=2)  # 16x16
        self.layer3 = self._make_layer(256, num_blocks[2], stride=2)  # 8x8
        self.layer4 = self._make_layer(512, num_blocks[3], stride=2)  # 4x4
        self.dropout = nn.Dropout(dropout)  # identity at p=0, no parameters
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(self.dropout(out))


def resnet18(num_classes: int = 10, dropout: float = 0.0) -> ResNet:
    """ResNet18 for 32x32 inputs; `dropout` is applied to the pooled features before the classifier."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, dropout=dropout)


def gradcam_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The GradCAM target layers by name (`layer1..layer4`), on the unwrapped model."""
    model = unwrap(model)
    return {name: getattr(model, name) for name in LAYER_NAMES}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / DataParallel and torch.compile wrappers (in any nesting)."""
    from accelerate.utils import extract_model_from_parallel

    while True:
        inner = extract_model_from_parallel(model, keep_torch_compile=False)
        if inner is model:
            return model
        model = inner


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad)
