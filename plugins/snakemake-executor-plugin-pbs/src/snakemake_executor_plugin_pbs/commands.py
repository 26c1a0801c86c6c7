"""Run the PBS client commands (qsub, qstat, qdel) as argument lists, with a timeout."""

import os
import shutil
import subprocess
from dataclasses import dataclass

PBS_COMMANDS = ("qsub", "qstat", "qdel")


@dataclass(frozen=True)
class CommandResult:
    """What a finished (or abandoned) command left behind."""

    argv: tuple[str, ...]
    returncode: int | None  # None when the command ran past its timeout
    stdout: str
    stderr: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def describe(self) -> str:
        """One line for logs and error messages: the command and how it ended."""
        command = " ".join(self.argv)
        if self.timed_out:
            return f"`{command}` timed out"
        message = self.stderr.strip() or self.stdout.strip() or "no output"
        return f"`{command}` exited with {self.returncode}: {message}"


def _text(output: str | bytes | None) -> str:
    if output is None:
        return ""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output


def run_command(argv: list[str], timeout: float, cwd: str | None = None) -> CommandResult:
    """Run `argv` (never through a shell) and capture its output; never raises."""
    # qsub takes PBS_O_WORKDIR from $PWD when that is the current directory: keep them equal.
    env = dict(os.environ, PWD=cwd) if cwd else None
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        return CommandResult(tuple(argv), None, _text(e.stdout), _text(e.stderr))
    except OSError as e:
        # Missing or unexecutable: report it like a shell would, exit 127.
        return CommandResult(tuple(argv), 127, "", f"{argv[0]}: {e.strerror}")
    return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def missing_commands() -> list[str]:
    """The PBS client commands that are not on PATH."""
    return [name for name in PBS_COMMANDS if shutil.which(name) is None]
