"""Linking stored studies to their orders (app.services.archive; IHE RAD-8): accession number, Study Instance UID,
then SPS / Requested Procedure ID of the Request Attributes Sequence; never a guess (BUG-05), never another
patient's order, several studies per order as configured (BUG-27), whatever order the images arrive in."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import select

from app.db import unit_of_work
from app.models import LinkStatus, Study
from interfaces.dicom.server import DicomServer
from tests.corpus import corpus_path
from tests.dicom.conftest import archive_datasets, dump_to_dataset


def image(**changes) -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def request_attributes(**values) -> Sequence:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return Sequence([item])


def links(session_factory) -> dict[str, tuple]:
    with unit_of_work(session_factory) as session:
        return {s.study_instance_uid: (s.link_status, s.order.accession_number if s.order else None, s.link_reason)
                for s in session.scalars(select(Study))}


def test_linked_by_sps_id_when_accession_is_missing(server, place, session_factory):
    place("ACC-SPS", patient_id="P-2", sps_id="SPS-77", rp_id="RP-77")
    ds = image(AccessionNumber="", PatientID="P-2",
               RequestAttributesSequence=request_attributes(ScheduledProcedureStepID="SPS-77"))
    archive_datasets(server.port, ds)
    status, accession, reason = links(session_factory)[ds.StudyInstanceUID]
    assert (status, accession) == (LinkStatus.LINKED, "ACC-SPS")
    assert reason == "linked by scheduled procedure step id SPS-77"


def test_linked_by_requested_procedure_id(server, place, session_factory):
    place("ACC-RP", patient_id="P-3", sps_id="SPS-78", rp_id="RP-78")
    ds = image(AccessionNumber="", PatientID="P-3",
               RequestAttributesSequence=request_attributes(RequestedProcedureID="RP-78"))
    archive_datasets(server.port, ds)
    assert links(session_factory)[ds.StudyInstanceUID][:2] == (LinkStatus.LINKED, "ACC-RP")


def test_sps_id_of_another_patients_order_is_never_linked(server, place, session_factory):
    place("ACC-SPS2", patient_id="P-4", sps_id="SPS-79")
    ds = image(AccessionNumber="", PatientID="P-OTHER",
               RequestAttributesSequence=request_attributes(ScheduledProcedureStepID="SPS-79"))
    archive_datasets(server.port, ds)
    status, accession, reason = links(session_factory)[ds.StudyInstanceUID]
    assert (status, accession) == (LinkStatus.UNMATCHED, None)
    assert "of patient P-4; the study is of patient P-OTHER" in reason


def test_late_order_links_a_study_by_its_sps_id(server, place, session_factory):
    ds = image(AccessionNumber="", PatientID="P-5",
               RequestAttributesSequence=request_attributes(ScheduledProcedureStepID="SPS-LATE"))
    archive_datasets(server.port, ds)
    assert links(session_factory)[ds.StudyInstanceUID][0] is LinkStatus.UNMATCHED
    place("ACC-LATE-SPS", patient_id="P-5", sps_id="SPS-LATE")
    assert links(session_factory)[ds.StudyInstanceUID][:2] == (LinkStatus.LINKED, "ACC-LATE-SPS")


@pytest.mark.dcmtk
def test_bug05_image_without_accession_stays_unmatched_although_everything_else_fits(server, place,
                                                                                     session_factory, tmp_path):
    """BUG-05: patient, modality and date fit the order, but nothing identifies it: no silent guess."""
    place("ACC-5005", patient_id="P-1005", name="TESTWALKIN^EPSILON", modality="DX", sps_id="SPS-ACC-5005",
          rp_id="RP-ACC-5005", start=dt.datetime(2024, 3, 11, 9, 0))
    ds = dump_to_dataset(corpus_path("bugs", "bug05_step2_image_without_accession.dump"), tmp_path)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    archive_datasets(server.port, ds)
    status, accession, reason = links(session_factory)["1.2.826.0.1.3680043.10.999.5.1"]
    assert (status, accession) == (LinkStatus.UNMATCHED, None)
    assert reason == "the study has no accession number; no order has its study instance UID"


# BUG-27 ----------------------------------------------------------------------------------------------------------
def _bug27():
    case = json.loads(corpus_path("bugs", "bug27_two_studies_same_accession.json").read_text())
    return case["stored_studies"]


@pytest.fixture(params=["link-all", "flag"])
def policy_server(request, settings, session_factory, read_factory, store):
    srv = DicomServer(dataclasses.replace(settings, dicom_accession_studies=request.param), session_factory,
                      read_factory, store)
    srv.start()
    yield request.param, srv
    srv.stop()


@pytest.mark.parametrize("arrival", ["as listed", "reversed"])
def test_bug27_several_studies_for_one_accession(policy_server, place, session_factory, arrival):
    policy, srv = policy_server
    place("ACC-5027", patient_id="P-1027", study_uid="1.2.826.0.1.3680043.10.999.27")
    studies = _bug27() if arrival == "as listed" else list(reversed(_bug27()))
    for study in studies:
        archive_datasets(srv.port, image(StudyInstanceUID=study["StudyInstanceUID"], PatientID=study["PatientID"],
                                         AccessionNumber=study["AccessionNumber"], Modality=study["Modality"]))
    found = links(session_factory)
    own, second, stranger = (found[s["StudyInstanceUID"]] for s in _bug27())
    assert own[:2] == (LinkStatus.LINKED, "ACC-5027")                       # the order's own Study Instance UID
    if policy == "link-all":
        assert second[:2] == (LinkStatus.LINKED, "ACC-5027")
    else:
        assert second[:2] == (LinkStatus.AMBIGUOUS, None)
        assert "link by hand" in second[2]
    for linked in (own, second):   # the ambiguity is surfaced on both studies, naming both
        assert "several studies for order ACC-5027 (2: 1.2.826.0.1.3680043.10.999.27, " \
               "1.2.826.0.1.3680043.10.999.27.9)" in linked[2]
    assert stranger[:2] == (LinkStatus.UNMATCHED, None)                     # another patient: never linked
    assert "of patient P-1027; the study is of patient P-9999" in stranger[2]


def test_bug27_studies_before_the_order_give_the_same_outcome(policy_server, place, session_factory):
    policy, srv = policy_server
    for study in _bug27():
        archive_datasets(srv.port, image(StudyInstanceUID=study["StudyInstanceUID"], PatientID=study["PatientID"],
                                         AccessionNumber=study["AccessionNumber"], Modality=study["Modality"]))
    place("ACC-5027", patient_id="P-1027", study_uid="1.2.826.0.1.3680043.10.999.27")
    found = links(session_factory)
    own, second, stranger = (found[s["StudyInstanceUID"]] for s in _bug27())
    assert own[:2] == (LinkStatus.LINKED, "ACC-5027")
    assert second[0] is (LinkStatus.LINKED if policy == "link-all" else LinkStatus.AMBIGUOUS)
    assert stranger[:2] == (LinkStatus.UNMATCHED, None)


def test_flag_policy_without_the_orders_own_study_links_none(settings, session_factory, read_factory, store, place):
    """Two studies claim an order by accession only: under ``flag`` neither is linked, whichever came first."""
    srv = DicomServer(dataclasses.replace(settings, dicom_accession_studies="flag"), session_factory, read_factory,
                      store)
    srv.start()
    try:
        place("ACC-TWO", patient_id="P-8")
        first, second = image(AccessionNumber="ACC-TWO", PatientID="P-8"), image(AccessionNumber="ACC-TWO",
                                                                                PatientID="P-8")
        archive_datasets(srv.port, first)
        assert links(session_factory)[first.StudyInstanceUID][0] is LinkStatus.LINKED    # alone: linked
        archive_datasets(srv.port, second)
    finally:
        srv.stop()
    found = links(session_factory)
    assert [found[first.StudyInstanceUID][0], found[second.StudyInstanceUID][0]] == [LinkStatus.AMBIGUOUS] * 2
