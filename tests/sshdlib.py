"""A real sshd on 127.0.0.1 for the tests of scripts/cron.sh's remote mode (tests/test_cron.py,
tests/cluster/test_remote_tick.py): the "cluster" is this machine, reached over SSH as a
workstation reaches a login node."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

TOOLS = ("sshd", "ssh", "ssh-keygen", "rsync")
SSHD = "/usr/sbin/sshd"


def missing_tools() -> list[str]:
    """The tools these tests need that this machine lacks."""
    return [t for t in TOOLS if not shutil.which(t) and not (t == "sshd" and Path(SSHD).exists())]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def sshd(
    directory: Path, user: str, setenv: dict[str, str] | None = None, pam: bool = False
) -> Iterator[str]:
    """Start sshd (as root) with a host key and a user key made in `directory`, which lets
    `user` in with that key; yield the ssh options that do (KDFLOW_SSH). `setenv`: variables
    sshd sets in every session (SetEnv: HOME included, which a login shell reads its profile
    from). `pam`: UsePAM yes, which a locked account (password `!`, as useradd leaves it)
    needs to log in with a key. `directory` must be readable by `user` (sshd reads the
    authorized keys as the user)."""
    directory.mkdir(parents=True, exist_ok=True)
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", directory / key],
                       check=True)  # fmt: skip
    shutil.copy(directory / "user.pub", directory / "authorized_keys")
    (directory / "authorized_keys").chmod(0o644)
    port = _free_port()
    settings = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {directory / 'host'}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}",
        f"PidFile {directory / 'sshd.pid'}",
        f"AllowUsers {user}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        f"UsePAM {'yes' if pam else 'no'}",
        "StrictModes no",
        "Subsystem sftp internal-sftp",
    ]
    if setenv:
        settings.append("SetEnv " + " ".join(f'"{k}={v}"' for k, v in setenv.items()))
    (directory / "sshd_config").write_text("\n".join(settings) + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    log = open(directory / "sshd.log", "ab")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", directory / "sshd_config"], stderr=log)
    options = (
        f"-p {port} -i {directory / 'user'} -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    )
    try:
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                ["ssh", *options.split(), "-o", "BatchMode=yes", f"{user}@127.0.0.1", "true"],
                capture_output=True,
            ).returncode
            != 0
        ):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "sshd did not let the test in:\n" + (directory / "sshd.log").read_text()
                )
            time.sleep(0.2)
        yield options
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()
