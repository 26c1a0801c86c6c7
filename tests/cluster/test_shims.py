"""The PBS Pro shims (tests/cluster/pbs) against the real single-node Slurm.

Each test submits real jobs; the walltime test waits for Slurm's real time-limit kill (~70-90 s).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "pbs"))
import _pbsshim  # noqa: E402

ID_RE = re.compile(r"^\d+\.pbs-ci$")


# ---------------------------------------------------------------------------- helpers


def parse_full(text: str) -> dict[str, dict[str, str]]:
    """Parse `qstat -f` text the way a PBS client must: TAB lines continue the previous value."""
    jobs: dict[str, dict[str, str]] = {}
    cur: dict[str, str] | None = None
    last = None
    for line in text.splitlines():
        if line.startswith("Job Id: "):
            cur = jobs[line[len("Job Id: ") :].strip()] = {}
            last = None
        elif line.startswith("\t") and cur is not None and last:
            cur[last] += line[1:]
        elif line.startswith("    ") and " = " in line and cur is not None:
            key, value = line[4:].split(" = ", 1)
            cur[key] = value
            last = key
    return jobs


def submit(c, tmp_path: Path, body: str, *opts: str, env=None, name="job.sh") -> str:
    script = tmp_path / name
    script.write_text(body)
    p = c.run("qsub", *opts, str(script), cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    jid = p.stdout.strip()
    assert ID_RE.match(jid), p.stdout
    assert p.stdout == jid + "\n"
    return jid


def attrs(c, jid: str, *flags: str, env=None) -> dict[str, str] | None:
    p = c.run("qstat", "-f", *flags, jid, env=env)
    return parse_full(p.stdout).get(jid)


def wait_finished(c, jid: str, timeout: float) -> dict[str, str]:
    def done():
        a = attrs(c, jid, "-x")
        return a if a and a.get("job_state") == "F" else None

    return c.wait_for(done, timeout, what=f"{jid} to finish")


def wait_state(c, jid: str, state: str, timeout: float = 30) -> dict[str, str]:
    def ok():
        a = attrs(c, jid, "-x")
        return a if a and a.get("job_state") == state else None

    return c.wait_for(ok, timeout, interval=0.3, what=f"{jid} in state {state}")


def variable_list(a: dict[str, str]) -> dict[str, str]:
    out = {}
    for item in re.split(r"(?<!\\),", a["Variable_List"]):
        k, _, v = item.partition("=")
        out[k] = v.replace("\\,", ",")
    return out


# ---------------------------------------------------------------------------- qsub


def test_qsub_runs_job_in_home_with_pbs_environment(pbs_cluster, tmp_path):
    c = pbs_cluster
    home = Path(os.path.expanduser("~"))
    forgot = f"kdflow-shim-forgot-cd-{os.getpid()}.txt"
    body = f"""#!/bin/bash
#PBS -N envjob
#PBS -l select=1:ncpus=2:mem=300mb
#PBS -l walltime=00:05:00
pwd > "$PBS_O_WORKDIR/pwd.txt"
env | sort > "$PBS_O_WORKDIR/env.txt"
test -d "$TMPDIR" && test -w "$TMPDIR" && echo ok > "$PBS_O_WORKDIR/tmpdir.txt"
echo relative > {forgot}   # a script that forgets cd $PBS_O_WORKDIR writes to $HOME
"""
    jid = submit(c, tmp_path, body, "-v", "EXTRA_VAR=hello,OTHER=1", env={"NOT_EXPORTED": "x"})
    a = wait_finished(c, jid, 60)
    try:
        assert (tmp_path / "pwd.txt").read_text().strip() == str(home)
        assert (home / forgot).exists() and not (tmp_path / forgot).exists()
    finally:
        (home / forgot).unlink(missing_ok=True)
    env = dict(
        line.split("=", 1)
        for line in (tmp_path / "env.txt").read_text().splitlines()
        if "=" in line
    )
    assert env["PBS_JOBID"] == jid
    assert env["PBS_JOBNAME"] == "envjob"
    assert env["PBS_O_WORKDIR"] == str(tmp_path)
    assert env["PBS_QUEUE"] == "workq"
    assert env["PBS_ENVIRONMENT"] == "PBS_BATCH"
    assert env["NCPUS"] == env["OMP_NUM_THREADS"] == "2"
    assert env["TMPDIR"].endswith(f"pbs.{jid}")
    assert env["EXTRA_VAR"] == "hello" and env["OTHER"] == "1"
    assert Path(env["PBS_NODEFILE"]).name == jid
    assert "NOT_EXPORTED" not in env  # no -V: the submission environment stays behind
    assert not [k for k in env if k.startswith("SLURM_")]
    assert (tmp_path / "tmpdir.txt").read_text().strip() == "ok"
    # resources as PBS shows them, and as Slurm got them
    assert a["Resource_List.ncpus"] == "2"
    assert a["Resource_List.mem"] == "300mb"
    assert a["Resource_List.select"] == "1:ncpus=2:mem=300mb"
    assert a["Resource_List.walltime"] == "00:05:00"
    assert a["exec_host"] == "localhost/0*2"
    assert a["Output_Path"].endswith(f":{tmp_path}/envjob.o{jid.split('.')[0]}")
    assert a["Error_Path"].endswith(f":{tmp_path}/envjob.e{jid.split('.')[0]}")
    assert a["Exit_status"] == "0"
    assert a["comment"].startswith("Job run at ") and a["comment"].endswith(
        "on (localhost:ncpus=2:mem=307200kb) and finished"
    )
    assert variable_list(a)["PBS_O_WORKDIR"] == str(tmp_path)
    assert variable_list(a)["EXTRA_VAR"] == "hello"
    for t in ("qtime", "stime", "mtime", "obittime", "ctime"):
        time.strptime(a[t], "%a %b %d %H:%M:%S %Y")


def test_qsub_minus_V_exports_the_environment(pbs_cluster, tmp_path):
    c = pbs_cluster
    body = 'echo "$MY_EXPORTED_VAR" > "$PBS_O_WORKDIR/v.txt"\n'
    jid = submit(c, tmp_path, body, "-V", env={"MY_EXPORTED_VAR": "a,b c"})
    a = wait_finished(c, jid, 60)
    assert (tmp_path / "v.txt").read_text() == "a,b c\n"
    assert variable_list(a)["MY_EXPORTED_VAR"] == "a,b c"
    assert "MY_EXPORTED_VAR=a\\,b c" in a["Variable_List"]  # PBS escapes commas in values


def test_command_line_overrides_directives(pbs_cluster, tmp_path):
    c = pbs_cluster
    body = """#!/bin/sh
#PBS -N from_script
#PBS -l walltime=00:10:00
#PBS -P SCRIPTPROJ
#PBS -j oe
#PBS -o out.log
echo hi
echo err >&2
#PBS -N after_first_command_is_ignored
"""
    jid = submit(c, tmp_path, body, "-N", "from_cli", "-l", "walltime=00:20:00")
    a = wait_finished(c, jid, 60)
    assert a["Job_Name"] == "from_cli"
    assert a["Resource_List.walltime"] == "00:20:00"
    assert a["project"] == "SCRIPTPROJ"
    assert a["Join_Path"] == "oe"
    assert a["Output_Path"].endswith(f":{tmp_path}/out.log")
    assert (tmp_path / "out.log").read_text() == "hi\nerr\n"


def test_qsub_unknown_queue(pbs_cluster, tmp_path):
    (tmp_path / "j.sh").write_text("true\n")
    p = pbs_cluster.run("qsub", "-q", "no_such_queue", "j.sh", cwd=tmp_path)
    assert (p.returncode, p.stdout, p.stderr) == (170, "", "qsub: Unknown queue\n")


def test_qsub_over_queue_limit(pbs_cluster, tmp_path):
    c = pbs_cluster
    (tmp_path / "j.sh").write_text("sleep 60\n")
    blocker = c.run("qsub", "-l", f"select=1:ncpus={c.cpus()}", "j.sh", cwd=tmp_path)
    assert blocker.returncode == 0, blocker.stderr
    wait_state(c, blocker.stdout.strip(), "R")
    for _ in range(2):
        assert c.run("qsub", "j.sh", cwd=tmp_path).returncode == 0
    limit = {"PBS_SHIM_MAX_QUEUED": "2"}
    p = c.run("qsub", "j.sh", cwd=tmp_path, env=limit)
    assert (p.returncode, p.stdout) == (38, "")
    assert p.stderr == "qsub: would exceed queue workq's per-user limit of jobs in 'Q' state\n"
    assert c.run("qsub", "j.sh", cwd=tmp_path, env={"PBS_SHIM_MAX_QUEUED": "3"}).returncode == 0


def test_qsub_transient_failures(pbs_cluster, tmp_path):
    c = pbs_cluster
    (tmp_path / "j.sh").write_text("true\n")
    p = c.run("qsub", "j.sh", cwd=tmp_path, env={"PBS_SHIM_QSUB_FAIL": "1"})
    assert (p.returncode, p.stdout) == (111, "")
    assert p.stderr == "qsub: cannot connect to server pbs-ci (errno=111)\n"
    # every 2nd call fails: of 4 consecutive calls exactly 2 fail
    rcs = [
        c.run("qsub", "j.sh", cwd=tmp_path, env={"PBS_SHIM_QSUB_FAIL": "2"}).returncode
        for _ in range(4)
    ]
    assert sorted(rcs) == [0, 0, 111, 111]


# ---------------------------------------------------------------------------- qstat


def test_states_exit_codes_and_history(pbs_cluster, tmp_path):
    c = pbs_cluster
    slow = submit(c, tmp_path, "sleep 4\nexit 3\n", "-N", "exit3")
    ok = submit(c, tmp_path, "true\n", "-N", "exit0")
    a = attrs(c, slow)
    assert a is not None and a["job_state"] in ("Q", "R")
    assert "Exit_status" not in a
    r = wait_state(c, slow, "R")
    assert r["exec_host"] == "localhost/0"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", r["resources_used.walltime"])
    assert r["run_count"] == "1"
    f = wait_finished(c, slow, 60)
    assert f["Exit_status"] == "3"
    assert f["comment"].endswith(" and failed")
    assert f["substate"] == "93"
    assert "00:00:04" <= f["resources_used.walltime"] <= "00:00:10"
    assert wait_finished(c, ok, 30)["Exit_status"] == "0"

    # without -x a finished job is an error (35); unknown ids are 153; the last error wins
    p = c.run("qstat", "-f", slow)
    assert (p.returncode, p.stdout) == (35, "")
    assert p.stderr == (
        f"qstat: {slow} Job has finished, use -x or -H to obtain historical job information\n"
    )
    p = c.run("qstat", "999999")
    assert (p.returncode, p.stderr) == (153, "qstat: Unknown Job Id 999999.pbs-ci\n")
    p = c.run("qstat", "-fx", slow, "999999.pbs-ci", ok)
    assert p.returncode == 153
    assert set(parse_full(p.stdout)) == {slow, ok}
    assert c.run("qstat", "-f", "999999", slow).returncode == 35
    # the default listing hides finished jobs; -x shows them as F
    assert slow not in c.run("qstat").stdout
    listing = c.run("qstat", "-x").stdout
    assert re.search(rf"^{re.escape(slow)}\s+exit3\s+\S+\s+\S+ F workq", listing, re.M)


def test_qdel(pbs_cluster, tmp_path):
    c = pbs_cluster
    run = submit(c, tmp_path, "sleep 120\n")
    held = submit(c, tmp_path, "sleep 120\n", "-h")
    wait_state(c, run, "R")
    assert attrs(c, held)["job_state"] == "H"
    p = c.run("qdel", run, held)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")
    f = wait_finished(c, run, 30)
    assert f["Exit_status"] == "271"
    assert f["comment"].endswith(" and terminated")
    h = wait_finished(c, held, 30)
    assert "Exit_status" not in h  # deleted before it ran: no exit status, like PBS
    err = Path(f["Error_Path"].split(":", 1)[1]).read_text()
    assert "slurmstepd" not in err
    p = c.run("qdel", run)
    assert (p.returncode, p.stderr) == (35, f"qdel: Job has finished {run}\n")
    p = c.run("qdel", "999999.pbs-ci")
    assert (p.returncode, p.stderr) == (153, "qdel: Unknown Job Id 999999.pbs-ci\n")


def test_json_output(pbs_cluster, tmp_path):
    c = pbs_cluster
    done = submit(c, tmp_path, "exit 7\n", "-N", "json_done", "-P", "PROJ1")
    wait_finished(c, done, 30)
    running = submit(c, tmp_path, "sleep 60\n", "-l", "walltime=00:10:00")
    wait_state(c, running, "R")
    p = c.run("qstat", "-f", "-F", "json", "-x", done, running)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["pbs_version"] == "22.05.11" and d["pbs_server"] == "pbs-ci"
    assert isinstance(d["timestamp"], int)
    j = d["Jobs"][done]
    assert j["Job_Name"] == "json_done" and j["project"] == "PROJ1"
    assert j["job_state"] == "F"
    assert j["Exit_status"] == 7
    assert j["Resource_List"]["ncpus"] == 1
    assert j["Resource_List"]["select"] == "1:ncpus=1"
    assert re.fullmatch(r"\d\d:\d\d:\d\d", j["resources_used"]["walltime"])
    assert j["Variable_List"]["PBS_O_WORKDIR"] == str(tmp_path)
    r = d["Jobs"][running]
    assert r["job_state"] == "R" and "Exit_status" not in r
    assert r["Resource_List"]["walltime"] == "00:10:00"
    # without -x the finished job is an error, the running one is still printed
    p = c.run("qstat", "-f", "-F", "json", done, running)
    assert p.returncode == 35 and list(json.loads(p.stdout)["Jobs"]) == [running]
    # no job at all: no "Jobs" key, as PBS prints it
    p = c.run("qstat", "-f", "-F", "json", "999999")
    assert p.returncode == 153 and "Jobs" not in json.loads(p.stdout)
    p = c.run("qstat", "-f", "-F", "json", "-w", running)
    assert p.returncode == 2 and "cannot be used with -F" in p.stderr


def test_long_values_wrap_with_tab_lines(pbs_cluster, tmp_path):
    c = pbs_cluster
    long_a = "A" * 50 + "/" + "b" * 60
    long_b = "x" * 150  # longer than a line: PBS breaks it inside the value
    jid = submit(c, tmp_path, "sleep 30\n", "-v", f"LONG_A={long_a},LONG_B={long_b},S=1", "-h")
    text = c.run("qstat", "-f", jid).stdout
    lines = text.splitlines()
    assert lines[0] == f"Job Id: {jid}" and text.endswith("\n\n") and not text.endswith("\n\n\n")
    cont = [ln for ln in lines if ln.startswith("\t")]
    assert len(cont) >= 3
    for ln in lines:
        # qstat.c counts everything but the commas it adds: 78 columns plus those commas
        assert len(ln) - ln.count(",") <= 80, ln
    a = parse_full(text)[jid]
    vl = variable_list(a)
    assert vl["LONG_A"] == long_a and vl["LONG_B"] == long_b and vl["S"] == "1"
    # -w: one line per attribute
    wide = c.run("qstat", "-f", "-w", jid).stdout
    assert "\t" not in wide
    assert parse_full(wide)[jid]["Variable_List"] == a["Variable_List"]


def test_prt_attr_matches_qstat_c():
    # values from a real PBS Pro qstat -f: break after a comma, else inside the token
    v = "PBS_O_HOME=/home/user,PBS_O_LANG=en_US.UTF-8,PBS_O_LOGNAME=user,PBS_O_PATH=/usr/bin"
    out = _pbsshim.prt_attr("Variable_List", v, False)
    assert out == (
        "    Variable_List = PBS_O_HOME=/home/user,PBS_O_LANG=en_US.UTF-8,\n"
        "\tPBS_O_LOGNAME=user,PBS_O_PATH=/usr/bin"
    )
    long = "x" * 100
    out = _pbsshim.prt_attr("Error_Path", "h:/" + long, False)
    assert out.split("\n\t")[0] == "    Error_Path = h:/" + "x" * (79 - len("    Error_Path = h:/"))
    assert out.replace("\n\t", "") == "    Error_Path = h:/" + long
    assert _pbsshim.prt_attr("a", "b,c", True) == "    a = b,c"


def test_history_disabled(pbs_cluster, tmp_path):
    c = pbs_cluster
    jid = submit(c, tmp_path, "true\n")
    wait_finished(c, jid, 30)
    off = {"PBS_SHIM_HISTORY": "0"}
    p = c.run("qstat", "-fx", jid, env=off)
    assert (p.returncode, p.stdout, p.stderr) == (153, "", f"qstat: Unknown Job Id {jid}\n")
    assert jid not in c.run("qstat", "-x", env=off).stdout
    p = c.run("qstat", "-f", "-F", "json", "-x", env=off)
    assert jid not in json.loads(p.stdout).get("Jobs", {})
    assert c.run("qdel", jid, env=off).returncode == 153


def test_one_squeue_call_for_fifty_jobs(pbs_cluster, tmp_path):
    c = pbs_cluster
    (tmp_path / "j.sh").write_text("sleep 100\n")
    ids = []
    for i in range(50):
        p = c.run("qsub", "-h", "-N", f"many_{i}", "j.sh", cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        ids.append(p.stdout.strip())
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "slurm_calls.log"
    real = {}
    for tool in ("squeue", "scontrol", "sacct"):
        real[tool] = next(
            (
                str(Path(d) / tool)
                for d in ("/usr/bin", "/usr/local/bin")
                if (Path(d) / tool).exists()
            ),
            tool,
        )
        (fake / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\nexec {real[tool]} "$@"\n')
        (fake / tool).chmod(0o755)
    env = {"PATH": f"{c.bin_dir}:{fake}:{c.env['PATH']}"}
    before = c.calls("qstat")
    t0 = time.monotonic()
    p = c.run("qstat", "-f", "-x", env=env)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    assert set(ids) <= set(parse_full(p.stdout))
    assert log.read_text().splitlines() == ["squeue --json"]
    assert c.calls("qstat") == before + 1
    # the same with the 50 ids as operands, in JSON
    log.unlink()
    p = c.run("qstat", "-f", "-F", "json", *ids, env=env)
    assert p.returncode == 0 and list(json.loads(p.stdout)["Jobs"]) == ids
    assert log.read_text().splitlines() == ["squeue --json"]
    assert elapsed < 10, f"qstat -f -x of 50+ jobs took {elapsed:.1f}s"


def test_qstat_transient_failures_and_delay(pbs_cluster, tmp_path):
    c = pbs_cluster
    before = c.calls("qstat")
    p = c.run("qstat", env={"PBS_SHIM_QSTAT_FAIL": "1"})
    assert p.returncode == 255 and p.stdout == ""
    assert p.stderr.endswith("qstat: cannot connect to server pbs-ci (errno=111)\n")
    rcs = [c.run("qstat", env={"PBS_SHIM_QSTAT_FAIL": "3"}).returncode for _ in range(3)]
    assert sorted(rcs) == [0, 0, 255]
    t0 = time.monotonic()
    assert c.run("qstat", env={"PBS_SHIM_QSTAT_DELAY": "1.5"}).returncode == 0
    assert time.monotonic() - t0 >= 1.5
    assert c.calls("qstat") == before + 5
    p = c.run("qstat", "--version")
    assert (p.returncode, p.stdout) == (0, "pbs_version = 22.05.11\n")


def test_dialects(pbs_cluster, tmp_path):
    c = pbs_cluster
    jid = submit(c, tmp_path, "exit 4\n")
    wait_finished(c, jid, 30)
    for dialect in ("torque", "pbspro_old"):
        p = c.run("qstat", "-f", "-F", "json", jid, env={"PBS_SHIM_DIALECT": dialect})
        assert p.returncode == 2 and p.stdout == ""
        assert p.stderr.startswith("qstat: invalid option -- 'F'\n")
    torque = {"PBS_SHIM_DIALECT": "torque"}
    p = c.run("qstat", "-f", jid, env=torque)
    assert p.returncode == 0, p.stderr
    a = parse_full(p.stdout)[jid]
    assert a["job_state"] == "C" and a["exit_status"] == "4" and "Exit_status" not in a
    p = c.run("qstat", "-f", "999999", env=torque)
    assert (p.returncode, p.stderr) == (153, "qstat: Unknown Job Id Error 999999.pbs-ci\n")
    old = {"PBS_SHIM_DIALECT": "pbspro_old"}
    assert attrs(c, jid, "-x", env=old)["Exit_status"] == "4"


@pytest.mark.slow
def test_memory_kill(pbs_cluster, tmp_path):
    c = pbs_cluster
    body = f"""#!/bin/bash
{sys.executable} -c '
import time
a = bytearray(400 * 1024 * 1024)
for i in range(0, len(a), 4096):
    a[i] = 1
time.sleep(60)
'
"""
    jid = submit(c, tmp_path, body, "-l", "select=1:ncpus=1:mem=100mb", "-N", "hog")
    a = wait_finished(c, jid, 60)
    assert a["Exit_status"] == "-27"
    assert a["comment"].endswith(" and exceeded resource mem")
    err = (tmp_path / f"hog.e{jid.split('.')[0]}").read_text()
    assert re.search(r"^=>> PBS: job killed: mem \d+kb exceeded limit 102400kb$", err, re.M)
    assert "slurmstepd" not in err
    legacy = attrs(c, jid, "-x", env={"PBS_SHIM_LEGACY": "1"})
    assert legacy["Exit_status"] == "265" and legacy["comment"].endswith(" and failed")


@pytest.mark.slow
def test_walltime_kill(pbs_cluster, tmp_path):
    c = pbs_cluster
    body = "#!/bin/bash\n#PBS -l walltime=00:01:00\necho started\nsleep 600\n"
    jid = submit(c, tmp_path, body, "-N", "overtime")
    a = wait_finished(c, jid, 150)
    assert a["Exit_status"] == "-29"
    assert a["comment"].endswith(" and exceeded resource walltime")
    assert a["resources_used.walltime"] >= a["Resource_List.walltime"] == "00:01:00"
    err = (tmp_path / f"overtime.e{jid.split('.')[0]}").read_text()
    assert re.fullmatch(r"=>> PBS: job killed: walltime \d+ exceeded limit 60\n", err), err
    assert (tmp_path / f"overtime.o{jid.split('.')[0]}").read_text() == "started\n"
    # the line is appended once, however often qstat looks
    attrs(c, jid, "-x")
    assert (tmp_path / f"overtime.e{jid.split('.')[0]}").read_text() == err
    legacy = attrs(c, jid, "-x", env={"PBS_SHIM_LEGACY": "1"})
    assert legacy["Exit_status"] == "271" and legacy["comment"].endswith(" and failed")
    j = json.loads(c.run("qstat", "-fx", "-F", "json", jid).stdout)["Jobs"][jid]
    assert j["Exit_status"] == -29
