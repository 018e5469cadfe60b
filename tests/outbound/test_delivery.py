"""Delivery to a real MLLP receiver (the HIS) started by each test on a loopback port: order status feedback
(IHE RAD-3) in order, outages, ACK correlation by MSA-2, dead letters, and dispatchers racing on one database."""

from __future__ import annotations

import dataclasses
import threading
import time

from sqlalchemy import select

from app.commands import Cause
from app.db import unit_of_work
from app.models import OutboxMessage, OutboxStatus
from app.services import outbox
from interfaces.hl7.ack import build_ack
from interfaces.hl7.tokenizer import parse
from interfaces.mllp.server import MLLPServer
from interfaces.outbound.dispatcher import Dispatcher, build_dispatcher, route_destinations
from tests.outbound.conftest import ACK_NOW, drain, mpps, place_order


def outbox_rows(session_factory) -> list[OutboxMessage]:
    with unit_of_work(session_factory) as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


def all_final(session_factory):
    return lambda: all(r.status in (OutboxStatus.SENT, OutboxStatus.DEAD) for r in outbox_rows(session_factory))


def test_in_progress_then_completed_arrive_in_order_as_status_messages(dispatcher, receiver, session_factory,
                                                                       out_settings):
    place_order(session_factory, out_settings, "ACC-1")
    uid = mpps(session_factory, "ACC-1", "IN PROGRESS")
    mpps(session_factory, "ACC-1", "COMPLETED", uid=uid)
    assert drain(dispatcher, lambda: len(receiver.received) >= 2)
    rows = outbox_rows(session_factory)
    assert [r.status for r in rows] == [OutboxStatus.SENT, OutboxStatus.SENT]
    assert receiver.control_ids() == [r.message_id for r in rows]
    assert receiver.statuses() == ["IP", "CM"]
    for msg in receiver.messages:
        assert msg.raw("MSH", 9) == "ORM^O01^ORM_O01"
        assert [msg.value("MSH", n) for n in (3, 4, 5, 6)] == ["RIS", "RADIOLOGY", "HIS", "HOSP"]
        assert msg.raw("ORC", 2) == "PL-ACC-1^HIS" and msg.value("ORC", 1) == "SC"
        assert msg.value("OBR", 18) == "ACC-1" and msg.raw("PID", 3) == "P-1^^^HOSP"
        assert msg.value("PID", 5) == "MÜLLER"
    assert rows[0].reply.startswith(b"MSH|") and b"MSA|AA|" + rows[0].message_id.encode() in rows[0].reply


def test_receiver_down_for_a_while_then_everything_in_order_once(dispatcher, receiver, session_factory, out_settings):
    receiver.stop()
    for n in range(1, 4):
        place_order(session_factory, out_settings, f"ACC-{n}", patient_id=f"P-{n}")
        uid = mpps(session_factory, f"ACC-{n}", "IN PROGRESS")
        mpps(session_factory, f"ACC-{n}", "COMPLETED", uid=uid)
    for _ in range(3):
        dispatcher.run_once()
    rows = outbox_rows(session_factory)
    assert rows[0].status is OutboxStatus.FAILED and rows[0].attempts >= 1 and rows[0].last_error
    assert "connecting to 127.0.0.1" in rows[0].last_error
    assert all(r.status is OutboxStatus.PENDING and r.attempts == 0 for r in rows[1:])   # they wait their turn
    receiver.start()                                                  # back, on the same port
    assert drain(dispatcher, all_final(session_factory))
    rows = outbox_rows(session_factory)
    assert all(r.status is OutboxStatus.SENT for r in rows)
    assert receiver.control_ids() == [r.message_id for r in rows]      # in order, each exactly once
    assert receiver.statuses() == ["IP", "CM"] * 3


def test_a_reply_for_another_message_never_confirms(dispatcher, receiver, session_factory, out_settings):
    place_order(session_factory, out_settings, "ACC-1")
    mpps(session_factory, "ACC-1", "IN PROGRESS")
    receiver.answer = "wrong"                       # AA, but MSA-2 names some other message
    dispatcher.run_once()
    row = outbox_rows(session_factory)[0]
    assert row.status is OutboxStatus.FAILED and row.sent_at is None
    assert "MSA-2 'NOT-" in row.last_error and "not taken as its acknowledgment" in row.last_error
    receiver.answer = "AA"
    assert drain(dispatcher, all_final(session_factory))
    row = outbox_rows(session_factory)[0]
    assert row.status is OutboxStatus.SENT and row.attempts == 2
    assert receiver.control_ids() == [row.message_id] * 2              # the same message, the same control id


def test_rejected_message_is_dead_lettered_and_the_queue_moves_on(dispatcher, receiver, session_factory,
                                                                  out_settings):
    place_order(session_factory, out_settings, "ACC-1")
    uid = mpps(session_factory, "ACC-1", "IN PROGRESS")
    receiver.answer = "AR"
    dispatcher.run_once()
    receiver.answer = "AA"
    mpps(session_factory, "ACC-1", "COMPLETED", uid=uid)
    assert drain(dispatcher, all_final(session_factory))
    dead, sent = outbox_rows(session_factory)
    assert (dead.status, dead.attempts) == (OutboxStatus.DEAD, 1)
    assert dead.last_error == "AR: answer AR on purpose" and b"MSA|AR|" in dead.reply
    assert sent.status is OutboxStatus.SENT and receiver.statuses() == ["IP", "CM"]


def test_negative_ack_is_retried_then_dead_lettered_after_the_last_attempt(dispatcher, receiver, session_factory,
                                                                           out_settings):
    place_order(session_factory, out_settings, "ACC-1")
    mpps(session_factory, "ACC-1", "IN PROGRESS")
    receiver.answer = "AE"
    assert drain(dispatcher, all_final(session_factory))
    row = outbox_rows(session_factory)[0]
    assert (row.status, row.attempts) == (OutboxStatus.DEAD, out_settings.outbox_max_attempts)
    attempts = out_settings.outbox_max_attempts
    assert row.last_error == f"gave up after {attempts} attempts; last: AE: answer AE on purpose"
    assert len(receiver.received) == out_settings.outbox_max_attempts


def test_no_reply_times_out_and_the_message_is_sent_again(receiver, session_factory, out_settings):
    settings = dataclasses.replace(out_settings, outbox_timeout=0.5)
    route_destinations(settings, session_factory)
    dispatcher = build_dispatcher(settings, session_factory)
    try:
        place_order(session_factory, settings, "ACC-1")
        mpps(session_factory, "ACC-1", "IN PROGRESS")
        receiver.answer = "silent"
        dispatcher.run_once()
        row = outbox_rows(session_factory)[0]
        assert row.status is OutboxStatus.FAILED and "timed out" in row.last_error
        receiver.answer = "AA"
        assert drain(dispatcher, all_final(session_factory))
        assert outbox_rows(session_factory)[0].status is OutboxStatus.SENT
    finally:
        dispatcher.close()


def test_connection_is_kept_and_reopened_when_the_peer_closed_it(dispatcher, receiver, session_factory,
                                                                 out_settings):
    place_order(session_factory, out_settings, "ACC-1")
    uid = mpps(session_factory, "ACC-1", "IN PROGRESS")
    assert drain(dispatcher, all_final(session_factory))
    channel = dispatcher.channels[0]
    client = channel._client
    mpps(session_factory, "ACC-1", "COMPLETED", uid=uid)
    place_order(session_factory, out_settings, "ACC-2")
    mpps(session_factory, "ACC-2", "IN PROGRESS")
    assert drain(dispatcher, all_final(session_factory))
    assert channel._client is client and client.connected            # one persistent connection
    receiver.stop()                                                   # the HIS closes idle connections
    receiver.start()
    place_order(session_factory, out_settings, "ACC-3")
    mpps(session_factory, "ACC-3", "IN PROGRESS")
    dispatcher.run_once()
    rows = outbox_rows(session_factory)
    assert [r.status for r in rows] == [OutboxStatus.SENT] * 4 and rows[-1].attempts == 1
    assert receiver.statuses() == ["IP", "CM", "IP", "IP"]


def test_two_dispatchers_racing_never_send_a_row_twice(receiver, session_factory, out_settings):
    route_destinations(out_settings, session_factory)
    orders = 12
    for n in range(orders):
        place_order(session_factory, out_settings, f"ACC-{n}", patient_id=f"P-{n}")
        uid = mpps(session_factory, f"ACC-{n}", "IN PROGRESS")
        mpps(session_factory, f"ACC-{n}", "COMPLETED", uid=uid)
    racers: list[Dispatcher] = [build_dispatcher(out_settings, session_factory) for _ in range(2)]
    for racer in racers:
        racer.batch = 3                               # short turns: the two interleave
    assert racers[0].worker != racers[1].worker
    finished = all_final(session_factory)
    errors: list[BaseException] = []
    done = {racer.worker: 0 for racer in racers}

    def race(dispatcher: Dispatcher) -> None:
        def step() -> bool:
            done[dispatcher.worker] += sum(dispatcher.run_once().values())
            return finished()

        try:
            for _ in range(20_000):                  # bounded: 60 s at most
                if step() or time.monotonic() > deadline:
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    deadline = time.monotonic() + 60

    threads = [threading.Thread(target=race, args=(racer,)) for racer in racers]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    finally:
        for racer in racers:
            racer.close()
    assert not errors and not any(t.is_alive() for t in threads)
    rows = outbox_rows(session_factory)
    assert len(rows) == 2 * orders and all(r.status is OutboxStatus.SENT and r.attempts == 1 for r in rows)
    assert receiver.control_ids() == [r.message_id for r in rows]      # each once, in order
    assert sum(done.values()) == 2 * orders                             # each finished by exactly one of them
    print("rows finished per dispatcher:", sorted(done.values()))


def test_an_unasked_for_ack_on_the_connection_never_confirms_the_next_message(session_factory, out_settings):
    """The receiver answers the first message correctly and then sends, unasked, an AA whose MSA-2 is the control id
    the next message will have: the dispatcher drops that connection before reusing it, so the next message is
    confirmed only by its own answer, on a new connection."""
    seen: list[str] = []

    def handler(event, _peer):
        msg = parse(event.payload.decode("utf-8"))
        seen.append(msg.control_id)
        ack = build_ack(msg, "AA", app="HIS", facility="HOSP", control_id="X", now=ACK_NOW)
        if len(seen) == 1:   # a second frame after the answer: an AA for the message that comes next
            forged = ack.replace(f"MSA|AA|{msg.control_id}", f"MSA|AA|{next_id[0]}")
            return (ack + "\x1c\r\x0b" + forged).encode()
        if len(seen) == 2:
            return None      # the real answer to the second message never comes
        return ack.encode()

    server = MLLPServer(handler, "127.0.0.1", 0)
    server.start()
    settings = dataclasses.replace(out_settings, his_mllp=f"127.0.0.1:{server.port}", outbox_timeout=0.5)
    route_destinations(settings, session_factory)
    dispatcher = build_dispatcher(settings, session_factory)
    try:
        place_order(session_factory, settings, "ACC-1")
        uid = mpps(session_factory, "ACC-1", "IN PROGRESS")
        mpps(session_factory, "ACC-1", "COMPLETED", uid=uid)
        first, second = outbox_rows(session_factory)
        next_id = [second.message_id]
        dispatcher.run_once()
        first, second = outbox_rows(session_factory)
        assert first.status is OutboxStatus.SENT
        assert second.status is OutboxStatus.FAILED and "timed out" in second.last_error   # not the forged AA
        assert drain(dispatcher, all_final(session_factory))
        assert outbox_rows(session_factory)[1].status is OutboxStatus.SENT and seen == [first.message_id,
                                                                                        second.message_id,
                                                                                        second.message_id]
    finally:
        dispatcher.close()
        server.stop(timeout=2)


def test_what_cannot_be_rendered_is_dead_lettered_without_blocking_the_queue(dispatcher, receiver, session_factory,
                                                                             out_settings):
    with unit_of_work(session_factory) as session:
        outbox.enqueue(session, "report.signed", {"text": "no HL7 writer for this"}, Cause("test"))  # no route
        outbox.enqueue(session, "report.signed", {"text": "no HL7 writer for this"}, Cause("test"),
                       destinations=["his"])
        outbox.enqueue(session, outbox.ORDER_STATUS, {"status": "ARRIVED"}, Cause("test"), destinations=["his"])
    place_order(session_factory, out_settings, "ACC-1")
    mpps(session_factory, "ACC-1", "IN PROGRESS")
    assert drain(dispatcher, all_final(session_factory))
    kind, status, ok = outbox_rows(session_factory)
    assert kind.status is OutboxStatus.DEAD and "cannot send 'report.signed'" in kind.last_error
    assert status.status is OutboxStatus.DEAD and "no HL7 table 0038 code" in status.last_error
    assert ok.status is OutboxStatus.SENT and receiver.statuses() == ["IP"]
