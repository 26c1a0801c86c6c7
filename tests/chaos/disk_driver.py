"""Train one experiment in a fresh process, as a PBS job would; optionally fill its disk.

    python disk_driver.py SPEC_JSON OUT_DIR

FILL_FILE=PATH (a file on the output directory's file system) and FILL_AT_REPLACE=K: right
after the K-th os.replace of this process (every atomic write and the checkpoint rotation go
through it; K=0: before training starts), PATH is grown until the file system is full, as if
another user had filled the disk at that instant: the next write fails with ENOSPC.
FILL_AFTER=NAME counts only the replaces whose destination is called NAME (e.g.
checkpoint.prev.pth: the rotation, so that the next write is the checkpoint's).
"""

import json
import logging
import os
import sys
from pathlib import Path

# disks.py: the plugin's tests own it (its tests fill disks too); kdflow's pytest finds it there
sys.path.insert(
    0, str(Path(__file__).resolve().parents[2] / "plugins/snakemake-executor-plugin-pbs/tests")
)
from disks import fill  # noqa: E402

from kdflow.config import TrainSpec  # noqa: E402
from kdflow.pack import log_handlers, train  # noqa: E402


def fill_at_replace(k: int, path: str, name: str | None) -> None:
    real_replace = os.replace
    calls = 0

    def replace(src, dst):
        nonlocal calls
        real_replace(src, dst)
        if name is None or os.path.basename(dst) == name:
            calls += 1
            if calls == k:
                fill(path)

    os.replace = replace


if __name__ == "__main__":
    if os.environ.get("FILL_FILE"):
        k = int(os.environ.get("FILL_AT_REPLACE", "0"))
        if k == 0:
            fill(os.environ["FILL_FILE"])
        else:
            fill_at_replace(k, os.environ["FILL_FILE"], os.environ.get("FILL_AFTER"))
    logging.basicConfig(level=logging.INFO, handlers=log_handlers(None), force=True)
    train(TrainSpec.from_params(json.loads(sys.argv[1])), sys.argv[2])
