"""MPPS N-CREATE / N-SET over loopback with a pynetdicom SCU (PS3.4 F.7; IHE RAD-6/RAD-7)."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS
from sqlalchemy import select

from app.db import unit_of_work
from app.models import Order, OrderStatus, PerformedStatus, PerformedStep, ProcedureStep, StepStatus
from interfaces.dicom import statuses
from tests.dicom.conftest import associate, scu


@pytest.fixture
def assoc(server):
    association = associate(scu(MPPS), server.port)
    yield association
    association.release()


@pytest.fixture
def order(place):
    return place("ACC-1", patient_id="P-1", rp_id="RP-1", sps_id="SPS-1", study_uid="1.2.826.0.1.3680043.10.999.1")


def create_attrs(accession="ACC-1", sps_id="SPS-1", status="IN PROGRESS", items: int = 1) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "P-1"
    scheduled = []
    for n in range(items):
        item = Dataset()
        item.StudyInstanceUID = "1.2.826.0.1.3680043.10.999.1"
        item.AccessionNumber = accession if n == items - 1 else "UNKNOWN-ACC"
        item.RequestedProcedureID = "RP-1"
        item.ScheduledProcedureStepID = sps_id if n == items - 1 else "NO-SUCH-SPS"
        item.ReferencedStudySequence = Sequence()
        scheduled.append(item)
    ds.ScheduledStepAttributesSequence = Sequence(scheduled)
    ds.PerformedProcedureStepID = "PPS-1"
    ds.PerformedStationAETitle = "CT_ROOM1"
    ds.PerformedStationName = "CT1"
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20240312"
    ds.PerformedProcedureStepStartTime = "093512"
    if status is not None:
        ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = "CT head"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    return ds


def set_attrs(status: str) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240312"
    ds.PerformedProcedureStepEndTime = "101500"
    ds.PerformedSeriesSequence = Sequence()
    return ds


def state(session_factory, sop_uid: str):
    with unit_of_work(session_factory) as session:
        performed = session.scalars(select(PerformedStep).where(PerformedStep.sop_instance_uid == sop_uid)).first()
        step = session.scalars(select(ProcedureStep).where(ProcedureStep.sps_id == "SPS-1")).first()
        order = session.scalars(select(Order).where(Order.accession_number == "ACC-1")).first()
        return (performed and (performed.status, performed.step_fk, performed.started_at, performed.ended_at),
                step and step.status, order and order.status)


def test_create_then_complete(assoc, order, session_factory):
    uid = generate_uid()
    status, _ = assoc.send_n_create(create_attrs(), MPPS, uid)
    assert status.Status == statuses.SUCCESS
    performed, step, order_status = state(session_factory, uid)
    assert performed[0] is PerformedStatus.IN_PROGRESS and performed[1] is not None
    assert performed[2] == dt.datetime(2024, 3, 12, 9, 35, 12)
    assert (step, order_status) == (StepStatus.IN_PROGRESS, OrderStatus.IN_PROGRESS)

    status, _ = assoc.send_n_set(set_attrs("COMPLETED"), MPPS, uid)
    assert status.Status == statuses.SUCCESS
    performed, step, order_status = state(session_factory, uid)
    assert performed[0] is PerformedStatus.COMPLETED and performed[3] == dt.datetime(2024, 3, 12, 10, 15)
    assert (step, order_status) == (StepStatus.COMPLETED, OrderStatus.COMPLETED)

    status, _ = assoc.send_n_set(set_attrs("DISCONTINUED"), MPPS, uid)   # final: may no longer be updated
    assert status.Status == statuses.PROCESSING_FAILURE
    assert status.ErrorID == statuses.MAY_NO_LONGER_BE_UPDATED
    assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert state(session_factory, uid)[0][0] is PerformedStatus.COMPLETED


def test_discontinued(assoc, order, session_factory):
    uid = generate_uid()
    assert assoc.send_n_create(create_attrs(), MPPS, uid)[0].Status == statuses.SUCCESS
    assert assoc.send_n_set(set_attrs("DISCONTINUED"), MPPS, uid)[0].Status == statuses.SUCCESS
    assert state(session_factory, uid)[1:] == (StepStatus.DISCONTINUED, OrderStatus.DISCONTINUED)


def test_duplicate_create_refused(assoc, order, session_factory):
    uid = generate_uid()
    assert assoc.send_n_create(create_attrs(), MPPS, uid)[0].Status == statuses.SUCCESS
    status, _ = assoc.send_n_create(create_attrs(), MPPS, uid)
    assert status.Status == statuses.DUPLICATE_SOP_INSTANCE
    assert "already exists" in status.ErrorComment


def test_unknown_accession_found_by_study_uid(assoc, order, session_factory):
    uid = generate_uid()
    status, _ = assoc.send_n_create(create_attrs(accession="ACC-UNKNOWN", sps_id="SPS-X"), MPPS, uid)
    assert status.Status == statuses.SUCCESS
    with unit_of_work(session_factory) as session:
        performed = session.scalars(select(PerformedStep).where(PerformedStep.sop_instance_uid == uid)).one()
        assert performed.accession_number == "ACC-UNKNOWN" and performed.step.sps_id == "SPS-1"


def test_unknown_accession_recorded_without_step(assoc, order, session_factory):
    uid = generate_uid()
    attrs = create_attrs(accession="ACC-UNKNOWN", sps_id="SPS-X")
    attrs.ScheduledStepAttributesSequence[0].StudyInstanceUID = "1.2.3.999"
    assert assoc.send_n_create(attrs, MPPS, uid)[0].Status == statuses.SUCCESS
    performed, step, order_status = state(session_factory, uid)
    assert performed[1] is None and (step, order_status) == (StepStatus.SCHEDULED, OrderStatus.SCHEDULED)


def test_any_scheduled_step_item_may_match(assoc, order, session_factory):
    uid = generate_uid()
    assert assoc.send_n_create(create_attrs(items=2), MPPS, uid)[0].Status == statuses.SUCCESS
    performed, step, _ = state(session_factory, uid)
    assert performed[1] is not None and step is StepStatus.IN_PROGRESS


def test_set_unknown_instance(assoc):
    status, _ = assoc.send_n_set(set_attrs("COMPLETED"), MPPS, generate_uid())
    assert status.Status == statuses.NO_SUCH_SOP_INSTANCE


@pytest.mark.parametrize("status_value, expected", [
    (None, statuses.MISSING_ATTRIBUTE),
    ("COMPLETED", statuses.INVALID_ATTRIBUTE_VALUE),      # PS3.4 F.7.2.1.2: created IN PROGRESS only
    ("STARTED", statuses.INVALID_ATTRIBUTE_VALUE),
])
def test_create_with_bad_status(assoc, order, status_value, expected):
    status, _ = assoc.send_n_create(create_attrs(status=status_value), MPPS, generate_uid())
    assert status.Status == expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_create_with_bad_start_date(assoc, order):
    attrs = create_attrs()
    attrs.PerformedProcedureStepStartDate = "2024-03-12"
    status, _ = assoc.send_n_create(attrs, MPPS, generate_uid())
    assert status.Status == statuses.INVALID_ATTRIBUTE_VALUE
    assert "PerformedProcedureStepStartDate" in status.ErrorComment


def test_scp_assigns_instance_uid(assoc, order, session_factory, settings):
    status, _ = assoc.send_n_create(create_attrs(), MPPS, None)    # PS3.7 10.1.5.1.4: the SCP assigns it
    assert status.Status == statuses.SUCCESS
    with unit_of_work(session_factory) as session:
        (performed,) = session.scalars(select(PerformedStep)).all()
        assert performed.sop_instance_uid.startswith(settings.uid_root + ".")
        assert performed.status is PerformedStatus.IN_PROGRESS


# Performed series, step status changes in the outbox, MPPS without a worklist item ---------------------------------
def series_item(uid: str, *images: str, description: str = "AXIAL", protocol: str = "HEAD ROUTINE") -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = uid
    item.SeriesDescription = description
    item.ProtocolName = protocol
    item.RetrieveAETitle = "RIS"
    item.OperatorsName = "TECH^TOM"
    item.PerformingPhysicianName = ""
    refs = []
    for sop_uid in images:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = sop_uid
        refs.append(ref)
    item.ReferencedImageSequence = Sequence(refs)
    item.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
    return item


def recorded_series(session_factory, sop_uid: str) -> list[tuple]:
    with unit_of_work(session_factory) as session:
        performed = session.scalars(select(PerformedStep).where(PerformedStep.sop_instance_uid == sop_uid)).one()
        return [(s.series_instance_uid, s.description, s.protocol_name, s.retrieve_aet, s.operator,
                 [tuple(i) for i in s.instances]) for s in performed.series]


def test_performed_series_are_recorded_and_replaced_by_n_set(assoc, order, session_factory):
    uid = generate_uid()
    attrs = create_attrs()
    attrs.PerformedSeriesSequence = Sequence([series_item("1.2.3.1", "1.2.3.1.1")])
    assert assoc.send_n_create(attrs, MPPS, uid)[0].Status == statuses.SUCCESS
    assert recorded_series(session_factory, uid) == [
        ("1.2.3.1", "AXIAL", "HEAD ROUTINE", "RIS", "TECH^TOM", [("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.1")])]
    done = set_attrs("COMPLETED")
    done.PerformedSeriesSequence = Sequence([series_item("1.2.3.1", "1.2.3.1.1", "1.2.3.1.2"),
                                             series_item("1.2.3.2", "1.2.3.2.1", description="CORONAL")])
    assert assoc.send_n_set(done, MPPS, uid)[0].Status == statuses.SUCCESS
    assert [(s[0], s[1], len(s[5])) for s in recorded_series(session_factory, uid)] == [
        ("1.2.3.1", "AXIAL", 2), ("1.2.3.2", "CORONAL", 1)]


def test_performed_series_without_its_uid_is_refused(assoc, order, session_factory):
    attrs = create_attrs()
    broken = series_item("1.2.3.9")
    del broken.SeriesInstanceUID
    attrs.PerformedSeriesSequence = Sequence([broken])
    status, _ = assoc.send_n_create(attrs, MPPS, generate_uid())
    assert status.Status == statuses.MISSING_ATTRIBUTE and "SeriesInstanceUID" in status.ErrorComment
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(PerformedStep)).all() == []


@pytest.fixture
def two_step_order(session_factory, settings):
    from app.commands import Cause, OrderData, OrderRef, PatientData, PlaceOrder, ProcedureData, StepData
    from app.services.dispatch import apply_command

    steps = tuple(StepData(sps_id=f"SPS-2{n}", modality="CT", scheduled_start=dt.datetime(2024, 3, 12, 9, 30 + n))
                  for n in (1, 2))
    command = PlaceOrder(patient=PatientData(patient_id="P-2", name="TWO^STEPS"), order=OrderData(
        ref=OrderRef(placer_order_number="PL-2"), accession_number="ACC-2",
        procedures=(ProcedureData(requested_procedure_id="RP-2", study_instance_uid="1.2.826.0.1.3680043.10.999.2",
                                  steps=steps),)))
    with unit_of_work(session_factory) as session:
        apply_command(session, command, Cause("test"), uid_root=settings.uid_root)


@pytest.fixture
def routed(session_factory):
    from app.services.outbox import ORDER_STATUS, STEP_STATUS, route

    route(session_factory, {ORDER_STATUS: ["his"], STEP_STATUS: ["his"]})


def outbox_rows(session_factory) -> list[tuple]:
    from app.models import OutboxMessage

    def moved(payload: dict, name: str) -> tuple[str, str]:   # step.status: the step's; order.status: the procedure's
        return payload[f"previous_{name}"], payload[name] if name != "state" else payload["procedure_state"]

    with unit_of_work(session_factory) as session:
        return [(m.kind, m.payload["step_id"], *moved(m.payload, "step_status" if m.kind == "step.status" else "state"),
                 m.cause_kind) for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def test_every_step_status_change_goes_to_the_outbox(routed, assoc, two_step_order, session_factory):
    first, second = generate_uid(), generate_uid()
    for uid, sps_id in ((first, "SPS-21"), (second, "SPS-22")):
        attrs = create_attrs(accession="ACC-2", sps_id=sps_id)
        attrs.ScheduledStepAttributesSequence[0].StudyInstanceUID = "1.2.826.0.1.3680043.10.999.2"
        attrs.ScheduledStepAttributesSequence[0].RequestedProcedureID = "RP-2"
        assert assoc.send_n_create(attrs, MPPS, uid)[0].Status == statuses.SUCCESS
    assert assoc.send_n_set(set_attrs("COMPLETED"), MPPS, first)[0].Status == statuses.SUCCESS
    assert assoc.send_n_set(set_attrs("DISCONTINUED"), MPPS, second)[0].Status == statuses.SUCCESS
    assert outbox_rows(session_factory) == [
        ("order.status", "", "ORDERED", "SCHEDULED", "test"),               # placed: the procedure is scheduled
        ("step.status", "SPS-21", "SCHEDULED", "IN_PROGRESS", "mpps"),
        ("order.status", "SPS-21", "SCHEDULED", "IN_PROGRESS", "mpps"),     # the procedure moved (IHE RAD-3)
        ("step.status", "SPS-22", "SCHEDULED", "IN_PROGRESS", "mpps"),      # the procedure's state did not change
        ("step.status", "SPS-21", "IN_PROGRESS", "COMPLETED", "mpps"),
        ("step.status", "SPS-22", "IN_PROGRESS", "DISCONTINUED", "mpps"),
        ("order.status", "SPS-22", "IN_PROGRESS", "COMPLETED", "mpps"),     # its last step ended; one completed
    ]


@pytest.fixture
def client(settings, session_factory, read_factory):
    from interfaces.runtime import build_wsgi_app

    app = build_wsgi_app(settings, session_factory, read_factory)
    app.testing = True
    return app.test_client()


def unknown_item_attrs() -> Dataset:
    """An MPPS for no worklist item (the technologist typed the patient in): no identifier of ours."""
    attrs = create_attrs(accession="", sps_id="")
    item = attrs.ScheduledStepAttributesSequence[0]
    item.StudyInstanceUID = "1.2.3.4.5.6.7"
    item.RequestedProcedureID = ""
    return attrs


@pytest.mark.parametrize("link_when", ["in progress", "completed"])
def test_mpps_without_worklist_item_is_linked_later(routed, assoc, order, client, session_factory, link_when):
    uid = generate_uid()
    assert assoc.send_n_create(unknown_item_attrs(), MPPS, uid)[0].Status == statuses.SUCCESS
    if link_when == "completed":
        assert assoc.send_n_set(set_attrs("COMPLETED"), MPPS, uid)[0].Status == statuses.SUCCESS
    assert state(session_factory, uid)[1:] == (StepStatus.SCHEDULED, OrderStatus.SCHEDULED)

    [waiting] = client.get("/api/reconciliation/performed-steps").json["performed_steps"]
    assert (waiting["sop_instance_uid"], waiting["patient_id"], waiting["modality"]) == (uid, "P-1", "CT")
    [candidate] = waiting["candidates"]
    assert (candidate["accession_number"], candidate["sps_id"], candidate["linkable"]) == ("ACC-1", "SPS-1", True)
    assert "same patient P-1" in candidate["reasons"] and "modality CT matches step SPS-1" in candidate["reasons"]

    response = client.post(f"/api/reconciliation/performed-steps/{uid}/link",
                           json={"step_id": candidate["step_id"], "reason": "patient typed in at the console"})
    assert response.status_code == 200, response.json
    assert response.json["step_sps_id"] == "SPS-1"
    if link_when == "in progress":
        assert state(session_factory, uid)[1:] == (StepStatus.IN_PROGRESS, OrderStatus.IN_PROGRESS)
        assert assoc.send_n_set(set_attrs("COMPLETED"), MPPS, uid)[0].Status == statuses.SUCCESS
    assert state(session_factory, uid)[1:] == (StepStatus.COMPLETED, OrderStatus.COMPLETED)
    assert client.get("/api/reconciliation/performed-steps").json["count"] == 0
    assert [row[:1] + row[3:] for row in outbox_rows(session_factory)] == [
        ("order.status", "SCHEDULED", "test"),
        ("step.status", "IN_PROGRESS", "user"), ("order.status", "IN_PROGRESS", "user"),       # the link
        ("step.status", "COMPLETED", "mpps" if link_when == "in progress" else "user"),
        ("order.status", "COMPLETED", "mpps" if link_when == "in progress" else "user")]
    again = client.post(f"/api/reconciliation/performed-steps/{uid}/link", json={"step_id": candidate["step_id"]})
    assert again.status_code == 409 and "already" in again.json["detail"]


def test_mpps_is_never_linked_to_another_patients_step(assoc, client, place, session_factory):
    place("ACC-9", patient_id="P-9", sps_id="SPS-9")
    uid = generate_uid()
    assert assoc.send_n_create(unknown_item_attrs(), MPPS, uid)[0].Status == statuses.SUCCESS
    response = client.post(f"/api/reconciliation/performed-steps/{uid}/link",
                           json={"sps_id": "SPS-9", "accession_number": "ACC-9"})
    assert response.status_code == 409 and "another patient" in response.json["detail"]
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(PerformedStep.step_fk)).one() is None
