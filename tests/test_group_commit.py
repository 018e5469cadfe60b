"""GroupCommitter on the real database: values durable when run() returns (or a submitted job's future is done), a
failing job rolled back alone, a failed group commit reported to every caller, concurrent callers grouped."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from app.group_commit import GroupCommitStopped, GroupCommitter
from app.models import InboundMessage
from app.services import messages as store


@pytest.fixture
def committer(session_factory):
    committer = GroupCommitter(session_factory).start()
    yield committer
    committer.stop()


def stored_raws(factory) -> list[bytes]:
    with factory() as session:
        return [row.raw for row in session.scalars(select(InboundMessage).order_by(InboundMessage.id))]


def store_job(raw: bytes):
    return lambda session: store.store_received(session, raw, transport="test", peer="p").id


def test_value_is_committed_when_run_returns(committer, session_factory):
    msg_id = committer.run(store_job(b"MSH|one"))
    with session_factory() as other:  # another connection sees it: it is committed
        assert other.get(InboundMessage, msg_id).raw == b"MSH|one"


def test_failing_job_is_rolled_back_alone(committer, session_factory):
    def failing(session):
        store.store_received(session, b"MSH|half", transport="test", peer="p")
        raise ValueError("mapping failed")

    results, errors = [], []
    gate = threading.Barrier(3)

    def call(job):
        gate.wait(5)
        try:
            results.append(committer.run(job))
        except ValueError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=call, args=(job,))
               for job in (store_job(b"MSH|a"), failing, store_job(b"MSH|b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == ["mapping failed"]
    assert len(results) == 2
    assert sorted(stored_raws(session_factory)) == [b"MSH|a", b"MSH|b"]


def test_concurrent_callers_share_groups_and_keep_everything(committer, session_factory):
    count = 64
    gate = threading.Barrier(count)
    ids: list[int] = []

    def call(i):
        gate.wait(10)
        ids.append(committer.run(store_job(f"MSH|{i}".encode())))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(stored_raws(session_factory)) == sorted(f"MSH|{i}".encode() for i in range(count))
    assert len(set(ids)) == count
    assert committer.jobs == count
    assert committer.groups < count  # callers waiting together were committed together


def test_a_failed_commit_fails_every_caller_of_the_group_and_keeps_nothing(committer, session_factory, engine):
    # A deferred foreign key / check is not portable; a statement that fails at COMMIT on both databases is:
    # a job that leaves the transaction unusable makes the group's commit fail.
    def poison(session):
        store.store_received(session, b"MSH|ok", transport="test", peer="p")
        session.flush()
        # close the transaction under the session's feet: its commit then fails
        session.connection().exec_driver_sql("ROLLBACK")
        return "poisoned"

    with pytest.raises(Exception):
        committer.run(poison)
    assert stored_raws(session_factory) == []
    assert committer.run(store_job(b"MSH|after")) > 0  # the committer goes on
    assert stored_raws(session_factory) == [b"MSH|after"]


def test_submitted_jobs_commit_without_a_waiting_caller(committer, session_factory):
    """submit() returns at once; a committer thread leads when nobody waits in run(), and hands the lead to a
    caller of run() that arrives meanwhile. Every value is durable when its future is done."""
    futures = [committer.submit(store_job(f"MSH|s{i}".encode())) for i in range(20)]
    ran = committer.run(store_job(b"MSH|run"))
    values = [f.result(timeout=10) for f in futures]
    assert len(set(values + [ran])) == 21
    assert sorted(stored_raws(session_factory)) == sorted([b"MSH|run"] + [f"MSH|s{i}".encode() for i in range(20)])

    def failing(session):
        raise ValueError("unreadable header")
    with pytest.raises(ValueError, match="unreadable header"):
        committer.submit(failing).result(timeout=10)
    assert committer.submit(store_job(b"MSH|after")).result(timeout=10) > 0   # the committer goes on


def test_submitted_and_waiting_callers_mixed_from_many_threads(committer, session_factory):
    count = 32
    gate = threading.Barrier(count)
    futures = []

    def call(i):
        gate.wait(10)
        if i % 2:
            futures.append(committer.submit(store_job(f"MSH|{i}".encode())))
        else:
            committer.run(store_job(f"MSH|{i}".encode()))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for f in futures:
        f.result(timeout=10)
    assert sorted(stored_raws(session_factory)) == sorted(f"MSH|{i}".encode() for i in range(count))


def test_stopped_committer_refuses_new_jobs(session_factory):
    committer = GroupCommitter(session_factory).start()
    committer.stop()
    with pytest.raises(GroupCommitStopped):
        committer.run(store_job(b"MSH|late"))
    with pytest.raises(GroupCommitStopped):
        committer.submit(store_job(b"MSH|late"))


def test_intake_takes_the_group_path(settings, session_factory, committer):
    """A message, its duplicate and a batch all go through the group commit (no silent fallback)."""
    from interfaces.hl7.intake import HL7Intake
    from mappings.profile import ProfileSet
    from tests.test_intake import orm

    intake = HL7Intake(settings, session_factory, ProfileSet(settings.mappings_path).get("default"), committer)
    first = intake.handle(orm("NW", "G1"))
    again = intake.handle(orm("NW", "G1"))
    batch = intake.handle(b"BHS|^~\\&|HIS|HOSP|RIS|RAD|20261203||||BATCH-8\r" + orm("XO", "G2") + b"BTS|1\r")
    assert b"MSA|AA|G1" in first and again == first
    assert b"MSA|AA|G2" in batch and batch.startswith(b"BHS|")
    assert committer.jobs == 3
    with session_factory() as session:
        statuses = [(m.control_id, m.status.value) for m in
                    session.scalars(select(InboundMessage).order_by(InboundMessage.id))]
    assert statuses == [("G1", "PROCESSED"), ("G1", "DUPLICATE"), ("BATCH-8", "PROCESSED"), ("G2", "PROCESSED")]
