"""A fake PBS Pro (qsub, qstat, qdel) for tests: `fake_pbs.py qsub|qstat|qdel ARGS...`.

State lives in $FAKE_PBS_DIR:
    jobs/<seq>.json   one job: id, name, state, exit status, walltime, paths
    calls.jsonl       every invocation's argv, to count qstat calls
    config.json       behaviour: {"run": bool, "history": bool, "version": str,
                      "qsub_failures": [[rc, stderr], ...], "qstat_failures": [...]}
                      (consumed one per call; qsub ["silent", ""] creates the job but prints
                      no id; qstat ["sleep", seconds] answers late),
                      "first_only": bool (asked about several ids, qstat prints only the
                      first job it knows and exits 0: OpenPBS's `-F json` bug, issue 2672),
                      "max_array_size": int (what `qstat -Bf` says; absent: not said)
With "run": true, qsub runs the job script in the background the way PBS would (PBS_JOBID,
PBS_O_WORKDIR, stdout/stderr files) and the job turns F with the script's exit code.

Job arrays as OpenPBS makes them (`qsub -J 0-3`, Torque's `-t 0-3` alike): qsub prints the
array's id `<seq>[].fakesrv`; each subjob is a job of its own, `jobs/<seq>[<i>].json`, id
`<seq>[<i>].fakesrv`, run with PBS_ARRAY_INDEX (and Torque's PBS_ARRAYID) = i and
`^array_index^` in its -o/-e paths replaced by i; an ended subjob is in state X while its
array lives, F after (as OpenPBS 23.06 shows them; `qsub -J 0-0` it refuses). The array
(`jobs/<seq>[].json`) is listed by `qstat -f` (its subjobs only with -t); its state is B while
any subjob lives, F after.
"""

import fcntl
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ.get("FAKE_PBS_DIR", "."))
SERVER = "fakesrv"


def config() -> dict:
    path = STATE / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_config(data: dict) -> None:
    (STATE / "config.json").write_text(json.dumps(data))


def pop_failure(kind: str):
    data = config()
    failures = data.get(kind) or []
    if not failures:
        return None
    failure = failures.pop(0)
    data[kind] = failures
    save_config(data)
    return failure


def job_path(seq: str) -> Path:
    return STATE / "jobs" / f"{seq}.json"


def load_job(seq: str) -> dict | None:
    try:
        return json.loads(job_path(seq).read_text())
    except (OSError, ValueError):
        return None


def save_job(job: dict) -> None:
    path = job_path(job["id"].split(".")[0])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job))
    os.replace(tmp, path)


def next_seq() -> str:
    counter = STATE / "seq"
    seq = int(counter.read_text()) + 1 if counter.exists() else 1000
    counter.write_text(str(seq))
    return str(seq)


def directives(script: str) -> dict:
    found = {"l": []}
    for line in script.splitlines():
        m = re.match(r"#PBS\s+-(\w)\s+(.*)", line)
        if m and m.group(1) == "l":
            found["l"].append(m.group(2).strip())
        elif m:
            found[m.group(1)] = m.group(2).strip()
    return found


def array_range(argv: list[str], d: dict) -> range | None:
    """The indices of `-J a-b` (or Torque's `-t a-b`) on the command line or in the script."""
    text = None
    for flag in ("-J", "-t"):
        if flag in argv[:-1]:
            text = argv[argv.index(flag) + 1]
    text = text or d.get("J") or d.get("t")
    if not text:
        return None
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def qsub(argv: list[str]) -> int:
    failure = pop_failure("qsub_failures")
    silent = bool(failure) and failure[0] == "silent"  # the job exists, its id is lost
    if failure and not silent:
        sys.stderr.write(failure[1] + "\n")
        return failure[0]
    script_path = argv[-1]
    script = Path(script_path).read_text()
    d = directives(script)
    walltime = next((x.split("=", 1)[1] for x in d["l"] if x.startswith("walltime=")), None)
    select = next((x for x in d["l"] if x.startswith("select=")), "")
    indices = array_range(argv, d)
    if indices is not None and len(indices) < 2:
        sys.stderr.write("qsub: illegal -J value\n")
        return 2
    seq = next_seq()
    job = {
        "id": f"{seq}{'[]' if indices else ''}.{SERVER}",
        "name": d.get("N", "STDIN"),
        "state": "Q",
        "queue": d.get("q", "workq"),
        "out": d.get("o"),
        "err": d.get("e"),
        "walltime": walltime,
        "select": select,
        "workdir": os.getcwd(),
        "owner": f"{getpass.getuser()}@login",
        "script": script,
        "argv": argv,
    }
    runs = [seq]
    if indices:
        job.update(array=True, indices=[indices.start, indices.stop - 1])
        runs = []
        for i in indices:
            sub = dict(job, id=f"{seq}[{i}].{SERVER}", index=i, array=False)
            for stream in ("out", "err"):
                if sub[stream]:
                    sub[stream] = sub[stream].replace("^array_index^", str(i))
            save_job(sub)
            runs.append(f"{seq}[{i}]")
    save_job(job)
    if config().get("run"):
        for run in runs:
            subprocess.Popen(
                [sys.executable, __file__, "_run", run],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    if not silent:
        print(job["id"])
    return 0


def run_job(seq: str) -> int:
    """Run one job's script like a MOM would, then mark it finished."""
    job = load_job(seq)
    script = STATE / "jobs" / f"{seq}.sh"
    script.write_text(job["script"])
    env = dict(os.environ, PBS_JOBID=job["id"], PBS_JOBNAME=job["name"])
    env["PBS_O_WORKDIR"] = job["workdir"]
    if "index" in job:
        env["PBS_ARRAY_INDEX"] = env["PBS_ARRAYID"] = str(job["index"])
    job.update(state="R", pid=os.getpid(), stime=time.ctime())
    save_job(job)
    start = time.time()
    with open(job["out"], "w") as out, open(job["err"], "w") as err:
        proc = subprocess.Popen(
            ["bash", str(script)],
            env=env,
            cwd=os.environ.get("HOME", "/"),  # PBS starts jobs in $HOME
            stdout=out,
            stderr=err,
            start_new_session=True,  # qdel signals the job's own session
        )
        job["child"] = proc.pid
        save_job(job)
        code = proc.wait()
    job = load_job(seq)
    if code < 0:  # killed by a signal: PBS reports 256 + signal
        code = 256 - code
    job.update(state=ended_state(job["id"]), exit_status=code, used=int(time.time() - start))
    save_job(job)
    return 0


def ended_state(job_id: str) -> str:
    """A subjob ends in state X, any other job in F."""
    return "X" if re.search(r"\[\d+\]", job_id) else "F"


def ended(job: dict) -> bool:
    return job["state"] in "FX"


def array_state(job: dict) -> str:
    """An array is B while any of its subjobs lives (Q before any started), F after."""
    seq = job["id"].split("[", 1)[0]
    states = [
        load_job(f"{seq}[{i}]")["state"] for i in range(job["indices"][0], job["indices"][1] + 1)
    ]
    if all(state in "FX" for state in states):
        return "F"
    return "Q" if all(state == "Q" for state in states) else "B"


def fmt_duration(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def attributes(job: dict) -> dict:
    if job.get("array"):
        job = dict(job, state=array_state(job))
    elif job["state"] == "X" and array_state(load_job(job["id"].split("[", 1)[0] + "[]")) == "F":
        job = dict(job, state="F")  # as OpenPBS shows a subjob once its whole array ended
    attrs = {
        "Job_Name": job["name"],
        "Job_Owner": job["owner"],
        "job_state": job["state"],
        "queue": job["queue"],
        "Resource_List": {"walltime": job.get("walltime") or "01:00:00"},
        "Variable_List": {"PBS_O_WORKDIR": job["workdir"], "PBS_O_HOME": "/home/user"},
    }
    if job["state"] in "RFX":
        attrs["resources_used"] = {"walltime": fmt_duration(int(job.get("used", 0)))}
        # what a test says the job used: {"mem": "153600kb", "cput": "00:01:00", ...}
        attrs["resources_used"].update(job.get("resources_used") or {})
    if "exit_status" in job and ended(job):
        attrs["Exit_status"] = job["exit_status"]
    if job.get("array"):
        attrs["array"] = "True"
        attrs["array_indices_submitted"] = "{}-{}".format(*job["indices"])
    return attrs


def text_job(job_id: str, attrs: dict) -> str:
    lines = [f"Job Id: {job_id}"]
    for name, value in attrs.items():
        if name == "Variable_List":
            lines.append(f"    {name} = " + ",".join(f"{k}={v}" for k, v in value.items()))
        elif isinstance(value, dict):
            lines += [f"    {name}.{k} = {v}" for k, v in value.items()]
        else:
            lines.append(f"    {name} = {value}")
    return "\n".join(lines) + "\n\n"


def qstat(argv: list[str]) -> int:
    cfg = config()
    if "--version" in argv:
        print(cfg.get("version", "pbs_version = 22.05.11"))
        return 0
    failure = pop_failure("qstat_failures")
    if failure:
        if failure[0] == "sleep":
            time.sleep(float(failure[1]))
        else:
            sys.stderr.write(failure[1] + "\n")
            return failure[0]
    if "-B" in argv or "-Bf" in argv:
        print(f"Server: {SERVER}")
        print("    server_state = Active")
        if cfg.get("max_array_size") is not None:
            print(f"    max_array_size = {cfg['max_array_size']}")
        return 0
    history = "-x" in argv and cfg.get("history", True)
    ids = [a for a in argv[1:] if not a.startswith("-") and a != "json"]
    if "-x" in argv and not cfg.get("history", True):
        # OpenPBS with job history off: nothing about any job, running ones included; exit 0
        for job_id in ids:
            sys.stderr.write(f"qstat: PBS is not configured to maintain job history {job_id}\n")
        return 0
    jobs, rc = {}, 0
    if ids:
        for job_id in ids:
            job = load_job(job_id.split(".")[0])
            if job is None or (ended(job) and not history):
                sys.stderr.write(f"qstat: Unknown Job Id {job_id}\n")
                rc = 153
                continue
            jobs[job["id"]] = attributes(job)
        if cfg.get("first_only") and jobs:
            first = next(iter(jobs))
            jobs, rc = {first: jobs[first]}, 0
    else:
        for path in sorted((STATE / "jobs").glob("*.json")):
            job = json.loads(path.read_text())
            if "index" in job and "-t" not in argv:
                continue  # subjobs are listed with -t only
            state = array_state(job) if job.get("array") else job["state"]
            if state not in "FX" or history:
                jobs[job["id"]] = attributes(job)
    if "-F" in argv:
        doc = {"timestamp": int(time.time()), "pbs_version": "22.05.11", "pbs_server": SERVER}
        if jobs:
            doc["Jobs"] = jobs
        print(json.dumps(doc, indent=4))
    else:
        sys.stdout.write("".join(text_job(i, a) for i, a in jobs.items()))
    return rc


def qdel(argv: list[str]) -> int:
    rc = 0
    for job_id in argv[1:]:
        job = load_job(job_id.split(".")[0])
        if job is None or ended(job) or (job.get("array") and array_state(job) == "F"):
            sys.stderr.write(f"qdel: Unknown Job Id {job_id}\n")
            rc = 153
            continue
        if job.get("array"):  # the whole array: each subjob
            seq = job["id"].split("[", 1)[0]
            members = [
                load_job(f"{seq}[{i}]") for i in range(job["indices"][0], job["indices"][1] + 1)
            ]
        else:
            members = [job]
        for member in members:
            if ended(member):
                continue
            if member["state"] == "R" and member.get("child"):
                os.killpg(member["child"], signal.SIGTERM)
            else:
                member.update(state=ended_state(member["id"]), exit_status=271)
                save_job(member)
    return rc


class FakePbs:
    """Test-side handle: installs qsub/qstat/qdel wrappers, reads and edits the fake's state."""

    def __init__(self, root: Path, **config):
        self.bin = Path(root) / "bin"
        self.state = Path(root) / "state"
        self.bin.mkdir(parents=True, exist_ok=True)
        (self.state / "jobs").mkdir(parents=True, exist_ok=True)
        for command in ("qsub", "qstat", "qdel"):
            wrapper = self.bin / command
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" {command} "$@"\n')
            wrapper.chmod(0o755)
        self.configure(**config)

    def env(self, base: dict | None = None) -> dict:
        """Environment in which qsub/qstat/qdel are the fake ones."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["FAKE_PBS_DIR"] = str(self.state)
        return env

    def configure(self, **changes) -> None:
        path = self.state / "config.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(changes)
        path.write_text(json.dumps(data))

    def calls(self, command: str | None = None) -> list[list[str]]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        calls = [json.loads(line) for line in path.read_text().splitlines()]
        return [c for c in calls if command is None or c[0] == command]

    def status_calls(self) -> list[list[str]]:
        """qstat calls that ask about jobs (not `qstat --version`)."""
        return [c for c in self.calls("qstat") if "--version" not in c]

    def arrays(self) -> list[dict]:
        """The arrays qsub made (their own entries, not their subjobs)."""
        return [job for job in self.jobs() if job.get("array")]

    def subjobs(self, array_id: str) -> list[dict]:
        """The subjobs of array `array_id`, by index."""
        seq = array_id.split("[", 1)[0]
        found = [job for job in self.jobs() if job["id"].startswith(f"{seq}[") and "index" in job]
        return sorted(found, key=lambda job: job["index"])

    def job(self, job_id: str) -> dict:
        return json.loads((self.state / "jobs" / f"{job_id.split('.')[0]}.json").read_text())

    def jobs(self) -> list[dict]:
        paths = sorted((self.state / "jobs").glob("*.json"))
        return [json.loads(path.read_text()) for path in paths]

    def update_job(self, job_id: str, **fields) -> None:
        job = self.job(job_id)
        job.update(fields)
        (self.state / "jobs" / f"{job_id.split('.')[0]}.json").write_text(json.dumps(job))

    def finish(self, job_id: str, exit_status: int | None, used: int = 60) -> None:
        """End a job the way the server would show it in its history (a subjob: state X)."""
        fields = {"state": ended_state(job_id), "used": used}
        if exit_status is not None:
            fields["exit_status"] = exit_status
        self.update_job(job_id, **fields)

    def add_job(self, seq: int, name: str, workdir: str, state: str = "R", **fields) -> str:
        """A job the fake server knows without a qsub through it (another controller's)."""
        job = {
            "id": f"{seq}.{SERVER}",
            "name": name,
            "state": state,
            "queue": "workq",
            "walltime": "01:00:00",
            "workdir": workdir,
            "owner": f"{getpass.getuser()}@login",
            **fields,
        }
        (self.state / "jobs" / f"{seq}.json").write_text(json.dumps(job))
        return job["id"]

    def add_array(self, seq: int, name: str, workdir: str, states: list[str]) -> str:
        """An array the fake server knows without a qsub through it (another controller's),
        subjob i in `states[i]`; returns its id `<seq>[].fakesrv`."""
        array_id = f"{seq}[].{SERVER}"
        self.add_job(f"{seq}[]", name, workdir, id=array_id, array=True,
                     indices=[0, len(states) - 1])  # fmt: skip
        for i, state in enumerate(states):
            self.add_job(f"{seq}[{i}]", name, workdir, state=state, index=i,
                         id=f"{seq}[{i}].{SERVER}")  # fmt: skip
        return array_id


def main() -> int:
    (STATE / "jobs").mkdir(parents=True, exist_ok=True)
    argv = sys.argv[1:]  # [command, *arguments]: wrappers call `fake_pbs.py qsub "$@"`
    if argv[0] == "_run":
        return run_job(argv[1])
    # one command at a time, as a server serves requests: the executor runs several qsubs at
    # once, and the state (job numbers, failures to hand out) is read and rewritten
    with open(STATE / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with open(STATE / "calls.jsonl", "a") as log:
            log.write(json.dumps(argv) + "\n")
        return {"qsub": qsub, "qstat": qstat, "qdel": qdel}[argv[0]](argv)


if __name__ == "__main__":
    sys.exit(main())
