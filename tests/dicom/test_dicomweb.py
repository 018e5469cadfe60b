"""DICOMweb on the archive index (interfaces.dicom.dicomweb; DICOM PS3.18): STOW-RS stores through the C-STORE path,
QIDO-RS searches with the C-FIND matching rules, WADO-RS sends instances, metadata and rendered images."""

from __future__ import annotations

import email.parser
import email.policy
import io
import uuid

import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from app.commands import MergePatient, PatientData, PatientRef
from app.db import unit_of_work
from app.models import LinkStatus, Study
from app.services.patients import merge_patient
from interfaces.runtime import build_wsgi_app
from tests.dicom.conftest import archive_datasets


@pytest.fixture
def client(settings, session_factory, read_factory):
    app = build_wsgi_app(settings, session_factory, read_factory)
    app.testing = True
    return app.test_client()


def ct(study: str, series: str, number: int, **attrs) -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, f"{series}.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    defaults = dict(PatientID="P-W", PatientName="WEB^WANDA", AccessionNumber="ACC-W", StudyDate="20240312",
                    StudyTime="093000", StudyID="7")
    for keyword, value in {**defaults, **attrs}.items():
        setattr(ds, keyword, value)
    return ds


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def stow(client, parts: list[bytes], path="/dicomweb/studies", part_type="application/dicom"):
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    body += f"--{boundary}--\r\n".encode()
    return client.post(path, data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})


def multipart_parts(response) -> list[bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode() + response.data)
    return [part.get_payload(decode=True) for part in message.iter_parts()]


def value(item: dict, tag: str):
    return item[tag].get("Value", [None])[0]


S1 = "1.2.826.0.1.3680043.10.1356.88.1"
S2 = "1.2.826.0.1.3680043.10.1356.88.2"


@pytest.fixture
def stored(client, place):
    place("ACC-W", patient_id="P-W")
    datasets = [ct(S1, f"{S1}.1", 1), ct(S1, f"{S1}.1", 2),
                ct(S2, f"{S2}.1", 1, PatientID="P-V", PatientName="VIEW^VERA", AccessionNumber="ACC-V",
                   StudyDate="20240401", Modality="MR")]
    response = stow(client, [part10(ds) for ds in datasets])
    assert response.status_code == 200, response.json
    return datasets, response


def test_stow_stores_indexes_and_links_like_c_store(stored, session_factory):
    datasets, response = stored
    assert response.mimetype == "application/dicom+json"
    body = response.json
    refs = body["00081199"]["Value"]
    assert [value(r, "00081155") for r in refs] == [ds.SOPInstanceUID for ds in datasets]
    assert value(refs[0], "00081190").endswith(f"/dicomweb/studies/{S1}/series/{S1}.1/instances/{S1}.1.1")
    assert "Value" not in body["00081198"]                                  # nothing failed
    with unit_of_work(session_factory) as session:
        linked = session.scalars(select(Study).where(Study.study_instance_uid == S1)).one()
        assert (linked.link_status, linked.order.accession_number) == (LinkStatus.LINKED, "ACC-W")


def test_qido_studies_with_matching_rules(client, stored):
    [study] = client.get("/dicomweb/studies?PatientID=P-W").json
    assert (value(study, "0020000D"), value(study, "00080050"), value(study, "00201208"),
            value(study, "00080061"), value(study, "00080056")) == (S1, "ACC-W", 2, "CT", "ONLINE")
    assert value(study, "00100010") == {"Alphabetic": "WEB^WANDA"}
    assert value(study, "00081190").endswith(f"/dicomweb/studies/{S1}")
    assert "00080052" not in study and "00080005" not in study
    assert [value(s, "0020000D") for s in client.get("/dicomweb/studies?PatientName=VIEW*").json] == [S2]
    assert [value(s, "0020000D") for s in client.get("/dicomweb/studies?StudyDate=20240315-").json] == [S2]
    assert sorted(value(s, "0020000D") for s in client.get(f"/dicomweb/studies?0020000D={S1},{S2}").json) == [S1, S2]
    assert len(client.get("/dicomweb/studies?limit=1").json) == 1
    assert [value(s, "0020000D") for s in client.get("/dicomweb/studies?limit=1&offset=1").json] == [S2]
    nothing = client.get("/dicomweb/studies?PatientID=NOBODY")
    assert (nothing.status_code, nothing.json) == (200, [])                 # PS3.18 8.3.4.4.1 / CP-2473
    described = client.get("/dicomweb/studies?PatientID=P-W&includefield=StudyDescription").json[0]
    assert "00081030" in described


def test_qido_series_and_instances(client, stored):
    [series] = client.get(f"/dicomweb/studies/{S1}/series").json
    assert (value(series, "0020000E"), value(series, "00080060"), value(series, "00201209")) == (f"{S1}.1", "CT", 2)
    instances = client.get(f"/dicomweb/studies/{S1}/series/{S1}.1/instances").json
    assert [value(i, "00080018") for i in instances] == [f"{S1}.1.1", f"{S1}.1.2"]
    assert [value(s, "0020000E") for s in client.get("/dicomweb/series?Modality=MR").json] == [f"{S2}.1"]
    assert [value(i, "00080018") for i in client.get("/dicomweb/instances?InstanceNumber=2").json] == [f"{S1}.1.2"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("query, location", [("StudyDate=2024-03-12", "StudyDate"), ("Bogus=1", "Bogus"),
                                             ("AccessionNumber=A\\B", "AccessionNumber"), ("limit=ten", "limit")])
def test_qido_malformed_keys_are_400_never_everything(client, stored, query, location):
    response = client.get(f"/dicomweb/studies?{query}")
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    assert response.json["location"] == location


def test_wado_instances_study_and_metadata(client, stored, store):
    datasets, _ = stored
    response = client.get(f"/dicomweb/studies/{S1}/series/{S1}.1/instances/{S1}.1.1",
                          headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200 and response.mimetype == "multipart/related"
    [body] = multipart_parts(response)
    got = dcmread(io.BytesIO(body))
    assert got.SOPInstanceUID == f"{S1}.1.1" and got.PixelData == datasets[0].PixelData
    study = multipart_parts(client.get(f"/dicomweb/studies/{S1}"))
    assert sorted(dcmread(io.BytesIO(p)).SOPInstanceUID for p in study) == [f"{S1}.1.1", f"{S1}.1.2"]
    [meta] = client.get(f"/dicomweb/studies/{S1}/series/{S1}.1/instances/{S1}.1.2/metadata").json
    assert value(meta, "00080018") == f"{S1}.1.2" and value(meta, "00100020") == "P-W"
    assert "7FE00010" not in meta                                           # no pixel data in metadata
    assert len(client.get(f"/dicomweb/studies/{S1}/metadata").json) == 2
    missing = client.get("/dicomweb/studies/1.2.3.4.5")
    assert missing.status_code == 404 and "no study 1.2.3.4.5" in missing.json["detail"]
    assert client.get(f"/dicomweb/studies/{S1}", headers={"Accept": "text/html"}).status_code == 406


def test_wado_rendered_png_and_jpeg(client, stored):
    url = f"/dicomweb/studies/{S1}/series/{S1}.1/instances/{S1}.1.1"
    png = client.get(f"{url}/rendered")
    assert png.mimetype == "image/png"
    assert Image.open(io.BytesIO(png.data)).size == (128, 128)
    jpeg = client.get(f"{url}/frames/1/rendered", headers={"Accept": "image/jpeg"})
    assert jpeg.mimetype == "image/jpeg" and Image.open(io.BytesIO(jpeg.data)).format == "JPEG"
    assert client.get(f"{url}/frames/0/rendered").status_code == 400


def test_wado_sends_the_patient_of_the_index_after_a_merge(client, place, session_factory, server):
    place("ACC-OLD", patient_id="P-OLD", name="OLD^NAME")
    place("ACC-NEW", patient_id="P-NEW", name="NEW^NAME")
    ds = ct(S1, f"{S1}.1", 1, PatientID="P-OLD", PatientName="OLD^NAME", AccessionNumber="ACC-OLD")
    archive_datasets(server.port, ds)
    with unit_of_work(session_factory) as session:
        merge_patient(session, MergePatient(survivor=PatientData(patient_id="P-NEW"),
                                            merged=PatientRef(patient_id="P-OLD")))
    [body] = multipart_parts(client.get(f"/dicomweb/studies/{S1}"))
    got = dcmread(io.BytesIO(body))
    assert (got.PatientID, got.OriginalAttributesSequence[0].ReasonForTheAttributeModification) == ("P-NEW",
                                                                                                  "CORRECT")
    [meta] = client.get(f"/dicomweb/studies/{S1}/metadata").json
    assert value(meta, "00100020") == "P-NEW"
    [found] = client.get("/dicomweb/studies?PatientID=P-NEW").json
    assert value(found, "0020000D") == S1


def test_stow_failures_are_reported_per_instance(client):
    good, other = ct(S1, f"{S1}.1", 1), ct(S2, f"{S2}.1", 1)
    broken = b"not a DICOM file at all"
    response = stow(client, [part10(good), part10(other), broken], path=f"/dicomweb/studies/{S1}")
    assert response.status_code == 202                                     # some stored, some failed
    body = response.json
    assert [value(r, "00081155") for r in body["00081199"]["Value"]] == [good.SOPInstanceUID]
    failed = body["00081198"]["Value"]
    assert [(value(f, "00081155"), value(f, "00081197")) for f in failed] == [(other.SOPInstanceUID, 0xA900),
                                                                             (None, 0xC000)]
    assert value(body, "00081190").endswith(f"/dicomweb/studies/{S1}")
    none = stow(client, [part10(other)], path=f"/dicomweb/studies/{S1}")
    assert none.status_code == 409
    assert client.post("/dicomweb/studies", data=b"x", headers={"Content-Type": "application/dicom"}).status_code == 415
    assert stow(client, [b"{}"], part_type="application/json").status_code == 415


def test_dicomweb_needs_a_user_with_images_when_auth_is_required(settings, session_factory, read_factory):
    import dataclasses

    app = build_wsgi_app(dataclasses.replace(settings, auth_required=True, api_token="t0ken",
                                             api_token_role="scheduler"), session_factory, read_factory)
    app.testing = True
    client = app.test_client()
    assert client.get("/dicomweb/studies").status_code == 401
    assert client.get("/dicomweb/studies", headers={"Authorization": "Bearer t0ken"}).status_code == 403  # no images
