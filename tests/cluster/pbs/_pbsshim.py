"""Shared code of the PBS Professional shims (qsub, qstat, qdel) in front of the test Slurm.

Standard library only. Formats follow OpenPBS 22.05 (src/cmds/qstat.c, qsub.c, qdel.c,
src/server/svr_jobfunc.c, src/resmom/mom_main.c); see tests/cluster/README.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import time

SERVER = "pbs-ci"
PBS_VERSION = "22.05.11"
DEFAULT_QUEUE = "workq"
SEQ_MARK = "@PBS_SHIM_SEQ@"  # stands for the job number in paths until sbatch gives it
LINE_LIMIT = 78  # CHAR_LINE_LIMIT in qstat.c

# PBS error numbers (src/include/pbs_error.h); commands exit with the number & 0xff.
PBSE_UNKJOBID = 15001  # -> 153
PBSE_UNKQUE = 15018  # -> 170
PBSE_EXCQRESC = 15036  # -> 188
PBSE_HISTJOBID = 15139  # -> 35
PBSE_ENTLIMCT = 15142  # -> 38

# Exit_status values the server sets for limit kills (src/include/job.h).
JOB_EXEC_KILL_MEM = -27
JOB_EXEC_KILL_WALLTIME = -29

LEGACY_EXIT = {JOB_EXEC_KILL_WALLTIME: 271, JOB_EXEC_KILL_MEM: 265}

ENDED = {
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "CANCELLED",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}
KILLED = {"CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


class SlurmError(Exception):
    """The Slurm controller could not be reached (shown as a PBS connection error)."""


# ---------------------------------------------------------------------------- environment


def run_dir() -> str:
    return os.environ.get("KDFLOW_SLURM_RUN") or "/tmp/kdflow-slurm"


def state_dir() -> str:
    d = os.environ.get("PBS_SHIM_STATE") or os.path.join(run_dir(), "pbs-shim")
    os.makedirs(os.path.join(d, "jobs"), exist_ok=True)
    return d


def jobs_dir() -> str:
    return os.path.join(state_dir(), "jobs")


def env_int(name: str, default: int | None = None) -> int | None:
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        return int(v)
    except ValueError:
        return default


def env_float(name: str, default: float = 0.0) -> float:
    try:
        return float(os.environ.get(name, "").strip() or default)
    except ValueError:
        return default


def dialect() -> str:
    d = os.environ.get("PBS_SHIM_DIALECT", "").strip().lower() or "pbspro"
    return d if d in ("pbspro", "pbspro_old", "torque") else "pbspro"


def legacy() -> bool:
    """Older servers: limit kills are signals (271/265), not -29/-27."""
    return os.environ.get("PBS_SHIM_LEGACY", "") in ("1", "true", "yes") or dialect() != "pbspro"


def history_enabled() -> bool:
    return os.environ.get("PBS_SHIM_HISTORY", "1").strip().lower() not in ("0", "false", "no")


def hostname() -> str:
    return socket.gethostname().split(".")[0]


def user_entry() -> pwd.struct_passwd:
    return pwd.getpwuid(os.getuid())


def count_call(tool: str) -> int:
    """Append one line for this call to <state>/<tool>.calls; return how many calls so far."""
    path = os.path.join(state_dir(), f"{tool}.calls")
    line = f"{time.time():.3f} {os.getpid()} {' '.join(sys.argv[1:])}\n".encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.lseek(fd, 0, os.SEEK_SET)
        n = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            n += chunk.count(b"\n")
        return n
    finally:
        os.close(fd)


def nth_call_fails(knob: str, n: int) -> bool:
    k = env_int(knob)
    return bool(k and k > 0 and n % k == 0)


# ---------------------------------------------------------------------------- small helpers


def job_id(seq: int) -> str:
    return f"{seq}.{SERVER}"


def parse_job_id(s: str) -> int | None:
    m = re.fullmatch(r"(\d+)(\.[^\s]*)?", s.strip())
    return int(m.group(1)) if m else None


def fmt_hms(secs: float | int) -> str:
    secs = max(0, int(secs))
    return f"{secs // 3600:02d}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


def parse_walltime(s: str) -> int:
    """PBS duration: [[HH:]MM:]SS[.ms]; a bare number is seconds."""
    parts = s.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(re.fullmatch(r"\d+(\.\d*)?", p) for p in parts):
        raise ValueError(s)
    total = 0.0
    for p in parts:
        total = total * 60 + float(p)
    return int(total + 0.999)


_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(s: str) -> tuple[int, str]:
    """PBS size ('24gb', '500mb', '1024', '2GB', '8mw') -> (bytes, normalized text)."""
    m = re.fullmatch(r"(\d+)([kmgtp]?)([bw]?)", s.strip().lower())
    if not m:
        raise ValueError(s)
    n, mag, kind = int(m.group(1)), m.group(2), m.group(3) or "b"
    nbytes = n * (1024 ** _UNITS[mag]) * (8 if kind == "w" else 1)
    return nbytes, f"{n}{mag}{kind}"


def fmt_size(nbytes: int) -> str:
    for unit, shift in (("tb", 40), ("gb", 30), ("mb", 20), ("kb", 10)):
        if nbytes and nbytes % (1 << shift) == 0:
            return f"{nbytes >> shift}{unit}"
    return f"{nbytes}b"


def ctime(epoch: float) -> str:
    return time.ctime(epoch)


def comment_time(epoch: float) -> str:
    return time.strftime("%a %b %d at %H:%M", time.localtime(epoch))


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def meta_path(seq: int) -> str:
    return os.path.join(jobs_dir(), f"{seq}.json")


def final_path(seq: int) -> str:
    return os.path.join(jobs_dir(), f"{seq}.final.json")


def pending_path(token: str) -> str:
    return os.path.join(jobs_dir(), f"pending-{token}.json")


def complete_meta(meta: dict, seq: int) -> dict:
    meta["seq"] = seq
    for k in ("output_path", "error_path"):
        meta[k] = str(meta.get(k) or "").replace(SEQ_MARK, str(seq))
    return meta


def find_meta(seq: int, sj: dict) -> dict | None:
    """The qsub shim's record of a Slurm job (None for jobs that did not come through it)."""
    meta = read_json(meta_path(seq))
    if meta and abs(int(meta.get("qtime") or 0) - int(sj.get("submit_time") or 0)) > 60:
        meta = None  # left by an older run directory with the same job number
    if meta is None:
        c = str(sj.get("comment") or "")
        if c.startswith("pbsshim:"):
            meta = read_json(pending_path(c.split(":", 1)[1]))
            if meta is None:  # qsub renamed it meanwhile
                meta = read_json(meta_path(seq))
            if meta is not None:
                complete_meta(meta, seq)
    return meta


def qdel_path(seq: int) -> str:
    return os.path.join(jobs_dir(), f"{seq}.qdel")


def session_path(seq: int) -> str:
    return os.path.join(jobs_dir(), f"{seq}.session")


def clean_slurm_env() -> dict:
    """Environment for Slurm client commands: without the caller's SBATCH_/SQUEUE_ settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith(("SBATCH_", "SQUEUE_", "SCONTROL_")) or k == "SLURM_TIME_FORMAT")
    }
    env["LC_ALL"] = "C"
    return env


# ---------------------------------------------------------------------------- Slurm


def slurm_jobs() -> dict[int, dict]:
    """All jobs Slurm knows (queued, running, and ended within MinJobAge): ONE squeue call."""
    try:
        p = subprocess.run(
            ["squeue", "--json"],
            capture_output=True,
            text=True,
            env=clean_slurm_env(),
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SlurmError(str(e)) from e
    if p.returncode != 0:
        raise SlurmError(p.stderr.strip() or f"squeue exited {p.returncode}")
    try:
        data = json.loads(p.stdout)
    except ValueError as e:
        raise SlurmError(f"bad squeue output: {e}") from e
    jobs = {}
    for j in data.get("jobs", []):
        jid = j.get("job_id")
        if isinstance(jid, int):
            jobs[jid] = j
    return jobs


def slurm_state(sj: dict) -> str:
    """Base Slurm state with COMPLETING folded in: 'RUNNING', 'COMPLETING', 'TIMEOUT', ..."""
    st = str(sj.get("job_state") or "").upper()
    flags = [str(f).upper() for f in sj.get("flags") or []]
    if "COMPLETING" in st or "COMPLETING" in flags:
        return "COMPLETING"
    return st.split()[0] if st else "UNKNOWN"


def slurm_started(sj: dict) -> bool:
    return bool(sj.get("batch_host") or sj.get("nodes")) and int(sj.get("start_time") or 0) > 0


def snapshot(sj: dict) -> dict:
    keys = (
        "job_id",
        "job_state",
        "exit_code",
        "start_time",
        "end_time",
        "submit_time",
        "batch_host",
        "nodes",
        "restart_cnt",
        "partition",
        "name",
        "user_name",
        "cpus",
        "time_limit",
        "memory_per_node",
        "memory_per_cpu",
        "standard_output",
        "standard_error",
        "current_working_directory",
        "state_reason",
        "comment",
    )
    return {k: sj.get(k) for k in keys}


# ---------------------------------------------------------------------------- job model


def meta_from_slurm(sj: dict) -> dict:
    """Metadata for a Slurm job that did not come through the qsub shim."""
    cpus = int(sj.get("cpus") or 1)
    res: dict = {"ncpus": cpus, "nodect": 1, "place": "free", "select": f"1:ncpus={cpus}"}
    tl = sj.get("time_limit")
    if isinstance(tl, int) and tl > 0:
        res["walltime"] = fmt_hms(tl * 60)
    out = sj.get("standard_output") or ""
    host = hostname()
    return {
        "synthetic": True,
        "seq": sj.get("job_id"),
        "name": sj.get("name") or "STDIN",
        "user": sj.get("user_name") or "root",
        "owner": f"{sj.get('user_name') or 'root'}@{host}",
        "queue": sj.get("partition") or DEFAULT_QUEUE,
        "project": "_pbs_project_default",
        "resources": res,
        "walltime_s": (tl * 60) if isinstance(tl, int) and tl > 0 else None,
        "output_path": out,
        "error_path": sj.get("standard_error") or out,
        "join": "n",
        "keep": "n",
        "workdir": sj.get("current_working_directory") or "/",
        "variable_list": [["PBS_O_WORKDIR", sj.get("current_working_directory") or "/"]],
        "submit_args": "",
        "submit_host": host,
        "qtime": sj.get("submit_time") or 0,
        "hold": False,
        "rerunable": "True",
        "priority": 0,
        "mail_points": "a",
        "checkpoint": "u",
    }


def walltime_limit_s(meta: dict, sj: dict) -> int | None:
    if meta.get("walltime_s"):
        return int(meta["walltime_s"])
    tl = sj.get("time_limit")
    return tl * 60 if isinstance(tl, int) and tl > 0 else None


def exec_vnode(meta: dict) -> str:
    res = meta["resources"]
    s = f"(localhost:ncpus={res.get('ncpus', 1)}"
    if res.get("ngpus"):
        s += f":ngpus={res['ngpus']}"
    if meta.get("mem_bytes"):
        s += f":mem={(int(meta['mem_bytes']) + 1023) // 1024}kb"
    return s + ")"


def exec_host(meta: dict) -> str:
    n = int(meta["resources"].get("ncpus", 1))
    return "localhost/0" if n == 1 else f"localhost/0*{n}"


def _mem_killed(seq: int, err_file: str | None) -> tuple[bool, int | None, int | None]:
    """Did Slurm's OverMemoryKill kill this job? (look in its stderr, then in slurmd.log)"""
    pat = re.compile(r"exceeded memory limit \((\d+) > (\d+)\)")
    texts = []
    if err_file and os.path.isfile(err_file):
        with contextlib.suppress(OSError), open(err_file, errors="replace") as f:
            texts.append(f.read()[-65536:])
    log = os.path.join(run_dir(), "log", "slurmd.log")
    with contextlib.suppress(OSError), open(log, errors="replace") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (4 << 20)))
        texts.append("\n".join(ln for ln in f.read().splitlines() if f"[{seq}." in ln))
    for t in texts:
        m = pat.search(t)
        if m:
            return True, int(m.group(1)), int(m.group(2))
        if "Exceeded job memory limit" in t or "exceeded memory limit" in t:
            return True, None, None
    return False, None, None


_SLURM_LINE = re.compile(r"^slurmstepd(?:-\S+)?: error: .*$\n?", re.M)


def _rewrite_stderr(path: str | None, pbs_line: str | None) -> None:
    """Drop slurmstepd's own lines from the job's stderr file; append PBS mom's kill line."""
    if not path or not os.path.isfile(path):
        return
    try:
        with open(path, errors="surrogateescape") as f:
            text = f.read()
        new = _SLURM_LINE.sub("", text)
        if pbs_line and "=>> PBS: job killed:" not in new:
            if new and not new.endswith("\n"):
                new += "\n"
            new += pbs_line + "\n"
        if new == text:
            return
        tmp = f"{path}.pbs-shim.{os.getpid()}"
        with open(tmp, "w", errors="surrogateescape") as f:
            f.write(new)
        st = os.stat(path)
        os.chmod(tmp, st.st_mode & 0o7777)
        with contextlib.suppress(OSError):
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except OSError:
        pass


def _same_job(rec: dict, sj: dict) -> bool:
    a = (rec.get("slurm") or {}).get("submit_time")
    b = sj.get("submit_time")
    return a is None or b is None or a == b


def finalize(seq: int, meta: dict, sj: dict) -> dict:
    """Decide how an ended job ended (once), do what PBS's mom/server would, and record it."""
    fp = final_path(seq)
    done = read_json(fp)
    if done and _same_job(done, sj):
        return done
    lock = fp + ".lock"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        owner = True
    except FileExistsError:
        owner = False
        for _ in range(50):  # another qstat is finalizing it: wait for its record
            done = read_json(fp)
            if done:
                return done
            time.sleep(0.1)
        with contextlib.suppress(OSError):  # stale lock (a killed qstat): take over
            os.unlink(lock)
        return finalize(seq, meta, sj)

    state = slurm_state(sj)
    started = slurm_started(sj)
    code = int(sj.get("exit_code") or 0)
    sig, rc = code & 0x7F, (code >> 8) & 0xFF
    start = int(sj.get("start_time") or 0) if started else 0
    end = int(sj.get("end_time") or 0) or int(time.time())
    used = max(0, end - start) if started else 0
    limit = walltime_limit_s(meta, sj)
    err_file = meta.get("error_path") if meta.get("join") != "oe" else meta.get("output_path")
    qdel = os.path.exists(qdel_path(seq))
    kill = None
    pbs_line = None
    exit_status: int | None
    if state == "TIMEOUT":
        kill = "walltime"
        exit_status = JOB_EXEC_KILL_WALLTIME  # 271 for older servers: see Job.exit_status()
        pbs_line = f"=>> PBS: job killed: walltime {used} exceeded limit {limit or used}"
    elif state == "OUT_OF_MEMORY" or (state == "FAILED" and sig == 9):
        hit, used_b, lim_b = _mem_killed(seq, err_file)
        if hit or state == "OUT_OF_MEMORY":
            kill = "mem"
            exit_status = JOB_EXEC_KILL_MEM
            lim_b = lim_b or meta.get("mem_bytes") or 0
            used_b = used_b or lim_b
            pbs_line = (
                f"=>> PBS: job killed: mem {int(used_b) // 1024}kb "
                f"exceeded limit {int(lim_b) // 1024}kb"
            )
        else:
            exit_status = 256 + sig
    elif state in KILLED:
        kill = "qdel" if qdel else "terminated"
        exit_status = 271 if started else None
    elif sig:
        exit_status = 256 + sig
    else:
        exit_status = rc
    if (started or pbs_line) and not meta.get("synthetic"):
        _rewrite_stderr(err_file, pbs_line)  # only for jobs submitted with this state dir

    if exit_status is None:
        substate, tail = 91, None
    elif kill in ("qdel", "terminated"):
        substate, tail = 91, "and terminated"
    elif exit_status == 0:
        substate, tail = 92, "and finished"
    elif exit_status == JOB_EXEC_KILL_WALLTIME:
        substate, tail = 93, "and exceeded resource walltime"
    elif exit_status == JOB_EXEC_KILL_MEM:
        substate, tail = 93, "and exceeded resource mem"
    else:
        substate, tail = 93, "and failed"
    comment = None
    if started:
        comment = f"Job run at {comment_time(start)} on {exec_vnode(meta)}"
        if tail:
            comment += " " + tail
    rec = {
        "seq": seq,
        "exit_status": exit_status,
        "kill": kill,
        "substate": substate,
        "comment": comment,
        "start": start,
        "end": end,
        "used": used,
        "run_count": int(sj.get("restart_cnt") or 0) + (1 if started else 0),
        "slurm_state": state,
        "slurm": snapshot(sj),
        "meta": meta,
    }
    write_json_atomic(fp, rec)
    if owner:
        with contextlib.suppress(OSError):
            os.unlink(lock)
    return rec


class Job:
    """One job as PBS shows it: state letter, attributes in qstat -f order."""

    def __init__(self, seq: int, meta: dict, sj: dict | None, final: dict | None):
        self.seq = seq
        self.id = job_id(seq)
        self.meta = meta
        self.sj = sj or (final or {}).get("slurm") or {}
        self.final = final
        now = int(time.time())
        st = final["slurm_state"] if final else slurm_state(self.sj)
        self.slurm_state = st
        self.finished = final is not None
        reason = str(self.sj.get("state_reason") or "")
        if self.finished:
            self.state = "F"
        elif st == "PENDING":
            if reason.startswith("JobHeld") or reason == "Dependency":
                self.state = "H"
            elif reason == "BeginTime":
                self.state = "W"
            else:
                self.state = "Q"
        elif st == "RUNNING":
            self.state = "R"
        elif st == "COMPLETING" or st in ENDED:
            self.state = "E"
        elif st == "SUSPENDED":
            self.state = "S"
        else:
            self.state = "Q"
        self.started = slurm_started(self.sj) and self.state not in ("Q", "H", "W")
        if final:
            self.start, self.end, self.used = final["start"], final["end"], final["used"]
            self.started = bool(final["start"])
        else:
            self.start = int(self.sj.get("start_time") or 0) if self.started else 0
            self.end = 0
            self.used = max(0, now - self.start) if self.started else 0
            if self.state == "S":
                self.used = int(self.sj.get("pre_sus_time") or 0)
        self.now = now

    @property
    def name(self) -> str:
        return self.meta.get("name") or "STDIN"

    @property
    def queue(self) -> str:
        return self.meta.get("queue") or DEFAULT_QUEUE

    @property
    def user(self) -> str:
        return self.meta.get("user") or "root"

    def exit_status(self) -> int | None:
        es = self.final.get("exit_status") if self.final else None
        if legacy() and es in LEGACY_EXIT:
            return LEGACY_EXIT[es]  # older servers kill with signals: SIGTERM / SIGKILL
        return es

    def substate(self) -> int:
        if self.final:
            return int(self.final["substate"])
        return {"Q": 10, "H": 20, "W": 30, "R": 42, "S": 43, "E": 50}.get(self.state, 10)

    def comment(self) -> str | None:
        if self.final:
            c = self.final.get("comment")
            if c and legacy():
                c = re.sub(r" and exceeded resource \w+$", " and failed", c)
            return c
        if self.state in ("R", "E", "S") and self.start:
            return f"Job run at {comment_time(self.start)} on {exec_vnode(self.meta)}"
        if self.state == "Q":
            reason = str(self.sj.get("state_reason") or "")
            if reason == "Resources":
                return "Not Running: Insufficient amount of resource: ncpus"
            if reason == "Priority":
                return "Not Running: Job would conflict with reservation or top job"
        if self.state == "H":
            return "Job held by " + self.user
        return None

    def variable_list(self) -> str:
        vl = list(self.meta.get("variable_list") or [])
        return ",".join(f"{k}={str(v).replace(',', chr(92) + ',')}" for k, v in vl)

    def resource_list(self) -> list[tuple[str, str]]:
        res = self.meta.get("resources") or {}
        return [(k, str(res[k])) for k in sorted(res)]

    def attributes(self) -> list[tuple[str, str | None, str]]:
        """(name, resource, value) in the order PBS Pro 22 prints them."""
        m = self.meta
        a: list[tuple[str, str | None, str]] = []
        add = a.append
        add(("Job_Name", None, self.name))
        add(("Job_Owner", None, m.get("owner") or f"{self.user}@{hostname()}"))
        if self.started:
            ncpus = m["resources"].get("ncpus", 1)
            add(("resources_used", "cpupercent", "0"))
            add(("resources_used", "cput", "00:00:00"))
            add(("resources_used", "mem", "0kb"))
            add(("resources_used", "ncpus", str(ncpus)))
            add(("resources_used", "vmem", "0kb"))
            add(("resources_used", "walltime", fmt_hms(self.used)))
        add(("job_state", None, self.state))
        add(("queue", None, self.queue))
        add(("server", None, SERVER))
        if m.get("account"):
            add(("Account_Name", None, m["account"]))
        add(("Checkpoint", None, m.get("checkpoint") or "u"))
        qtime = int(m.get("qtime") or self.sj.get("submit_time") or self.now)
        add(("ctime", None, ctime(qtime)))
        add(("Error_Path", None, f"{m.get('submit_host') or hostname()}:{m.get('error_path')}"))
        if self.started:
            add(("exec_host", None, exec_host(m)))
            add(("exec_vnode", None, exec_vnode(m)))
        add(("Hold_Types", None, "u" if self.state == "H" else "n"))
        add(("Join_Path", None, m.get("join") or "n"))
        add(("Keep_Files", None, m.get("keep") or "n"))
        add(("Mail_Points", None, m.get("mail_points") or "a"))
        if m.get("mail_users"):
            add(("Mail_Users", None, m["mail_users"]))
        mtime = self.end or self.start or qtime
        add(("mtime", None, ctime(mtime)))
        add(("Output_Path", None, f"{m.get('submit_host') or hostname()}:{m.get('output_path')}"))
        add(("Priority", None, str(m.get("priority") or 0)))
        add(("qtime", None, ctime(qtime)))
        add(("Rerunable", None, m.get("rerunable") or "True"))
        for k, v in self.resource_list():
            add(("Resource_List", k, v))
        if self.started:
            add(("stime", None, ctime(self.start)))
            sess = None
            with contextlib.suppress(OSError, ValueError), open(session_path(self.seq)) as f:
                sess = int(f.read().strip())
            if sess:
                add(("session_id", None, str(sess)))
            add(("jobdir", None, m.get("home") or user_home(self.user)))
        add(("substate", None, str(self.substate())))
        add(("Variable_List", None, self.variable_list()))
        c = self.comment()
        if c:
            add(("comment", None, c))
        add(("etime", None, ctime(qtime)))
        if self.final:
            add(("run_count", None, str(self.final.get("run_count", 0))))
        elif self.started:
            add(("run_count", None, str(int(self.sj.get("restart_cnt") or 0) + 1)))
        else:
            add(("run_count", None, "0"))
        if self.final:
            if self.started:
                add(("Stageout_status", None, "1"))
            if self.exit_status() is not None:
                add(("Exit_status", None, str(self.exit_status())))
        if m.get("submit_args"):
            add(("Submit_arguments", None, m["submit_args"]))
        if self.final:
            add(("history_timestamp", None, str(self.end)))
            add(("obittime", None, ctime(self.end)))
        add(("project", None, m.get("project") or "_pbs_project_default"))
        add(("Submit_Host", None, m.get("submit_host") or hostname()))
        return a

    def torque_attributes(self) -> list[tuple[str, str | None, str]]:
        """The same job as Torque 6 prints it (lowercase exit_status, state C)."""
        m = self.meta
        st = "C" if self.finished else self.state
        qtime = int(m.get("qtime") or self.now)
        a: list[tuple[str, str | None, str]] = [
            ("Job_Name", None, self.name),
            ("Job_Owner", None, m.get("owner") or f"{self.user}@{hostname()}"),
        ]
        if self.started:
            a += [
                ("resources_used", "cput", "00:00:00"),
                ("resources_used", "energy_used", "0"),
                ("resources_used", "mem", "0kb"),
                ("resources_used", "vmem", "0kb"),
                ("resources_used", "walltime", fmt_hms(self.used)),
            ]
        a += [
            ("job_state", None, st),
            ("queue", None, self.queue),
            ("server", None, SERVER),
            ("Checkpoint", None, "u"),
            ("ctime", None, ctime(qtime)),
            ("Error_Path", None, f"{m.get('submit_host') or hostname()}:{m.get('error_path')}"),
        ]
        ncpus = int(m["resources"].get("ncpus", 1))
        if self.started:
            a.append(("exec_host", None, "localhost/0" + (f"-{ncpus - 1}" if ncpus > 1 else "")))
        a += [
            ("Hold_Types", None, "n"),
            ("Join_Path", None, m.get("join") or "n"),
            ("Keep_Files", None, "n"),
            ("Mail_Points", None, "a"),
            ("mtime", None, ctime(self.end or self.start or qtime)),
            ("Output_Path", None, f"{m.get('submit_host') or hostname()}:{m.get('output_path')}"),
            ("Priority", None, "0"),
            ("qtime", None, ctime(qtime)),
            ("Rerunable", None, "True"),
        ]
        res = m.get("resources") or {}
        if res.get("mem"):
            a.append(("Resource_List", "mem", str(res["mem"])))
        a.append(("Resource_List", "nodect", "1"))
        a.append(("Resource_List", "nodes", f"1:ppn={ncpus}"))
        if res.get("walltime"):
            a.append(("Resource_List", "walltime", str(res["walltime"])))
        if self.started:
            a.append(("session_id", None, "0"))
        a.append(("Variable_List", None, self.variable_list()))
        a.append(("euser", None, self.user))
        a.append(("egroup", None, self.user))
        a.append(("queue_type", None, "E"))
        a.append(("etime", None, ctime(qtime)))
        if self.final and self.exit_status() is not None:
            a.append(("exit_status", None, str(self.exit_status())))
        a.append(("submit_args", None, m.get("submit_args") or ""))
        if self.started:
            a.append(("start_time", None, ctime(self.start)))
            a.append(("start_count", None, "1"))
        if self.final:
            a.append(("comp_time", None, ctime(self.end)))
        a.append(("fault_tolerant", None, "False"))
        a.append(("job_radix", None, "0"))
        a.append(("submit_host", None, m.get("submit_host") or hostname()))
        return a


def user_home(user: str) -> str:
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        return "/"


def _delivering(seq: int, sj: dict) -> bool:
    """Is the epilog still copying the job's output back? (then the job is still E)"""
    dest = os.path.join(run_dir(), "mom_priv", "spool", f"{job_id(seq)}.dest")
    return os.path.exists(dest) and time.time() - int(sj.get("end_time") or 0) < 30


def load_jobs(sjobs: dict[int, dict]) -> dict[int, Job]:
    """Jobs by sequence number: Slurm's, plus the shim's own history of ended jobs."""
    jobs: dict[int, Job] = {}
    for seq, sj in sjobs.items():
        meta = find_meta(seq, sj)
        if meta is None:
            meta = meta_from_slurm(sj)
        final = None
        if slurm_state(sj) in ENDED and not _delivering(seq, sj):
            final = finalize(seq, meta, sj)
        jobs[seq] = Job(seq, meta, sj, final)
    with contextlib.suppress(OSError):
        for fn in os.listdir(jobs_dir()):
            m = re.fullmatch(r"(\d+)\.final\.json", fn)
            if not m or int(m.group(1)) in jobs:
                continue
            rec = read_json(os.path.join(jobs_dir(), fn))
            if rec and rec.get("meta"):
                seq = int(m.group(1))
                jobs[seq] = Job(seq, rec["meta"], None, rec)
    return jobs


# ---------------------------------------------------------------------------- rendering


def prt_attr(name: str, value: str, one_line: bool) -> str:
    """qstat.c prt_attr(): wrap at commas (strtok) near 78 characters, TAB continuation lines."""
    if one_line:
        return f"    {name} = {value.replace(chr(10), chr(92) + 'n')}"
    out = [f"    {name} = "]
    start = len(name) + 7  # 4 spaces + ' = '
    tokens = [t for t in value.split(",") if t]  # strtok skips empty fields
    first = True
    for i, tok in enumerate(tokens):
        if len(tok) + start < LINE_LIMIT:
            out.append(tok)
            start += len(tok)
        else:
            if not first:
                out.append("\n\t")
                start = 9  # tab + 1
            for ch in tok:
                out.append(ch)
                start += 1
                if start > LINE_LIMIT:
                    start = 8  # tab
                    out.append("\n\t")
        if i + 1 < len(tokens):
            first = False
            out.append(",")
    return "".join(out)


def render_full(job: Job, one_line: bool, torque: bool = False) -> str:
    attrs = job.torque_attributes() if torque else job.attributes()
    lines = [f"Job Id: {job.id}"]
    for name, res, value in attrs:
        lines.append(prt_attr(f"{name}.{res}" if res else name, value, one_line))
    return "\n".join(lines) + "\n\n"


def render_dsv(job: Job, delim: str) -> str:
    def esc(v: str) -> str:
        v = v.replace("\\", "\\\\")
        for ch in set(delim):
            v = v.replace(ch, "\\" + ch)
        return v.replace("\n", "\\n")

    items = [f"Job Id: {job.id}"]
    for name, res, value in job.attributes():
        items.append(f"{name}.{res}={esc(value)}" if res else f"{name}={esc(value)}")
    return delim.join(items) + "\n"


def json_value(value: str):
    """pbs_json_insert_parsed(): a value that parses as JSON is stored as JSON, else a string."""
    v = value.strip()
    if v in ("NaN", "Infinity", "-Infinity") or not v:
        return value
    try:
        return json.loads(v)
    except ValueError:
        return value


def job_json(job: Job) -> dict:
    d: dict = {}
    for name, res, value in job.attributes():
        if res is not None:
            d.setdefault(name, {})[res] = json_value(value)
        elif name == "Variable_List":
            vl = {}
            for k, v in job.meta.get("variable_list") or []:
                vl[k] = json_value(str(v))
            d[name] = vl
        elif name in ("Job_Name", "project", "Account_Name"):
            d[name] = value
        else:
            d[name] = json_value(value)
    return d


def render_json(jobs: list[Job] | None) -> str:
    root: dict = {"timestamp": int(time.time()), "pbs_version": PBS_VERSION, "pbs_server": SERVER}
    if jobs is not None:
        root["Jobs"] = {j.id: job_json(j) for j in jobs}
    return json.dumps(root, indent=4, separators=(",", ":")) + "\n"


def render_torque_xml(jobs: list[Job]) -> str:
    """Torque's `qstat -x`: the jobs as one line of XML."""
    from xml.sax.saxutils import escape

    parts = ["<Data>"]
    for j in jobs:
        parts.append(f"<Job><Job_Id>{escape(j.id)}</Job_Id>")
        attrs = j.torque_attributes()
        done: set[str] = set()
        for name, res, value in attrs:
            if res is None:
                parts.append(f"<{name}>{escape(value)}</{name}>")
            elif name not in done:
                done.add(name)
                inner = "".join(
                    f"<{r}>{escape(v)}</{r}>" for n, r, v in attrs if n == name and r is not None
                )
                parts.append(f"<{name}>{inner}</{name}>")
        parts.append("</Job>")
    parts.append("</Data>")
    return "".join(parts) + "\n"


def _trunc(s: str, n: int, exact_ge: bool = False) -> str:
    if (len(s) >= n) if exact_ge else (len(s) > n):
        return s[: n - 1] + "*"
    return s


def render_table_header(wide: bool) -> str:
    if wide:
        return (
            "Job id                         Name            User             Time Use S Queue\n"
            "-----------------------------  --------------- ---------------  -------- - "
            "---------------\n"
        )
    return (
        "Job id            Name             User              Time Use S Queue\n"
        "----------------  ---------------- ----------------  -------- - -----\n"
    )


def render_table_row(job: Job, wide: bool, torque: bool = False) -> str:
    st = "C" if (torque and job.finished) else job.state
    timeu = "00:00:00" if job.started else "0"
    if wide:
        return (
            f"{_trunc(job.id, 30):<30} {_trunc(job.name, 15, True):<15} "
            f"{_trunc(job.user, 15):<15}  {timeu:>8} {st:>1} {_trunc(job.queue, 15):<15}\n"
        )
    return (
        f"{_trunc(job.id, 17):<17} {_trunc(job.name, 16, True):<16} "
        f"{_trunc(job.user, 16):<16}  {timeu:>8} {st:>1} {_trunc(job.queue, 16):<16}\n"
    )
