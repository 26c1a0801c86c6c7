"""Tests for the RepDistiller model zoo in kdflow.models."""

from functools import cache

import pytest
import torch

from kdflow.architectures import model_names
from kdflow.models import MODELS, FeatureNet, build_model

# Parameter counts for 100 classes, computed from RepDistiller's own models/resnet.py, wrn.py
# and vgg.py (vggN = vggN_bn there), which these architectures must reproduce exactly.
REPDISTILLER_PARAMS_100 = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
}

# One representative per family, for the slower or repetitive checks.
ONE_PER_FAMILY = ["resnet8", "wrn_16_1", "vgg8"]


@cache
def eval_model(name: str, num_classes: int) -> FeatureNet:
    """A seeded model in eval mode, shared by the read-only tests below."""
    torch.manual_seed(0)
    return build_model(name, num_classes).eval()


def images(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_registry_has_all_repdistiller_models() -> None:
    assert model_names() == list(MODELS)
    assert set(model_names()) == set(REPDISTILLER_PARAMS_100)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("num_classes", [10, 100])
@torch.no_grad()
def test_logits_shape_on_cifar_and_tinyimagenet_sizes(name: str, num_classes: int) -> None:
    model = eval_model(name, num_classes)
    for size in (32, 64):
        assert model(images(size)).shape == (2, num_classes)


@pytest.mark.parametrize(("name", "expected"), REPDISTILLER_PARAMS_100.items())
def test_parameter_count_matches_repdistiller(name: str, expected: int) -> None:
    assert sum(p.numel() for p in eval_model(name, 100).parameters()) == expected


@pytest.mark.parametrize("name", list(MODELS))
@torch.no_grad()
def test_forward_features(name: str) -> None:
    model = eval_model(name, 100)
    for size in (32, 64):
        # VGG runs its last block at 4x4 for both input sizes; the ResNets end at 1/4 resolution.
        last_hw = 4 if name.startswith("vgg") else size // 4
        x = images(size)
        maps, logits = model.forward_features(x)
        assert isinstance(maps, list)
        assert all(m.dim() == 4 and m.shape[0] == 2 for m in maps)
        assert maps[-1].shape[1:] == (model.linear.in_features, last_hw, last_hw)
        assert torch.equal(logits, model(x))


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
@torch.no_grad()
def test_channels_last_gives_same_logits(name: str) -> None:
    model = eval_model(name, 10)
    x = images(64)
    expected = model(x)
    model_cl = build_model(name, 10).eval()
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last)
    actual = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "key",
    [
        "resnet8x4:layer1.0.downsample.0.weight",
        "resnet32x4:fc.weight",
        "wrn_40_2:block1.layer.0.convShortcut.weight",
        "wrn_40_2:bn1.running_var",
        "vgg13:block0.4.running_mean",
        "vgg13:classifier.weight",
    ],
)
def test_state_dict_keys_match_repdistiller_checkpoints(key: str) -> None:
    name, param = key.split(":")
    assert param in eval_model(name, 100).state_dict()


def test_unknown_model_name_raises() -> None:
    with pytest.raises(ValueError, match="resnet9000") as excinfo:
        build_model("resnet9000", 10)
    assert "resnet32x4" in str(excinfo.value)  # the message lists the known models


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_same_seed_gives_identical_weights(name: str) -> None:
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(name, 10).state_dict()

    first, second, other = state(0), state(0), state(1)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
