"""The job script of one target (`#PBS` lines, exit record) and its submission with qsub."""

import hashlib
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .commands import CommandResult, run_command
from .status import Dialect

# A job name is a prefix and a hash of the target's outputs. PBS job names start with a letter;
# older servers (and Torque) allow at most 15 characters: a prefix of up to 5, 10 hex digits.
DEFAULT_JOB_NAME_PREFIX = "smk"
JOB_NAME_HASH_CHARS = 10
JOB_NAME_MAX_CHARS = 15
MAX_JOB_NAME_PREFIX_CHARS = JOB_NAME_MAX_CHARS - JOB_NAME_HASH_CHARS
_JOB_NAME_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")

_JOB_ID = re.compile(r"^\d+(?:\[\d*\])?(?:\.[A-Za-z0-9_.-]+)?$")

# qsub's messages for "your queue is full": hold the job back and try again later.
_QUEUE_LIMIT_EXIT_CODES = (38, 198)
_QUEUE_LIMIT_MESSAGES = ("would exceed", "maximum number of jobs")
# The server could not be reached at all: certainly nothing was submitted.
_UNREACHABLE_MESSAGES = ("cannot connect to server", "errno=111", "connection refused")
# Job arrays: the server's `max_array_size` where it does not say (PBS Pro's default); the
# token OpenPBS replaces by each subjob's index in -o/-e paths; the variable that holds the
# index inside a subjob.
DEFAULT_MAX_ARRAY_SIZE = 10000
ARRAY_INDEX_TOKEN = "^array_index^"
ARRAY_INDEX_VARIABLE = {Dialect.PBSPRO: "PBS_ARRAY_INDEX", Dialect.TORQUE: "PBS_ARRAYID"}
_SUBJOB_ID = re.compile(r"^(\d+)\[(\d*)\](.*)$")
# A resource the server does not define (PBS Pro / OpenPBS: exit 187).
_UNKNOWN_RESOURCE = re.compile(r"Unknown resource:?\s*([A-Za-z0-9_.]+)", re.IGNORECASE)
# The request may or may not have reached the server.
_TRANSIENT_MESSAGES = ("timed out", "timeout", "communication failure", "end of file")


def job_name_prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot begin PBS job names, or None if it can."""
    if not isinstance(prefix, str) or not _JOB_NAME_PREFIX.match(prefix):
        return "it must start with a letter and contain only letters, digits, _ and -"
    if len(prefix) > MAX_JOB_NAME_PREFIX_CHARS:
        return (
            f"it may have at most {MAX_JOB_NAME_PREFIX_CHARS} characters (followed by "
            f"{JOB_NAME_HASH_CHARS} hex digits, a job name stays within the "
            f"{JOB_NAME_MAX_CHARS} every PBS accepts)"
        )
    return None


def job_name(outputs: Iterable[str], prefix: str = DEFAULT_JOB_NAME_PREFIX) -> str:
    """The PBS job name of a target: the same output files (and prefix) always give the same
    name, `<prefix><10 hex digits of the SHA-1 of the sorted output paths>`."""
    problem = job_name_prefix_problem(prefix)
    if problem is not None:
        raise ValueError(f"job name prefix {prefix!r}: {problem}")
    key = "\n".join(sorted(str(path) for path in outputs))
    digest = hashlib.sha1(key.encode()).hexdigest()
    return f"{prefix}{digest[:JOB_NAME_HASH_CHARS]}"


def array_name(members: Iterable[str], prefix: str = DEFAULT_JOB_NAME_PREFIX) -> str:
    """The PBS job name of an array: a job name of its members (`<target name>.<submission
    number>` each), so that it is recorded before qsub and found by name after a controller
    was killed in between, and differs from every earlier array of the same targets."""
    return job_name(["array", *members], prefix=prefix)


def subjob_id(array_id: str, index: int) -> str:
    """The id of subjob `index` of array `array_id`: `12[].srv` -> `12[3].srv`."""
    match = _SUBJOB_ID.match(array_id)
    if match is None:
        raise ValueError(f"{array_id!r} is not the id of a job array")
    return f"{match.group(1)}[{int(index)}]{match.group(3)}"


def array_of(job_id: str) -> tuple[str, int] | None:
    """(array id, index) of a subjob id (`12[3].srv` -> (`12[].srv`, 3)); None otherwise."""
    match = _SUBJOB_ID.match(job_id or "")
    if match is None or not match.group(2):
        return None
    return f"{match.group(1)}[]{match.group(3)}", int(match.group(2))


def array_range_args(dialect: Dialect, size: int) -> list[str]:
    """qsub's options for an array of `size` subjobs indexed from 0: PBS Pro / OpenPBS
    `-J 0-(n-1)`, Torque `-t 0-(n-1)`."""
    if size < 2:
        raise ValueError(f"an array has at least 2 subjobs, not {size} (PBS refuses -J 0-0)")
    return ["-t" if dialect is Dialect.TORQUE else "-J", f"0-{size - 1}"]


def array_log_path(path: Path, dialect: Dialect) -> Path:
    """What an array's `-o`/`-e` says for subjob log files `path` with `{index}` in the name:
    OpenPBS and PBS Pro replace `^array_index^` in the path by each subjob's index; Torque
    takes no token and appends `-<index>` to the path itself."""
    text = str(path)
    if dialect is Dialect.TORQUE:
        return Path(text.replace(".{index}", "").replace("{index}", ""))
    return Path(text.replace("{index}", ARRAY_INDEX_TOKEN))


def array_member_log(path: Path, index: int, dialect: Dialect) -> Path:
    """The log file subjob `index` of an array writes, `path` as given to array_log_path."""
    if dialect is Dialect.TORQUE:
        return Path(f"{array_log_path(path, dialect)}-{int(index)}")
    return Path(str(path).replace("{index}", str(int(index))))


# The readable PBS job name: `<rule>.<wildcard values>.<identity>`, within the server's limit
# on names (qsub -N). OpenPBS and PBS Pro 13+ take 236 characters (PBS_MAXJOBNAME); Torque and
# older PBS Pro 15, where only the identity fits. Only letters, digits, `_`, `-` and `.` are
# used (every PBS takes them) and the name starts with a letter, as older servers demand.
JOB_NAME_MAX_PBSPRO = 236
JOB_NAME_SEPARATOR = "."
MIN_LABEL_CHARS = 4  # less of the rule's name tells a reader nothing: the identity alone
_NOT_IN_JOB_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def readable_label(rule: str, wildcard_values: Iterable[str] = ()) -> str:
    """The readable part of a job name: the rule and its wildcards' values, each cleaned to
    the characters every PBS accepts in -N, joined by dots; '' when nothing readable is left."""
    parts = [_NOT_IN_JOB_NAME.sub("_", str(part)).strip("_.-") for part in (rule, *wildcard_values)]
    label = JOB_NAME_SEPARATOR.join(part for part in parts if part)
    return label.lstrip("0123456789_.-")  # old servers: a job name starts with a letter


def pbs_job_name(identity: str, label: str = "", max_chars: int = JOB_NAME_MAX_PBSPRO) -> str:
    """What qsub -N gets: `<label>.<identity>`, the label cut so that the whole stays within
    `max_chars`; the identity (job_name(), the registry's key) is never cut, and alone when no
    label fits. Adoption finds a job by its identity at the end (is_job_of)."""
    room = max_chars - len(identity) - len(JOB_NAME_SEPARATOR)
    label = label[:room].rstrip("_.-") if room >= MIN_LABEL_CHARS else ""
    return f"{label}{JOB_NAME_SEPARATOR}{identity}" if label else identity


def is_job_of(pbs_name: str | None, identity: str) -> bool:
    """Is a job named `pbs_name` the target of this identity? Both name forms count: the
    readable `<label>.<identity>` and the bare identity older versions of the plugin gave (jobs
    still live after an upgrade)."""
    if not pbs_name:
        return False
    return pbs_name == identity or pbs_name.endswith(JOB_NAME_SEPARATOR + identity)


def identity_of(pbs_name: str) -> str:
    """The identity (registry key) in a PBS job name of either form."""
    return pbs_name.rsplit(JOB_NAME_SEPARATOR, 1)[-1]


def format_walltime(minutes: float) -> str:
    """Snakemake's `runtime` (minutes) as PBS HH:MM:SS; PBS reads a bare number as seconds."""
    seconds = max(1, round(float(minutes) * 60))
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def select_statement(
    threads: int,
    mem_mb: int | None,
    gpus: int = 0,
    extra: str | None = None,
    select: str | None = None,
) -> str:
    """One chunk on one node: `select=1:ncpus=N[:ngpus=G][:mem=Mmb][:extra]`; or the rule's own
    `select` (resource pbs_select), exactly as given, which replaces all of that."""
    if select:
        return f"select={select}"
    parts = ["select=1", f"ncpus={max(1, int(threads))}"]
    if gpus:
        parts.append(f"ngpus={int(gpus)}")
    if mem_mb:
        parts.append(f"mem={int(mem_mb)}mb")
    if extra:
        parts.append(extra.strip().strip(":"))
    return ":".join(parts)


@dataclass(frozen=True)
class JobSpec:
    """Everything one job script says."""

    name: str
    command: str  # the Snakemake job command (Executor.format_job_exec)
    log_out: Path
    log_err: Path
    exit_dir: Path  # where the job writes its exit code, one file per PBS job id
    threads: int = 1
    mem_mb: int | None = None
    gpus: int = 0
    runtime_minutes: float | None = None
    queue: str | None = None
    project: str | None = None
    select_extra: str | None = None
    select: str | None = None  # the rule's whole select statement (pbs_select), without select=
    place: str | None = None  # -l place=... (pbs_place)
    description: tuple[str, ...] = ()  # comment lines for whoever reads the script


def pbs_directives(spec: JobSpec) -> list[str]:
    """The `#PBS` lines of a job script."""
    lines = [f"#PBS -N {spec.name}"]
    if spec.queue:
        lines.append(f"#PBS -q {spec.queue}")
    if spec.project:
        lines.append(f"#PBS -P {spec.project}")
    lines.append(
        "#PBS -l "
        + select_statement(spec.threads, spec.mem_mb, spec.gpus, spec.select_extra, spec.select)
    )
    if spec.place:
        lines.append(f"#PBS -l place={spec.place}")
    if spec.runtime_minutes:
        lines.append(f"#PBS -l walltime={format_walltime(spec.runtime_minutes)}")
    lines.append(f"#PBS -o {Path(spec.log_out).absolute()}")
    lines.append(f"#PBS -e {Path(spec.log_err).absolute()}")
    return lines


def resource_directives(spec: JobSpec) -> tuple[str, ...]:
    """The `#PBS` lines that say what a job gets (queue, project, resources, anything but its
    name and log files): jobs with the same lines can go out as one array."""
    own = ("#PBS -N ", "#PBS -o ", "#PBS -e ")
    return tuple(line for line in pbs_directives(spec) if not line.startswith(own))


def exit_record_lines(exit_dir: Path) -> list[str]:
    """Shell lines that leave the job's exit code in `exit_dir/$PBS_JOBID`, atomically."""
    directory = shlex.quote(str(Path(exit_dir).absolute()))
    return [
        "# Leave this job's exit code where the controller finds it even when the server",
        "# keeps no job history. Written to a temporary file, then renamed: never half a file.",
        "snakemake_pbs_record_exit() {",
        "    local code=$?",
        f"    local dir={directory} id=${{PBS_JOBID:-unknown}}",
        '    mkdir -p "$dir" && printf \'%s\\n\' "$code" >"$dir/.$id.$$" \\',
        '        && mv -f "$dir/.$id.$$" "$dir/$id"',
        "}",
        "trap snakemake_pbs_record_exit EXIT",
        "# A walltime kill or qdel starts with SIGTERM: exit through the trap above.",
        "trap 'exit 143' TERM",
    ]


def _script_head(spec: JobSpec) -> list[str]:
    """What every job script starts with: `#PBS` lines, the description, the exit record, and
    the `cd` to the submit directory."""
    lines = ["#!/bin/bash", *pbs_directives(spec)]
    lines += [f"# {line}" for line in spec.description]
    lines += ["", *exit_record_lines(spec.exit_dir), ""]
    return [
        *lines,
        "# PBS starts jobs in $HOME; Snakemake expects the workflow directory.",
        'cd "$PBS_O_WORKDIR" || exit 1',
    ]


def render_job_script(spec: JobSpec) -> str:
    """The whole job script: `#PBS` lines, exit record, `cd` to the submit directory, command."""
    lines = [*_script_head(spec), spec.command, ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class ArrayMember:
    """One subjob of an array job script: the Snakemake job command its index runs."""

    index: int
    command: str
    description: tuple[str, ...] = ()


def render_array_script(
    spec: JobSpec, members: Iterable[ArrayMember], dialect: Dialect = Dialect.PBSPRO
) -> str:
    """The job script of an array: `spec`'s `#PBS` lines (its name and log paths the array's),
    the exit record (written per subjob: $PBS_JOBID is the subjob's id), then a `case` on
    the subjob's index that runs that member's own Snakemake job command. An index without a
    member (none should ever run) fails with a message instead of running nothing."""
    variable = ARRAY_INDEX_VARIABLE[dialect]
    lines = _script_head(spec)
    lines += [
        f"# Each subjob runs the Snakemake job of its index (${variable}).",
        f'case "${{{variable}:-}}" in',
    ]
    for member in members:
        lines.append(f"{int(member.index)})")
        lines += [f"    # {line}" for line in member.description]
        lines += [f"    {member.command}", "    ;;"]
    lines += [
        "*)",
        f"    echo \"snakemake-pbs: no Snakemake job for array index '${{{variable}:-}}'\" >&2",
        "    exit 1",
        "    ;;",
        "esac",
        "",
    ]
    return "\n".join(lines)


class QsubError(Exception):
    """qsub did not give us a job id."""

    def __init__(self, message: str, result: CommandResult | None = None):
        super().__init__(message)
        self.message = message
        self.result = result


class QueueLimit(QsubError):
    """The queue or user limit is reached: hold the job back and submit it later."""


class Transient(QsubError):
    """The server could not be asked or did not answer: retry with backoff."""

    def __init__(self, message: str, result=None, maybe_submitted: bool = True):
        super().__init__(message, result)
        # A request that timed out may have created a job: look for it before resubmitting.
        self.maybe_submitted = maybe_submitted


class Rejected(QsubError):
    """qsub refused the job for good (unknown queue, missing project, bad resources)."""


class UnknownResource(Rejected):
    """The server does not define a resource the job asks for (`qsub: Unknown resource: X`):
    every job asking for it will be refused the same way, so the run stops at the first."""

    def __init__(self, message: str, resource: str, result: CommandResult | None = None):
        super().__init__(message, result)
        self.resource = resource


def parse_job_id(stdout: str) -> str | None:
    """The job id qsub printed (`1234.sched01`), or None."""
    for line in stdout.splitlines():
        if _JOB_ID.match(line.strip()):
            return line.strip()
    return None


def qsub_failure(result: CommandResult) -> QsubError:
    """Classify a qsub run that gave no job id."""
    if result.timed_out:
        return Transient(f"{result.describe()}; the job may exist", result)
    text = f"{result.stderr}\n{result.stdout}".lower()
    if result.returncode in _QUEUE_LIMIT_EXIT_CODES or any(
        message in text for message in _QUEUE_LIMIT_MESSAGES
    ):
        return QueueLimit(result.describe(), result)
    if any(message in text for message in _UNREACHABLE_MESSAGES):
        return Transient(result.describe(), result, maybe_submitted=False)
    if result.returncode == 0 or any(message in text for message in _TRANSIENT_MESSAGES):
        return Transient(f"{result.describe()}; the job may exist", result)
    unknown = _UNKNOWN_RESOURCE.search(f"{result.stderr}\n{result.stdout}")
    if unknown:
        return UnknownResource(result.describe(), unknown.group(1), result)
    return Rejected(result.describe(), result)


def qsub_argv(
    script: Path,
    extra_args: Iterable[str] = (),
    envvars: Iterable[str] = (),
    array_args: Iterable[str] = (),
) -> list[str]:
    """The qsub command line: options given here override the script's `#PBS` lines;
    `array_args` (array_range_args) make it an array."""
    argv = ["qsub", *array_args, *extra_args]
    names = sorted(envvars)
    if names:
        # Names only: qsub copies their values from its own environment.
        argv += ["-v", ",".join(names)]
    return [*argv, str(script)]


def qsub(
    script: Path,
    extra_args: Iterable[str] = (),
    envvars: Iterable[str] = (),
    timeout: float = 120,
    cwd: str | None = None,
    array_args: Iterable[str] = (),
) -> str:
    """Submit a job script and return its job id (an array's: `12[].srv`); raise a QsubError
    subclass otherwise."""
    argv = qsub_argv(script, extra_args, envvars, array_args)
    result = run_command(argv, timeout=timeout, cwd=cwd)
    job_id = parse_job_id(result.stdout) if result.returncode == 0 else None
    if job_id is None:
        raise qsub_failure(result)
    return job_id
