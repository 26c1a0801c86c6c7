"""Every method against a hand computation; the registry; one epoch of each through the trainer."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from fakedata import train_params, write_prepared
from torch import nn

from kdflow.config import TrainSpec, method_settings
from kdflow.losses import (
    DKD,
    FitNet,
    LogitKD,
    build_method,
    method_defaults,
    method_names,
)
from kdflow.models import build_model
from kdflow.pack import train
from kdflow.trainer import _student_loss, _teach

ROOT = Path(__file__).resolve().parents[1]

STUDENT = [[2.0, 0.5, -1.0, 0.3], [0.0, 1.0, 3.0, -0.5]]
TEACHER = [[3.0, 0.0, -2.0, 1.0], [-1.0, 2.0, 2.5, 0.5]]
TARGETS = [0, 2]


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _ce(logits, targets):
    return -sum(math.log(_softmax(z, 1.0)[y]) for z, y in zip(logits, targets, strict=True)) / len(
        targets
    )


def _tensors(*rows):
    return [torch.tensor(r, dtype=torch.float64) for r in rows]


# --- logit ---------------------------------------------------------------------------------


def test_logit_kd_equals_a_hand_computation():
    alpha, t = 0.75, 4.0
    kl = sum(
        _kl(_softmax(z, t), _softmax(s, t)) for s, z in zip(STUDENT, TEACHER, strict=True)
    ) / len(TARGETS)
    expected = (1 - alpha) * _ce(STUDENT, TARGETS) + alpha * t * t * kl

    s, z = _tensors(STUDENT, TEACHER)
    loss = LogitKD(alpha=alpha, temperature=t)(s, z, torch.tensor(TARGETS), epoch=0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_logit_alpha_weights_the_distillation_term():
    s, z, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce_only = LogitKD(alpha=0.0)(s, z, y, epoch=0)
    assert ce_only.item() == pytest.approx(F.cross_entropy(s, y).item())
    # alpha = 1: only the KD term, which vanishes when the student copies the teacher
    assert LogitKD(alpha=1.0)(z, z, y, epoch=0).item() == pytest.approx(0.0, abs=1e-6)


# --- DKD -----------------------------------------------------------------------------------


def _decoupled_by_hand(t):
    """(TCKD, NCKD) of STUDENT vs TEACHER: binary target/rest split and renormalized rest."""
    tckd = nckd = 0.0
    for s, z, y in zip(STUDENT, TEACHER, TARGETS, strict=True):
        ps, pt = _softmax(s, t), _softmax(z, t)
        tckd += _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        rest_s = [p / (1 - ps[y]) for j, p in enumerate(ps) if j != y]
        rest_t = [p / (1 - pt[y]) for j, p in enumerate(pt) if j != y]
        nckd += _kl(rest_t, rest_s)
    n = len(TARGETS)
    return t * t * tckd / n, t * t * nckd / n


def test_dkd_splits_kd_into_target_and_non_target_parts_as_by_hand():
    t = 2.0
    want_tckd, want_nckd = _decoupled_by_hand(t)
    s, z = _tensors(STUDENT, TEACHER)
    tckd, nckd = DKD(alpha=1.0, temperature=t).decoupled(s, z, torch.tensor(TARGETS))
    assert tckd.item() == pytest.approx(want_tckd, rel=1e-12)
    assert nckd.item() == pytest.approx(want_nckd, rel=1e-12)


def test_dkd_loss_equals_a_hand_computation_with_warm_up():
    t, beta, tckd_weight, ce_weight, alpha, warmup = 2.0, 3.0, 0.5, 0.7, 0.6, 4
    tckd, nckd = _decoupled_by_hand(t)
    method = DKD(
        alpha=alpha,
        temperature=t,
        beta=beta,
        tckd_weight=tckd_weight,
        ce_weight=ce_weight,
        warmup=warmup,
    )
    s, z = _tensors(STUDENT, TEACHER)
    y = torch.tensor(TARGETS)
    # epoch 1 is the 2nd of a 4-epoch warm-up: half of the distillation term
    for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (50, 1.0)]:
        expected = ce_weight * _ce(STUDENT, TARGETS) + alpha * factor * (
            tckd_weight * tckd + beta * nckd
        )
        assert method(s, z, y, epoch=epoch).item() == pytest.approx(expected, rel=1e-12), epoch


def test_dkd_warm_up_factor():
    assert [DKD(alpha=1, warmup=20).warmup_factor(e) for e in (0, 9, 19, 20, 239)] == [
        0.05,
        0.5,
        1.0,
        1.0,
        1.0,
    ]
    assert DKD(alpha=1, warmup=0).warmup_factor(0) == 1.0


def test_dkd_parts_add_up_to_kd():
    """The paper's identity: T^2 KL = TCKD + (1 - p^t_y) NCKD, per sample."""
    t = 4.0
    for i in range(len(TARGETS)):
        s, z = _tensors(STUDENT[i : i + 1], TEACHER[i : i + 1])
        y = torch.tensor(TARGETS[i : i + 1])
        kd = LogitKD(alpha=1.0, temperature=t)(s, z, y, epoch=0)
        tckd, nckd = DKD(alpha=1.0, temperature=t).decoupled(s, z, y)
        p_target = _softmax(TEACHER[i], t)[TARGETS[i]]
        assert kd.item() == pytest.approx((tckd + (1 - p_target) * nckd).item(), rel=1e-12)


def _mdistiller_dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    """mdistiller/distillers/DKD.py's dkd_loss, verbatim but for the deprecated size_average."""
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t, mask1, mask2):
        return torch.cat(
            [(t * mask1).sum(dim=1, keepdims=True), (t * mask2).sum(1, keepdims=True)], dim=1
        )

    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = (
        F.kl_div(log_pred_student, pred_teacher, reduction="sum")
        * (temperature**2)
        / target.shape[0]
    )
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (
        F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
        * (temperature**2)
        / target.shape[0]
    )
    return alpha * tckd_loss + beta * nckd_loss


def test_dkd_matches_mdistiller():
    g = torch.Generator().manual_seed(0)
    s = 3 * torch.randn(16, 10, generator=g, dtype=torch.float64)
    z = 3 * torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    method = DKD(alpha=1.0, beta=6.0, tckd_weight=0.5, warmup=20)
    tckd, nckd = method.decoupled(s, z, y)
    want = _mdistiller_dkd_loss(s, z, y, alpha=0.5, beta=6.0, temperature=4.0)
    assert (0.5 * tckd + 6.0 * nckd).item() == pytest.approx(want.item(), rel=1e-9)
    # and the whole loss: CE + min(epoch / warmup, 1) * dkd_loss, with mdistiller's epoch 1-based
    got = method(s, z, y, epoch=4)
    assert got.item() == pytest.approx((F.cross_entropy(s, y) + 5 / 20 * want).item(), rel=1e-9)


# --- FitNet --------------------------------------------------------------------------------


class Stub(nn.Module):
    """A network whose only stage map has a given shape (for sizing the regressor)."""

    def __init__(self, channels, size):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.channels, self.size = channels, size

    def forward_features(self, x):
        return [torch.zeros(len(x), self.channels, self.size, self.size)], torch.zeros(len(x), 4)


def _fitnet_by_hand(f_s, f_t, w, bias, gamma, beta, alpha, hint_weight, ce_weight, relu):
    """RepDistiller's FitNet loss written out: gamma * CE + beta * MSE(ConvReg(f_s), f_t) with
    ConvReg a 1x1 convolution (weight w: teacher x student channels, and a bias), batch norm in
    training mode (batch statistics, biased variance, eps 1e-5) and, for ConvReg, ReLU."""
    conv = np.einsum("oc,nchw->nohw", w, f_s) + bias.reshape(1, -1, 1, 1)
    mean = conv.mean(axis=(0, 2, 3), keepdims=True)
    var = conv.var(axis=(0, 2, 3), keepdims=True)
    out = (conv - mean) / np.sqrt(var + 1e-5) * gamma.reshape(1, -1, 1, 1) + beta.reshape(
        1, -1, 1, 1
    )
    if relu:
        out = np.maximum(out, 0.0)
    mse = ((out - f_t) ** 2).mean()
    return ce_weight * _ce(STUDENT, TARGETS) + alpha * hint_weight * mse


def test_fitnet_convreg_equals_repdistillers_loss_written_by_hand():
    """The default form, as the published runs: `--distill hint -r 1 -a 0 -b 100` on maps of
    the same size (the second stage of resnet8x4 and resnet32x4: a 1x1 ConvReg with bias)."""
    rng = np.random.default_rng(2)
    f_s = rng.integers(-3, 4, (2, 2, 3, 3)).astype(np.float64)  # student: 2 channels
    f_t = np.maximum(rng.integers(-3, 4, (2, 3, 3, 3)).astype(np.float64), 0)  # teacher: 3
    w = np.array([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]])
    bias, gamma, beta = np.array([0.5, -1.0, 2.0]), np.array([1.0, 2.0, 0.5]), np.zeros(3)
    expected = _fitnet_by_hand(f_s, f_t, w, bias, gamma, beta, 1.0, 100.0, 1.0, relu=True)

    method = FitNet(alpha=1.0)  # hint_layer 2, convreg, hint_weight 100, ce_weight 1
    maps = [torch.zeros(1, 1, 3, 3)] * 2
    student, teacher = (
        Maps([*maps, torch.zeros(1, 2, 3, 3)]),
        Maps([*maps, torch.zeros(1, 3, 3, 3)]),
    )
    method.setup(student, teacher, image_shape=(3, 3, 3))
    method.double()
    conv, bn, relu = method.regressor
    assert (conv.kernel_size, conv.bias is not None, type(relu)) == ((1, 1), True, nn.ReLU)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w).view(3, 2, 1, 1))
        conv.bias.copy_(torch.from_numpy(bias))
        bn.weight.copy_(torch.from_numpy(gamma))
    s, z = _tensors(STUDENT, TEACHER)
    features = dict(
        student_features=[None, None, torch.from_numpy(f_s)],
        teacher_features=[None, None, torch.from_numpy(f_t)],
    )
    loss = method(s, z, torch.tensor(TARGETS), epoch=0, **features)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


class Maps(nn.Module):
    """A network whose stage maps have given shapes (for sizing a regressor)."""

    def __init__(self, maps):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.maps = maps

    def forward_features(self, x):
        return [m.expand(len(x), -1, -1, -1) for m in self.maps], torch.zeros(len(x), 4)


@pytest.mark.parametrize(
    "student, teacher, conv",
    [
        ((64, 8, 8), (128, 4, 4), nn.Conv2d(64, 128, 3, stride=2, padding=1)),  # twice: stride 2
        ((64, 4, 4), (128, 8, 8), nn.ConvTranspose2d(64, 128, 4, stride=2, padding=1)),  # half
        ((16, 6, 6), (32, 4, 4), nn.Conv2d(16, 32, (3, 3))),  # larger: the size difference
    ],
)
def test_convreg_maps_the_students_size_onto_the_teachers_as_repdistiller(student, teacher, conv):
    method = FitNet(alpha=1.0, hint_layer=0)
    method.setup(Maps([torch.zeros(1, *student)]), Maps([torch.zeros(1, *teacher)]), (3, 8, 8))
    got = method.regressor[0]
    assert type(got) is type(conv) and got.bias is not None
    assert (got.kernel_size, got.stride, got.padding) == (
        conv.kernel_size,
        conv.stride,
        conv.padding,
    )
    out = method.regressor(torch.randn(2, *student))
    assert out.shape[1:] == teacher and (out >= 0).all()  # ReLU last


def test_convreg_refuses_a_student_map_it_cannot_map_naming_the_way_out():
    with pytest.raises(ValueError, match="cannot map the student's 2x2 map onto the teacher's 8x8"):
        FitNet(alpha=1.0, hint_layer=0).setup(
            Maps([torch.zeros(1, 4, 2, 2)]), Maps([torch.zeros(1, 4, 8, 8)]), (3, 8, 8)
        )


@pytest.mark.parametrize(
    "teacher, student, channels",
    [("resnet32x4", "resnet8x4", (128, 128, 16)), ("wrn_40_2", "wrn_16_2", (64, 64, 16))],
)
def test_fitnet_hints_the_published_pairs_at_their_second_stage(teacher, student, channels):
    """RepDistiller's `--hint_layer 2`: 128x16x16 for the resnet pair, 64 channels for the WRN
    pair, on 32x32 images; equal sizes, so a 1x1 ConvReg with bias."""
    method = FitNet(alpha=1.0)
    method.setup(build_model(student, 100), build_model(teacher, 100), image_shape=(3, 32, 32))
    conv = method.regressor[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (*channels[:2], (1, 1))
    maps, _ = build_model(teacher, 100).eval().forward_features(torch.zeros(1, 3, 32, 32))
    assert maps[2].shape[1:] == (channels[1], channels[2], channels[2])


def test_fitnet_equals_a_hand_computation_through_the_regressor():
    rng = np.random.default_rng(1)
    f_s = rng.integers(-3, 4, (2, 2, 4, 4)).astype(np.float64)  # student: 2 channels, 4x4
    f_t = rng.integers(-3, 4, (2, 3, 2, 2)).astype(np.float64)  # teacher: 3 channels, 2x2
    w = np.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]])  # the 1x1 conv: teacher x student
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, -1.0, 0.25])
    alpha, hint_weight, ce_weight = 0.4, 10.0, 0.8

    pooled = f_s.reshape(2, 2, 2, 2, 2, 2).mean(axis=(3, 5))  # 4x4 -> 2x2, the larger map
    conv = np.einsum("oc,nchw->nohw", w, pooled)
    mean = conv.mean(axis=(0, 2, 3), keepdims=True)
    var = conv.var(axis=(0, 2, 3), keepdims=True)  # batch norm (training): biased variance
    out = (conv - mean) / np.sqrt(var + 1e-5) * gamma.reshape(1, 3, 1, 1) + beta.reshape(1, 3, 1, 1)
    mse = ((out - f_t) ** 2).mean()
    expected = ce_weight * _ce(STUDENT, TARGETS) + alpha * hint_weight * mse

    method = FitNet(
        alpha=alpha,
        hint_layer=0,
        regressor="conv1x1_bn",
        hint_weight=hint_weight,
        ce_weight=ce_weight,
    )
    method.setup(Stub(2, 4), Stub(3, 2), image_shape=(3, 8, 8))
    method.double()
    conv_layer, bn = method.regressor
    with torch.no_grad():
        conv_layer.weight.copy_(torch.from_numpy(w).view(3, 2, 1, 1))
        bn.weight.copy_(torch.from_numpy(gamma))
        bn.bias.copy_(torch.from_numpy(beta))
    s, z = _tensors(STUDENT, TEACHER)
    loss = method(
        s,
        z,
        torch.tensor(TARGETS),
        epoch=0,
        student_features=[torch.from_numpy(f_s)],
        teacher_features=[torch.from_numpy(f_t)],
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_fitnet_pools_a_larger_teacher_map_and_sizes_the_regressor():
    method = FitNet(alpha=1.0, hint_layer=-1, regressor="conv1x1_bn")  # kdflow 0.1's default
    method.setup(build_model("resnet8", 4), build_model("resnet8x4", 4), image_shape=(3, 16, 16))
    conv = method.regressor[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (64, 256, (1, 1))

    f_s, f_t = torch.randn(2, 64, 2, 2), torch.randn(2, 256, 4, 4)
    logits, y = torch.randn(2, 4), torch.tensor([0, 1])
    loss = method(logits, logits, y, epoch=0, student_features=[f_s], teacher_features=[f_t])
    hint = F.mse_loss(method.regressor(f_s), F.avg_pool2d(f_t, 2))  # teacher 4x4 -> 2x2
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item() + 100 * hint.item())


def test_fitnet_hint_layer_out_of_range_names_the_setting():
    with pytest.raises(ValueError, match=r"hint_layer = 4, but the student has 4 stage maps"):
        FitNet(alpha=1.0, hint_layer=4).setup(
            build_model("resnet8", 4), build_model("vgg8", 4), image_shape=(3, 16, 16)
        )


def test_fitnet_setup_leaves_the_networks_as_they_were():
    student, teacher = build_model("resnet8", 4), build_model("resnet8", 4).eval()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    FitNet(alpha=1.0).setup(student, teacher, image_shape=(3, 16, 16))
    assert student.training and not teacher.training
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key  # batch-norm statistics untouched


# --- every method --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["logit", "dkd", "fitnet"])
def test_gradients_reach_the_student_and_the_method_only(name):
    """Through the trainer's own step: even a teacher that requires grad gets none."""
    torch.manual_seed(0)
    student, teacher = build_model("resnet8", 4), build_model("vgg8", 4)
    method = build_method(name, alpha=0.5)
    method.setup(student, teacher, image_shape=(3, 16, 16))
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    taught = _teach(teacher, x, method.needs_features)
    logits, loss = _student_loss(student, method, x, y, taught, epoch=3)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None for p in method.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert (len(list(method.parameters())) > 0) == (name == "fitnet")


def test_registry():
    assert method_names() == ["dkd", "fitnet", "logit"]
    assert isinstance(build_method("logit", alpha=0.5, temperature=2), LogitKD)
    method = build_method("dkd", alpha=0.5, beta=6)
    assert (method.alpha, method.beta, method.temperature, method.warmup) == (0.5, 6.0, 4.0, 20)
    with pytest.raises(ValueError, match="unknown distillation method 'crd'; known: dkd, fitnet"):
        build_method("crd", alpha=0.5, temperature=4)
    with pytest.raises(ValueError, match="method 'fitnet' has no setting 'temperature'"):
        build_method("fitnet", alpha=0.5, temperature=4)
    assert method_settings("fitnet", {"hint_layer": -1}) == {
        "hint_layer": -1,
        "regressor": "convreg",
        "hint_weight": 100.0,
        "ce_weight": 1.0,
    }


def test_every_method_has_its_settings_in_the_schema_with_the_same_defaults():
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    documented = schema["properties"]["methods"]["properties"]
    assert sorted(documented) == method_names()
    for name in method_names():
        settings = documented[name]["properties"]
        alphas = settings.pop("alphas")  # the alphas a method is trained at: no loss setting
        assert "default" not in alphas  # the sweep's `alphas`, unless given
        assert {k: s["default"] for k, s in settings.items()} == method_defaults(name), name
        assert all("description" in s or "$ref" in s for s in settings.values()), name


# --- one epoch of each method through kdflow.trainer.train ----------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 4-class dataset and a VGG teacher trained one epoch on it."""
    root = tmp_path_factory.mktemp("methods")
    base = train_params(write_prepared(root / "prepared.npz", n_train=64))
    train(TrainSpec.from_params({**base, "model": "vgg8"}), root / "teacher")
    return root, base


@pytest.mark.parametrize("name", ["logit", "dkd", "fitnet"])
def test_each_method_trains_an_epoch(tiny, name):
    root, base = tiny
    spec = TrainSpec.from_params(
        {
            **base,
            "model": "resnet8",
            "method": name,
            "teacher": "vgg8",
            "teacher_dir": str(root / "teacher"),
            "alpha": 0.5,
            "method_settings": {"warmup": 2} if name == "dkd" else {},
        }
    )
    out = root / name
    metrics = train(spec, out)
    assert (out / "completed").exists()
    assert metrics["method"] == name and math.isfinite(metrics["final_acc"])
    assert metrics["method_settings"] == {**method_defaults(name), **spec.method_settings}

    checkpoint = torch.load(out / "checkpoint.pth", weights_only=False)
    student_params = len(list(build_model("resnet8", 4).parameters()))
    optimized = len(checkpoint["optimizer"]["param_groups"][0]["params"])
    if name == "fitnet":  # the regressor (conv with bias + BN: 4 tensors) is optimized, saved
        assert optimized == student_params + 4
        # stage 2: resnet8's 32x8x8 onto vgg8's 256x4x4, a 3x3 stride-2 ConvReg
        assert checkpoint["method"]["regressor.0.weight"].shape == (256, 32, 3, 3)
    else:
        assert optimized == student_params and checkpoint["method"] == {}


@pytest.mark.parametrize("weights", ["last", "best"])
def test_a_student_refuses_a_teacher_whose_weights_changed(tiny, tmp_path, weights):
    """A bit flipped in the teacher's last.pth or best.pth (the one teacher_weights names)
    would train every student against a different teacher without a word; the SHA-256 stops
    the student before its first epoch."""
    root, base = tiny
    teacher = tmp_path / "teacher"
    shutil.copytree(root / "teacher", teacher)
    saved = torch.load(teacher / f"{weights}.pth", weights_only=False)
    weight = next(iter(saved["model"].values()))
    weight.view(-1)[0] = weight.view(-1)[0] * 1.0000001 + 1e-7
    torch.save(saved, teacher / f"{weights}.pth")
    kd = {"method": "logit", "teacher": "vgg8", "teacher_dir": str(teacher), "alpha": 0.5}
    spec = TrainSpec.from_params({**base, **kd, "model": "resnet8", "teacher_weights": weights})
    with pytest.raises(RuntimeError, match="SHA-256") as err:
        train(spec, tmp_path / "student")
    assert str(teacher / f"{weights}.pth") in str(err.value)
    assert f"move {teacher} away" in str(err.value)
    assert not (tmp_path / "student/completed").exists()
    assert not (tmp_path / "student/checkpoint.pth").exists()


def test_a_student_distils_from_the_teachers_last_or_best_weights(tiny, tmp_path):
    """teacher_weights: last (the default, as RepDistiller and mdistiller) loads the last
    epoch's weights, best those of the best test accuracy; a teacher that kdflow 0.1 trained
    (no last.pth) gives its last epoch's from its checkpoint."""
    from kdflow.trainer import build_data, load_teacher

    root, base = tiny
    teacher = tmp_path / "teacher"
    train(TrainSpec.from_params({**base, "model": "vgg8", "epochs": 3}), teacher)
    kd = {"method": "logit", "teacher": "vgg8", "teacher_dir": str(teacher), "alpha": 0.5}
    spec = TrainSpec.from_params({**base, **kd, "model": "resnet8"})
    assert spec.teacher_weights == "last"
    data = build_data(spec)
    checkpoint = torch.load(teacher / "checkpoint.pth", weights_only=False)
    for weights, want in [("last", checkpoint), ("best", torch.load(teacher / "best.pth"))]:
        spec = TrainSpec.from_params({**base, **kd, "model": "resnet8", "teacher_weights": weights})
        got = load_teacher(spec, data).state_dict()
        assert all(torch.equal(got[k], v) for k, v in want["model"].items()), weights
    (teacher / "last.pth").unlink()  # as kdflow 0.1 left it
    got = load_teacher(TrainSpec.from_params({**base, **kd, "model": "resnet8"}), data)
    assert all(torch.equal(got.state_dict()[k], v) for k, v in checkpoint["model"].items())
