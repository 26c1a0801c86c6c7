"""Logit KD against a hand computation, and the alpha convention."""

import math

import pytest
import torch

from kdflow.losses import LogitKD, build_method, method_names


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def test_logit_kd_equals_a_hand_computation():
    student = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
    teacher = [[3.0, 0.0, -2.0], [-1.0, 2.0, 2.5]]
    targets = [0, 2]
    alpha, t = 0.75, 4.0

    ce = -sum(math.log(_softmax(s, 1.0)[y]) for s, y in zip(student, targets, strict=True)) / 2
    kl = 0.0
    for s, z in zip(student, teacher, strict=True):
        p, q = _softmax(z, t), _softmax(s, t)  # teacher p, student q
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    kl /= 2  # batch mean
    expected = (1 - alpha) * ce + alpha * t * t * kl

    loss = LogitKD(alpha=alpha, temperature=t)(
        torch.tensor(student, dtype=torch.float64),
        torch.tensor(teacher, dtype=torch.float64),
        torch.tensor(targets),
    )
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_alpha_weights_the_distillation_term():
    s, z, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce_only = LogitKD(alpha=0.0)(s, z, y)
    assert ce_only.item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item())
    # alpha = 1: only the KD term, which vanishes when the student copies the teacher
    assert LogitKD(alpha=1.0)(z, z, y).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_reaches_only_the_student():
    s = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    LogitKD(alpha=0.5)(s, z.detach(), torch.tensor([0, 1, 2, 0])).backward()
    assert s.grad is not None and z.grad is None


def test_registry():
    assert "logit" in method_names()
    assert isinstance(build_method("logit", alpha=0.5, temperature=2), LogitKD)
    with pytest.raises(ValueError, match="unknown distillation method 'crd'"):
        build_method("crd", alpha=0.5, temperature=4)
