"""Distillation losses, one small class per method, registered by the name a config uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

METHODS: dict[str, type[LogitKD]] = {}


def register(cls):
    """Make a method available to configs as `methods: {<cls.name>: {...}}`."""
    METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(METHODS)


def build_method(name: str, alpha: float, temperature: float) -> LogitKD:
    if name not in METHODS:
        raise ValueError(f"unknown distillation method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name](alpha=alpha, temperature=temperature)


@register
class LogitKD:
    r"""Hinton et al.'s logit distillation, with alpha weighting the distillation term.

    .. math::
        L = (1 - \alpha)\,\mathrm{CE}(z_s, y)
            + \alpha\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(z_t/T)\,\|\,\mathrm{softmax}(z_s/T)\big)

    This is RepDistiller's convention (alpha weights KD); torchdistill's alpha weights CE.
    The KL is averaged over the batch; T^2 keeps its gradients on the scale of the CE term's.
    """

    name = "logit"

    def __init__(self, alpha: float, temperature: float = 4.0):
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def __call__(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        t = self.temperature
        ce = F.cross_entropy(student_logits, targets)
        kl = F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return (1.0 - self.alpha) * ce + self.alpha * t * t * kl
