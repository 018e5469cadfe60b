"""The outbox in the core (app.services.outbox), without sockets: rows written with the change that causes
them, the claim (compare-and-set, one queue per destination), back-off, dead letters and manual retry."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import select

from app.commands import CancelOrder, Cause, HoldOrder, OrderRef, PerformedStepData
from app.db import unit_of_work
from app.errors import Conflict, NotFound
from app.models import OutboxMessage, OutboxStatus, ProcedureStep, StepStatus, utcnow
from app.services import outbox
from app.services.orders import cancel_order, hold_order
from app.services.tracking import start_performed_step
from tests.outbound.conftest import mpps, place_order

LEASE = 60


@pytest.fixture
def routed(session_factory):
    outbox.route(session_factory, {outbox.ORDER_STATUS: ["his", "lab"]})
    return session_factory


def rows(session_factory, destination: str = "his") -> list[OutboxMessage]:
    with unit_of_work(session_factory) as session:
        return list(session.scalars(select(OutboxMessage).where(OutboxMessage.destination == destination)
                                    .order_by(OutboxMessage.id)))


def test_nothing_is_written_without_routes(session_factory, settings):
    place_order(session_factory, settings, "A1")
    mpps(session_factory, "A1", "IN PROGRESS")
    assert rows(session_factory) == []


def test_each_tracked_transition_is_one_row_per_destination(routed, settings):
    place_order(routed, settings, "A1", steps=2, reported=True)
    [scheduled] = rows(routed)                         # placed with a time: SCHEDULED (RAD-3 "SC")
    assert (scheduled.payload["event"], scheduled.payload["procedure_state"], scheduled.payload["procedure"],
            scheduled.cause_kind, scheduled.cause_reference) == ("procedure", "SCHEDULED", "RP-A1", "hl7", "NW-A1")
    assert scheduled.payload["previous_state"] == "ORDERED"
    uid1 = mpps(routed, "A1", "IN PROGRESS", sps=1)
    uid2 = mpps(routed, "A1", "IN PROGRESS", sps=2)    # the order is already in progress: nothing new
    mpps(routed, "A1", "COMPLETED", uid=uid1)          # one step left: the order is still in progress
    mpps(routed, "A1", "COMPLETED", uid=uid2)
    his = rows(routed)[1:]
    assert [r.payload["procedure_state"] for r in his] == ["IN_PROGRESS", "COMPLETED"]   # the procedure's moves
    assert [r.payload["status"] for r in his] == ["IN_PROGRESS", "COMPLETED"]            # the order's status then
    assert [r.payload["procedure_state"] for r in rows(routed, "lab")] == ["SCHEDULED", "IN_PROGRESS", "COMPLETED"]
    first = his[0]
    assert (first.kind, first.status, first.attempts, first.rendered) == (outbox.ORDER_STATUS, OutboxStatus.PENDING,
                                                                         0, None)
    assert first.message_id == outbox.message_id(first.id) and first.order_fk == first.payload["order_id"]
    assert (first.cause_kind, first.cause_reference) == ("mpps", uid1)
    assert first.payload["previous_state"] == "SCHEDULED" and first.payload["step_id"] == "SPS-A1-1"
    assert first.payload["patient"]["name"] == "MÜLLER^ANNA"
    assert his[1].payload["procedures"][0]["steps"][1]["status"] == "COMPLETED"


def test_cancel_discontinue_hold_and_release_are_reported(routed, settings):
    place_order(routed, settings, "A1")
    place_order(routed, settings, "A2")
    mpps(routed, "A2", "IN PROGRESS")
    cause = Cause("hl7", reference="CA-1", message_fk=None)
    with unit_of_work(routed) as session:
        hold_order(session, HoldOrder(OrderRef(placer_order_number="PL-A1")), cause)
        hold_order(session, HoldOrder(OrderRef(placer_order_number="PL-A1"), release=True), cause)
        cancel_order(session, CancelOrder(OrderRef(placer_order_number="PL-A1")), cause)
        cancel_order(session, CancelOrder(OrderRef(placer_order_number="PL-A2"), discontinue=True), cause)
    statuses = [(r.payload["accession_number"], r.payload["status"]) for r in rows(routed)]
    assert statuses == [("A2", "IN_PROGRESS"), ("A1", "HELD"), ("A1", "SCHEDULED"), ("A1", "CANCELLED"),
                        ("A2", "DISCONTINUED")]
    assert rows(routed)[-1].cause_reference == "CA-1"


def test_mpps_discontinued_is_reported(routed, settings):
    place_order(routed, settings, "A1")
    uid = mpps(routed, "A1", "IN PROGRESS")
    mpps(routed, "A1", "DISCONTINUED", uid=uid)
    assert [r.payload["status"] for r in rows(routed)] == ["IN_PROGRESS", "DISCONTINUED"]


def test_rows_are_written_in_the_same_transaction_as_the_change(routed, settings):
    place_order(routed, settings, "A1")
    with pytest.raises(RuntimeError):
        with unit_of_work(routed) as session:
            mpps_in_session(session, "A1")
            assert len(session.scalars(select(OutboxMessage)).all()) == 2   # written...
            raise RuntimeError("the unit of work fails after the change")
    assert rows(routed) == []                                                # ...and rolled back with it
    with unit_of_work(routed) as session:
        assert session.scalars(select(ProcedureStep)).one().status is StepStatus.SCHEDULED


def mpps_in_session(session, accession):
    start_performed_step(session, PerformedStepData(sop_instance_uid="1.2.3.4", status="IN PROGRESS",
                                                    accession_number=accession))


def claim(session_factory, worker: str, destination: str = "his", now: dt.datetime | None = None):
    with unit_of_work(session_factory) as session:
        row = outbox.claim_next(session, destination, worker, lease_s=LEASE, now=now)
        return None if row is None else (row.id, row.status, row.claimed_by, row.attempts)


def two_rows(routed, settings) -> list[int]:
    place_order(routed, settings, "A1")
    uid = mpps(routed, "A1", "IN PROGRESS")
    mpps(routed, "A1", "COMPLETED", uid=uid)
    return [r.id for r in rows(routed)]


def test_claim_is_a_compare_and_set_on_the_head_of_the_destination_queue(routed, settings):
    first, second = two_rows(routed, settings)
    assert claim(routed, "w1") == (first, OutboxStatus.SENDING, "w1", 1)
    assert claim(routed, "w2") is None           # the head is claimed; the next row must not overtake it
    with unit_of_work(routed) as session:        # the claim lost by a racing dispatcher changes nothing
        assert not outbox.record_sent(session, first, "w2")
        assert outbox.record_sent(session, first, "w1", reply=b"ACK")
    assert claim(routed, "w2") == (second, OutboxStatus.SENDING, "w2", 1)
    lab_head = rows(routed, "lab")[0].id
    assert claim(routed, "w1", destination="lab")[0] == lab_head  # another destination has its own queue


def test_an_expired_lease_can_be_claimed_again(routed, settings):
    first, _ = two_rows(routed, settings)
    assert claim(routed, "w1")[0] == first
    later = utcnow() + dt.timedelta(seconds=LEASE + 1)
    assert claim(routed, "w2", now=later) == (first, OutboxStatus.SENDING, "w2", 2)
    with unit_of_work(routed) as session:        # the first dispatcher comes back too late
        assert outbox.record_failure(session, first, "w1", "late", permanent=False, max_attempts=5, backoff_s=1,
                                     backoff_max_s=10) is None


def test_transient_failures_back_off_then_dead_letter(routed, settings):
    first, second = two_rows(routed, settings)
    now = utcnow()
    for attempt in range(1, 4):
        assert claim(routed, "w", now=now)[0] == first
        with unit_of_work(routed) as session:
            status = outbox.record_failure(session, first, "w", f"refused #{attempt}", permanent=False,
                                           max_attempts=3, backoff_s=2, backoff_max_s=5, now=now)
        row = rows(routed)[0]
        if attempt < 3:
            assert status is OutboxStatus.FAILED and row.last_error == f"refused #{attempt}"
            assert row.next_attempt_at == now + dt.timedelta(seconds=min(2 * 2 ** (attempt - 1), 5))
            assert claim(routed, "w", now=now) is None                     # not due yet; the next row waits
            now = row.next_attempt_at
    assert status is OutboxStatus.DEAD and row.last_error == "gave up after 3 attempts; last: refused #3"
    assert claim(routed, "w", now=now)[0] == second                        # a dead letter no longer blocks


def test_permanent_failure_is_dead_at_once_and_retry_requeues(routed, settings):
    first, _ = two_rows(routed, settings)
    claim(routed, "w")
    with unit_of_work(routed) as session:
        assert outbox.record_failure(session, first, "w", "AR: unknown patient", permanent=True, max_attempts=9,
                                     backoff_s=1, backoff_max_s=1, reply=b"MSA|AR") is OutboxStatus.DEAD
    row = rows(routed)[0]
    assert (row.status, row.last_error, row.reply, row.claimed_by) == (OutboxStatus.DEAD, "AR: unknown patient",
                                                                       b"MSA|AR", "")
    with unit_of_work(routed) as session:
        retried = outbox.retry(session, first)
        assert (retried.status, retried.attempts, retried.message_id) == (OutboxStatus.PENDING, 0, row.message_id)
    assert claim(routed, "w")[0] == first                                  # it is the head of its queue again
    with unit_of_work(routed) as session:
        with pytest.raises(Conflict, match="SENDING"):
            outbox.retry(session, first)
        with pytest.raises(NotFound):
            outbox.retry(session, 10_000)


def test_backoff_doubles_up_to_the_cap():
    assert [outbox.backoff(n, 5, 60).total_seconds() for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]
    assert outbox.backoff(10_000, 5, 60).total_seconds() == 60


def test_racing_claims_of_one_row_have_exactly_one_winner(routed, settings):
    first, _ = two_rows(routed, settings)
    racers = 8
    barrier = threading.Barrier(racers, timeout=30)
    won: list = []
    errors: list = []

    def race(worker: str) -> None:
        try:
            barrier.wait()
            result = claim(routed, worker)
            if result is not None:
                won.append(result)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(f"w{n}",)) for n in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(won) == 1 and won[0][0] == first and won[0][3] == 1
    assert rows(routed)[0].claimed_by == won[0][2]
