"""Train one experiment in a fresh process, as a PBS job would; optionally SIGKILL it mid-write.

    python resume_driver.py SPEC_JSON OUT_DIR              kdflow.pack.train, no owner check
    python resume_driver.py --rule SPEC_JSON OUT_DIR LOG   scripts/train.py, as the workflow's
                                                           rule runs it (owner check included)
    python resume_driver.py --pack SPECS_JSON DIRS_JSON    kdflow.pack.train_pack: a list of
                                                           specs, one directory each

KILL_AT_REPLACE=K makes the K-th os.replace of this process (every atomic write and the
checkpoint rotation go through it) end in SIGKILL; KILL_MODE says where:
  truncated  the temp file half written and never renamed (a kill inside the write; at the
             checkpoint rotation, which has no temp file: a kill before the rename)
  before     the temp file complete, not yet renamed
  after      right after the rename, before anything else is written
  hold       no kill: the process blocks there, before the rename, until it is killed
             (KILL_NAME=metrics.json: a run that cannot finish, so a kill at a random
             instant of its training always lands, on a machine of any speed)
KILL_NAME=<file> counts only the renames to that name (KILL_AT_REPLACE=2 KILL_NAME=checkpoint.pth:
the second checkpoint write of the process; a pack writes one per student and epoch).
Just before the kill it prints `KILL <K> <mode> <file>` on stderr, <file> being the name the
rename was to give (status.json, checkpoint.pth, checkpoint.prev.pth for the rotation, ...):
the tests check where each kill landed.

Two hooks let a test race trainers for one experiment (tests/test_claim.py), without counting
on speed:
  START_FILE=<path>  once its imports are done, the process creates <path>.ready.<pid> and
                     waits while <path> exists: the test removes it to start them together
  HOLD_FILE=<path>   after kdflow.owner.claim has made it the owner, the process creates
                     <path>.won.<pid> and waits while <path> exists before it trains: the
                     test keeps the winner alive until the others have tried and answered
"""

import json
import os
import runpy
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train.py"


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_replace(k: int, mode: str, name: str | None = None) -> None:
    real_replace = os.replace
    calls = 0

    def replace(src, dst):
        nonlocal calls
        if name is None or os.path.basename(dst) == name:
            calls += 1
        if calls == k and (name is None or os.path.basename(dst) == name):
            print(f"KILL {k} {mode} {os.path.basename(dst)}", file=sys.stderr, flush=True)
            while mode == "hold":
                time.sleep(3600)
            if mode == "truncated":
                # only an atomic write's temp file: the checkpoint rotation renames the real
                # checkpoint, which a kill cannot damage (it dies before the rename instead)
                if os.path.basename(src).startswith("."):
                    with open(src, "r+b") as f:
                        f.truncate(os.path.getsize(src) // 2)
                die()
            if mode == "before":
                die()
            real_replace(src, dst)
            die()
        return real_replace(src, dst)

    os.replace = replace


def wait_while(path: Path) -> None:
    while path.exists():
        time.sleep(0.01)


def start_together(start: Path) -> None:
    import kdflow.owner  # noqa: F401  the slow imports before the start, not after
    import kdflow.pack  # noqa: F401

    Path(f"{start}.ready.{os.getpid()}").touch()
    wait_while(start)


def hold_after_claim(hold: Path) -> None:
    """kdflow.owner.claim, holding this process once it owns the experiment (scripts/train.py
    imports `claim` from kdflow.owner when it runs, so it gets this one)."""
    import kdflow.owner

    real_claim = kdflow.owner.claim

    def claim(directory, status, **kw):
        fields = real_claim(directory, status, **kw)
        Path(f"{hold}.won.{os.getpid()}").touch()
        wait_while(hold)
        return fields

    kdflow.owner.claim = claim


def run_rule(spec: dict, out_dir: str, log: str) -> None:
    """scripts/train.py with a stand-in for the `snakemake` object Snakemake gives a script."""
    hparams = {k: v for k, v in spec.items() if k != "threads"}
    snakemake = SimpleNamespace(
        params=SimpleNamespace(hparams=hparams),
        threads=spec.get("threads", 1),
        output=[str(Path(out_dir) / "completed")],
        log=[log],
    )
    runpy.run_path(str(TRAIN_SCRIPT), init_globals={"snakemake": snakemake}, run_name="__main__")


if __name__ == "__main__":
    if os.environ.get("KILL_AT_REPLACE"):
        kill_at_replace(
            int(os.environ["KILL_AT_REPLACE"]),
            os.environ.get("KILL_MODE", "before"),
            os.environ.get("KILL_NAME"),
        )
    if os.environ.get("HOLD_FILE"):
        hold_after_claim(Path(os.environ["HOLD_FILE"]))
    if os.environ.get("START_FILE"):
        start_together(Path(os.environ["START_FILE"]))
    if sys.argv[1] == "--rule":
        run_rule(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:  # what a job's script does: its logs on stderr, then train
        import logging

        from kdflow.config import TrainSpec
        from kdflow.pack import log_handlers, train, train_pack

        logging.basicConfig(level=logging.INFO, handlers=log_handlers(None), force=True)
        if sys.argv[1] == "--pack":
            specs = [TrainSpec.from_params(p) for p in json.loads(sys.argv[2])]
            train_pack(specs, json.loads(sys.argv[3]))
        else:
            train(TrainSpec.from_params(json.loads(sys.argv[1])), sys.argv[2])
