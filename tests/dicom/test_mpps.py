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
