"""Images stored before their order are linked when the order arrives (IHE RAD-8 with a late RAD-2)."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from app.db import unit_of_work
from app.models import LinkStatus, Study
from tests.dicom.conftest import archive_datasets, run_dcmtk


def _image(tmp_path=None, **changes):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _links(session_factory) -> dict[str, tuple]:
    with unit_of_work(session_factory) as session:
        return {s.study_instance_uid: (s.link_status, s.order and s.order.accession_number)
                for s in session.scalars(select(Study))}


@pytest.mark.dcmtk
def test_study_before_order_is_linked_when_the_order_arrives(server, place, session_factory, tmp_path):
    early = _image(AccessionNumber="ACC-LATE", PatientID="P-5")
    stranger = _image(AccessionNumber="ACC-LATE", PatientID="P-9")       # same accession, another patient
    path = tmp_path / "early.dcm"
    early.save_as(path)
    result = run_dcmtk("storescu", "-aec", "RIS", "-to", "30", "127.0.0.1", str(server.port), str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    archive_datasets(server.port, stranger)
    assert _links(session_factory)[early.StudyInstanceUID] == (LinkStatus.UNMATCHED, None)

    place("ACC-LATE", patient_id="P-5")

    links = _links(session_factory)
    assert links[early.StudyInstanceUID] == (LinkStatus.LINKED, "ACC-LATE")
    assert links[stranger.StudyInstanceUID] == (LinkStatus.UNMATCHED, None)      # BUG-27 holds


def test_study_before_order_is_linked_by_its_study_uid(server, place, session_factory):
    uid = generate_uid()
    early = _image(AccessionNumber="", PatientID="P-6")
    early.StudyInstanceUID = uid
    archive_datasets(server.port, early)
    place("ACC-UID", patient_id="P-6", study_uid=uid)
    assert _links(session_factory)[uid] == (LinkStatus.LINKED, "ACC-UID")
