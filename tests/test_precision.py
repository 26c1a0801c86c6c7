"""The precision policy (`precision: auto` on GPUs of compute capability 6.0, 7.0, 7.5, 8.0 and
9.0 and on the CPU, the device mocked), fp16's gradient scaler saved and restored exactly, and
what each run records of the precision it used.

Only a GPU can show the speed of each precision (bench/gpu.py) and that cuDNN's fp16 and bf16
kernels train as fp32 does; here fp16 and bf16 run as CPU autocast, which exercises the same
code path (autocast, GradScaler, its checkpointed state) with the CPU's kernels."""

import json

import pytest
import torch
from fakedata import train_params, write_prepared

import kdflow.pack
from kdflow.config import TrainSpec
from kdflow.pack import train
from kdflow.trainer import Precision, choose_precision


@pytest.mark.parametrize(
    "capability, name, gpu",
    [
        ((6, 0), "fp16", "Tesla P100-PCIE-16GB"),
        ((7, 0), "fp16", "Tesla V100-SXM2-32GB"),
        ((7, 5), "fp16", "Tesla T4"),
        ((8, 0), "bf16", "NVIDIA A100-SXM4-80GB"),
        ((8, 6), "bf16", "NVIDIA GeForce RTX 3090"),
        ((9, 0), "bf16", "NVIDIA H100 80GB HBM3"),
    ],
)
def test_auto_takes_bf16_where_the_gpu_has_it_natively_else_fp16(
    monkeypatch, capability, name, gpu
):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    precision = choose_precision("auto", torch.device("cuda"))
    assert (precision.name, precision.device_type) == (name, "cuda")
    assert gpu in precision.reason and "{}.{}".format(*capability) in precision.reason


def test_auto_is_fp32_on_the_cpu_and_a_setting_is_taken_as_it_is(monkeypatch):
    def no_gpu(device=None):
        raise AssertionError("the CPU's policy must not ask a GPU")

    monkeypatch.setattr(torch.cuda, "get_device_capability", no_gpu)
    assert choose_precision("auto", torch.device("cpu")).name == "fp32"
    for setting in ("fp32", "bf16", "fp16"):
        for device in ("cpu", "cuda"):
            precision = choose_precision(setting, torch.device(device))
            assert (precision.name, precision.device_type) == (setting, device)
            assert precision.reason == f"precision: {setting} in the config"


@pytest.mark.parametrize(
    "name, dtype, scaled",
    [("fp32", None, False), ("bf16", torch.bfloat16, False), ("fp16", torch.float16, True)],
)
def test_each_precision_autocasts_to_its_type_and_only_fp16_scales(name, dtype, scaled):
    precision = Precision(name, "cpu", "test")
    layer = torch.nn.Linear(4, 4)
    with precision.autocast():
        assert torch.is_autocast_enabled("cpu") == (dtype is not None)
        assert layer(torch.randn(2, 4)).dtype == (dtype or torch.float32)
    scaler = precision.scaler()
    assert (scaler is not None) == scaled
    if scaled:
        assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()


def _fp16_steps(model, optimizer, scaler, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def test_the_gradient_scalers_state_round_trips_and_training_goes_on_identically():
    """What a checkpoint keeps of fp16 training: the scaler's scale and growth tracker. Saved
    after 3 steps (one of them skipped for an overflow) and loaded into fresh objects, 3 more
    steps end exactly where the uninterrupted run does."""

    def fresh():
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
            torch.nn.Linear(4 * 6 * 6, 4),
        )  # fmt: skip
        sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        return net, sgd, torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=2)

    model, optimizer, scaler = fresh()
    _fp16_steps(model, optimizer, scaler, 3, seed=1)
    assert scaler.get_scale() < 2.0**24, "the first step overflowed in fp16 and was skipped"
    saved = {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
    }
    _fp16_steps(model, optimizer, scaler, 3, seed=2)  # the uninterrupted run

    again, sgd, restored = fresh()
    again.load_state_dict(saved["model"])
    sgd.load_state_dict(saved["optimizer"])
    restored.load_state_dict(saved["scaler"])
    assert restored.state_dict() == saved["scaler"]
    _fp16_steps(again, sgd, restored, 3, seed=2)
    assert restored.state_dict() == scaler.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return train_params(write_prepared(tmp_path_factory.mktemp("precision") / "prepared.npz"))


@pytest.mark.slow
def test_each_run_records_the_precision_it_used_and_a_change_on_resume(tmp_path, tiny, monkeypatch):
    """status.json and metrics.json say which precision trained the run and why; a run that
    `auto` resumes on another kind of device says which epochs each precision trained."""
    spec = TrainSpec.from_params({**tiny, "epochs": 2, "precision": "fp16"})
    train(spec, tmp_path / "fp16")
    status = json.loads((tmp_path / "fp16/status.json").read_text())
    metrics = json.loads((tmp_path / "fp16/metrics.json").read_text())
    assert status["precision_used"] == metrics["precision_used"] == "fp16"
    assert status["precision_reason"] == "precision: fp16 in the config"
    checkpoint = torch.load(tmp_path / "fp16/checkpoint.pth", weights_only=False)
    assert checkpoint["precision"] == [[0, "fp16"]] and checkpoint["scaler"]["scale"] > 0

    # auto: the first epoch where it chose bf16 (a GPU of 8.0, as it were), the rest in fp32
    auto = TrainSpec.from_params({**tiny, "epochs": 1})
    bf16 = Precision("bf16", "cpu", "auto on a GPU with native bf16 (as it were)")
    monkeypatch.setattr(kdflow.pack, "choose_precision", lambda setting, device: bf16)
    train(auto, tmp_path / "auto")
    monkeypatch.undo()
    (tmp_path / "auto/completed").unlink()
    train(TrainSpec.from_params({**tiny, "epochs": 3}), tmp_path / "auto")
    metrics = json.loads((tmp_path / "auto/metrics.json").read_text())
    assert metrics["precision_used"] == "bf16 (epochs 1-1), fp32 (2-3)"
    assert metrics["precision"] == "auto"  # the setting: the experiment's identity
