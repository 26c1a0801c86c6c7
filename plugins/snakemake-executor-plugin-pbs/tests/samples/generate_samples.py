"""GENERATED qstat samples, not output of any server: for what the real OpenPBS of
tests/cluster cannot show, and the synthetic listings of bench/pbs_poll.py.

The PBS Pro samples the parser and classifier tests read are captured from a real OpenPBS
23.06.06 by capture_openpbs.sh (openpbs/, see openpbs/README.md). This file writes only:

- generated_torque_qstat_f.txt: Torque 6 `qstat -f` (no Torque server here);
- generated_pbspro_pre18_qstat_xf.txt: PBS Pro before 18 (no `-F json`) and before the
  2020 releases that report limit kills as -29/-27: a walltime kill as 271 past the limit,
  a kill as 265;
- and, through `job()` and `text()`, the 1,000-job listings bench/pbs_poll.py parses.

`prt_attr` below is a line-by-line port of OpenPBS src/cmds/qstat.c (wrap before a token that
would pass column 78, otherwise mid-token; continuation lines start with a TAB; the comma after
a token does not count towards the column). The attributes, their order and their values follow
PBS Pro 22.05 and Torque 6 job output as documented, not as captured.
"""

from pathlib import Path

HERE = Path(__file__).parent

LIMIT = 78


def prt_attr(name, resource, value):
    out = "    " + name
    start = len(name) + 7
    if resource:
        out += "." + resource
        start += len(resource) + 1
    out += " = "
    tokens = [t for t in value.split(",") if t]
    first = True
    for i, buf in enumerate(tokens):
        if len(buf) + start < LIMIT:
            out += buf
            start += len(buf)
        else:
            if not first:
                out += "\n\t"
                start = 9
            for ch in buf:
                out += ch
                start += 1
                if start > LIMIT:
                    start = 8
                    out += "\n\t"
        if i + 1 < len(tokens):
            first = False
            out += ","
    return out


W = "/mnt/lustre/users/jdoe/sweep"
VARS = (
    "PBS_O_HOME=/home/jdoe,PBS_O_LANG=en_US.UTF-8,PBS_O_LOGNAME=jdoe,"
    "PBS_O_PATH=/home/jdoe/sweep/.venv/bin:/apps/chpc/bio/anaconda3/bin:/usr/local/bin:/usr/bin:/usr/local/sbin:/usr/sbin,"
    "PBS_O_MAIL=/var/spool/mail/jdoe,PBS_O_SHELL=/bin/bash,"
    f"PBS_O_WORKDIR={W},PBS_O_SYSTEM=Linux,PBS_O_QUEUE=gpu_1,PBS_O_HOST=login2.chpc.ac.za"
)


def job(
    seq,
    name,
    state,
    used=None,
    exit_status=None,
    comment=None,
    mem="24gb",
    walltime="01:00:00",
    sub=1,
    stime=True,
):
    a = [
        ("Job_Name", None, name),
        ("Job_Owner", None, "jdoe@login2.chpc.ac.za"),
    ]
    if used:
        a += [
            ("resources_used", "cpupercent", "996"),
            ("resources_used", "cput", "09:58:21"),
            ("resources_used", "mem", "19201044kb"),
            ("resources_used", "ncpus", "10"),
            ("resources_used", "vmem", "41943040kb"),
            ("resources_used", "walltime", used),
        ]
    a += [
        ("job_state", None, state),
        ("queue", None, "gpu_1"),
        ("server", None, "sched01"),
        ("Checkpoint", None, "u"),
        ("ctime", None, "Tue Apr 14 08:58:01 2026"),
        ("Error_Path", None, f"login2.chpc.ac.za:{W}/logs/pbs/simulate/{name}.{sub}.err"),
    ]
    if state != "Q":
        a += [
            ("exec_host", None, "gpu4012/0*10"),
            ("exec_vnode", None, "(gpu4012:ncpus=10:ngpus=1:mem=25165824kb)"),
        ]
    a += [
        ("Hold_Types", None, "n"),
        ("Join_Path", None, "n"),
        ("Keep_Files", None, "n"),
        ("Mail_Points", None, "a"),
        ("mtime", None, "Tue Apr 14 10:00:04 2026"),
        ("Output_Path", None, f"login2.chpc.ac.za:{W}/logs/pbs/simulate/{name}.{sub}.out"),
        ("Priority", None, "0"),
        ("qtime", None, "Tue Apr 14 08:58:01 2026"),
        ("Rerunable", None, "True"),
        ("Resource_List", "mem", mem),
        ("Resource_List", "ncpus", "10"),
        ("Resource_List", "ngpus", "1"),
        ("Resource_List", "nodect", "1"),
        ("Resource_List", "place", "free"),
        ("Resource_List", "select", f"1:ncpus=10:ngpus=1:mem={mem}"),
        ("Resource_List", "walltime", walltime),
    ]
    if state != "Q":
        a += [
            ("stime", None, "Tue Apr 14 09:00:03 2026"),
            ("session_id", None, "212345"),
            ("jobdir", None, "/home/jdoe"),
        ]
    a += [
        ("substate", None, {"Q": "10", "R": "42", "F": "92"}[state]),
        ("Variable_List", None, VARS),
    ]
    if comment:
        a.append(("comment", None, comment))
    a += [
        ("etime", None, "Tue Apr 14 08:58:01 2026"),
        ("run_count", None, "0" if state == "Q" else "1"),
    ]
    if exit_status is not None:
        a.append(("Exit_status", None, str(exit_status)))
    a += [
        ("Submit_arguments", None, f"{W}/.snakemake-pbs/scripts/{name}.sh"),
        ("project", None, "CSCI1234"),
    ]
    if state == "F":
        a.append(("history_timestamp", None, "1776157205"))
    a += [("Submit_Host", None, "login2.chpc.ac.za"), ("server_instance_id", None, "sched01:15001")]
    return f"{seq}.sched01", a


RUN = "Job run at Tue Apr 14 at 09:00 on (gpu4012:ncpus=10:ngpus=1:mem=25165824kb)"
# What the real OpenPBS 23.06 cannot show: an older server's walltime kill (SIGTERM to the job
# shell: 271, with the used walltime past the limit) and a SIGKILL of the job shell (265).
PRE18_JOBS = [
    job(
        4106, "smk5f60718293", "F", used="01:00:12", exit_status=271, comment=RUN + " and finished"
    ),
    job(
        4107,
        "smk60718293a4",
        "F",
        used="00:20:31",
        exit_status=265,
        comment=RUN + " and terminated",
    ),
]


def text(jobs):
    out = []
    for jid, attrs in jobs:
        out.append(f"Job Id: {jid}")
        out += [prt_attr(n, r, v) for n, r, v in attrs]
        out.append("")
    return "\n".join(out) + "\n"


TW = "/home/jdoe/sweep"
TVARS = (
    "PBS_O_QUEUE=batch,PBS_O_HOME=/home/jdoe,PBS_O_LOGNAME=jdoe,"
    "PBS_O_PATH=/usr/local/bin:/usr/bin:/usr/local/sbin:/usr/sbin:/home/jdoe/.local/bin,"
    f"PBS_O_MAIL=/var/spool/mail/jdoe,PBS_O_SHELL=/bin/bash,PBS_O_LANG=en_US.UTF-8,PBS_O_WORKDIR={TW},"
    "PBS_O_HOST=head.cluster,PBS_O_SERVER=torque01"
)


def tjob(seq, name, state, used, exit_status=None):
    a = [
        ("Job_Name", None, name),
        ("Job_Owner", None, "jdoe@head.cluster"),
        ("resources_used", "cput", "09:40:00"),
        ("resources_used", "energy_used", "0"),
        ("resources_used", "mem", "2097152kb"),
        ("resources_used", "vmem", "4194304kb"),
        ("resources_used", "walltime", used),
        ("job_state", None, state),
        ("queue", None, "batch"),
        ("server", None, "torque01"),
        ("Checkpoint", None, "u"),
        ("ctime", None, "Tue Apr 14 09:00:00 2026"),
        ("Error_Path", None, f"head.cluster:{TW}/logs/pbs/simulate/{name}.1.err"),
        ("exec_host", None, "node07/0-9"),
        ("Hold_Types", None, "n"),
        ("Join_Path", None, "n"),
        ("Keep_Files", None, "n"),
        ("Mail_Points", None, "a"),
        ("mtime", None, "Tue Apr 14 10:00:06 2026"),
        ("Output_Path", None, f"head.cluster:{TW}/logs/pbs/simulate/{name}.1.out"),
        ("Priority", None, "0"),
        ("qtime", None, "Tue Apr 14 09:00:00 2026"),
        ("Rerunable", None, "True"),
        ("Resource_List", "nodect", "1"),
        ("Resource_List", "nodes", "1:ppn=10"),
        ("Resource_List", "walltime", "01:00:00"),
        ("session_id", None, "24680"),
        ("Variable_List", None, TVARS),
        ("euser", None, "jdoe"),
        ("egroup", None, "users"),
        ("queue_type", None, "E"),
        ("etime", None, "Tue Apr 14 09:00:00 2026"),
    ]
    if exit_status is not None:
        a.append(("exit_status", None, str(exit_status)))
    a += [
        ("submit_args", None, f"{TW}/.snakemake-pbs/scripts/{name}.sh"),
        ("start_time", None, "Tue Apr 14 09:00:01 2026"),
        ("start_count", None, "1"),
        ("fault_tolerant", None, "False"),
    ]
    if state == "C":
        a.append(("comp_time", None, "Tue Apr 14 10:00:06 2026"))
    a += [
        ("job_radix", None, "0"),
        ("submit_host", None, "head.cluster"),
        ("init_work_dir", None, TW),
        ("request_version", None, "1"),
    ]
    return f"{seq}.torque01", a


TJOBS = [
    tjob(812, "smk8293a4b5c6", "R", "00:12:00"),
    tjob(813, "smk93a4b5c6d7", "C", "00:48:12", 0),
    tjob(814, "smka4b5c6d7e8", "C", "01:00:05", 271),
]


def main():
    (HERE / "generated_pbspro_pre18_qstat_xf.txt").write_text(text(PRE18_JOBS))
    (HERE / "generated_torque_qstat_f.txt").write_text(text(TJOBS))


if __name__ == "__main__":
    main()
