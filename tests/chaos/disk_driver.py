"""Train one experiment in a fresh process, as a PBS job would; optionally fill its disk.

    python disk_driver.py SPEC_JSON OUT_DIR

FILL_FILE=PATH (a file on the output directory's file system) and FILL_AT_REPLACE=K: right
after the K-th os.replace of this process (every atomic write and the checkpoint rotation go
through it; K=0: before training starts), PATH is grown until the file system is full, as if
another user had filled the disk at that instant: the next write fails with ENOSPC.
FILL_AFTER=NAME counts only the replaces whose destination is called NAME (e.g.
checkpoint.prev.pth: the rotation, so that the next write is the checkpoint's).
"""

import errno
import json
import os
import sys

from kdflow.trainer import TrainSpec, train


def fill(path: str) -> None:
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise


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
    train(TrainSpec.from_params(json.loads(sys.argv[1])), sys.argv[2])
