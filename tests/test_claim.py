"""The atomic claim (kdflow.owner.claim): claim files `claim.<n>` made by link(2), one owner
per experiment however many trainers start at once, takeovers only on evidence that the
owner has ended, refusals that leave the directory as it was.

The race tests release their racers together (a barrier) and keep the winner alive until
every other racer has answered (an event it waits on): nothing here depends on speed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakedata import train_params, write_prepared

from kdflow import owner as ownership
from kdflow.owner import AlreadyOwned, Liveness, Owner, OwnerUnknown, Verdict, claim
from kdflow.trainer import ExperimentFiles

HOST = socket.gethostname()
DRIVER = Path(__file__).with_name("resume_driver.py")
SCHEDULER_VARIABLES = ("PBS_JOBID", "SLURM_JOB_ID")

ME = Owner("slurm", "200", "node2", 2000, "boot:2")
OTHER = Owner("slurm", "100", "node1", 1000, "boot:1")


@pytest.fixture(autouse=True)
def no_scheduler(monkeypatch):
    """Tests run as a local process, whatever job the test session itself runs in."""
    for name in SCHEDULER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def answering(*answers: Liveness, detail="state RUNNING"):
    """A probe that gives `answers` in turn (the last one again once they run out)."""
    asked = []

    def probe(owner, me):
        asked.append(owner)
        return Verdict(answers[min(len(asked), len(answers)) - 1], detail)

    return probe, asked


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def claim_record(directory: Path, generation: int) -> dict:
    return json.loads(ownership.claim_file(directory, generation).read_text())


def claimed_by(directory: Path, owner: Owner) -> dict:
    """`directory` claimed by `owner` as this kdflow leaves it: claim.1 and status.json."""
    fields = claim(directory, {}, me=owner, probe=answering(Liveness.ALIVE)[0])
    status = {"status": "in_progress", "epoch": 3, **fields}
    (directory / "status.json").write_text(json.dumps(status))
    return status


def fields(me: Owner, name: str) -> dict:
    return {"owner": me.record(), "claim": name, "pbs_job_id": None}


# -- the protocol, one trainer at a time -----------------------------------------------------


def test_a_fresh_directory_is_claimed_with_claim_1(tmp_path):
    probe, asked = answering(Liveness.ALIVE)
    assert claim(tmp_path, {}, me=ME, probe=probe) == fields(ME, "claim.1")
    assert asked == []
    record = claim_record(tmp_path, 1)
    assert record["owner"] == ME.record() and record["generation"] == 1
    assert record["after"] is None and record["why"] == "nobody claimed it"
    assert len(record["token"]) == 32 and record["claimed_at"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claim.1"]  # its temp is gone


def test_the_same_process_keeps_its_claim_the_same_job_claims_the_next_generation(tmp_path):
    claimed_by(tmp_path, ME)
    before = contents(tmp_path)
    probe, asked = answering(Liveness.ENDED)
    assert claim(tmp_path, {}, me=ME, probe=probe) == fields(ME, "claim.1")
    assert contents(tmp_path) == before and asked == []
    # the same Slurm job, requeued: a new process; it claims claim.2 itself, not asking
    requeued = Owner("slurm", "200", "node7", 7, "boot:7")
    assert claim(tmp_path, {}, me=requeued, probe=probe) == fields(requeued, "claim.2")
    assert asked == []
    record = claim_record(tmp_path, 2)
    assert record["after"] == ME.record() and record["owner"] == requeued.record()


def test_a_live_other_owner_is_refused_and_the_directory_left_alone(tmp_path):
    status = claimed_by(tmp_path, OTHER)
    (tmp_path / ".checkpoint.pth.abc.tmp").write_bytes(b"the owner is writing this")
    before = contents(tmp_path)
    probe, asked = answering(Liveness.ALIVE)
    with pytest.raises(AlreadyOwned) as refused:
        claim(tmp_path, status, me=ME, probe=probe)
    assert str(refused.value) == (
        f"{tmp_path} is being trained by Slurm job 100 (process 1000 on node1), alive (state "
        "RUNNING); this Slurm job 200 (process 2000 on node2) will not write beside it. If "
        "that one should train it, nothing needs doing: once it has finished the workflow "
        "finds the experiment done. Otherwise stop it with `scancel 100` and run this "
        f"experiment again: it resumes from its checkpoint. (Its claim: {tmp_path}/claim.1.)"
    )
    assert asked == [OTHER]
    assert contents(tmp_path) == before


def test_an_ended_owner_is_taken_over_with_the_next_generation(tmp_path, caplog):
    caplog.set_level("INFO", "kdflow.owner")
    status = claimed_by(tmp_path, OTHER)
    probe, _ = answering(Liveness.ENDED, detail="state CANCELLED")
    assert claim(tmp_path, status, me=ME, probe=probe) == fields(ME, "claim.2")
    record = claim_record(tmp_path, 2)
    assert (record["owner"], record["after"]) == (ME.record(), OTHER.record())
    assert record["why"] == "it has ended (state CANCELLED)"
    assert f"taking {tmp_path} over from Slurm job 100" in caplog.text
    # older generations stay: a number is never used twice (see kdflow.owner)
    assert ownership.claim_generations(tmp_path) == [1, 2]
    assert claim_record(tmp_path, 1)["owner"] == OTHER.record()
    # the owner is the highest: the next trainer asks about ME, not OTHER
    probe, asked = answering(Liveness.ALIVE)
    with pytest.raises(AlreadyOwned, match="is being trained by Slurm job 200"):
        claim(tmp_path, {}, me=Owner("slurm", "300", "n3", 3), probe=probe)
    assert asked == [ME]


def test_an_unknown_owner_is_asked_again_then_refused_naming_the_claim_file(tmp_path, caplog):
    status = claimed_by(tmp_path, OTHER)
    before = contents(tmp_path)
    probe, asked = answering(Liveness.UNKNOWN, detail="squeue did not answer: timed out")
    slept = []
    with pytest.raises(OwnerUnknown) as refused:
        claim(tmp_path, status, me=ME, probe=probe, sleep=slept.append)
    assert isinstance(refused.value, AlreadyOwned)
    assert asked == [OTHER] * 3 and slept == [20.0, 20.0]  # the defaults: 3 tries, 20 s apart
    assert str(refused.value) == (
        f"{tmp_path} is claimed by Slurm job 100 (process 1000 on node1) ({tmp_path}/claim.1), "
        "and whether it still trains cannot be told: asked Slurm about job 100 (squeue), 3 "
        "times 20 s apart, without an answer (last: squeue did not answer: timed out). This "
        "Slurm job 200 (process 2000 on node2) will not write beside an owner that may be "
        "alive: no answer is no evidence that it has gone. The workflow retries the job (it "
        "asks again then). If you know that Slurm job 100 (process 1000 on node1) has ended, "
        f"delete the claim files (`rm {tmp_path}/claim.*`) and run this experiment again: it "
        "resumes from its checkpoint."
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    warning = (
        f"cannot tell whether Slurm job 100 (process 1000 on node1) still trains {tmp_path} "
        "(squeue did not answer: timed out); asking again in 20 s"
    )
    assert warnings == [warning, warning]
    assert contents(tmp_path) == before
    # doing what it says frees the directory
    for path in tmp_path.glob("claim.*"):
        path.unlink()
    assert claim(tmp_path, status, me=ME, probe=probe) == fields(ME, "claim.1")


def test_an_answer_after_an_unknown_one_decides(tmp_path):
    status = claimed_by(tmp_path, OTHER)
    probe, asked = answering(Liveness.UNKNOWN, Liveness.ALIVE)
    with pytest.raises(AlreadyOwned) as refused:
        claim(tmp_path, status, me=ME, probe=probe, tries=5, wait=0, sleep=lambda s: None)
    assert not isinstance(refused.value, OwnerUnknown) and len(asked) == 2
    probe, asked = answering(Liveness.UNKNOWN, Liveness.UNKNOWN, Liveness.ENDED)
    assert claim(tmp_path, status, me=ME, probe=probe, tries=3, sleep=lambda s: None) == (
        fields(ME, "claim.2")
    )


def test_an_unreadable_claim_file_is_no_evidence_either(tmp_path):
    ownership.claim_file(tmp_path, 1).write_text("{not json")
    probe, asked = answering(Liveness.ENDED)
    with pytest.raises(OwnerUnknown, match=r"claimed by an owner that cannot be read") as refused:
        claim(tmp_path, {}, me=ME, probe=probe, wait=0, sleep=lambda s: None)
    assert asked == []
    assert "If you know that no trainer writes there, delete the claim files" in (
        str(refused.value)
    )


def test_an_older_kdflows_status_json_owner_counts_as_generation_0(tmp_path):
    old = {"status": "in_progress", "epoch": 7, "owner": OTHER.record(), "pbs_job_id": None}
    (tmp_path / "status.json").write_text(json.dumps(old))
    probe, asked = answering(Liveness.ALIVE)
    with pytest.raises(AlreadyOwned) as refused:
        claim(tmp_path, old, me=ME, probe=probe)
    assert str(refused.value).endswith(
        f"(Its claim: {tmp_path}/status.json (its owner, recorded by an older kdflow).)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"] and asked == [OTHER]
    probe, _ = answering(Liveness.UNKNOWN)
    with pytest.raises(OwnerUnknown, match=f"delete {tmp_path}/status.json and run"):
        claim(tmp_path, old, me=ME, probe=probe, wait=0, sleep=lambda s: None)
    probe, _ = answering(Liveness.ENDED)
    assert claim(tmp_path, old, me=ME, probe=probe) == fields(ME, "claim.1")
    assert claim_record(tmp_path, 1)["after"] == OTHER.record()
    # its own job, resubmitted with the same id: no question
    other_dir = tmp_path / "mine"
    other_dir.mkdir()
    mine = {**old, "owner": Owner("slurm", "200", "n9", 9).record()}
    probe, asked = answering(Liveness.ALIVE)
    assert claim(other_dir, mine, me=ME, probe=probe) == fields(ME, "claim.1")
    assert asked == []


@pytest.mark.parametrize(
    "status",
    [
        {"status": "completed", "owner": OTHER.record()},  # nothing in progress
        {"status": "in_progress"},  # an owner nobody recorded
        # this kdflow wrote it (it names a claim) and its claim files were deleted by hand
        {"status": "in_progress", "owner": OTHER.record(), "claim": "claim.4"},
    ],
)
def test_no_claim_file_and_no_older_owner_in_progress_is_free(tmp_path, status):
    probe, asked = answering(Liveness.ALIVE)
    assert claim(tmp_path, status, me=ME, probe=probe) == fields(ME, "claim.1")
    assert asked == []


def test_a_pack_student_its_owner_gave_up_is_taken_over_without_asking(tmp_path):
    status = claimed_by(tmp_path, OTHER)
    failed = {**status, "status": "failed", "error": "RuntimeError: changed recipe"}
    probe, asked = answering(Liveness.ALIVE)  # the pack's job trains its other students
    assert claim(tmp_path, failed, me=ME, probe=probe) == fields(ME, "claim.2")
    assert asked == []
    # `failed` written by an earlier owner is no word of the one that claims it now
    later = tmp_path / "later"
    later.mkdir()
    claimed_by(later, OTHER)
    stale = {**failed, "claim": "claim.0"}
    with pytest.raises(AlreadyOwned):
        claim(later, stale, me=ME, probe=probe)


def test_a_link_whose_reply_was_lost_counts_as_ours(tmp_path, monkeypatch):
    """NFS: the server made the link, its reply was lost, the client's retry got EEXIST."""
    real_link = os.link
    nlinks = []

    def link(src, dst):
        real_link(src, dst)
        nlinks.append(os.stat(src).st_nlink)
        raise FileExistsError(17, "File exists", dst)

    monkeypatch.setattr(ownership.os, "link", link)
    assert claim(tmp_path, {}, me=ME) == fields(ME, "claim.1")
    assert nlinks == [2]
    assert claim_record(tmp_path, 1)["owner"] == ME.record()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claim.1"]


def test_an_existing_claim_file_is_not_ours(tmp_path):
    path = ownership.claim_file(tmp_path, 1)
    path.write_text(json.dumps({"owner": OTHER.record(), "token": "theirs"}))
    assert not ownership._link(path, {"owner": ME.record()})
    assert json.loads(path.read_text())["owner"] == OTHER.record()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claim.1"]


def test_a_temp_removed_by_the_winners_cleanup_means_starting_over(tmp_path, monkeypatch):
    """A trainer that has claimed removes every `.*.tmp`, a racer's claim temp included: that
    racer's link fails (ENOENT), it looks again and finds the winner."""
    real_link = os.link
    calls = []

    def link(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 1:
            # meanwhile another trainer claims (its link is the second call) and cleans up
            claimed_by(tmp_path, OTHER)
            ExperimentFiles(tmp_path).remove_partial_writes()
        return real_link(src, dst)

    monkeypatch.setattr(ownership.os, "link", link)
    with pytest.raises(AlreadyOwned, match="is being trained by Slurm job 100"):
        claim(tmp_path, {}, me=ME, probe=answering(Liveness.ALIVE)[0])
    assert calls == ["claim.1", "claim.1"]  # ours failed (ENOENT); it looked again: refused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["claim.1", "status.json"]


def test_only_claim_files_are_generations(tmp_path):
    for name in ["claim.3", "claim.10", "claim.0", "claim.01", "claim.x", "claim.", "claim.²",
                 ".claim.abc.tmp", "claims", "claim.2.bak"]:  # fmt: skip
        (tmp_path / name).write_text("{}")
    assert ownership.claim_generations(tmp_path) == [3, 10]


# -- races: N processes for one experiment, released together --------------------------------

RACERS = range(2, 9)  # N = 2 .. 8
RACES_PER_N = 30
ANSWER_TIMEOUT = 60


def _racer(conn, barriers) -> None:
    """A racer, for as many races as the test asks it to run: each is one trainer's start,
    as trainer.train makes it: ExperimentFiles.claim with the real kdflow.owner.claim (this
    process as the owner, the real local probe). The winner then 'trains' until the test has
    every other racer's answer (it sends `release`). Each answer says how many links the
    claim tried (os.link counted, not changed): how often racers did meet."""
    real_link, links = os.link, []

    def counted_link(src, dst):
        links.append(dst)
        return real_link(src, dst)

    os.link = counted_link  # in this racer process only
    while (task := conn.recv()) is not None:
        directory, n = task
        links.clear()
        try:
            files = ExperimentFiles(directory)
            barriers[n].wait(timeout=ANSWER_TIMEOUT)  # all n released together
            try:
                files.claim(claim)
            except AlreadyOwned as exc:
                conn.send((os.getpid(), "refused", str(exc), len(links)))
                continue
            conn.send((os.getpid(), "won", files.owner, len(links)))
            if conn.recv() != "release":
                raise RuntimeError("the winner was not released")
        except BaseException as exc:  # noqa: BLE001  reported to the test, whatever it is
            conn.send((os.getpid(), "error", repr(exc), len(links)))


@pytest.fixture(scope="module")
def racers():
    """8 racer processes (forked once: forking a process that has imported torch takes a
    while), and the barriers that release N of them together, for N = 2 .. 8."""
    context = multiprocessing.get_context("fork")
    barriers = {n: context.Barrier(n) for n in range(2, 9)}
    pipes = [context.Pipe() for _ in range(8)]
    processes = [context.Process(target=_racer, args=(child, barriers)) for _, child in pipes]
    for process in processes:
        process.start()
    yield [parent for parent, _ in pipes]
    for parent, _ in pipes:
        parent.send(None)
    for process in processes:
        process.join(timeout=ANSWER_TIMEOUT)
        if process.exitcode is None:
            process.kill()
            process.join()


def _dead_owner() -> Owner:
    """A local owner whose process has exited (its start recorded while it lived)."""
    sleeper = subprocess.Popen(["sleep", "60"])
    started = ownership.process_start(sleeper.pid)
    sleeper.kill()
    sleeper.wait()
    return Owner("local", None, HOST, sleeper.pid, started)


def _race(racers, directory: Path, n: int) -> list[tuple[int, str, object, int]]:
    """Race `n` racers for `directory`; every answer, the winner held until all have come."""
    racing = racers[:n]
    for conn in racing:
        conn.send((str(directory), n))
    answers = []
    for conn in racing:
        assert conn.poll(ANSWER_TIMEOUT), f"a racer did not answer in {ANSWER_TIMEOUT} s"
        answers.append(conn.recv())
    for conn, (_, outcome, _, _) in zip(racing, answers, strict=True):
        if outcome == "won":
            conn.send("release")
    return answers


# where each race starts: a fresh directory, one whose owner (recorded by an older kdflow in
# status.json) has exited, one whose owner (claim.1) has exited
SETUPS = ("fresh", "dead owner in status.json", "dead owner in claim.1")


def _prepare(directory: Path, setup: str, dead: Owner) -> int:
    """Set `directory` up for a race; returns the generation the winner must take."""
    directory.mkdir()
    if setup == "fresh":
        return 1
    if setup == "dead owner in status.json":
        old = {"status": "in_progress", "epoch": 2, "owner": dead.record(), "pid": dead.pid}
        (directory / "status.json").write_text(json.dumps(old))
        return 1
    claimed_by(directory, dead)
    return 2


def test_racing_trainers_one_wins_the_others_are_refused(tmp_path, racers):
    """7 values of N x 30 races (210 races, 1050 claims), each race on a fresh directory or
    on one whose last owner (a local process, recorded in status.json or in claim.1) has
    exited, in turn."""
    dead = _dead_owner()
    started = time.monotonic()
    races = met = lost = 0
    for n in RACERS:
        for i in range(RACES_PER_N):
            setup = SETUPS[i % len(SETUPS)]
            directory = tmp_path / f"n{n}-{i}"
            generation = _prepare(directory, setup, dead)
            status_before = contents(directory).get("status.json")
            answers = _race(racers, directory, n)
            where = f"race {i} of {n} racers, {setup}"
            errors = [a for a in answers if a[1] == "error"]
            assert not errors, f"{where}: {errors}"
            won = [a for a in answers if a[1] == "won"]
            assert len(won) == 1, f"{where}: {len(won)} winners: {won}"
            [(winner, _, winner_fields, _)] = won
            claim_path = ownership.claim_file(directory, generation)
            assert winner_fields["claim"] == claim_path.name, where
            assert winner_fields["owner"]["pid"] == winner, where
            for pid, outcome, message, _ in answers:
                if pid == winner:
                    continue
                assert outcome == "refused", f"{where}: {pid} {outcome} {message}"
                assert message.startswith(
                    f"{directory} is being trained by process {winner} on {HOST}, alive "
                    f"(process {winner} is running); this process {pid} on {HOST} will not"
                ), f"{where}: {message}"
                assert f"stop it with `kill {winner}` on {HOST}" in message, where
                assert message.endswith(f"(Its claim: {claim_path}.)"), f"{where}: {message}"
            assert ownership.claim_generations(directory) == list(range(1, generation + 1))
            record = json.loads(claim_path.read_text())
            assert record["owner"]["pid"] == winner and record["generation"] == generation
            assert (record["after"] or {}).get("pid") == (None if setup == "fresh" else dead.pid)
            assert not list(directory.glob(".*")), f"{where}: stray temp files"
            assert contents(directory).get("status.json") == status_before, where
            races += 1
            linked = sum(a[3] for a in answers)
            met += linked > 1
            lost += linked - 1
    took = time.monotonic() - started
    assert races == 210
    # for the record, not asserted (it depends on speed): in how many races two or more
    # racers tried to link the same claim file, and how many such links were refused
    print(f"{races} races of 2-8 racers in {took:.1f} s; {met} races met at the link, {lost} lost")


def test_racers_beside_a_live_owner_are_all_refused(tmp_path, racers):
    """The owner lives (this test's own process): every racer is refused, however many."""
    claimed_by(tmp_path, ownership.current())
    before = contents(tmp_path)
    answers = _race(racers, tmp_path, 8)
    assert [outcome for _, outcome, _, _ in answers] == ["refused"] * 8
    assert all(f"is being trained by process {os.getpid()}" in m for _, _, m, _ in answers)
    assert sum(linked for *_, linked in answers) == 0  # none even tried
    assert contents(tmp_path) == before


# -- races of real trainers: scripts/train.py, as the workflow's rule runs it ----------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("claim")
    return train_params(write_prepared(root / "prepared.npz"), epochs=3)


def _driver(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    base = {k: v for k, v in os.environ.items() if k not in SCHEDULER_VARIABLES}
    return subprocess.Popen(
        [sys.executable, str(DRIVER), *args], env={**base, **(env or {})}, text=True, **kw
    )


def _wait(predicate, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)
    return found


@pytest.mark.slow
def test_racing_real_trainers_one_trains_the_others_refuse(tmp_path, tiny):
    """3 races of 3 scripts/train.py processes, started together once all have imported
    kdflow: two on a fresh directory, one on a directory whose owner was SIGKILLed after an
    epoch. The winner is held after its claim until the others have exited: they are refused
    (AlreadyOwned) and write nothing; the winner trains on, and its files equal those of a
    run that no one raced, bit for bit."""
    from test_resume import _assert_identical  # bit for bit: weights, optimizer, history

    spec = json.dumps(tiny)
    reference = tmp_path / "reference"
    alone = _driver(spec, str(reference), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert alone.wait(timeout=300) == 0, alone.stderr.read()[-3000:]
    for race, setup in enumerate(["fresh", "fresh", "owner killed after an epoch"]):
        out, said = _race_trainers(tmp_path / f"race{race}", spec, killed_owner=setup != "fresh")
        _assert_identical(out, reference, f"race {race}, {setup}")
        if setup != "fresh":
            assert "resumed" in said


def _race_trainers(root: Path, spec: str, killed_owner: bool) -> tuple[Path, str]:
    """One race of 3 trainers for root/out; returns the directory and the winner's output."""
    out, start, hold = root / "out", root / "start", root / "hold"
    root.mkdir()
    if killed_owner:
        kill = {"KILL_AT_REPLACE": "1", "KILL_NAME": "checkpoint.pth", "KILL_MODE": "after"}
        killed = _driver("--rule", spec, str(out), str(root / "killed.log"), env=kill,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        assert killed.wait(timeout=300) == -9, killed.stderr.read()[-3000:]
        assert json.loads((out / "status.json").read_text())["claim"] == "claim.1"
    start.touch()
    hold.touch()
    hooks = {"START_FILE": str(start), "HOLD_FILE": str(hold)}
    racers, outputs = [], {}
    for i in range(3):
        with open(root / f"{i}.out", "w") as output:  # stdout and stderr
            racer = _driver("--rule", spec, str(out), str(root / f"{i}.log"), env=hooks,
                            stdout=output, stderr=subprocess.STDOUT)  # fmt: skip
        racers.append(racer)
        outputs[racer.pid] = root / f"{i}.out"

    def ready():
        assert all(r.poll() is None for r in racers), "a racer ended before the start"
        return len(list(root.glob("start.ready.*"))) == 3

    generation = 2 if killed_owner else 1
    try:
        _wait(ready, "the racers to import kdflow")
        before = contents(out) if out.exists() else {}
        start.unlink()  # go
        _wait(lambda: sum(r.poll() is not None for r in racers) == 2, "two refusals")
        [winner] = [r for r in racers if r.poll() is None]
        assert [p.name for p in root.glob("hold.won.*")] == [f"hold.won.{winner.pid}"]
        for loser in (r for r in racers if r is not winner):
            said = outputs[loser.pid].read_text()
            assert loser.returncode != 0, said[-3000:]
            refusal = f"AlreadyOwned: {out} is being trained by process {winner.pid} on {HOST}"
            assert refusal in said, said[-3000:]
            assert f"(Its claim: {out}/claim.{generation}.)" in said, said[-3000:]
        # the losers wrote nothing: all the winner has written so far is its claim
        after = contents(out)
        assert sorted(set(after) - set(before)) == [f"claim.{generation}"]
        assert {k: v for k, v in after.items() if k in before} == before
    finally:
        hold.unlink(missing_ok=True)  # the winner trains on
        for racer in racers:
            try:
                racer.wait(timeout=300)
            finally:
                racer.kill()
    said = outputs[winner.pid].read_text()
    assert winner.returncode == 0, said[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert (status["owner"]["pid"], status["claim"]) == (winner.pid, f"claim.{generation}")
    assert ownership.claim_generations(out) == list(range(1, generation + 1))
    return out, said
