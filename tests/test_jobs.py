"""The scheduled jobs when two engines share one database (SQLite here, PostgreSQL with RIS_TEST_DATABASE_URL): no-show
marking, stale worklist housekeeping and daily statistics each claim their work, so every procedure, step and day
is handled exactly once; and each does what it should."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from app.commands import Cause, OrderData, OrderRef, PatientData, PlaceOrder, ProcedureData, StepData
from app.db import make_engine, make_session_factory, unit_of_work
from app.models import (Appointment, DailyStatistics, LinkStatus, OrderStatus, OutboxMessage, ProcedureState,
                        ProcedureStep, ProcedureTransition, StepStatus, Study)
from app.services import outbox, scheduling, tracking
from app.services.orders import place_order
from interfaces.scheduler import jobs

ZONE = "Europe/Berlin"
NOW = dt.datetime(2026, 12, 7, 12, 0)          # site-local, a Monday
ALL_DAY = {d: [["00:00", "24:00"]] for d in scheduling.WEEKDAYS}


@pytest.fixture
def job_settings(settings):
    return dataclasses.replace(settings, site_timezone=ZONE, noshow_after_minutes=60,
                               worklist_stale_hours=("SCHEDULED=168", "ARRIVED=24", "UNSCHEDULED=720"))


@pytest.fixture
def wired(session_factory):
    scheduling.configure(session_factory, ZONE)
    outbox.route(session_factory, {outbox.ORDER_STATUS: ["his"]})
    return session_factory


def _place(factory, n: int, start: dt.datetime, *, book: bool = False) -> int:
    command = PlaceOrder(PatientData(f"JOB-PAT-{n}", name="JOB^PATIENT"),
                         OrderData(OrderRef(f"JOB-PL-{n}", "HIS"), f"JOB-{n}", procedures=(
                             ProcedureData(f"JOB-RP-{n}", "", code_value="CTH",
                                           steps=(StepData(f"JOB-SPS-{n}", "CT", None if book else start),)),)))
    with unit_of_work(factory) as session:
        order = place_order(session, command, Cause("hl7", reference=f"NW-{n}"), uid_root="1.2.3")
        if book:   # booked on the room at ``start``
            step = order.procedures[0].steps[0]
            booking = session.scalars(select(Appointment).where(Appointment.step_fk == step.id)).one()
            scheduling.reschedule(session, booking.id, start, Cause("test"))
        return order.procedures[0].id


def _race(db_url: str, run, engines: int = 2) -> list:
    """``run(factory)`` in ``engines`` threads at once, each with its own engine (pool, sessions) on the database."""
    barrier, results, errors = threading.Barrier(engines, timeout=30), [None] * engines, []

    def go(index: int, factory) -> None:
        try:
            barrier.wait()
            results[index] = run(factory)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    made = [make_engine(db_url) for _ in range(engines)]
    factories = [make_session_factory(e) for e in made]
    for factory in factories:
        scheduling.configure(factory, ZONE)
        outbox.route(factory, {outbox.ORDER_STATUS: ["his"]})
    threads = [threading.Thread(target=go, args=(i, f)) for i, f in enumerate(factories)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        for e in made:
            e.dispose()
    assert errors == [] and not any(t.is_alive() for t in threads)
    return results


def _transitions(session, proc_id: int, to: ProcedureState) -> list[ProcedureTransition]:
    return session.scalars(select(ProcedureTransition).where(ProcedureTransition.procedure_fk == proc_id,
                                                             ProcedureTransition.to_state == to)).all()


def test_no_shows_are_marked_once_by_two_engines(wired, job_settings, db_url):
    with unit_of_work(wired) as session:
        scheduling.save_resource(session, scheduling.ResourceData(name="CT1", ae_title="CT_ROOM1",
                                                                  modalities=("CT",), opening_hours=ALL_DAY))
    late = [_place(wired, n, NOW - dt.timedelta(hours=3) + dt.timedelta(minutes=10 * n), book=n % 2 == 0)
            for n in range(8)]
    arrived = _place(wired, 100, NOW - dt.timedelta(hours=2))
    not_yet = _place(wired, 101, NOW - dt.timedelta(minutes=30))
    entered_late = _place(wired, 102, NOW - dt.timedelta(hours=3))    # in the worklist for 20 minutes only
    imaged = _place(wired, 103, NOW - dt.timedelta(hours=3))          # its images came: the patient was here
    with unit_of_work(wired) as session:
        tracking.arrive(session, tracking.find_procedure(session, arrived), Cause("hl7", reference="A10"))
        order = tracking.find_procedure(session, imaged).order
        session.add(Study(study_instance_uid="1.2.3.103", order_fk=order.id, link_status=LinkStatus.LINKED))
    _left_since(wired, late + [imaged], NOW - dt.timedelta(hours=3))
    _left_since(wired, [entered_late], NOW - dt.timedelta(minutes=20))
    marked = _race(db_url, lambda factory: jobs.mark_no_shows(factory, job_settings, now=NOW))
    assert sum(marked) == len(late)
    with unit_of_work(wired) as session:
        for proc_id in late:
            proc = tracking.find_procedure(session, proc_id)
            assert proc.state is ProcedureState.ORDERED and [s.status for s in proc.steps] == [StepStatus.UNSCHEDULED]
            [moved] = _transitions(session, proc_id, ProcedureState.ORDERED)[1:]    # [0] is the order's start
            assert (moved.cause_kind, moved.cause_reference) == ("job", "no-show")
            assert moved.note == "no-show: not arrived 60 minutes after the scheduled time"
        assert tracking.find_procedure(session, arrived).state is ProcedureState.ARRIVED
        assert tracking.find_procedure(session, not_yet).state is ProcedureState.SCHEDULED
        assert [tracking.find_procedure(session, p).state for p in (entered_late, imaged)] == [
            ProcedureState.SCHEDULED] * 2
        bookings = session.scalars(select(Appointment.status)).all()
        assert sorted(b.value for b in bookings) == ["NOSHOW"] * 4
    assert jobs.mark_no_shows(wired, job_settings, now=NOW) == 0                   # nothing left to do
    assert jobs.mark_no_shows(wired, dataclasses.replace(job_settings, noshow_after_minutes=0), now=NOW) == 0


def _left_since(factory, proc_ids, local: dt.datetime) -> None:
    """As if the procedures' steps had last changed at ``local`` (site time)."""
    utc = local.replace(tzinfo=ZoneInfo(ZONE)).astimezone(dt.timezone.utc).replace(tzinfo=None)
    with unit_of_work(factory) as session:
        session.execute(update(ProcedureStep).where(ProcedureStep.procedure_fk.in_(proc_ids)).values(updated_at=utc))


def test_stale_worklist_steps_are_discontinued_once_with_a_delay_per_status(wired, job_settings, db_url):
    old = [_place(wired, n, NOW - dt.timedelta(days=8)) for n in range(6)]             # SCHEDULED > 168 h
    recent = _place(wired, 50, NOW - dt.timedelta(days=3))                              # SCHEDULED < 168 h
    arrived = _place(wired, 51, NOW - dt.timedelta(hours=30))                           # ARRIVED > 24 h
    with unit_of_work(wired) as session:
        tracking.arrive(session, tracking.find_procedure(session, arrived), Cause("hl7", reference="A10"))
    late = _place(wired, 52, NOW - dt.timedelta(days=8))        # sent 3 days ago for a time long past: not stale
    imaged = _place(wired, 53, NOW - dt.timedelta(days=8))      # its images are linked: performed, not stale
    with unit_of_work(wired) as session:
        order = tracking.find_procedure(session, imaged).order
        session.add(Study(study_instance_uid="1.2.3.53", order_fk=order.id, link_status=LinkStatus.LINKED))
    _left_since(wired, old + [imaged], NOW - dt.timedelta(days=8))
    _left_since(wired, [recent], NOW - dt.timedelta(days=3))
    _left_since(wired, [arrived], NOW - dt.timedelta(hours=29))
    _left_since(wired, [late], NOW - dt.timedelta(days=3))
    done = _race(db_url, lambda factory: jobs.discontinue_stale_steps(factory, job_settings, now=NOW))
    assert sum(done) == len(old) + 1
    with unit_of_work(wired) as session:
        assert [tracking.find_procedure(session, p).state for p in (late, imaged)] == [ProcedureState.SCHEDULED] * 2
    with unit_of_work(wired) as session:
        for proc_id in old + [arrived]:
            proc = tracking.find_procedure(session, proc_id)
            assert (proc.state, proc.order.status, proc.steps[0].status) == (
                ProcedureState.DISCONTINUED, OrderStatus.DISCONTINUED, StepStatus.DISCONTINUED)
            [moved] = _transitions(session, proc_id, ProcedureState.DISCONTINUED)
            assert moved.cause_reference == "stale-worklist" and moved.note.startswith("stale in the worklist: ")
        assert tracking.find_procedure(session, recent).state is ProcedureState.SCHEDULED
        feedback = session.scalars(select(OutboxMessage).where(OutboxMessage.cause_reference == "stale-worklist")).all()
        assert sorted(r.payload["procedure"] for r in feedback) == sorted(
            tracking.find_procedure(session, p).requested_procedure_id for p in old + [arrived])   # one DC each
        assert {r.payload["procedure_state"] for r in feedback} == {"DISCONTINUED"}


def test_daily_statistics_are_kept_once_per_day(wired, db_url):
    with unit_of_work(wired) as session:
        today = scheduling.local_now(session).date()
    first = _place(wired, 1, NOW)
    _place(wired, 2, NOW)
    with unit_of_work(wired) as session:
        proc = tracking.find_procedure(session, first)
        tracking.arrive(session, proc, Cause("hl7"))
        tracking.start(session, proc, Cause("user", reference="tech"))
        tracking.complete(session, proc, Cause("user", reference="tech"))
    tomorrow = today + dt.timedelta(days=1)
    kept = _race(db_url, lambda factory: jobs.compute_daily_statistics(factory, worker="w", today=tomorrow,
                                                                       days_back=3))
    assert sorted(kept[0] + kept[1]) == [today - dt.timedelta(days=2), today - dt.timedelta(days=1), today]
    with unit_of_work(wired) as session:
        assert session.scalar(select(func.count(DailyStatistics.id))) == 3
        figures = session.scalars(select(DailyStatistics.figures).where(DailyStatistics.day == today)).one()
        empty = session.scalars(select(DailyStatistics.figures).where(DailyStatistics.day == today - dt.timedelta(
            days=1))).one()
    assert figures["procedures"]["ordered"] == 2 and figures["procedures"]["scheduled"] == 2
    assert (figures["procedures"]["arrived"], figures["procedures"]["in_progress"],
            figures["procedures"]["completed"]) == (1, 1, 1)
    assert figures["completed_by_modality"] == {"CT": 1} and figures["no_shows"] == 0
    assert empty["procedures"]["ordered"] == 0
    assert jobs.compute_daily_statistics(wired, worker="w", today=today + dt.timedelta(days=1), days_back=3) == []
