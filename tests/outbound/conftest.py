"""Fixtures of the outbound tests: a real MLLP receiver (the HIS) on a loopback port, orders and MPPS events
through the core's services, and a dispatcher wired from settings as the engine wires it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
import time

import pytest
from sqlalchemy.orm import sessionmaker

from app.commands import (Cause, OrderData, OrderRef, PatientData, PerformedStepData, PlaceOrder, ProcedureData,
                          StepData)
from app.db import unit_of_work
from app.services.dispatch import apply_command
from app.services.tracking import start_performed_step, update_performed_step
from interfaces.hl7.ack import ErrorDetail, build_ack
from interfaces.hl7.tokenizer import parse
from interfaces.mllp.server import MLLPServer
from interfaces.outbound.dispatcher import Dispatcher, build_dispatcher, route_destinations

ACK_NOW = dt.datetime(2026, 12, 3, 12, 0, 0)


class Receiver:
    """The HIS: an MLLP listener that keeps every message it gets and answers each with an ACK.

    ``answer`` is the MSA-1 code (AA, AE, AR, ...), "wrong" (an AA whose MSA-2 names another message) or
    "silent" (no reply at all). ``stop()`` closes the port (connections are refused); ``start()`` opens it
    again on the same port.
    """

    def __init__(self) -> None:
        self.port = 0
        self.answer = "AA"
        self.received: list[str] = []
        self._lock = threading.Lock()
        self._server: MLLPServer | None = None
        self._ids = itertools.count(1)

    def start(self) -> "Receiver":
        self._server = MLLPServer(self._handle, "127.0.0.1", self.port)
        self._server.start()
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=2)
            self._server = None

    def _handle(self, event, _peer) -> bytes | None:
        text = event.payload.decode("utf-8")
        with self._lock:
            self.received.append(text)
            answer = self.answer
        if answer == "silent":
            return None
        msg = parse(text)
        code = "AA" if answer == "wrong" else answer
        errors = [] if code == "AA" else [ErrorDetail("207", f"answer {code} on purpose")]
        ack = build_ack(msg, code, errors=errors, app="HIS", facility="HOSP", control_id=f"HIS{next(self._ids)}",
                        now=ACK_NOW)
        if answer == "wrong":
            ack = ack.replace(f"MSA|AA|{msg.control_id}", f"MSA|AA|NOT-{msg.control_id}")
        return ack.encode("utf-8")

    @property
    def messages(self) -> list:
        with self._lock:
            return [parse(text) for text in self.received]

    def control_ids(self) -> list[str]:
        return [m.control_id for m in self.messages]

    def statuses(self) -> list[str]:
        """ORC-5 of each message received (the first ORC of each)."""
        return [m.value("ORC", 5) for m in self.messages]


@pytest.fixture
def receiver():
    his = Receiver().start()
    yield his
    his.stop()


@pytest.fixture
def out_settings(settings, receiver):
    """Settings with the receiver as the destination "his"; short timeouts and back-off for tests."""
    return dataclasses.replace(settings, his_mllp=f"127.0.0.1:{receiver.port}", outbox_timeout=2.0,
                               outbox_backoff_seconds=0.05, outbox_backoff_max_seconds=0.2, outbox_max_attempts=5,
                               hl7_application="RIS", hl7_facility="RADIOLOGY")


@pytest.fixture
def dispatcher(out_settings, session_factory) -> Dispatcher:
    route_destinations(out_settings, session_factory)
    made = build_dispatcher(out_settings, session_factory)
    yield made
    made.close()


def place_order(session_factory, settings, accession: str, *, patient_id: str = "P-1", name: str = "MÜLLER^ANNA",
                placer: str = "", steps: int = 1, reported: bool = False) -> str:
    """An order placed as the HIS's NW places it (RAD-2), through the core's command dispatcher. Unless
    ``reported``, it is placed by a session without outbox routes (as before the destination was configured): its
    SCHEDULED feedback is not what most of these tests look at."""
    if not reported:
        session_factory = sessionmaker(bind=session_factory.kw["bind"], expire_on_commit=False)
    command = PlaceOrder(
        patient=PatientData(patient_id=patient_id, issuer="HOSP", name=name, birth_date=dt.date(1980, 1, 2),
                            birth_date_given=True, sex="F"),
        order=OrderData(
            ref=OrderRef(placer_order_number=placer or f"PL-{accession}", placer_issuer="HIS"),
            accession_number=accession,
            procedures=(ProcedureData(
                requested_procedure_id=f"RP-{accession}", study_instance_uid="", code_value="CTH",
                code_scheme="L", code_meaning="CT head",
                steps=tuple(StepData(sps_id=f"SPS-{accession}-{n}", modality="CT",
                                     scheduled_start=dt.datetime(2026, 12, 4, 8, 30), station_aets=("CT1",))
                            for n in range(1, steps + 1)),
            ),),
        ),
    )
    with unit_of_work(session_factory) as session:
        apply_command(session, command, Cause("hl7", reference=f"NW-{accession}", sender="HIS^HOSP"),
                      uid_root=settings.uid_root)
    return accession


def mpps(session_factory, accession: str, status: str, *, sps: int = 1, uid: str = "") -> str:
    """An MPPS event as the DICOM adapter applies it (RAD-6 N-CREATE IN PROGRESS, RAD-7 N-SET)."""
    uid = uid or f"1.2.826.0.1.3680043.10.1356.99.{accession.encode().hex()}.{sps}"
    with unit_of_work(session_factory) as session:
        if status == "IN PROGRESS":
            start_performed_step(session, PerformedStepData(
                sop_instance_uid=uid, status=status, accession_number=accession, sps_id=f"SPS-{accession}-{sps}",
                station_aet="CT1", modality="CT"))
        else:
            update_performed_step(session, PerformedStepData(sop_instance_uid=uid, status=status))
    return uid


def drain(dispatcher: Dispatcher, done, *, timeout: float = 15.0, pause: float = 0.05) -> bool:
    """Run the dispatcher until ``done()`` or ``timeout`` seconds (bounded in count and time)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / pause) + 1):
        dispatcher.run_once()
        if done() or time.monotonic() > deadline:
            break
        time.sleep(pause)
    return bool(done())
