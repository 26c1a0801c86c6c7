"""Bad input: malformed configs, Snakemake and plugin arguments, `kdflow` and `scripts/cron.sh`
command lines, run as the real OpenPBS server's test user. Each is rejected before anything is
submitted (the config ones run through `snakemake --profile profiles/pbs` with the real PBS
commands on PATH behind counting wrappers: qsub is never called and no results/ appears), with
a message that names the offending key or value; nothing from a config reaches a shell (names
that would run `touch` if one did are rejected and create nothing)."""

from __future__ import annotations

import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from chaoslib import give, user_snakemake
from conftest import FULL

pytestmark = pytest.mark.slow
# a file that a config value would create if it ever reached a shell
PWNED = Path(f"/tmp/kdflow-chaos-pwned-{uuid.uuid4().hex[:8]}")
TOUCH = f"$(touch {PWNED})"

GOOD = {
    "seeds": [0],
    "datasets": {"digits": {"mem_mb": 2000, "runtime": 10}},
    "models": ["resnet14", "resnet8"],
    "pairs": [{"teacher": "resnet14", "student": "resnet8"}],
    "methods": {"logit": {"temperature": 4}},
    "alphas": [0.5],
    "train": {"epochs": 4, "lr_milestones": [3], "flip": False},
    "device": "cpu",
}


def changed(*path_and_value, drop: tuple[str, ...] = ()) -> dict:
    """GOOD with `key.sub = value` changes (pairs of path, value) and top-level keys dropped."""
    config = yaml.safe_load(yaml.safe_dump(GOOD))
    for path, value in zip(path_and_value[::2], path_and_value[1::2], strict=True):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    for key in drop:
        del config[key]
    return config


@dataclass
class Case:
    id: str
    kind: str  # config (YAML text or a dict) | snakemake (extra args) | kdflow | cron
    payload: object
    expect: tuple[str, ...]  # every one must be in the message
    env: dict[str, str] = field(default_factory=dict)


def _config(id_, payload, *expect):
    return Case(id_, "config", payload, expect)


CASES = [
    # wrong types
    _config("seeds not a list", changed("seeds", "0"), "seeds = '0'", "array"),
    _config("seed a fraction", changed("seeds", [0.5]), "seeds[0] = 0.5"),
    _config("seed a float", changed("seeds", [0.0]), "seeds[0] = 0.0", "integer"),
    _config("epochs a float", changed("train.epochs", 4.0), "train.epochs = 4.0", "integer"),
    _config("mem_mb a float", changed("datasets.digits.mem_mb", 2000.5), "mem_mb = 2000.5"),
    _config("runtime text", changed("datasets.digits.runtime", "1h"), "runtime = '1h'"),
    _config("lr text", changed("train.lr", "0.1"), "train.lr = '0.1'"),
    _config("flip text", changed("train.flip", "yes"), "train.flip = 'yes'"),
    _config("batch_size a bool", changed("train.batch_size", True), "batch_size = True"),
    _config("alphas a number", changed("alphas", 0.5), "alphas = 0.5", "array"),
    _config("alpha text", changed("alphas", ["0.5"]), "alphas[0] = '0.5'"),
    _config("datasets a list", changed("datasets", ["digits"]), "datasets = ['digits']"),
    # (Snakemake reads the config files: these three messages are its own)
    _config("config a list", "- seeds: [0]\n", "keys at top level"),
    _config("empty config", "", "keys at top level"),
    _config("yaml syntax", "seeds: [0\nmodels: [resnet8]\n", "not valid JSON or YAML"),
    # out of range
    _config("alpha above 1", changed("alphas", [1.5]), "alphas[0] = 1.5"),
    _config("alpha below 0", changed("alphas", [-0.1]), "alphas[0] = -0.1"),
    _config(
        "alpha nan",
        "alphas: [.nan]\n" + yaml.safe_dump(changed(drop=("alphas",))),
        "alphas[0] = nan",
    ),  # fmt: skip
    _config("seed negative", changed("seeds", [-1]), "seeds[0] = -1"),
    _config("mem_mb negative", changed("datasets.digits.mem_mb", -1), "mem_mb = -1"),
    _config("epochs 0", changed("train.epochs", 0), "train.epochs = 0"),
    _config("temperature 0", changed("methods.logit.temperature", 0), "temperature = 0"),
    _config(
        "milestone after the end",
        changed("train.lr_milestones", [10]),
        "train.lr_milestones[0] = 10",
    ),  # fmt: skip
    _config("device tpu", changed("device", "tpu"), "device = 'tpu'"),
    # unknown names
    _config(
        "unknown model",
        changed("models", ["resnet14", "resnet9000"]),
        "'resnet9000'",
        "unknown model",
    ),  # fmt: skip
    _config(
        "unknown dataset",
        changed("datasets", {"imagenet22k": {}}),
        "imagenet22k",
        "unknown dataset",
    ),  # fmt: skip
    _config(
        "unknown method", changed("methods", {"fitnets": {}}), "methods.fitnets", "unknown method"
    ),  # fmt: skip
    _config("method pure", changed("methods", {"pure": {}}), "methods.pure"),
    _config("top-level typo", {**GOOD, "epoch": 5}, "'epoch'", "check the spelling"),
    _config("train typo", changed("train.epochz", 5), "epochz"),
    _config(
        "teacher not a model",
        changed("pairs", [{"teacher": "resnet20", "student": "resnet8"}]),
        "pairs[0].teacher = 'resnet20'",
    ),  # fmt: skip
    _config(
        "teacher is student",
        changed("pairs", [{"teacher": "resnet8", "student": "resnet8"}]),
        "pairs[0]",
        "both 'resnet8'",
    ),  # fmt: skip
    _config(
        "upper-case name",
        changed("models", ["resnet14", "Resnet8"]),
        "'Resnet8'",
        "not a valid name",
    ),  # fmt: skip
    # duplicates
    _config("duplicate seeds", changed("seeds", [0, 0]), "seeds", "non-unique"),
    _config("duplicate alphas", changed("alphas", [0.5, 0.5]), "alphas", "non-unique"),
    _config(
        "duplicate models",
        changed("models", ["resnet14", "resnet8", "resnet8"]),
        "models",
        "non-unique",
    ),  # fmt: skip
    _config(
        "duplicate pairs",
        changed("pairs", [{"teacher": "resnet14", "student": "resnet8"}] * 2),
        "pairs[1]",
        "duplicate of pairs[0]",
    ),  # fmt: skip
    _config(
        "duplicate yaml key", yaml.safe_dump(GOOD) + "models: [resnet8]\n", "models", "twice"
    ),  # fmt: skip
    # names that would run a command in a shell, or climb out of results/
    _config("dataset $(touch)", changed("datasets", {TOUCH: {}}), TOUCH, "not a valid name"),
    _config(
        "model ; touch",
        changed("models", ["resnet14", f"resnet8; touch {PWNED}"]),
        "not a valid name",
    ),  # fmt: skip
    _config(
        "teacher `touch`",
        changed("pairs", [{"teacher": f"`touch {PWNED}`", "student": "resnet8"}]),
        "pairs[0].teacher",
        "not a valid name",
    ),  # fmt: skip
    _config("method $(touch)", changed("methods", {TOUCH: {}}), TOUCH, "not a valid name"),
    _config("alpha $(touch)", changed("alphas", [TOUCH]), "alphas[0]", TOUCH),
    _config("device $(touch)", changed("device", TOUCH), "device", TOUCH),
    _config(
        "dataset ../", changed("datasets", {"../../etc": {}}), "'../../etc'", "not a valid name"
    ),  # fmt: skip
    _config("model ../", changed("models", ["resnet14", "../resnet8"]), "'../resnet8'"),
    # Snakemake and plugin arguments
    Case(
        "status interval 0",
        "snakemake",
        ["--pbs-status-interval", "0"],
        expect=("--pbs-status-interval",),
    ),  # fmt: skip
    Case("mem growth 0.5", "snakemake", ["--pbs-mem-growth", "0.5"], ("--pbs-mem-growth",)),
    Case("command timeout text", "snakemake", ["--pbs-command-timeout", "abc"], ("'abc'",)),
    Case(
        "queue ; touch",
        "snakemake",
        ["--pbs-queue", f"workq; touch {PWNED}"],
        ("queue", "workq; touch"),
    ),  # fmt: skip
    Case(
        "project with a newline", "snakemake", ["--pbs-project", f"ci\ntouch {PWNED}"], ("project",)
    ),  # fmt: skip
    Case(
        "select extra $(touch)", "snakemake", ["--pbs-select-extra", TOUCH], ("select", TOUCH)
    ),  # fmt: skip
    Case(
        "missing config file", "snakemake", ["--configfile", "nowhere.yaml"], ("nowhere.yaml",)
    ),  # fmt: skip
    # kdflow
    Case("kdflow status --watch abc", "kdflow", ["status", "--watch", "abc"], ("'abc'",)),
    Case("kdflow status --watch -5", "kdflow", ["status", "--watch", "-5"], ("-5",)),
    Case("kdflow status --watch nan", "kdflow", ["status", "--watch", "nan"], ("nan",)),
    Case("kdflow status --watch inf", "kdflow", ["status", "--watch", "inf"], ("inf",)),
    Case(
        "kdflow status --qstat-timeout 0",
        "kdflow",
        ["status", "--qstat-timeout", "0"],
        ("--qstat-timeout", "0"),
    ),  # fmt: skip
    Case("kdflow unknown command", "kdflow", ["frobnicate"], ("'frobnicate'",)),
    Case("kdflow no command", "kdflow", [], ("COMMAND",)),
    Case(
        "kdflow missing config",
        "kdflow",
        ["status", "--configfile", "nowhere.yaml"],
        ("nowhere.yaml",),
    ),  # fmt: skip
    Case(
        "kdflow bad config", "kdflow", ["status", "--configfile", "bad.yaml"], ("alphas[0] = 1.5",)
    ),  # fmt: skip
    Case(
        "kdflow report no results", "kdflow", ["report", "--results", "nowhere"], ("'nowhere'",)
    ),  # fmt: skip
    # scripts/cron.sh
    Case("cron.sh on every-hour", "cron", ["on", "every-hour"], ("'every-hour'",)),
    Case("cron.sh on 0", "cron", ["on", "0"], ("'0'",)),
    Case("cron.sh on 60", "cron", ["on", "60"], ("'60'",)),
    Case("cron.sh on $(touch)", "cron", ["on", TOUCH], (TOUCH,)),
    Case("cron.sh on cron line", "cron", ["on", "5 * * * * rm -rf ~"], ("MINUTES",)),
    Case("cron.sh unknown command", "cron", ["frobnicate"], ("cron.sh on",)),
    Case("cron.sh no command", "cron", [], ("cron.sh on",)),
    Case(
        "cron.sh bad KDFLOW_REMOTE",
        "cron",
        ["cron"],
        ("user@host:/path",),
        env={"KDFLOW_REMOTE": "no-path-here"},
    ),  # fmt: skip
    Case(
        "cron.sh KDFLOW_REMOTE host an ssh option",
        "cron",
        ["cron"],
        ("user@host:/path",),
        env={"KDFLOW_REMOTE": f"-oProxyCommand=touch {PWNED}:/tmp/kdflow"},
    ),  # fmt: skip
    Case(
        "cron.sh KDFLOW_START_WAIT $(touch)",
        "cron",
        ["cron"],
        ("KDFLOW_START_WAIT", TOUCH),
        env={"KDFLOW_START_WAIT": TOUCH},
    ),  # fmt: skip
]
# small counts: 30 of them (the shell-injection ones always); full counts: all
INJECTIONS = [
    c for c in CASES if str(PWNED) in repr((c.payload, c.env)) or TOUCH in repr((c.payload, c.env))
]
if FULL:
    SELECTED = CASES
else:
    import random as _random

    others = [c for c in CASES if c not in INJECTIONS]
    SELECTED = INJECTIONS + _random.Random(0).sample(others, 30 - len(INJECTIONS))
    SELECTED.sort(key=CASES.index)
PROFILE_ARGS = [
    "--set-threads", "train_pure=1", "train_kd=1", "train_pack=1",
    "--set-resources", "train_pure:gpu=0", "train_kd:gpu=0", "train_pack:gpu=0",
]  # fmt: skip


@dataclass
class Outcome:
    returncode: int
    message: str
    results_dir: bool


def _run_case(openpbs, case: Case, env: dict[str, str]) -> Outcome:
    workdir = openpbs.workdir(case.id.replace(" ", "_").replace("/", "_").replace("$", "S"))
    (workdir / "config").mkdir()
    (workdir / "config/experiments.yaml").write_text(yaml.safe_dump(GOOD))
    (workdir / "bad.yaml").write_text(yaml.safe_dump(changed("alphas", [1.5])))
    env = {**env, **case.env}
    if case.kind in ("config", "snakemake"):
        config, extra = "config/experiments.yaml", []
        if case.kind == "config":
            payload = case.payload
            text = payload if isinstance(payload, str) else yaml.safe_dump(payload)
            (workdir / "sweep.yaml").write_text(text)
            config = "sweep.yaml"
        else:
            extra = list(case.payload)
        argv = user_snakemake(openpbs, workdir, "--profile", openpbs.workflow / "profiles/pbs",
                              "--configfile", config, "--replace-workflow-config",
                              *PROFILE_ARGS, *extra)  # fmt: skip
    elif case.kind == "kdflow":
        argv = [openpbs.venv / "bin/kdflow", *case.payload]
    else:
        (workdir / "scripts").mkdir()
        shutil.copy2(openpbs.workflow / "scripts/cron.sh", workdir / "scripts/cron.sh")
        argv = ["bash", workdir / "scripts/cron.sh", *case.payload]
        env = {**env, "KDFLOW_VENV": str(openpbs.venv)}
    give(openpbs, workdir)
    p = openpbs.run(*argv, cwd=workdir, env=env, timeout=300)
    (workdir / "message.txt").write_text(f"exit {p.returncode}\n{p.stdout}{p.stderr}")
    return Outcome(p.returncode, p.stdout + p.stderr, (workdir / "results").exists())


def _crontab(openpbs) -> str | None:
    """The test user's crontab (None where there is no crontab command)."""
    if not shutil.which("crontab", path=openpbs.path):
        return None
    return openpbs.run("crontab", "-l").stdout


def _run_all(openpbs) -> dict:
    """Every selected case, two at a time, as the test user; the qsub calls made meanwhile
    (the session's counting wrapper in front of the real qsub); did the crontab change."""
    env = {"SNAKEMAKE_PBS_QUEUE": "workq"}
    qsub_before, crontab_before = openpbs.calls("qsub"), _crontab(openpbs)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _run_case(openpbs, c, env), SELECTED))
    return {
        "cases": {c.id: r for c, r in zip(SELECTED, results, strict=True)},
        "qsub_calls": openpbs.calls("qsub") - qsub_before,
        "crontab_changed": _crontab(openpbs) != crontab_before,
    }


@pytest.mark.timeout(1800)
def test_every_bad_input_is_rejected_by_name_before_anything_is_submitted(openpbs, chaos):
    outcomes = _run_all(openpbs)
    chaos.bad_inputs = len(outcomes["cases"])
    problems = []
    for case in SELECTED:
        outcome = outcomes["cases"][case.id]
        message = outcome.message
        if outcome.returncode == 0:
            problems.append(f"{case.id}: accepted (exit 0)")
        missing = [e for e in case.expect if e not in message]
        if missing:
            problems.append(f"{case.id}: message lacks {missing}:\n    " + message[-1500:])
        if outcome.results_dir:
            problems.append(f"{case.id}: results/ was created")
        if case.kind in ("kdflow", "cron") and "Traceback" in message:
            problems.append(f"{case.id}: a traceback instead of a message:\n{message[-1500:]}")
    chaos.detail.update(
        kinds={
            k: sum(c.kind == k for c in SELECTED) for k in ("config", "snakemake", "kdflow", "cron")
        },  # fmt: skip
        qsub_calls=outcomes["qsub_calls"],
        rejected=sum(r.returncode != 0 for r in outcomes["cases"].values()),
    )
    assert len(SELECTED) >= 30
    assert outcomes["qsub_calls"] == 0, "a bad input reached qsub"
    assert not PWNED.exists(), f"a config value reached a shell: {PWNED} was created"
    assert not outcomes["crontab_changed"], "a rejected cron.sh call changed the crontab"
    assert problems == [], "\n".join(problems)
