"""Distillation methods, one small class per method, registered by the name a config uses.

Adding a method takes one class and one config entry:

1. subclass `DistillMethod` here, set `name` (the key under `methods:` and the `{method}` of
   result paths) and `needs_features`, take the method's settings as keyword-only arguments of
   `__init__`, each with its default, implement `forward`, and decorate the class with
   `@register`;
2. add `methods.<name>` to config/schema.yaml with the same settings (types, ranges, the same
   defaults and a description). kdflow.config takes the method names a config may use from
   the schema (torch-free); importing this module fails if its classes and those names differ,
   and tests/test_losses.py checks that the settings and defaults agree.

The trainer treats every method alike: it builds it with `build_method`, calls `setup` once,
optimizes `parameters()` with the student's, keeps `state_dict()` in the checkpoint and calls
the method on every batch. The sweep's `alpha` is the one setting every method shares: alpha = 0
trains the student alone, larger alphas weigh the distillation term more (each class says how).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdflow import config

METHODS: dict[str, type[DistillMethod]] = {}


def register(cls: type[DistillMethod]) -> type[DistillMethod]:
    """Make a method available to configs as `methods: {<cls.name>: {...}}`."""
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(METHODS)


def _method_class(name: str) -> type[DistillMethod]:
    if name not in METHODS:
        raise ValueError(
            f"unknown distillation method {name!r}; known: {', '.join(method_names())}"
        )
    return METHODS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """The settings of a method and their defaults: the keyword-only arguments of its __init__."""
    parameters = inspect.signature(_method_class(name).__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


def build_method(name: str, alpha: float, **settings: Any) -> DistillMethod:
    """The method called `name`, with the sweep's alpha and its config settings (a setting
    left out at the schema's default, which tests/test_losses.py checks is the class's)."""
    return _method_class(name)(alpha=alpha, **config.method_settings(name, settings))


class DistillMethod(nn.Module):
    """What the trainer sees of every distillation method.

    A method is an `nn.Module`, so trainable parts (FitNet's regressor) come with
    `parameters()`, `state_dict()` and `.to()`: the trainer optimizes them together with the
    student and saves them in the checkpoint. Methods without any have an empty state_dict.

    `forward` gets the student's logits (with grad), the teacher's (without), the labels and
    the epoch (counted from 0); when `needs_features` is true also both networks' stage
    feature maps, `forward_features(x)[0]` of kdflow.models, else None. It returns the scalar
    loss to minimise, cross-entropy included. The teacher's tensors are shared by every student
    of a pack (kdflow.pack): a method never changes them in place.
    """

    name: ClassVar[str]
    needs_features: ClassVar[bool] = False

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = float(alpha)

    def setup(self, student: nn.Module, teacher: nn.Module, image_shape: tuple[int, ...]) -> None:
        """Build what depends on the two networks; called once, before the optimizer exists."""

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        *,
        epoch: int,
        student_features: list[Tensor] | None = None,
        teacher_features: list[Tensor] | None = None,
    ) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


def _kl(student_log_probs: Tensor, teacher_log_probs: Tensor) -> Tensor:
    """KL(teacher || student) summed over classes, averaged over the batch; inputs are logs."""
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)


@register
class LogitKD(DistillMethod):
    r"""Hinton et al.'s logit distillation, with alpha weighting the distillation term.

    .. math::
        L = (1 - \alpha)\,\mathrm{CE}(z_s, y)
            + \alpha\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(z_t/T)\,\|\,\mathrm{softmax}(z_s/T)\big)

    This is RepDistiller's convention (alpha weights KD; its recipe `-r 0.1 -a 0.9` is
    alpha = 0.9); torchdistill's alpha weights CE. The KL is averaged over the batch; T^2 keeps
    its gradients on the scale of the CE term's.
    """

    name = "logit"

    def __init__(self, alpha: float, *, temperature: float = 4.0):
        super().__init__(alpha)
        self.temperature = float(temperature)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        *,
        epoch: int,
        student_features: list[Tensor] | None = None,
        teacher_features: list[Tensor] | None = None,
    ) -> Tensor:
        t = self.temperature
        ce = F.cross_entropy(student_logits, targets)
        kl = _kl(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1))
        return (1.0 - self.alpha) * ce + self.alpha * t * t * kl


@register
class DKD(DistillMethod):
    r"""Decoupled knowledge distillation (Zhao et al., CVPR 2022), as mdistiller computes it.

    With :math:`p = \mathrm{softmax}(z/T)` for student (s) and teacher (t) and the label y,
    KD's KL splits into a target part and a non-target part:

    .. math::
        b = (p_y,\ 1 - p_y), \qquad
        \hat p_j = \frac{p_j}{1 - p_y} = \mathrm{softmax}_{j \ne y}(z_j/T)

        \mathrm{TCKD} = T^2\,\mathrm{KL}(b^t \,\|\, b^s), \qquad
        \mathrm{NCKD} = T^2\,\mathrm{KL}(\hat p^t \,\|\, \hat p^s)

        L = w_{ce}\,\mathrm{CE}(z_s, y)
            + \alpha\,\min\!\Big(\frac{e + 1}{W}, 1\Big)
              \big(w_{tc}\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}\big)

    both KLs averaged over the batch; e is the epoch counted from 0 (mdistiller counts from 1,
    so its first epoch also gets 1/W) and W the warm-up in epochs (0: none).

    **Alpha** scales the whole decoupled term and leaves CE at ce_weight: alpha = 1 is
    mdistiller's recipe (CE 1, TCKD 1, NCKD beta, T 4, 20 warm-up epochs), alpha = 0 the student
    alone. Unlike `logit`, CE is not multiplied by (1 - alpha): the published weights (CE 1,
    TCKD 1, NCKD beta) are no convex mix (1 - alpha) * CE + alpha * (...) unless the whole loss
    is rescaled, which under SGD with weight decay is a different training run.

    beta is pair-specific in mdistiller's CIFAR-100 configs: 8 for resnet32x4 -> resnet8x4, 6
    for WRN and VGG pairs, 2 for resnet56 -> resnet20 and resnet110 -> resnet32.

    Both distributions are formed in log space (log(1 - p_y) as a log-sum-exp of the non-target
    log-probabilities), which equals mdistiller's `log(softmax)` up to rounding and stays
    finite where a probability underflows.
    """

    name = "dkd"

    def __init__(
        self,
        alpha: float,
        *,
        temperature: float = 4.0,
        beta: float = 8.0,
        tckd_weight: float = 1.0,
        ce_weight: float = 1.0,
        warmup: int = 20,
    ):
        super().__init__(alpha)
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.tckd_weight = float(tckd_weight)
        self.ce_weight = float(ce_weight)
        self.warmup = int(warmup)

    def warmup_factor(self, epoch: int) -> float:
        return 1.0 if self.warmup <= 0 else min((epoch + 1) / self.warmup, 1.0)

    def decoupled(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor):
        """(TCKD, NCKD), both with the T^2 factor and averaged over the batch."""
        t = self.temperature
        target = F.one_hot(targets, student_logits.shape[1]).bool()

        def split(logits: Tensor) -> tuple[Tensor, Tensor]:
            z = logits / t
            others = z[~target].view(len(z), -1)  # the non-target logits, in class order
            log_p = F.log_softmax(z, dim=1)
            log_p_target = log_p[target]
            log_p_rest = torch.logsumexp(log_p[~target].view(len(z), -1), dim=1)
            return torch.stack([log_p_target, log_p_rest], dim=1), F.log_softmax(others, dim=1)

        binary_s, rest_s = split(student_logits)
        binary_t, rest_t = split(teacher_logits)
        return t * t * _kl(binary_s, binary_t), t * t * _kl(rest_s, rest_t)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        *,
        epoch: int,
        student_features: list[Tensor] | None = None,
        teacher_features: list[Tensor] | None = None,
    ) -> Tensor:
        ce = F.cross_entropy(student_logits, targets)
        tckd, nckd = self.decoupled(student_logits, teacher_logits, targets)
        kd = self.tckd_weight * tckd + self.beta * nckd
        return self.ce_weight * ce + self.alpha * self.warmup_factor(epoch) * kd


@register
class FitNet(DistillMethod):
    r"""FitNets hint learning (Romero et al., ICLR 2015), trained in one stage, as RepDistiller.

    A regressor r maps the student's feature map at stage k to the teacher's, and the student
    learns to match the teacher's map there:

    .. math::
        L = w_{ce}\,\mathrm{CE}(z_s, y)
            + \alpha\,w_{hint}\,\mathrm{MSE}\big(r(f_s^{(k)}),\ f_t^{(k)}\big)

    MSE is the mean over batch, channels and positions (RepDistiller's HintLoss, nn.MSELoss).
    k = hint_layer indexes `forward_features(x)[0]`, RepDistiller's feature list: 0 is the
    stem, 1 to 3 the stages' outputs; the default 2 is RepDistiller's `--hint_layer 2`, the
    second stage's output (128x16x16 for resnet8x4 and resnet32x4, 64 channels for the WRN
    pair). r is trained with the student (same SGD, weight decay included) and kept in the
    checkpoint. The regressor's form (`regressor`):

    - ``convreg`` (the default): RepDistiller's ConvReg, a convolution with bias that also
      maps the student's spatial size onto the teacher's (1x1 for equal sizes, 3x3 stride 2
      for twice the teacher's, a 4x4 stride-2 transposed convolution for half, else a kernel
      of the size difference), batch norm, then ReLU.
    - ``conv1x1_bn``: kdflow 0.1's, a 1x1 convolution without bias and a batch norm, no ReLU;
      maps of different sizes are matched by average-pooling the larger.

    **Alpha** scales the hint term and leaves CE at ce_weight: alpha = 1 with the default
    hint_weight 100 is RepDistiller's and mdistiller's recipe (`-r 1 -a 0 -b 100`),
    alpha = 0 the student alone. Unlike `logit`, CE is not multiplied by (1 - alpha).

    The original paper first trains the student's lower layers on the hint alone, then the
    whole student with KD; RepDistiller, mdistiller and this class train everything in one stage.
    """

    name = "fitnet"
    needs_features = True

    def __init__(
        self,
        alpha: float,
        *,
        hint_layer: int = 2,
        regressor: str = "convreg",
        hint_weight: float = 100.0,
        ce_weight: float = 1.0,
    ):
        super().__init__(alpha)
        if regressor not in ("convreg", "conv1x1_bn"):
            raise ValueError(f"fitnet regressor = {regressor!r}: convreg or conv1x1_bn")
        self.hint_layer = int(hint_layer)
        self.form = regressor
        self.hint_weight = float(hint_weight)
        self.ce_weight = float(ce_weight)
        self.regressor: nn.Module | None = None

    def setup(self, student: nn.Module, teacher: nn.Module, image_shape: tuple[int, ...]) -> None:
        """Size the regressor from one forward pass of each network (eval mode, no grad)."""
        f_s = self._hint(_feature_maps(student, image_shape), "student")
        f_t = self._hint(_feature_maps(teacher, image_shape), "teacher")
        (s, s_h, s_w), (t, t_h, t_w) = f_s.shape[1:], f_t.shape[1:]
        if self.form == "conv1x1_bn":
            conv = nn.Conv2d(s, t, kernel_size=1, bias=False)
            self.regressor = nn.Sequential(conv, nn.BatchNorm2d(t))
        else:
            if s_h == 2 * t_h:
                conv = nn.Conv2d(s, t, kernel_size=3, stride=2, padding=1)
            elif 2 * s_h == t_h:
                conv = nn.ConvTranspose2d(s, t, kernel_size=4, stride=2, padding=1)
            elif s_h >= t_h and s_w >= t_w:
                conv = nn.Conv2d(s, t, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
            else:
                raise ValueError(
                    f"fitnet regressor convreg cannot map the student's {s_h}x{s_w} map onto "
                    f"the teacher's {t_h}x{t_w} (hint_layer {self.hint_layer}): take another "
                    "hint_layer, or regressor conv1x1_bn (which pools the larger map)"
                )
            self.regressor = nn.Sequential(conv, nn.BatchNorm2d(t), nn.ReLU())
        self.regressor.to(f_s.device)

    def _hint(self, maps: list[Tensor], role: str) -> Tensor:
        if not -len(maps) <= self.hint_layer < len(maps):
            raise ValueError(
                f"fitnet hint_layer = {self.hint_layer}, but the {role} has {len(maps)} stage "
                f"maps: use {-len(maps)} to {len(maps) - 1}"
            )
        return maps[self.hint_layer]

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        targets: Tensor,
        *,
        epoch: int,
        student_features: list[Tensor] | None = None,
        teacher_features: list[Tensor] | None = None,
    ) -> Tensor:
        if self.regressor is None:
            raise RuntimeError("FitNet.setup(student, teacher, image_shape) was never called")
        f_s = self._hint(student_features, "student")
        f_t = self._hint(teacher_features, "teacher")
        if self.form == "conv1x1_bn":
            f_s, f_t = _same_size(f_s, f_t)
        hint = F.mse_loss(self.regressor(f_s), f_t)  # autocast computes it in float32
        ce = F.cross_entropy(student_logits, targets)
        return self.ce_weight * ce + self.alpha * self.hint_weight * hint


def _feature_maps(net: nn.Module, image_shape: tuple[int, ...]) -> list[Tensor]:
    """The stage maps of one blank image, leaving the network's mode and statistics unchanged."""
    was_training = net.training
    device = next(net.parameters()).device
    try:
        with torch.inference_mode():
            return net.eval().forward_features(torch.zeros(1, *image_shape, device=device))[0]
    finally:
        net.train(was_training)


def _same_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two maps down to the other's height and width."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if a.shape[-2:] != size:
        a = F.adaptive_avg_pool2d(a, size)
    if b.shape[-2:] != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


config.check_registry("method", METHODS, config.method_names())  # kdflow.config owns the names
