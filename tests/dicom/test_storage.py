"""C-STORE over loopback: DCMTK storescu and pynetdicom into the archive (PS3.4 Annex B; IHE RAD-8)."""

from __future__ import annotations

import pynetdicom
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import CTImageStorage, MRImageStorage
from sqlalchemy import func, select

from app.db import unit_of_work
from app.models import Instance, LinkStatus, Study
from app.storage import ArchiveStore
from interfaces.dicom import statuses
from interfaces.dicom.server import DicomServer
from tests.dicom.conftest import associate, run_dcmtk, scu

CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"


def ct_image(tmp_path, name="ct.dcm", **changes):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path)
    return path, ds


def study(session_factory, uid=CT_STUDY):
    with unit_of_work(session_factory) as session:
        found = session.scalars(select(Study).where(Study.study_instance_uid == uid)).first()
        return found and (found.link_status, found.order and found.order.accession_number, found.link_reason)


def instances(session_factory) -> list[tuple[str, str, int]]:
    with unit_of_work(session_factory) as session:
        return [(i.sop_instance_uid, i.path, i.size) for i in session.scalars(select(Instance).order_by(Instance.id))]


def files(store) -> list:
    return sorted(p for p in store.root.rglob("*") if p.is_file()) if store.root.exists() else []


def storescu(port, path):
    result = run_dcmtk("storescu", "-v", "-aec", "RIS", "-aet", "MODALITY1", "-to", "30", "127.0.0.1", str(port),
                       str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.mark.dcmtk
def test_storescu_image_is_archived_indexed_and_linked(server, place, session_factory, store, tmp_path):
    place("ACC-7", patient_id="P-7")
    path, sent = ct_image(tmp_path, AccessionNumber="ACC-7", PatientID="P-7")
    assert "Received Store Response (Success)" in storescu(server.port, path)

    ((sop_uid, relative, size),) = instances(session_factory)
    assert sop_uid == sent.SOPInstanceUID
    stored = store.absolute(relative)
    assert stored.exists() and stored.stat().st_size == size
    assert relative == store.relative_path(CT_STUDY, sent.SeriesInstanceUID, sop_uid)
    copy = dcmread(stored)
    assert copy.PixelData == sent.PixelData and copy.AccessionNumber == "ACC-7"
    assert copy.file_meta.MediaStorageSOPInstanceUID == sop_uid
    link_status, accession, _ = study(session_factory)
    assert (link_status, accession) == (LinkStatus.LINKED, "ACC-7")
    with unit_of_work(session_factory) as session:
        assert session.scalars(select(Instance.calling_aet)).one() == "MODALITY1"


@pytest.mark.dcmtk
def test_storescu_image_without_order_is_unmatched(server, place, session_factory, store, tmp_path):
    place("ACC-7", patient_id="P-7")
    path, _ = ct_image(tmp_path, AccessionNumber="ACC-NONE", PatientID="P-9")
    assert "Received Store Response (Success)" in storescu(server.port, path)
    link_status, accession, reason = study(session_factory)
    assert (link_status, accession) == (LinkStatus.UNMATCHED, None)
    assert "ACC-NONE" in reason
    assert len(files(store)) == 1


def test_unwritable_folder_fails_out_of_resources_and_association_goes_on(server, session_factory, store,
                                                                          tmp_path):
    blocked = dcmread(get_testdata_file("CT_small.dcm"))
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / CT_STUDY).write_text("a regular file where the study folder would be")
    other = dcmread(get_testdata_file("CT_small.dcm"))
    other.StudyInstanceUID, other.SOPInstanceUID = generate_uid(), generate_uid()

    assoc = associate(scu(CTImageStorage), server.port)
    try:
        status = assoc.send_c_store(blocked)
        assert status.Status == statuses.OUT_OF_RESOURCES
        assert "cannot write" in status.ErrorComment
        assert instances(session_factory) == [] and study(session_factory) is None
        assert files(store) == [store.root / CT_STUDY]                 # no temporary file left behind
        assert assoc.send_c_store(other).Status == statuses.SUCCESS    # same association, next image
    finally:
        assoc.release()
    assert [i[0] for i in instances(session_factory)] == [other.SOPInstanceUID]


def test_missing_study_uid_is_refused_and_nothing_kept(server, session_factory, store):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    del ds.StudyInstanceUID
    assoc = associate(scu(CTImageStorage), server.port)
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == statuses.UNABLE_TO_PROCESS
    assert "StudyInstanceUID" in status.ErrorComment
    assert instances(session_factory) == [] and files(store) == []


def test_unreadable_data_set_is_refused(server, session_factory, store, tmp_path, monkeypatch):
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)   # send file bytes as they are
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    head = Dataset()
    head.SOPClassUID, head.SOPInstanceUID = ds.SOPClassUID, generate_uid()
    head.file_meta = FileMetaDataset()
    head.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    broken = tmp_path / "broken.dcm"
    head.save_as(broken, enforce_file_format=True)
    with broken.open("ab") as fh:   # a Scheduled Procedure Step Sequence whose "item" is not an item tag
        fh.write(b"\x40\x00\x00\x01SQ\x00\x00\xff\xff\xff\xff" + b"\x11\x11\x11\x11\x08\x00\x00\x00abcdefgh")
    assoc = associate(scu((CTImageStorage, [ExplicitVRLittleEndian])), server.port)
    try:
        status = assoc.send_c_store(broken)
        assert status.Status == statuses.UNABLE_TO_PROCESS
        assert "cannot be read" in status.ErrorComment
        assert files(store) == [] and instances(session_factory) == []
        assert assoc.send_c_store(ds).Status == statuses.SUCCESS        # the association still works
    finally:
        assoc.release()
    assert len(instances(session_factory)) == 1 and len(files(store)) == 1


def test_index_failure_removes_the_file(server, session_factory, store, monkeypatch):
    def broken_index(session, data, found=None):
        raise RuntimeError("index down")

    monkeypatch.setattr("interfaces.dicom.storage.index_instance", broken_index)
    assoc = associate(scu(CTImageStorage), server.port)
    try:
        status = assoc.send_c_store(dcmread(get_testdata_file("CT_small.dcm")))
    finally:
        assoc.release()
    assert status.Status == statuses.PROCESSING_FAILURE
    assert files(store) == [] and instances(session_factory) == []


def test_resent_instance_replaces_entry(server, session_factory, store):
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    assoc = associate(scu(CTImageStorage), server.port)
    try:
        assert assoc.send_c_store(ds).Status == statuses.SUCCESS
        assert assoc.send_c_store(ds).Status == statuses.SUCCESS
    finally:
        assoc.release()
    assert len(instances(session_factory)) == 1 and len(files(store)) == 1


@pytest.mark.parametrize("name, syntax", [("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
                                          ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),
                                          ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2")])
def test_compressed_and_big_endian_bytes_are_kept_as_received(server, session_factory, store, name, syntax):
    source = get_testdata_file(name)
    original = dcmread(source)
    assert original.file_meta.TransferSyntaxUID == syntax
    assoc = associate(scu((MRImageStorage, [syntax])), server.port)
    try:
        assert assoc.send_c_store(source).Status == statuses.SUCCESS
    finally:
        assoc.release()
    ((_, relative, _),) = instances(session_factory)
    stored = dcmread(store.absolute(relative))
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == original.PixelData                    # not decoded, not re-encoded
    with unit_of_work(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1
        assert session.scalars(select(Instance.transfer_syntax_uid)).one() == syntax


def test_archive_under_a_regular_file_fails_out_of_resources(settings, session_factory, read_factory, tmp_path):
    """Tests run as root, where chmod does not stop writes: an archive folder below a regular file does."""
    (tmp_path / "not-a-folder").write_text("x")
    broken_store = ArchiveStore(tmp_path / "not-a-folder" / "archive")
    srv = DicomServer(settings, session_factory, read_factory, broken_store)
    srv.start()
    try:
        assoc = associate(scu(CTImageStorage), srv.port)
        try:
            for _ in range(2):                                          # each answered, association kept
                status = assoc.send_c_store(dcmread(get_testdata_file("CT_small.dcm")))
                assert status.Status == statuses.OUT_OF_RESOURCES
            assert assoc.is_established
        finally:
            assoc.release()
    finally:
        srv.stop()
    assert instances(session_factory) == [] and study(session_factory) is None
