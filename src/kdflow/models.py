"""CIFAR-style ResNet, Wide ResNet and VGG models of RepDistiller, built by name for KD sweeps."""

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn
from torch.nn import functional as F

from kdflow.architectures import ARCHITECTURES
from kdflow.config import check_registry, model_names


class FeatureNet(nn.Module):
    """A stack of stages whose last feature map is globally average-pooled and classified.

    Architectures, parameter counts, seeded initialisation and ``state_dict`` keys match
    HobbitLong/RepDistiller, so its pretrained teacher checkpoints load unchanged; unlike there,
    pooling is adaptive (64x64 inputs work) and ``forward`` returns logits only.

    Subclasses implement ``stage_outputs`` and name their final linear layer ``fc`` (or
    override ``linear``).
    """

    def stage_outputs(self, x: Tensor) -> list[Tensor]:
        """Feature map after each stage, in order; the last one is the map that gets pooled."""
        raise NotImplementedError

    @property
    def linear(self) -> nn.Linear:
        """The classifier layer; its ``in_features`` is the width of the pooled features."""
        return self.fc

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Return ``(feature maps after each stage, logits)``, e.g. for FitNet hints."""
        maps = self.stage_outputs(x)
        # RepDistiller pools with a fixed AvgPool2d(8), which only fits 32x32 inputs; adaptive
        # pooling gives the same result there and also handles 64x64.
        pooled = F.adaptive_avg_pool2d(maps[-1], 1).flatten(1)
        return maps, self.linear(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[1]


def _init_conv_bn(model: nn.Module) -> None:
    """RepDistiller's initialisation: He-normal (fan-out) convolutions, identity batch norms."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block of the CIFAR ResNets: conv-BN-ReLU-conv-BN, add, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        downsample = None
        if stride != 1 or in_ch != out_ch:
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + shortcut)


class ResNet(FeatureNet):
    """CIFAR ResNet: a 3x3 stem, then three stages of basic blocks at strides 1, 2 and 2.

    ``widths`` are the channels of the stem and of the three stages.
    """

    def __init__(self, num_classes: int, depth: int, widths: tuple[int, int, int, int]) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = _conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], blocks, stride=2)
        self.fc = nn.Linear(widths[3], num_classes)
        _init_conv_bn(self)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
        rest = (BasicBlock(out_ch, out_ch) for _ in range(blocks - 1))
        return nn.Sequential(BasicBlock(in_ch, out_ch, stride), *rest)

    def stage_outputs(self, x: Tensor) -> list[Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        maps = [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            maps.append(x)
        return maps


class WideBasicBlock(nn.Module):
    """Pre-activation residual block of the Wide ResNets: (BN-ReLU-conv) twice, then add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        # camelCase as in RepDistiller, so that its checkpoints' keys match.
        self.convShortcut = (
            None
            if in_ch == out_ch
            else nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        # A projection shortcut starts from the activated input, an identity one from x itself.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = self.conv1(act)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class WideStage(nn.Module):
    """A run of wide blocks; only the first one changes width and stride."""

    def __init__(self, blocks: int, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        rest = (WideBasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1))
        # Wrapped in ``layer`` to keep RepDistiller's state_dict keys (``block1.layer.0...``).
        self.layer = nn.Sequential(WideBasicBlock(in_ch, out_ch, stride), *rest)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(FeatureNet):
    """WRN-depth-k: a 3x3 stem, then three stages of widths 16k, 32k, 64k at strides 1, 2, 2."""

    def __init__(self, num_classes: int, depth: int, widen_factor: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv3x3(3, widths[0])
        self.block1 = WideStage(blocks, widths[0], widths[1], stride=1)
        self.block2 = WideStage(blocks, widths[1], widths[2], stride=2)
        self.block3 = WideStage(blocks, widths[2], widths[3], stride=2)
        # Blocks are pre-activation, so the last one's output still needs its BN-ReLU.
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        _init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def stage_outputs(self, x: Tensor) -> list[Tensor]:
        x = self.conv1(x)
        maps = [x]
        for stage in (self.block1, self.block2):
            x = stage(x)
            maps.append(x)
        maps.append(F.relu(self.bn1(self.block3(x))))
        return maps


def _vgg_block(in_ch: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_ch = width
    return nn.Sequential(*layers)


class VGG(FeatureNet):
    """VGG with batch norm and a single linear classifier, as in RepDistiller (``vggN_bn``)."""

    def __init__(self, num_classes: int, config: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        in_channels = (3,) + tuple(widths[-1] for widths in config[:-1])
        self.block0, self.block1, self.block2, self.block3, self.block4 = (
            _vgg_block(in_ch, widths) for in_ch, widths in zip(in_channels, config, strict=True)
        )
        self.classifier = nn.Linear(config[-1][-1], num_classes)
        _init_conv_bn(self)
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def linear(self) -> nn.Linear:
        return self.classifier

    def stage_outputs(self, x: Tensor) -> list[Tensor]:
        # Max-pool between blocks, except that RepDistiller skips the last pool on 32x32
        # inputs (block4 runs at 4x4) and keeps it on 64x64 ones, which thus end at 4x4 too.
        pool_before_last = x.shape[-2] > 32
        maps = [self.block0(x)]
        for i, block in enumerate((self.block1, self.block2, self.block3, self.block4)):
            x = maps[-1]
            if i < 3 or pool_before_last:
                x = F.max_pool2d(x, kernel_size=2)
            maps.append(block(x))
        return maps


FAMILIES: dict[str, type[FeatureNet]] = {"resnet": ResNet, "wide_resnet": WideResNet, "vgg": VGG}

MODELS: dict[str, Callable[[int], FeatureNet]] = {
    name: partial(FAMILIES[family], **kwargs) for name, (family, kwargs) in ARCHITECTURES.items()
}
"""Model name -> constructor taking ``num_classes`` (the names and shapes: kdflow.architectures)."""
check_registry("model", MODELS, model_names())  # kdflow.config owns the names


def build_model(name: str, num_classes: int) -> FeatureNet:
    """Build the named model with a ``num_classes``-way classifier."""
    try:
        constructor = MODELS[name]
    except KeyError:
        known = ", ".join(MODELS)
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
    return constructor(num_classes)
