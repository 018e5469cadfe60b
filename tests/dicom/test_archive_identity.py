"""An instance that contradicts the archive is refused before anything is written (review findings 1 and 3):
a study keeps its patient and accession number, a series its study, a SOP instance its series."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from app.db import unit_of_work
from app.models import Instance, LinkStatus, Series, Study
from tests.dicom.conftest import run_dcmtk
from tests.dicom.test_storage import ct_image, files


def send(port, tmp_path, name, **changes) -> str:
    """storescu's log of sending CT_small with ``changes`` (a refusal is a non-zero exit, not an error here)."""
    path, _ = ct_image(tmp_path, name, **changes)
    result = run_dcmtk("storescu", "-v", "-aec", "RIS", "-aet", "MODALITY1", "-to", "30", "127.0.0.1", str(port),
                       str(path))
    return result.stdout + result.stderr


def study_row(session_factory, uid):
    with unit_of_work(session_factory) as session:
        found = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        return (found.patient_id, found.accession_number, found.link_status,
                found.order and found.order.accession_number, len(found.series))


@pytest.mark.dcmtk
def test_later_instance_of_another_patient_is_refused_and_changes_nothing(server, place, session_factory, store,
                                                                            tmp_path):
    place("ACC-R1", patient_id="PAT-R1")
    study, series = generate_uid(), generate_uid()
    first = send(server.port, tmp_path, "a.dcm", AccessionNumber="ACC-R1", PatientID="PAT-R1",
                 StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=generate_uid())
    assert "Received Store Response (Success)" in first
    before = files(store)
    refused = send(server.port, tmp_path, "b.dcm", AccessionNumber="ACC-R1", PatientID="PAT-WRONG",
                   StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=generate_uid())
    assert "Received Store Response (Error: CannotUnderstand)" in refused
    assert files(store) == before
    assert study_row(session_factory, study) == ("PAT-R1", "ACC-R1", LinkStatus.LINKED, "ACC-R1", 1)


@pytest.mark.dcmtk
def test_resent_instance_with_another_patient_does_not_overwrite_the_archived_file(server, place, session_factory,
                                                                                   store, tmp_path):
    place("ACC-R2", patient_id="PAT-R2")
    uids = dict(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    assert "Success" in send(server.port, tmp_path, "a.dcm", AccessionNumber="ACC-R2", PatientID="PAT-R2", **uids)
    [archived] = files(store)
    original = archived.read_bytes()
    refused = send(server.port, tmp_path, "b.dcm", AccessionNumber="ACC-D", PatientID="OTHER-PAT", **uids)
    assert "Received Store Response (Error: CannotUnderstand)" in refused
    assert archived.read_bytes() == original


@pytest.mark.dcmtk
def test_series_of_another_study_is_refused(server, session_factory, store, tmp_path):
    series = generate_uid()
    study_a, study_b = generate_uid(), generate_uid()
    assert "Success" in send(server.port, tmp_path, "a.dcm", StudyInstanceUID=study_a, SeriesInstanceUID=series,
                             SOPInstanceUID=generate_uid())
    refused = send(server.port, tmp_path, "b.dcm", StudyInstanceUID=study_b, SeriesInstanceUID=series,
                   SOPInstanceUID=generate_uid())
    assert "Received Store Response (Error: CannotUnderstand)" in refused
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Study.study_instance_uid)).all() == [study_a]
        [row] = session.scalars(select(Series)).all()
        assert row.study.study_instance_uid == study_a and len(row.instances) == 1
        assert session.scalars(select(Instance)).all()[0].series_fk == row.id


@pytest.mark.dcmtk
def test_instance_naming_a_merged_away_patient_joins_the_surviving_patients_study(server, place, intake,
                                                                                    session_factory, tmp_path):
    from tests.test_intake import a40

    place("ACC-M1", patient_id="P-OLD", issuer="HOSP")
    uids = dict(StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    assert "Success" in send(server.port, tmp_path, "a.dcm", AccessionNumber="ACC-M1", PatientID="P-OLD",
                             SOPInstanceUID=generate_uid(), **uids)
    assert b"MSA|AA" in intake.handle(a40("M-1", survivor="P-NEW", merged="P-OLD"))
    late = send(server.port, tmp_path, "b.dcm", AccessionNumber="ACC-M1", PatientID="P-OLD",
                SOPInstanceUID=generate_uid(), **uids)
    assert "Received Store Response (Success)" in late
    assert study_row(session_factory, uids["StudyInstanceUID"])[:4] == ("P-NEW", "ACC-M1", LinkStatus.LINKED, "ACC-M1")


def test_data_set_without_any_identifying_attribute_is_named_as_such(server, session_factory, store, tmp_path,
                                                                     monkeypatch):
    import pynetdicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    from interfaces.dicom import statuses
    from tests.dicom.conftest import associate, scu

    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)  # the file's bytes as they are
    junk = Dataset()
    junk.ImageComments = "this is a text file, not an image"
    junk.file_meta = FileMetaDataset()
    junk.file_meta.MediaStorageSOPClassUID = CTImageStorage
    junk.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    junk.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "junk.dcm"
    junk.save_as(path, enforce_file_format=True)
    assoc = associate(scu((CTImageStorage, [ExplicitVRLittleEndian])), server.port)
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert status.Status == statuses.UNABLE_TO_PROCESS
    assert "cannot be read as a DICOM image" in status.ErrorComment
    assert files(store) == []
