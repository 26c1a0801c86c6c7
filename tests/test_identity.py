"""A run alone, now a pack of one, writes under kdflow 0.1's settings (FitNet's old form,
teacher_weights: best) bit for bit what kdflow 0.1's trainer wrote: tests/legacy holds that
trainer, and both train here, on this machine, from the same data (a reference file made
elsewhere would hold another CPU's rounding). What 0.2 adds to the files (identity keys,
last.pth, the precision used) is all it may add."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from fakedata import train_params, write_prepared
from legacy import trainer as legacy
from test_resume import _assert_equal

from kdflow.checkpoint import DIGEST_KEY
from kdflow.config import TrainSpec, identity_changes
from kdflow.pack import PackError, train, train_pack

pytestmark = pytest.mark.slow

TEACHER = "resnet14"
# (method, student, alpha, kdflow 0.1's settings, what 0.2 calls that form): each method, FitNet
# at kdflow 0.1's default (the last stage) and at a middle one
STUDENTS = [
    ("logit", "resnet8", 0.9, {}, {}),
    ("dkd", "resnet8", 1.0, {"warmup": 2, "beta": 6}, {}),
    ("fitnet", "resnet8", 1.0, {"hint_layer": -1}, {"regressor": "conv1x1_bn"}),
    ("fitnet", "wrn_16_1", 0.5, {"hint_layer": 2}, {"regressor": "conv1x1_bn"}),
]
# what kdflow 0.2 adds to the files of a run that kdflow 0.1 would have made (and FitNet's
# regressor to its method_settings)
ADDED = {
    "checkpoint.pth": {"precision"},
    "metrics.json": {"precision_used", "teacher_weights", "precision"},
    "identity": {"teacher_weights", "precision"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The teacher and each student, trained by kdflow 0.1 (old/) and by this kdflow (new/)."""
    root = tmp_path_factory.mktemp("identity")
    base = train_params(write_prepared(root / "prepared.npz"), seed=5, lr_milestones=[1])
    teacher = {**base, "model": TEACHER, "epochs": 2}
    legacy.train(legacy.TrainSpec.from_params(teacher), root / "old" / "teacher")
    train(TrainSpec.from_params(teacher), root / "new" / "teacher")
    names = ["teacher"]
    for method, model, alpha, settings, form in STUDENTS:
        name = f"{method}_{model}_{alpha}"
        names.append(name)
        spec = {**base, "model": model, "epochs": 3, "method": method, "alpha": alpha}
        spec["teacher"] = TEACHER
        old = {**spec, "teacher_dir": str(root / "old" / "teacher"), "method_settings": settings}
        legacy.train(legacy.TrainSpec.from_params(old), root / "old" / name)
        new = {**spec, "teacher_dir": str(root / "new" / "teacher"), "teacher_weights": "best"}
        new["method_settings"] = {**settings, **form}
        train(TrainSpec.from_params(new), root / "new" / name)
    return root, names


def test_a_run_alone_writes_what_kdflow_0_1_wrote(runs):
    root, names = runs
    for name in names:
        old, new = root / "old" / name, root / "new" / name
        for file in ("best.pth", "checkpoint.pth"):
            got, want = (_state(d / file) for d in (new, old))
            assert set(got) - set(want) <= ADDED.get(file, set()), f"{name}/{file}"
            for key in want:
                if key == "identity":  # the same experiment, kdflow 0.1's record read as 0.2 does
                    assert set(got[key]) - set(want[key]) == ADDED["identity"], name
                    assert identity_changes(want[key], got[key]) == "", name
                    continue
                _assert_equal(got[key], want[key], f"{name}/{file}: {key}")
        assert _rows(new) == _rows(old), name
        got, want = (json.loads((d / "metrics.json").read_text()) for d in (new, old))
        assert set(got) - set(want) == ADDED["metrics.json"], name
        assert identity_changes(want, _state(new / "checkpoint.pth")["identity"]) == "", name
        for key in set(want) - {"train_seconds", "method_settings"}:
            assert got[key] == want[key], f"{name}: metrics.json {key}"
        assert got["precision_used"] == "fp32"
        # and the new file: the last epoch's weights, which a student now distils from
        last = _state(new / "last.pth")
        _assert_equal(last["model"], _state(new / "checkpoint.pth")["model"], f"{name}: last")


def _state(path: Path) -> dict:
    state = torch.load(path, weights_only=False)
    state.pop(DIGEST_KEY)  # save_verified's digest: covered by the rest
    for row in state.get("history", []):
        row.pop("epoch_seconds"), row.pop("images_per_s")
    return state


def _rows(directory: Path) -> list[dict]:
    with open(directory / "history.csv") as f:
        timing = ("epoch_seconds", "images_per_s")
        return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(f)]


def test_a_fitnet_run_of_the_old_default_is_refused_saying_what_changed(runs, tmp_path):
    """A FitNet run that kdflow 0.1 finished at its default (the last stage, a 1x1 conv + BN,
    distilled from the best teacher) is not today's FitNet: today's default refuses it by
    name, finished or killed before its end, and leaves its files as they were."""
    root, _ = runs
    out = tmp_path / "fitnet"
    shutil.copytree(root / "old" / "fitnet_resnet8_1.0", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    base = train_params(root / "prepared.npz", seed=5, lr_milestones=[1])
    kd = {
        "method": "fitnet",
        "alpha": 1.0,
        "teacher": TEACHER,
        "teacher_dir": str(root / "new" / "teacher"),
    }
    spec = TrainSpec.from_params({**base, **kd, "model": "resnet8", "epochs": 3})
    changes = (
        "method_settings.hint_layer: -1 -> 2, teacher_weights: 'best' -> 'last', "
        "method_settings.regressor: 'conv1x1_bn' -> 'convreg'"
    )
    with pytest.raises(PackError) as refused:
        train_pack([spec], [out])
    assert f"{out} finished as a different experiment ({changes})" in str(refused.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    (out / "completed").unlink()  # killed before its end: its checkpoint says the same
    with pytest.raises(RuntimeError, match=re.escape(f"different experiment ({changes})")):
        train(spec, out)
    assert (
        not (out / "completed").exists()
        and (out / "checkpoint.pth").read_bytes() == (before["checkpoint.pth"])
    )
