"""Storage faults: a disk that fills up while a run writes (a small tmpfs, filled at the start
and right after a checkpoint rotation or any other write), and damaged files (checkpoint.pth
and its .prev, status.json, history.csv, metrics.json, the PBS registry's records). Every
fault is recovered from or reported by path; a run resumes once space is back and ends
bit-identical to a clean one; `kdflow status` and `kdflow report` keep working."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import disks
import pytest
import yaml
from chaoslib import (
    HERE,
    Sampler,
    differences,
    job_history,
    lost_epochs,
    overlapping_jobs,
    user_snakemake,
    wait_until,
)
from conftest import COUNTS, FULL
from fakedata import train_params, write_prepared

from kdflow.checkpoint import CheckpointError, load_checkpoint, previous_path
from kdflow.config import RECIPE, TrainSpec
from kdflow.pack import train

pytestmark = pytest.mark.slow
DISK_DRIVER = HERE / "disk_driver.py"
EPOCHS = 6
KDFLOW = [str(Path(sys.executable).parent / "kdflow")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny dataset; a teacher; references of a baseline and a student, never interrupted."""
    root = tmp_path_factory.mktemp("storage")
    data = write_prepared(root / "prepared.npz", seed=2)
    pure = train_params(data, seed=7, epochs=EPOCHS, lr_milestones=[EPOCHS - 2])
    teacher = root / "results/tiny/pure/resnet14/seed7"
    train(TrainSpec.from_params({**pure, "model": "resnet14"}), teacher)
    student = {**pure, "method": "logit", "teacher": "resnet14", "teacher_dir": str(teacher),
               "alpha": 0.5}  # fmt: skip
    train(TrainSpec.from_params(pure), root / "results/tiny/pure/resnet8/seed7")
    train(
        TrainSpec.from_params(student), root / "results/tiny/logit/resnet14-resnet8/alpha0.5/seed7"
    )
    # the same baseline stopped after epoch 2: what the resume cases start from
    train(TrainSpec.from_params({**pure, "epochs": 3}), root / "partial")
    (root / "partial/completed").unlink()
    (root / "partial/metrics.json").unlink()
    return {"root": root, "pure": pure, "reference": root / "results/tiny/pure/resnet8/seed7"}


# -- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs, unmounted after the test (needs root)."""
    with disks.small_disk(tmp_path / "disk") as disk:
        yield disk


def _drive(spec, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DISK_DRIVER), json.dumps(spec), str(out)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


FULL_DISK = re.compile(r"cannot write (\S+): No space left on device")


@pytest.mark.timeout(1800 if FULL else 600)
def test_a_full_disk_fails_the_write_by_path_keeps_the_checkpoint_and_resumes(
    tiny, small_disk, chaos
):
    rng = chaos.rng
    spec, reference = tiny["pure"], tiny["reference"]
    filler = small_disk / "filler"
    # where the disk fills up: before anything is written, right after the checkpoint
    # rotation (so that the new checkpoint's write fails), or after a random write
    plan = ["start", "rotation"] + [
        rng.choice(["rotation", "any"]) for _ in range(2 * COUNTS.corruptions - 2)
    ]
    failed_writes: dict[str, int] = {}
    chaos.detail.update(failed_writes=failed_writes, plan=plan)
    run, problems = 0, []
    out = small_disk / f"run{run}"
    last_epoch = -1
    for where in plan:
        env = {"FILL_FILE": str(filler), "FILL_AT_REPLACE": "0"}
        if where == "rotation":
            env.update(FILL_AT_REPLACE=str(rng.randint(1, 2)), FILL_AFTER="checkpoint.prev.pth")
        elif where == "any":
            env.update(FILL_AT_REPLACE=str(rng.randint(1, 10)))
        result = _drive(spec, out, env)
        filler.unlink(missing_ok=True)  # space is back
        if result.returncode == 0:  # finished before the disk filled: check it, start another
            problems += differences(out, reference)
            run += 1
            out, last_epoch = small_disk / f"run{run}", -1
            continue
        chaos.faults += 1
        match = FULL_DISK.search(result.stderr)
        assert match, (
            f"no 'cannot write PATH: No space left on device' in:\n{result.stderr[-3000:]}"
        )
        failed = Path(match.group(1))
        assert failed.parent == out, failed
        failed_writes[failed.name] = failed_writes.get(failed.name, 0) + 1
        assert not list(out.glob(".*.tmp")), "a failed write must not leave its temp file"
        # what status.json records as trained, a loadable checkpoint holds
        chaos.lost_epochs = (chaos.lost_epochs or 0) + lost_epochs(out)
        # the last good checkpoint is intact (checkpoint.pth, or its .prev after a rotation)
        state = load_checkpoint(out / "checkpoint.pth")
        if state is not None:
            assert state["epoch"] >= last_epoch
            last_epoch = state["epoch"]
        status = json.loads((out / "status.json").read_text()) if where != "start" else {}
        assert status.get("status", "in_progress") in ("in_progress", "completed")
    result = _drive(spec, out, {})
    assert result.returncode == 0, result.stderr[-3000:]
    problems += differences(out, reference)
    chaos.differing = len(problems)
    assert "checkpoint.pth" in failed_writes and "status.json" in failed_writes, failed_writes
    assert not chaos.lost_epochs, "a full disk lost an epoch its status had recorded"
    assert problems == [], f"seed {chaos.seed}:\n" + "\n".join(problems)


# -- damaged files ----------------------------------------------------------------------------


def truncate(path: Path, rng) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(1, len(data) - 2)])  # JSON loses its closing brace
    return "truncated"


def empty(path: Path, rng) -> str:
    path.write_bytes(b"")
    return "emptied"


def garbage(path: Path, rng) -> str:
    path.write_bytes(bytes(rng.randrange(256) for _ in range(max(64, path.stat().st_size // 8))))
    return "garbage"


def flip(path: Path, rng) -> str:
    data = bytearray(path.read_bytes())
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data) // 4, len(data))  # past the header: the data itself
        data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return "bits flipped"


def wrong_json(path: Path, rng) -> str:
    path.write_text(rng.choice(['["a", "list"]', "null", '"text"', "{", '{"epoch": "x"}']))
    return "wrong JSON"


def wrong_csv(path: Path, rng) -> str:
    lines = path.read_text().splitlines()
    how, text = rng.choice(
        [
            ("a row cut short", "\n".join(lines[:-1] + [lines[-1][: len(lines[-1]) // 2]])),
            ("another format", "epoch;loss\n1;2\n"),
            ("text where numbers go", "\n".join([lines[0]] + [",".join(["x"] * 8)] * 3)),
        ]
    )
    path.write_text(text)
    return f"damaged CSV: {how}"


CHECKPOINT_DAMAGE = [truncate, empty, garbage, flip]
JSON_DAMAGE = [truncate, empty, garbage, wrong_json]
CSV_DAMAGE = [truncate, empty, garbage, wrong_csv]
# a history cut at a row boundary is a valid shorter history: nothing to report
REPORT_CSV_DAMAGE = [empty, garbage, wrong_csv]


def _train_logged(spec, out: Path) -> tuple[bool, str]:
    """Resume `spec` in `out` in this process; (finished?, the run's log)."""
    log = out / "train.log"
    handler, kdflow = logging.FileHandler(log), logging.getLogger("kdflow")
    kdflow.addHandler(handler)  # its lines, as a job's script logs them
    level, kdflow.level = kdflow.level, logging.INFO
    try:
        train(TrainSpec.from_params(spec), out)
        ok = True
    except CheckpointError as exc:
        ok = False
        log.write_text(log.read_text() + f"\nCheckpointError: {exc}\n")
    finally:
        kdflow.removeHandler(handler), handler.close()
        kdflow.level = level
    return ok, log.read_text()


@pytest.mark.timeout(1200 if FULL else 600)
def test_damaged_run_files_are_recovered_or_reported_by_path(tiny, chaos, tmp_path):
    """A run resumed after its files were damaged: a bad checkpoint.pth is reported by path and
    its .prev used (also when the resumed run is killed right after its next rotation); both
    bad: reported by path, nothing trained; status.json and history.csv are rewritten. Each
    recovered run ends bit-identical to the clean one."""
    rng, partial, reference = chaos.rng, tiny["root"] / "partial", tiny["reference"]
    cases = []
    for damage in rng.sample(CHECKPOINT_DAMAGE, k=min(COUNTS.corruptions, 4)):
        cases += [("checkpoint.pth", damage), ("both checkpoints", damage)]
        cases += [("checkpoint.pth, then a kill after the rotation", damage)]
    cases += [("status.json", d) for d in rng.sample(JSON_DAMAGE, k=min(COUNTS.corruptions, 4))]
    cases += [("history.csv", d) for d in rng.sample(CSV_DAMAGE, k=min(COUNTS.corruptions, 4))]
    problems = []
    for i, (what, damage) in enumerate(cases):
        out = tmp_path / f"case{i}"
        shutil.copytree(partial, out)
        if what == "both checkpoints":
            for path in (out / "checkpoint.pth", previous_path(out / "checkpoint.pth")):
                how = damage(path, rng)
        else:
            how = damage(out / what.split(",")[0], rng)
        chaos.faults += 1
        label = f"{what} {how}"
        if what.startswith("checkpoint.pth, then a kill"):
            # the run resumes from .prev, and is killed right after its next checkpoint
            # rotation (save_checkpoint's first step), before the new checkpoint exists
            checkpoint = out / "checkpoint.pth"
            if load_checkpoint(checkpoint) is None:
                problems.append(f"{label}: the previous checkpoint was not used")
            if checkpoint.exists():
                os.replace(checkpoint, previous_path(checkpoint))
            chaos.kills += 1
        ok, log = _train_logged(tiny["pure"], out)
        if what == "both checkpoints":
            # nothing to resume from: refused, naming both files, and nothing overwritten
            if ok or str(out / "checkpoint.pth") not in log or "checkpoint.prev.pth" not in log:
                problems.append(f"{label}: not refused by path:\n{log[-1500:]}")
            continue
        if not ok:
            problems.append(f"{label}: not recovered:\n{log[-1500:]}")
            continue
        if what == "checkpoint.pth" and str(out / "checkpoint.pth") not in log:
            problems.append(f"{label}: the damaged checkpoint was not reported by path")
        found = differences(out, reference)
        chaos.differing += bool(found)
        problems += [f"{label}: {d}" for d in found]
    chaos.detail["cases"] = [f"{w} {d.__name__}" for w, d in cases]
    assert problems == [], f"seed {chaos.seed}:\n" + "\n\n".join(problems)


def _sweep_workdir(tiny, workdir: Path) -> list[str]:
    """A workdir with the tiny sweep's config (the recipe its results were trained with: a
    report leaves out runs of another recipe) and finished results (copies)."""
    config = {
        "seeds": [7],
        "datasets": {"tiny": {}},
        "models": ["resnet14", "resnet8"],
        "pairs": [{"teacher": "resnet14", "student": "resnet8"}],
        "alphas": [0.5],
        "train": {key: value for key, value in tiny["pure"].items() if key in RECIPE},
        "device": tiny["pure"]["device"],
    }
    (workdir / "config").mkdir(parents=True)
    (workdir / "config/experiments.yaml").write_text(yaml.safe_dump(config))
    shutil.copytree(tiny["root"] / "results", workdir / "results")
    return sorted(str(p.parent) for p in (workdir / "results").glob("**/completed"))


@pytest.mark.timeout(600)
def test_status_and_report_work_over_damaged_files(tiny, chaos, tmp_path):
    """`kdflow status` and `kdflow report` over finished results whose metrics.json,
    history.csv and status.json are damaged, and unreadable registry records: both exit 0;
    every damaged metrics.json and history.csv is named in a warning; the rest is shown."""
    rng = chaos.rng
    experiments = _sweep_workdir(tiny, tmp_path)
    damaged: dict[str, list[str]] = {"metrics.json": [], "history.csv": [], "status.json": []}
    rounds = COUNTS.corruptions
    problems = []
    for r in range(rounds):
        shutil.rmtree(tmp_path / "results")
        shutil.copytree(tiny["root"] / "results", tmp_path / "results")
        for kind in damaged:
            damaged[kind] = []
        how: dict[str, str] = {}
        # one experiment at least keeps good files; the others lose one file each
        victims = rng.sample(experiments, k=len(experiments) - 1)
        for directory, kind in zip(victims, rng.sample(list(damaged), k=len(victims)),
                                   strict=False):  # fmt: skip
            damage = rng.choice(JSON_DAMAGE if kind.endswith(".json") else REPORT_CSV_DAMAGE)
            how[str(Path(directory) / kind)] = damage(Path(directory) / kind, rng)
            damaged[kind].append(str(Path(directory) / kind))
            chaos.faults += 1
        records = tmp_path / ".kdflow/pbs/targets"
        records.mkdir(parents=True, exist_ok=True)
        (records / "kd0000000000.json").write_text('{"name": "kd0000000000", "submissions": [')
        (records / "kd1111111111.json").write_bytes(os.urandom(64))
        chaos.faults += 2

        status = subprocess.run([*KDFLOW, "status", "--no-qstat", "--json"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        if status.returncode != 0:
            problems.append(f"round {r}: kdflow status failed:\n{status.stderr[-2000:]}")
        else:
            rows = json.loads(status.stdout)["experiments"]
            if {row["state"] for row in rows} != {"done"} or len(rows) != len(experiments):
                problems.append(f"round {r}: kdflow status shows {rows}")
        plain = subprocess.run([*KDFLOW, "status", "--no-qstat"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        if plain.returncode != 0 or "finished 3/3" not in plain.stdout:
            problems.append(f"round {r}: kdflow status (table): {plain.stdout}{plain.stderr}")
        report = subprocess.run([*KDFLOW, "report"], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        if report.returncode != 0:
            problems.append(f"round {r}: kdflow report failed:\n{report.stderr[-2000:]}")
            continue
        for path in damaged["metrics.json"] + damaged["history.csv"]:
            if str(Path(path).relative_to(tmp_path)) not in report.stderr:
                problems.append(
                    f"round {r}: kdflow report did not name {path} ({how[path]}):\n{report.stderr}"
                )
        rows = (tmp_path / "results/summary/results.csv").read_text().splitlines()[1:]
        if len(rows) != len(experiments) - len(damaged["metrics.json"]):
            problems.append(f"round {r}: results.csv has {len(rows)} rows")
        chaos.detail[f"round {r}"] = {
            kind: [str(Path(p).parent.relative_to(tmp_path)) for p in paths]
            for kind, paths in damaged.items()
        }
    assert problems == [], f"seed {chaos.seed}:\n" + "\n\n".join(problems)


# -- damaged registry records while jobs run --------------------------------------------------


@pytest.mark.timeout(600)
def test_unreadable_registry_records_of_live_jobs_are_set_aside_and_the_jobs_adopted(
    openpbs, chaos
):
    """On the real OpenPBS, as its test user: the controller is SIGKILLed while its jobs run,
    every registry record is damaged, and a new controller starts: it sets the records aside
    (by path), finds each live job by its name and adopts it; nothing is submitted twice
    (the server's history and the queue sampled every second) and everything completes."""
    rng = chaos.rng
    workdir = openpbs.workdir("unreadable")
    env = {"SNAKEMAKE_PBS_QUEUE": "workq"}
    # the jobs wait for `release`, which the test makes once the second controller has
    # adopted all three: they are alive until then, however slow the restart
    argv = user_snakemake(
        openpbs, workdir, "--executor", "pbs", "--jobs", "8", "--retries", "0",
        "--latency-wait", "10", "--pbs-status-interval", "1", "--config", "jobs=3", "hold=1",
        snakefile=HERE / "workflows/Snakefile",
    )  # fmt: skip
    with Sampler(openpbs, workdir) as sampler:
        first = openpbs.popen(*argv, cwd=workdir, log=workdir / "first.log", env=env)
        targets = workdir / ".snakemake-pbs/targets"  # the executor's default: no profile

        def all_submitted():
            records = [json.loads(p.read_text()) for p in targets.glob("*.json")]
            return len(records) == 3 and all(r["submissions"][-1]["job_id"] for r in records)

        assert wait_until(all_submitted, 300, 0.2), "the first controller did not submit 3 jobs"
        os.killpg(first.pid, signal.SIGKILL)  # a session of its own: the controller alone
        first.wait()
        for path in targets.glob("*.json"):
            rng.choice([truncate, empty, garbage, wrong_json])(path, rng)
            chaos.faults += 1
        # as a cron tick does: the killed controller's lock is stale
        openpbs.run(*argv, "--unlock", env=env, cwd=workdir)
        second_log = workdir / "second.log"
        second = openpbs.popen(*argv, "--rerun-incomplete", cwd=workdir, log=second_log, env=env)
        try:
            adopted = wait_until(
                lambda: second.poll() is not None
                or second_log.read_text().count("adopting live job") == 3,
                300, 0.2,
            )  # fmt: skip
            (workdir / "release").touch()
            assert adopted, second_log.read_text()[-4000:]
            returncode = second.wait(timeout=300)
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
                second.wait()
    log = second_log.read_text()
    assert returncode == 0, log[-4000:]
    history = job_history(openpbs, workdir)
    overlaps = overlapping_jobs(history)
    chaos.kills = 1
    chaos.duplicates = len(sampler.duplicates) + len(overlaps)
    assert len(history) == 3, f"jobs submitted twice: {history}"
    assert all(job["exit"] == 0 for job in history.values()), history
    assert log.count("adopting live job") == 3, log[-4000:]
    assert len(list(targets.glob("*.json.unreadable-*"))) == 3
    assert sampler.duplicates == [] and overlaps == []
    assert sorted(p.name for p in workdir.glob("quick*.done")) == [
        f"quick{i}.done" for i in range(3)
    ]
