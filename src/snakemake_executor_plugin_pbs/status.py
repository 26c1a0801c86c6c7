"""One `qstat` call for all jobs, and the parsers of what it prints (PBS Pro JSON/text, Torque)."""

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .commands import CommandResult, run_command

# Q queued, R running, H held, W waiting, T moving, E exiting, S/U suspended, B array begun,
# M moved: a job in any of these may still run, so it owns its target.
ALIVE_STATES = frozenset("QRHWTESUBM")
# F finished (PBS Pro history), X finished subjob, C completed (Torque).
ENDED_STATES = frozenset("FXC")

# With several ids qstat prints the jobs it knows and exits with the last error:
# 153 unknown job id, 35 finished job asked for without -x. Neither means qstat failed.
PER_JOB_ERROR_CODES = frozenset({35, 153})

TIME_ATTRIBUTES = ("ctime", "qtime", "etime", "stime", "mtime", "obittime")


class StatusUnknown(Exception):
    """qstat failed or timed out: nothing is known this round; ask again next round."""


class Dialect(Enum):
    """Which qstat we talk to, and so which options and parser to use."""

    PBSPRO_JSON = "PBS Pro 18.1+, qstat -x -f -F json"
    PBSPRO_TEXT = "PBS Pro before 18.1, qstat -x -f"
    TORQUE = "Torque, qstat -f"


@dataclass(frozen=True)
class JobInfo:
    """What qstat says about one job."""

    id: str
    name: str | None
    state: str  # one letter, see ALIVE_STATES and ENDED_STATES
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

    @property
    def alive(self) -> bool:
        return self.state not in ENDED_STATES

    @property
    def user(self) -> str | None:
        return self.owner.split("@", 1)[0] if self.owner else None


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


def parse_variable_list(value: str | Mapping[str, Any] | None) -> dict[str, str]:
    """`Variable_List` as a dict: text form `A=1,B=2` (commas escaped as `\\,`) or JSON."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
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
            name, _, value = line.strip().partition(" = ")
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


def _flatten(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """JSON job attributes with resource groups flattened to `Resource_List.walltime` keys."""
    flat: dict[str, Any] = {}
    for name, value in attrs.items():
        if isinstance(value, Mapping) and name != "Variable_List":
            for resource, resource_value in value.items():
                flat[f"{name}.{resource}"] = resource_value
        else:
            flat[name] = value
    return flat


def parse_qstat_json(text: str) -> dict[str, JobInfo]:
    """Parse `qstat -f -F json` output (PBS Pro 18.1+); raises ValueError if it is not JSON."""
    if not text.strip():
        return {}
    document = json.loads(text)
    jobs = document.get("Jobs") or {}
    return {job_id: job_info_from_attributes(job_id, _flatten(a)) for job_id, a in jobs.items()}


def detect_dialect(version_output: str) -> Dialect | None:
    """Which qstat printed this `qstat --version`; None if it cannot be told."""
    pbs = re.search(r"pbs_version\s*=\s*(\d+)\.(\d+)", version_output)
    if pbs:
        major, minor = int(pbs.group(1)), int(pbs.group(2))
        return Dialect.PBSPRO_JSON if (major, minor) >= (18, 1) else Dialect.PBSPRO_TEXT
    if re.search(r"^\s*Version:\s*\d", version_output, re.MULTILINE):
        return Dialect.TORQUE
    return None


def query_argv(dialect: Dialect, job_ids: Iterable[str]) -> list[str]:
    """qstat for the given jobs, finished ones included where the server keeps history."""
    ids = list(job_ids)
    if dialect is Dialect.PBSPRO_JSON:
        return ["qstat", "-x", "-f", "-F", "json", *ids]
    if dialect is Dialect.PBSPRO_TEXT:
        return ["qstat", "-x", "-f", *ids]
    return ["qstat", "-f", *ids]  # Torque: -x means XML there


def history_argv(dialect: Dialect) -> list[str]:
    """qstat for every job the server shows, finished ones included where it keeps history."""
    if dialect is Dialect.PBSPRO_JSON:
        return ["qstat", "-x", "-f", "-F", "json"]
    if dialect is Dialect.PBSPRO_TEXT:
        return ["qstat", "-x", "-f"]
    return ["qstat", "-f"]  # Torque shows completed jobs for a while anyway


def listing_argv(dialect: Dialect) -> list[str]:
    """qstat for every job the server shows us that has not finished (no history)."""
    if dialect is Dialect.PBSPRO_JSON:
        return ["qstat", "-f", "-F", "json"]
    return ["qstat", "-f"]


def parse(dialect: Dialect, text: str) -> dict[str, JobInfo]:
    if dialect is Dialect.PBSPRO_JSON:
        return parse_qstat_json(text)
    return parse_qstat_text(text)


def lookup(infos: Mapping[str, JobInfo], job_id: str) -> JobInfo | None:
    """The job `job_id` in qstat's answer, also when the server adds or drops its domain."""
    if job_id in infos:
        return infos[job_id]
    sequence = job_id.split(".", 1)[0]
    matches = [info for key, info in infos.items() if key.split(".", 1)[0] == sequence]
    return matches[0] if len(matches) == 1 else None


def _invalid_option(result: CommandResult) -> bool:
    text = result.stderr.lower()
    return result.returncode not in (0, None) and (
        "invalid option" in text or "illegal option" in text or "unrecognized option" in text
    )


class Qstat:
    """The qstat of one controller: detects the dialect once, then one call per question."""

    def __init__(
        self,
        timeout: float = 120,
        dialect: Dialect | None = None,
        run: Callable[..., CommandResult] = run_command,
    ):
        self.timeout = timeout
        self._dialect = dialect
        self._run = run

    @property
    def dialect(self) -> Dialect:
        if self._dialect is None:
            result = self._run(["qstat", "--version"], timeout=self.timeout)
            # Unknown: try JSON first; a qstat without -F falls back on the first query.
            self._dialect = detect_dialect(result.stdout + result.stderr) or Dialect.PBSPRO_JSON
        return self._dialect

    def query(self, job_ids: Iterable[str]) -> dict[str, JobInfo]:
        """Status of the given jobs in ONE qstat call; unknown jobs are simply absent."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        return self._ask(lambda dialect: query_argv(dialect, ids))

    def list_live(self) -> dict[str, JobInfo]:
        """Every job the server shows that has not finished (to find a job by its name)."""
        return {job_id: info for job_id, info in self._ask(listing_argv).items() if info.alive}

    def list_all(self) -> dict[str, JobInfo]:
        """Every job the server shows, finished ones included where it keeps history."""
        return self._ask(history_argv)

    def _ask(self, argv_for: Callable[[Dialect], list[str]]) -> dict[str, JobInfo]:
        dialect = self.dialect
        result = self._run(argv_for(dialect), timeout=self.timeout)
        if dialect is Dialect.PBSPRO_JSON and _invalid_option(result):
            # A PBS Pro older than 18.1 (or one that hid its version): no -F json.
            self._dialect = dialect = Dialect.PBSPRO_TEXT
            result = self._run(argv_for(dialect), timeout=self.timeout)
        if result.timed_out or (
            result.returncode != 0 and result.returncode not in PER_JOB_ERROR_CODES
        ):
            raise StatusUnknown(result.describe())
        try:
            return parse(dialect, result.stdout)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise StatusUnknown(f"cannot parse the output of {' '.join(result.argv)}: {e}") from e
