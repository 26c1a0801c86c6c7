"""Files are created with the user's umask, so that a research group reads its results from a
shared project directory: 0644 under umask 0022, 0640 under 0027 (never 0600, which
`tempfile.mkstemp` gives every file whatever the umask).

A run under each umask, in a process of its own (the umask is the process's): a prepared
dataset, one epoch of training with the owner's claim (checkpoints, best/last weights,
status.json, metrics.json, history, claim file), and the report of that run (tables and
figures). Every file it leaves is checked.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

RUN = """
import json, os, sys
from pathlib import Path

os.umask(int(sys.argv[2], 8))
sys.path.insert(0, sys.argv[3])
from fakedata import train_params, write_prepared
from kdflow.config import TrainSpec
from kdflow.owner import claim
from kdflow.pack import train
from kdflow.summary import ReportFiles, write_report

root = Path(sys.argv[1])
data = write_prepared(root / "data" / "prepared.npz")
run = root / "results" / "tiny" / "pure" / "resnet8" / "seed0"
train(TrainSpec.from_params(train_params(data)), run, claim=claim)
out = root / "results" / "summary"
files = ReportFiles(out / "results.csv", out / "results.md", {"tiny": out / "alpha_tiny.png"},
                    {"tiny": out / "curves_tiny.png"})
write_report([run], files, root / "results")
print(json.dumps({str(p.relative_to(root)): p.stat().st_mode for p in root.rglob("*")}))
"""


@pytest.mark.parametrize("umask, want", [(0o022, 0o644), (0o027, 0o640)])
def test_every_file_a_run_and_its_report_write_has_the_mode_the_umask_gives(tmp_path, umask, want):
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path), f"{umask:o}", str(HERE)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modes = json.loads(result.stdout.strip().splitlines()[-1])
    files = {path: mode for path, mode in modes.items() if stat.S_ISREG(mode)}
    # what a group reads: the dataset cache, a run's files, its claim, the report
    names = {Path(path).name for path in files}
    for expected in ("prepared.npz", "checkpoint.pth", "status.json", "metrics.json",
                     "results.csv", "results.md", "curves_tiny.png"):  # fmt: skip
        assert expected in names, sorted(names)
    assert any(name.startswith("claim.") for name in names), sorted(names)
    wrong = {path: oct(stat.S_IMODE(mode)) for path, mode in files.items()
             if stat.S_IMODE(mode) != want}  # fmt: skip
    assert not wrong, f"umask {umask:04o} should give {want:04o}: {wrong}"
