"""What the plugin's tests stand in for the scheduler and the clock with: the fake PBS of
tests/samples/fake_pbs.py (a script the fake qsub/qstat/qdel wrappers run, loaded here as a
module too) and a clock a test moves by hand."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "fake_pbs", Path(__file__).parent / "samples" / "fake_pbs.py"
)
fake_pbs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_pbs)


class Clock:
    """The controller's clock, set by the test (`clock.now += 60`)."""

    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now
