"""Per-rule PBS settings, given as Snakemake resources, checked before anything is submitted.

    pbs_queue    qsub -q, instead of --pbs-queue
    pbs_project  qsub -P, instead of --pbs-project
    pbs_select   a whole select statement (`2:ncpus=24:mpiprocs=24`, `1:ncpus=4+2:ncpus=8`),
                 instead of the one built from threads, mem_mb and gpu
    pbs_place    -l place=... (`scatter`, `pack:excl`)
    pbs_extra    qsub options for the rule's jobs, split like a shell command line, after
                 --pbs-qsub-extra's

Queue, project, select and place are written into the job script's `#PBS` lines, where a
space, a quote or a newline would change what the script says: each must match its grammar
below. qsub options travel as separate arguments (no shell reads them); those that would take
a job away from the plugin (its name, its log files, arrays, interactive or blocking jobs)
are refused.
"""

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

# Queue and project names (and --pbs-select-extra): what a `#PBS` line can hold as one word.
DIRECTIVE_VALUE = re.compile(r"[A-Za-z0-9_.@:=+,/-]+\Z")
DIRECTIVE_ALLOWED = "only letters, digits and _ . @ : = + , / -"

_RESOURCE = r"[A-Za-z_][A-Za-z0-9_]*=[A-Za-z0-9_.@/-]+"
_CHUNK = rf"(?:\d+|{_RESOURCE})(?::{_RESOURCE})*"
SELECT = re.compile(rf"{_CHUNK}(?:\+{_CHUNK})*\Z")
SELECT_ALLOWED = (
    "chunks joined by +, each an optional count then resource=value pairs joined by :, "
    "e.g. 2:ncpus=24:mpiprocs=24 or 1:ncpus=4+2:ncpus=8:mem=8gb"
)
PLACE = re.compile(r"[A-Za-z]+(?::[A-Za-z]+(?:=[A-Za-z0-9_.-]+)?)*\Z")
PLACE_ALLOWED = "an arrangement and sharing joined by :, e.g. scatter, pack:excl, free:group=switch"

# qsub options that would take a job away from the plugin: its name (adoption finds jobs by
# it), its stdout/stderr files (classification reads them), joined or kept-on-the-node output,
# arrays, interactive and X11 jobs; and `-W block=true`, which makes qsub wait for the end.
REFUSED_QSUB_OPTIONS = {
    "-N": "the job name (a restarted controller finds its jobs by it)",
    "-o": "the stdout file (the plugin names it per submission)",
    "-e": "the stderr file (the plugin reads why a job was killed there)",
    "-j": "joining stdout and stderr (the plugin reads why a job was killed in stderr)",
    "-k": "keeping output on the node (the plugin reads it where it named it)",
    "-J": "job arrays",
    "-t": "job arrays",
    "-I": "interactive jobs",
    "-X": "X11 forwarding (interactive jobs)",
}


class ResourceProblem(ValueError):
    """A per-rule PBS resource, or a qsub option, that cannot be used; says what is allowed."""

    def __init__(self, resource: str, value, allowed: str):
        super().__init__(f"{resource} = {value!r}: {allowed}")
        self.resource, self.value, self.allowed = resource, value, allowed


@dataclass(frozen=True)
class RuleSettings:
    """The PBS settings one rule's resources give (None, (): the profile-wide ones apply)."""

    queue: str | None = None
    project: str | None = None
    select: str | None = None  # without the leading `select=`
    place: str | None = None  # without the leading `place=`
    qsub_extra: tuple[str, ...] = ()


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def directive_value(resource: str, value) -> str | None:
    """A queue or project name for a `#PBS` line."""
    text = _text(value)
    if text is not None and not DIRECTIVE_VALUE.match(text):
        raise ResourceProblem(resource, value, DIRECTIVE_ALLOWED)
    return text


def _statement(resource: str, value, key: str, pattern, allowed: str) -> str | None:
    """A `-l key=...` statement's value, a leading `key=` removed, checked against `pattern`."""
    text = _text(value)
    if text is None:
        return None
    text = text.removeprefix(f"{key}=")
    if not pattern.match(text):
        raise ResourceProblem(resource, value, allowed)
    return text


def select_value(resource: str, value) -> str | None:
    """A select statement, `select=` removed."""
    return _statement(resource, value, "select", SELECT, SELECT_ALLOWED)


def place_value(resource: str, value) -> str | None:
    """A place statement, `place=` removed."""
    return _statement(resource, value, "place", PLACE, PLACE_ALLOWED)


def qsub_options(resource: str, value) -> tuple[str, ...]:
    """qsub options split like a shell command line, none of REFUSED_QSUB_OPTIONS."""
    text = _text(value)
    if text is None:
        return ()
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise ResourceProblem(resource, value, f"qsub options as on a command line ({e})") from None
    for word in words:
        flag = word[:2]
        if word.startswith("-") and flag in REFUSED_QSUB_OPTIONS:
            raise ResourceProblem(
                resource, value, f"the plugin sets {flag}, {REFUSED_QSUB_OPTIONS[flag]}"
            )
        if "block=" in word.lower():
            raise ResourceProblem(resource, value, "-W block makes qsub wait for the job's end")
        if "\n" in word or "\0" in word:
            raise ResourceProblem(resource, value, "no newlines")
    return tuple(words)


def rule_settings(resources: Mapping) -> RuleSettings:
    """The per-rule PBS settings in a job's (or a rule's) resources; ResourceProblem names the
    first that cannot be used."""
    return RuleSettings(
        queue=directive_value("pbs_queue", resources.get("pbs_queue")),
        project=directive_value("pbs_project", resources.get("pbs_project")),
        select=select_value("pbs_select", resources.get("pbs_select")),
        place=place_value("pbs_place", resources.get("pbs_place")),
        qsub_extra=qsub_options("pbs_extra", resources.get("pbs_extra")),
    )


RULE_RESOURCES = ("pbs_queue", "pbs_project", "pbs_select", "pbs_place", "pbs_extra")
