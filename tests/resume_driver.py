"""Train one experiment in a fresh process, as a PBS job would; optionally SIGKILL it mid-write.

    python resume_driver.py SPEC_JSON OUT_DIR

KILL_AT_REPLACE=K makes the K-th os.replace of this process (every atomic write and the
checkpoint rotation go through it) end in SIGKILL; KILL_MODE says where:
  truncated  the temp file half written and never renamed (a kill inside the write; at the
             checkpoint rotation, which has no temp file: a kill before the rename)
  before     the temp file complete, not yet renamed
  after      right after the rename, before anything else is written
"""

import json
import os
import signal
import sys

from kdflow.trainer import TrainSpec, train


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at_replace(k: int, mode: str) -> None:
    real_replace = os.replace
    calls = 0

    def replace(src, dst):
        nonlocal calls
        calls += 1
        if calls == k:
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


if __name__ == "__main__":
    if os.environ.get("KILL_AT_REPLACE"):
        kill_at_replace(int(os.environ["KILL_AT_REPLACE"]), os.environ.get("KILL_MODE", "before"))
    train(TrainSpec.from_params(json.loads(sys.argv[1])), sys.argv[2])
