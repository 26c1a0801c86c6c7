"""The model zoo by name, without torch: which names a config may use and how each is built.

`kdflow.models` turns an entry into a network. The table lives apart from the networks so that
checking a sweep's names (`snakemake -n`, the dashboard) does not pay for importing torch,
which is most of a dry run's start-up.
"""

from __future__ import annotations

from typing import Any

CIFAR_WIDTHS = (16, 16, 32, 64)
X4_WIDTHS = (32, 64, 128, 256)

# Output channels of each 3x3 conv, per block, for the five blocks of each VGG.
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256,) * 2, (512,) * 2, (512,) * 2),
    "vgg13": ((64,) * 2, (128,) * 2, (256,) * 2, (512,) * 2, (512,) * 2),
    "vgg16": ((64,) * 2, (128,) * 2, (256,) * 3, (512,) * 3, (512,) * 3),
    "vgg19": ((64,) * 2, (128,) * 2, (256,) * 4, (512,) * 4, (512,) * 4),
}

ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    **{
        f"resnet{depth}": ("resnet", {"depth": depth, "widths": CIFAR_WIDTHS})
        for depth in (8, 14, 20, 32, 44, 56, 110)
    },
    "resnet8x4": ("resnet", {"depth": 8, "widths": X4_WIDTHS}),
    "resnet32x4": ("resnet", {"depth": 32, "widths": X4_WIDTHS}),
    **{
        f"wrn_{depth}_{k}": ("wide_resnet", {"depth": depth, "widen_factor": k})
        for depth in (16, 40)
        for k in (1, 2)
    },
    **{name: ("vgg", {"config": config}) for name, config in VGG_CONFIGS.items()},
}
"""Model name -> (family, keyword arguments of the family's constructor besides num_classes)."""


def model_names() -> list[str]:
    """Names of all models, grouped by family."""
    return list(ARCHITECTURES)
