"""One `qstat` call for all jobs, the parser of what it prints (PBS Pro / OpenPBS and Torque
text), and the rule that a job missing from an answer is unknown, never ended.

PBS Pro and OpenPBS are always asked in text (`qstat -x -f <ids>`), whatever their version:
OpenPBS's `-F json` with several ids prints only the first job and exits 0 (openpbs/openpbs
issue 2672, seen on 23.06.06; every other job looked ended and was submitted again), and its
JSON is invalid for jobs submitted with `qsub -V` and can repeat keys. The text form is what
qstat.c prints natively on every version.
"""

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .commands import CommandResult, run_command

# F finished (PBS Pro history), X finished subjob, C completed (Torque). Any other state
# (Q R H W T E S U B M) may still run, so such a job owns its target.
ENDED_STATES = frozenset("FXC")

# With several ids qstat prints the jobs it knows and exits with the last error:
# 153 unknown job id, 35 finished job asked for without -x. Neither means qstat failed.
PER_JOB_ERROR_CODES = frozenset({35, 153})
UNKNOWN_JOB_ID = 153
FINISHED_USE_X = 35
FINISHED_USE_X_MESSAGE = "Job has finished, use -x"
USAGE_ERROR = 2  # qstat's exit status for an option it does not know
# OpenPBS with job history off answers `qstat -x ...` with this on stderr for every id, prints
# no job at all, not even the running ones, and exits 0; without -x it answers as usual.
NO_HISTORY = "not configured to maintain job history"

USED_PREFIX = "resources_used."
TIME_ATTRIBUTES = ("ctime", "qtime", "etime", "stime", "mtime", "obittime")


class StatusUnknown(Exception):
    """qstat failed or timed out: nothing is known this round; ask again next round."""


class Dialect(Enum):
    """Which qstat we talk to, and so which options to use."""

    PBSPRO = "PBS Professional / OpenPBS, qstat -x -f"
    TORQUE = "Torque, qstat -f"


@dataclass(frozen=True)
class JobInfo:
    """What qstat says about one job."""

    id: str
    name: str | None
    state: str  # one letter, see ENDED_STATES
    exit_status: int | None = None
    walltime_used: int | None = None  # seconds
    walltime_limit: int | None = None  # seconds
    mem_limit: str | None = None  # as PBS writes it, e.g. "24gb"
    mem_used: str | None = None
    comment: str | None = None
    exec_host: str | None = None
    owner: str | None = None  # user@host
    workdir: str | None = None  # PBS_O_WORKDIR: where qsub ran
    queue: str | None = None
    times: Mapping[str, str] = field(default_factory=dict)  # qtime, stime, ... as printed
    # every `resources_used.<name>` as printed (mem, vmem, cput, walltime, ncpus, cpupercent)
    used: Mapping[str, str] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.state not in ENDED_STATES

    @property
    def user(self) -> str | None:
        return self.owner.split("@", 1)[0] if self.owner else None

    def time(self, name: str) -> float | None:
        """One of TIME_ATTRIBUTES (`qtime`, `stime`, ...) in seconds since the epoch."""
        text = self.times.get(name)
        if not text:
            return None
        try:
            return time.mktime(time.strptime(text.strip(), "%a %b %d %H:%M:%S %Y"))
        except ValueError:
            return None


def parse_duration(text: str | int | float | None) -> int | None:
    """Seconds in a PBS duration: `[[[D:]HH:]MM:]SS`, or a bare number of seconds."""
    if text is None:
        return None
    if isinstance(text, int | float):
        return int(text)
    parts = text.strip().split(":")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        return None
    if len(numbers) > 4:
        return None
    seconds = 0.0
    for number, unit in zip(reversed(numbers), (1, 60, 3600, 86400), strict=False):
        seconds += number * unit
    return int(seconds)


def _int_or_none(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def parse_variable_list(value: str | None) -> dict[str, str]:
    """`Variable_List` (`A=1,B=2`, commas in values escaped as `\\,`) as a dict."""
    if value is None:
        return {}
    variables = {}
    for item in re.split(r"(?<!\\),", value):
        key, _, val = item.partition("=")
        if key:
            variables[key.strip()] = val.replace("\\,", ",")
    return variables


def job_info_from_attributes(job_id: str, attrs: Mapping[str, Any]) -> JobInfo:
    """Build a JobInfo from flat attributes (`Resource_List.walltime`, `Exit_status`, ...)."""
    exit_status = attrs.get("Exit_status", attrs.get("exit_status"))
    state = str(attrs.get("job_state", "?")).strip()[:1] or "?"
    return JobInfo(
        id=job_id,
        name=attrs.get("Job_Name"),
        state=state,
        exit_status=_int_or_none(exit_status),
        walltime_used=parse_duration(attrs.get("resources_used.walltime")),
        walltime_limit=parse_duration(attrs.get("Resource_List.walltime")),
        mem_limit=_str_or_none(attrs.get("Resource_List.mem")),
        mem_used=_str_or_none(attrs.get("resources_used.mem")),
        comment=_str_or_none(attrs.get("comment")),
        exec_host=_str_or_none(attrs.get("exec_host")),
        owner=_str_or_none(attrs.get("Job_Owner")),
        workdir=parse_variable_list(attrs.get("Variable_List")).get("PBS_O_WORKDIR"),
        queue=_str_or_none(attrs.get("queue")),
        times={name: str(attrs[name]) for name in TIME_ATTRIBUTES if name in attrs},
        used={
            name.removeprefix(USED_PREFIX): str(value)
            for name, value in attrs.items()
            if name.startswith(USED_PREFIX)
        },
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_text_attributes(text: str) -> dict[str, dict[str, str]]:
    """`qstat -f` text as {job id: {attribute: value}}.

    Each job starts with `Job Id: <id>`; attributes are indented four spaces as
    `name = value`; a long value continues on lines that begin with a TAB, joined to the
    previous line with nothing in between.
    """
    jobs: dict[str, dict[str, str]] = {}
    attrs: dict[str, str] | None = None
    last: str | None = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            attrs = jobs.setdefault(line.split(":", 1)[1].strip(), {})
            last = None
        elif line.startswith("\t") and attrs is not None and last is not None:
            attrs[last] += line[1:]
        elif " = " in line and attrs is not None:
            # only the indent goes: qstat may cut a long value right after a space
            name, _, value = line.lstrip().partition(" = ")
            attrs[name] = value
            last = name
        elif not line.strip():
            last = None
    return jobs


def parse_qstat_text(text: str) -> dict[str, JobInfo]:
    """Parse `qstat -f` / `qstat -x -f` text output (PBS Pro or Torque)."""
    return {
        job_id: job_info_from_attributes(job_id, attrs)
        for job_id, attrs in parse_text_attributes(text).items()
    }


def detect_dialect(version_output: str) -> Dialect | None:
    """Which qstat printed this `qstat --version`; None if it cannot be told."""
    if re.search(r"pbs_version\s*=\s*\d", version_output):
        return Dialect.PBSPRO
    if re.search(r"^\s*Version:\s*\d", version_output, re.MULTILINE):
        return Dialect.TORQUE
    return None


def query_argv(
    dialect: Dialect, job_ids: Iterable[str], history: bool = True, batched: bool = True
) -> list[str]:
    """qstat for the given jobs (every job without ids), finished ones included where the
    server keeps history (`history`: it does, as far as we know).

    Several ids on PBS Pro / OpenPBS go with `-E` (`batched`): without it qstat.c sends the
    server one request per id (400 ids: 2.1 s on the test server, against 0.26 s with -E),
    and a controller's poll holds up its submissions meanwhile. With -E an id the server does
    not know is said on stderr but no longer in the exit status (0, not 153): the answer
    leaves it out, and Qstat.query asks about it alone, without -E."""
    ids = list(job_ids)
    batch = ["-E"] if batched and dialect is Dialect.PBSPRO and len(ids) > 1 else []
    if dialect is Dialect.PBSPRO and history:
        return ["qstat", *batch, "-x", "-f", *ids]
    return ["qstat", *batch, "-f", *ids]  # Torque: -x means XML there; it shows completed jobs


def listing_argv(dialect: Dialect) -> list[str]:
    """qstat for every job the server shows us that has not finished (no history)."""
    return ["qstat", "-f"]


def job_id_order(job_id: str) -> tuple[int, int, int, str]:
    """Sort key that orders job ids by their number, the order the server gave them out:
    `999.srv` before `1000.srv` (as text it would be after); subjobs `12[3].srv` by the
    number before the bracket, then by index (`12[3]` before `12[10]`), after the array
    `12[].srv` itself. Ids without a number come first, as text."""
    sequence = job_id.split(".", 1)[0]
    head, _, index = sequence.partition("[")
    index = index.rstrip("]")
    if not head.isdigit():
        return (0, 0, -1, job_id)
    return (1, int(head), int(index) if index.isdigit() else -1, job_id)


def lookup(infos: Mapping[str, JobInfo], job_id: str) -> JobInfo | None:
    """The job `job_id` in qstat's answer, also when the server adds or drops its domain."""
    if job_id in infos:
        return infos[job_id]
    sequence = job_id.split(".", 1)[0]
    matches = [info for key, info in infos.items() if key.split(".", 1)[0] == sequence]
    return matches[0] if len(matches) == 1 else None


class Answer(dict[str, JobInfo]):
    """qstat's answer about some jobs: {job id: JobInfo} for the jobs it showed.

    `unknown`: ids the server, asked about that job alone, said it does not know (exit 153,
    `Unknown Job Id`): the only absence that is evidence. A job in neither is unknown this
    round. `omitted`: ids a several-id answer left out although the server knows them (a
    server bug; they were asked about alone and are in the answer).
    """

    def __init__(self, jobs=(), unknown: Iterable[str] = (), omitted: Iterable[str] = ()):
        super().__init__(jobs)
        self.unknown = frozenset(unknown)
        self.omitted = tuple(omitted)

    def forgotten(self, job_id: str) -> bool:
        """The server said it does not know this job (history off or expired, or purged)."""
        return job_id in self.unknown


class Qstat:
    """The qstat of one controller: detects the dialect once, then one call per question,
    plus one per job that a several-id answer left out.

    Whether the server keeps job history is learnt from its answers, not assumed: with history
    off OpenPBS answers every `qstat -x` with nothing (exit 0), so such an answer switches to
    asking without -x, and `Job has finished, use -x` (exit 35) switches back."""

    def __init__(
        self,
        timeout: float = 120,
        dialect: Dialect | None = None,
        run: Callable[..., CommandResult] = run_command,
    ):
        self.timeout = timeout
        self._dialect = dialect
        self._run = run
        self.history = True  # the server keeps finished jobs, as far as its answers told
        self.batched = True  # qstat takes -E (several ids in one request), as far as we know
        self._max_array_size: int | None = None

    @property
    def dialect(self) -> Dialect:
        if self._dialect is None:
            result = self._run(["qstat", "--version"], timeout=self.timeout)
            self._dialect = detect_dialect(result.stdout + result.stderr) or Dialect.PBSPRO
        return self._dialect

    def query(self, job_ids: Iterable[str]) -> Answer:
        """Status of the given jobs in ONE qstat call.

        A job the answer leaves out is asked about alone before anything is concluded: it is
        then either in the answer or, if the server says it does not know it, in
        `Answer.unknown`; if that question fails too, it is in neither (unknown this round).
        Raises StatusUnknown when the one call fails."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return Answer()
        jobs = self._ask(ids)
        unknown, omitted = [], []
        for job_id in [i for i in ids if lookup(jobs, i) is None]:
            result = self._call([job_id])
            if result.returncode == UNKNOWN_JOB_ID and "unknown job id" in result.stderr.lower():
                unknown.append(job_id)
            elif result.returncode == 0:
                info = lookup(parse_qstat_text(result.stdout), job_id)
                if info is not None:
                    jobs[info.id] = info
                    omitted.append(job_id)
        return Answer(jobs, unknown, omitted)

    def list_live(self) -> dict[str, JobInfo]:
        """Every job the server shows that has not finished (to find a job by its name)."""
        result = self._run(listing_argv(self.dialect), timeout=self.timeout)
        jobs = self._parse(result)
        return {job_id: info for job_id, info in jobs.items() if info.alive}

    def max_array_size(self, default: int) -> int:
        """The most subjobs the server takes in one array: its `max_array_size` (PBS Pro /
        OpenPBS; Torque: `max_job_array_size`) from `qstat -Bf`, asked once; `default` where
        the server does not say or cannot be asked (then asked again next time)."""
        if self._max_array_size is not None:
            return self._max_array_size
        result = self._run(["qstat", "-B", "-f"], timeout=self.timeout)
        if result.timed_out or result.returncode != 0:
            return default
        text = re.sub(r"^Server:", "Job Id:", result.stdout, flags=re.MULTILINE)
        for attrs in parse_text_attributes(text).values():
            for name in ("max_array_size", "max_job_array_size"):
                size = _int_or_none(attrs.get(name))
                if size is not None and size > 0:
                    self._max_array_size = size
                    return size
        self._max_array_size = default
        return default

    def list_all(self) -> dict[str, JobInfo]:
        """Every job the server shows, finished ones included where it keeps history."""
        return self._ask([])

    def _ask(self, ids: list[str]) -> dict[str, JobInfo]:
        return self._parse(self._call(ids))

    def _call(self, ids: list[str]) -> CommandResult:
        """qstat about `ids`, asked again at once if the answer shows that the server's
        history is not what we thought."""
        result = self._ask_once(ids)
        if self.dialect is Dialect.PBSPRO and not result.timed_out:
            if self.history and NO_HISTORY in result.stderr:
                self.history = False
            elif not self.history and (
                result.returncode == FINISHED_USE_X or FINISHED_USE_X_MESSAGE in result.stderr
            ):
                self.history = True
            else:
                return result
            result = self._ask_once(ids)
        return result

    def _ask_once(self, ids: list[str]) -> CommandResult:
        """One qstat about `ids`; a qstat that does not know -E (an older PBS Pro: a usage
        error) is asked again without it, and never with it again."""
        argv = query_argv(self.dialect, ids, self.history, self.batched)
        result = self._run(argv, timeout=self.timeout)
        if "-E" in argv and result.returncode == USAGE_ERROR:
            self.batched = False
            result = self._run(query_argv(self.dialect, ids, self.history, False), self.timeout)
        return result

    @staticmethod
    def _parse(result: CommandResult) -> dict[str, JobInfo]:
        if result.timed_out or (
            result.returncode != 0 and result.returncode not in PER_JOB_ERROR_CODES
        ):
            raise StatusUnknown(result.describe())
        return parse_qstat_text(result.stdout)
