"""Scheduling (app.services.scheduling): an order without a time gets the next free slot of a resource that fits;
the procedure is SCHEDULED exactly once, by the one owner of that transition."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from app.commands import Cause, OrderData, OrderRef, PatientData, PlaceOrder, ProcedureData, StepData, UpdateOrder
from app.db import unit_of_work
from app.errors import Conflict
from app.models import Appointment, AppointmentStatus, Order, ProcedureState
from app.services import lifecycle, scheduling
from app.services.orders import place_order, update_order

ALL_DAY = {d: [["00:00", "24:00"]] for d in scheduling.WEEKDAYS}
CAUSE = Cause("hl7", reference="MSG-1", sender="HIS^HOSP", message_fk=None)


def _room(session_factory, name="CT1", aet="CT_ROOM1", hours=None, **extra):
    with unit_of_work(session_factory) as session:
        scheduling.save_resource(session, scheduling.ResourceData(
            name=name, ae_title=aet, station_name=name, modalities=("CT",), opening_hours=hours or ALL_DAY, **extra))


def _order(accession: str, *procedures: ProcedureData) -> OrderData:
    return OrderData(OrderRef(f"PL-{accession}", "HIS"), accession, procedures=procedures)


def _procedure(rp: str, sps: str, start: dt.datetime | None = None, code: str = "CTH") -> ProcedureData:
    return ProcedureData(rp, "", code_value=code, steps=(StepData(sps, "CT", start),))


def _history(proc) -> list[tuple]:
    return [(h["from"], h["to"]) for h in lifecycle.history_view(proc)]


def test_an_order_without_a_time_is_booked_into_the_next_free_slot(session_factory):
    _room(session_factory, slot_minutes={"CTH": 20})
    with unit_of_work(session_factory) as session:
        order = place_order(session, PlaceOrder(PatientData("P1", name="A^B"), _order("ACC1", _procedure("RP1", "S1"))),
                            CAUSE, uid_root="1.2.3")
        proc, step = order.procedures[0], order.procedures[0].steps[0]
        assert proc.state is ProcedureState.SCHEDULED
        assert _history(proc) == [(None, "ORDERED"), ("ORDERED", "SCHEDULED")]
        assert step.station_aets == ["CT_ROOM1"] and step.station_name == "CT1"
        booking = session.scalars(select(Appointment)).one()
        assert booking.step_fk == step.id and booking.status is AppointmentStatus.BOOKED
        assert booking.end - booking.start == dt.timedelta(minutes=20) and step.scheduled_start == booking.start
        # the next order without a time gets the slot after it
        second = place_order(session, PlaceOrder(PatientData("P2", name="C^D"),
                                                 _order("ACC2", _procedure("RP2", "S2"))), CAUSE, uid_root="1.2.3")
        assert second.procedures[0].steps[0].scheduled_start == booking.end


def test_procedures_added_by_xo_are_booked_and_scheduled_once(session_factory):
    _room(session_factory)
    start = dt.datetime(2026, 12, 7, 9, 0)
    with unit_of_work(session_factory) as session:
        place_order(session, PlaceOrder(PatientData("P1"), _order("ACC1", _procedure("RP1", "S1", start))), CAUSE,
                    uid_root="1.2.3")
    with unit_of_work(session_factory) as session:
        order = update_order(session, UpdateOrder(PatientData("P1"), _order(
            "ACC1", _procedure("RP1", "S1", start), _procedure("RP2", "S2"))), CAUSE, uid_root="1.2.3")
        added = order.procedures[1]
        assert added.state is ProcedureState.SCHEDULED and _history(added) == [(None, "ORDERED"),
                                                                                ("ORDERED", "SCHEDULED")]
        assert _history(order.procedures[0]) == [(None, "ORDERED"), ("ORDERED", "SCHEDULED")]
        assert session.scalars(select(Appointment)).one().step_fk == added.steps[0].id


def test_a_procedure_with_two_steps_is_scheduled_when_the_last_one_is_booked(session_factory):
    _room(session_factory)
    two = ProcedureData("RP1", "", code_value="CTH", steps=(StepData("S1", "CT", None), StepData("S2", "CT", None)))
    with unit_of_work(session_factory) as session:
        order = place_order(session, PlaceOrder(PatientData("P1"), _order("ACC1", two)), CAUSE, uid_root="1.2.3")
        assert _history(order.procedures[0]) == [(None, "ORDERED"), ("ORDERED", "SCHEDULED")]
        first, second = sorted(session.scalars(select(Appointment)).all(), key=lambda a: a.start)
        assert first.end <= second.start          # the second step's slot does not clash with the first's
        assert {first.step_fk, second.step_fk} == {s.id for s in order.procedures[0].steps}


def test_no_free_slot_refuses_the_order_and_keeps_nothing(session_factory):
    _room(session_factory, hours={"mon": []})     # never open
    with pytest.raises(Conflict, match="no free slot for CT CTH within 60 days on CT1"):
        with unit_of_work(session_factory) as session:
            place_order(session, PlaceOrder(PatientData("P1"), _order("ACC1", _procedure("RP1", "S1"))), CAUSE,
                        uid_root="1.2.3")
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Order)).all() == []


def test_the_shipped_example_of_resources_is_valid():
    from pathlib import Path

    from mappings.resources import read_file

    example = Path(__file__).resolve().parent.parent / "mappings" / "resources" / "rooms.yaml.example"
    rooms = read_file(example)
    for room in rooms:
        scheduling.validate_resource(room)
    assert [(r.name, r.ae_title, r.modalities) for r in rooms] == [("CT1", "CT_ROOM1", ("CT",)),
                                                                     ("MR1", "MR_ROOM1", ("MR",))]


def test_a_bad_resources_file_is_refused_with_its_file_line_and_key(tmp_path):
    from mappings.resources import ResourceFileError, read_folder

    (tmp_path / "a.yaml").write_text("resources:\n  - name: CT1\n    modalities: [CT]\n    colour: blue\n")
    with pytest.raises(ResourceFileError, match=r"a.yaml:2: unknown key 'colour'"):
        read_folder(tmp_path)
    (tmp_path / "a.yaml").write_text("rooms: []\n")
    with pytest.raises(ResourceFileError, match=r"a.yaml:1: unknown key 'rooms' \(known: resources\)"):
        read_folder(tmp_path)
    (tmp_path / "a.yaml").write_text("resources:\n  - name: CT1\n    modalities: [CT]\n")
    (tmp_path / "b.yaml").write_text("resources:\n  - name: CT1\n    modalities: [MR]\n")
    with pytest.raises(ResourceFileError, match="resource named more than once: CT1"):
        read_folder(tmp_path)
    assert read_folder(tmp_path / "missing") == []
