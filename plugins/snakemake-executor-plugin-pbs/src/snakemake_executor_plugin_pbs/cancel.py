"""Cancel jobs with one `qdel` call (Ctrl-C on the controller)."""

from collections.abc import Iterable

from .commands import CommandResult, run_command


def qdel(job_ids: Iterable[str], timeout: float = 120) -> CommandResult | None:
    """Delete the given jobs in one call; None when there is nothing to delete.

    qdel deletes the ids it knows and reports the others (already finished, unknown) on
    stderr with a nonzero exit: the caller logs that, nothing more can be done.
    """
    ids = list(dict.fromkeys(job_id for job_id in job_ids if job_id))
    if not ids:
        return None
    return run_command(["qdel", *ids], timeout=timeout)
