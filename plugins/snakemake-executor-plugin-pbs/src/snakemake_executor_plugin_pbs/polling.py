"""How long to wait between status checks: short while jobs start and end, longer while
nothing changes, within bounds a site sets.

Each check is one qstat for all jobs, but the server's work grows with the number of jobs it
describes: the interval never drops below one second per JOBS_PER_SECOND jobs asked about, so
a run of 1,000 jobs asks about at most that many jobs a second on average, whatever the
interval the user chose.
"""

from dataclasses import dataclass, field

# Growth of the interval after a check at which nothing changed (x1.5: from 10 s to 3 minutes
# in 8 quiet checks, about 7 minutes).
GROWTH = 1.5
# At most this many jobs described by the server per second, on average (see above).
JOBS_PER_SECOND = 20.0


@dataclass
class PollInterval:
    """The interval policy. `shortest`: right after a change (the user's
    --seconds-between-status-checks, raised to the site's --pbs-status-interval-min);
    `longest`: the site's --pbs-status-interval-max; `growth` 1: a fixed interval
    (--pbs-status-interval), raised only for many jobs."""

    shortest: float
    longest: float
    growth: float = GROWTH
    jobs_per_second: float = JOBS_PER_SECOND
    current: float = field(init=False)

    def __post_init__(self):
        self.longest = max(self.longest, self.shortest)
        self.current = self.shortest

    def floor(self, jobs: int) -> float:
        """The shortest interval with `jobs` jobs to ask about."""
        return min(self.longest, max(self.shortest, jobs / self.jobs_per_second))

    def next(self, changed: bool, jobs: int) -> float:
        """The wait before the next check, after one that saw a change (a job submitted,
        started, ended or resubmitted) or none, with `jobs` jobs still to follow."""
        floor = self.floor(jobs)
        if changed:
            self.current = floor
        else:
            self.current = min(self.longest, max(floor, self.current * self.growth))
        return self.current
