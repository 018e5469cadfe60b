"""The recovery job when two engines share one database: every unfinished message is claimed by exactly one of them
(compare-and-set) and applied once; a claim is a lease that a dead recoverer leaves to the next one."""

from __future__ import annotations

import datetime as dt
import threading

from sqlalchemy import func, select

from app.db import make_engine, make_session_factory, unit_of_work
from app.models import InboundMessage, MessageStatus, Order, utcnow
from app.services import messages as store
from interfaces.hl7.intake import HL7Intake
from interfaces.scheduler.jobs import recover_unfinished_messages
from mappings.profile import ProfileSet
from tests.test_intake import orm

COUNT = 30


def _stored(session_factory, count: int) -> list[int]:
    """``count`` orders stored as the MLLP listener stores them, but never applied (the engine died)."""
    ids = []
    with unit_of_work(session_factory) as session:
        for n in range(count):
            raw = orm("NW", f"REC-{n}", placer=f"REC-PL-{n}", accession=f"REC-ACC-{n}", pid=f"REC-PAT-{n}")
            ids.append(store.store_received(session, raw, transport="mllp", peer="test",
                                            received_at=utcnow() - dt.timedelta(minutes=5)).id)
    return ids


def test_two_recoverers_apply_each_unfinished_message_once(settings, db_url, engine, session_factory):
    ids = _stored(session_factory, COUNT)
    engines = [make_engine(db_url) for _ in range(2)]       # two engine processes: their own pools and sessions
    try:
        intakes = [HL7Intake(settings, make_session_factory(e), ProfileSet(settings.mappings_path).get("default"))
                   for e in engines]
        start, results, errors = threading.Barrier(2, timeout=30), {}, []

        def run(index: int) -> None:
            try:
                start.wait()
                results[index] = recover_unfinished_messages(intakes[index].factory, intakes[index], older_than_s=0,
                                                             limit=COUNT, worker=f"engine-{index}")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == [] and not any(t.is_alive() for t in threads)
    finally:
        for e in engines:
            e.dispose()
    assert results[0] + results[1] == COUNT
    with unit_of_work(session_factory) as session:
        rows = session.scalars(select(InboundMessage).where(InboundMessage.id.in_(ids))).all()
        assert {(m.status, m.ack_code, m.attempts) for m in rows} == {(MessageStatus.PROCESSED, "AA", 1)}
        assert {m.claimed_by for m in rows} <= {"engine-0", "engine-1"}
        assert session.scalar(select(func.count(Order.id))) == COUNT


def test_a_claim_is_a_lease(settings, session_factory):
    intake = HL7Intake(settings, session_factory, ProfileSet(settings.mappings_path).get("default"))
    live, dead = _stored(session_factory, 2)
    with unit_of_work(session_factory) as session:
        assert store.claim(session, live, "busy-engine", lease_s=600)
        assert store.claim(session, dead, "dead-engine", lease_s=600, now=utcnow() - dt.timedelta(hours=1))
        assert not store.claim(session, live, "me", lease_s=600)        # taken: the compare-and-set fails
    assert recover_unfinished_messages(session_factory, intake, older_than_s=0, worker="me") == 1
    with unit_of_work(session_factory) as session:
        assert session.get(InboundMessage, dead).status is MessageStatus.PROCESSED
        assert session.get(InboundMessage, dead).claimed_by == "me"
        assert session.get(InboundMessage, live).status is MessageStatus.RECEIVED
        assert session.get(InboundMessage, live).claimed_by == "busy-engine"
