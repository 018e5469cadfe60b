"""The engine's main job, end to end, on real input and real clients over loopback:

`python -m interfaces serve` runs as its own process; an order arrives over MLLP; DCMTK findscu
sees it in the worklist; storescu sends an image made from pydicom's CT_small.dcm with the
order's accession number and patient id; the JSON API shows the order with the linked study.
Then SIGTERM stops the engine cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from interfaces.mllp.client import MLLPClient
from tests.corpus import REPO, corpus_path

DCMTK = Path("/usr/bin")
OWN_ORDER = (
    "MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|E2E-1|P|2.3.1\r"
    "PID|||E2E-PAT-1^^^HOSP||ENDTOEND^ERIKA||19750505|F\r"
    "ORC|NW|E2E-PL-1^HIS|||||^^^20261204083000\r"
    "OBR|1|E2E-PL-1^HIS||CTCH^CT chest^L||||||||||||||E2E-ACC-1|E2E-RP-1|E2E-SPS-1||||CT\r"
).encode("ascii")
# Every ORM^O01 NW imaging order of the corpus (SOURCES.md), with the patient id it names.
CORPUS_ORDERS = {
    "orm_o01_v231_dcm4che_ihe_obr18_zds.hl7": "583295",
    "orm_o01_v231_openmrs_nw_zds_routine.hl7": "100-07",
    "orm_o01_v22_hapi_nw_no_filler_lf.hl7": "N00829",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def engine(tmp_path, db_url):
    ports = {"RIS_MLLP_PORT": free_port(), "RIS_DICOM_PORT": free_port(), "RIS_HTTP_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "RIS_DATA_DIR": str(tmp_path / "data"),
           "RIS_DATABASE_URL": db_url, "RIS_HOST": "127.0.0.1", "RIS_DICOM_AET": "RISTEST",
           "RIS_SITE_TIMEZONE": "Europe/Berlin", "PYTHONUNBUFFERED": "1",
           "RIS_HL7_PROCESSING_IDS": "P,D"}  # the 1994 HAPI order says MSH-11 D (debugging): applied here like P
    log = open(tmp_path / "engine.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "interfaces", "serve"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            http_json(ports["RIS_HTTP_PORT"], "/health")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"engine did not start:\n{log.read()}")
            time.sleep(0.2)
    yield {"proc": proc, "log": log, "mllp": ports["RIS_MLLP_PORT"], "dicom": ports["RIS_DICOM_PORT"],
           "http": ports["RIS_HTTP_PORT"], "archive": tmp_path / "data" / "archive"}
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    log.close()


def findscu(port: int, out: Path, *keys: str) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = [str(DCMTK / "findscu"), "-W", "-aec", "RISTEST", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    run = subprocess.run(args + ["127.0.0.1", str(port)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TCP_NODELAY": "1"}, cwd=out)
    assert run.returncode == 0, run.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def storescu(port: int, path: Path) -> None:
    run = subprocess.run([str(DCMTK / "storescu"), "-aec", "RISTEST", "127.0.0.1", str(port), str(path)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"})
    assert run.returncode == 0 and "Failed" not in run.stderr, run.stderr


def run_main_job(engine, tmp_path: Path, order: bytes, patient_id: str, start: str | None = None) -> None:
    with MLLPClient("127.0.0.1", engine["mllp"], timeout=30) as client:
        ack = client.send(order).decode("latin-1")
    assert "MSA|AA|" in ack or "MSA|CA|" in ack, ack  # CA: the sender asked for an accept ACK (MSH-15)

    orders = http_json(engine["http"], f"/api/orders?patient_id={urllib.request.quote(patient_id)}")["orders"]
    assert len(orders) == 1
    accession = orders[0]["accession_number"]
    assert orders[0]["status"] == "SCHEDULED"

    # The modality's view: DCMTK findscu, as a modality queries the worklist.
    [item] = findscu(engine["dicom"], tmp_path / "find", f"AccessionNumber={accession}", "PatientID",
                     "PatientName", "StudyInstanceUID", "ScheduledProcedureStepSequence[0].Modality",
                     "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate")
    assert item.AccessionNumber == accession
    assert item.PatientID == patient_id
    assert item.SpecificCharacterSet
    if start is not None:
        sps = item.ScheduledProcedureStepSequence[0]
        assert (sps.Modality, sps.ScheduledProcedureStepStartDate) == ("CT", start)
    study_uid = item.StudyInstanceUID
    assert study_uid == orders[0]["procedures"][0]["study_instance_uid"]

    # The image as the modality would send it: the worklist's identifiers, new series and instance.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.AccessionNumber, ds.PatientID, ds.StudyInstanceUID = accession, patient_id, study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    image = tmp_path / "image.dcm"
    ds.save_as(image, enforce_file_format=True)
    storescu(engine["dicom"], image)

    [linked] = http_json(engine["http"], f"/api/orders?accession={urllib.request.quote(accession)}")["orders"]
    assert linked["study_instance_uids"] == [study_uid]
    assert linked["studies"][0]["link_status"] == "LINKED"
    assert linked["studies"][0]["series"][0]["instances"] == 1
    stored = list(engine["archive"].rglob("*.dcm"))
    assert len(stored) == 1 and pydicom.dcmread(stored[0]).SOPInstanceUID == ds.SOPInstanceUID


def stop(engine) -> str:
    engine["proc"].send_signal(signal.SIGTERM)
    assert engine["proc"].wait(30) == 0
    engine["log"].seek(0)
    return engine["log"].read()


@pytest.mark.dcmtk
def test_main_job_with_own_order(engine, tmp_path):
    run_main_job(engine, tmp_path, OWN_ORDER, "E2E-PAT-1", start="20261204")
    log = stop(engine)
    assert "MLLP (HL7 v2) listening on 127.0.0.1:" in log
    assert "DICOM AE RISTEST listening" in log
    assert "stopped" in log


@pytest.mark.dcmtk
@pytest.mark.corpus
@pytest.mark.parametrize("name", sorted(CORPUS_ORDERS))
def test_main_job_with_corpus_order(engine, tmp_path, name):
    run_main_job(engine, tmp_path, corpus_path("hl7", name).read_bytes(), CORPUS_ORDERS[name])
    stop(engine)


@pytest.mark.dcmtk
def test_unmatched_image_is_kept_and_listed(engine, tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.AccessionNumber = "NO-SUCH-ACC"
    image = tmp_path / "stray.dcm"
    ds.save_as(image, enforce_file_format=True)
    storescu(engine["dicom"], image)
    studies = http_json(engine["http"], "/api/studies?link_status=UNMATCHED")["studies"]
    assert [s["study_instance_uid"] for s in studies] == [ds.StudyInstanceUID]
    assert "NO-SUCH-ACC" in studies[0]["link_reason"]
    stop(engine)


def test_ris_send_prints_the_ack(engine, tmp_path):
    message = tmp_path / "order.hl7"
    message.write_bytes(OWN_ORDER)
    env = {**os.environ, "RIS_MLLP_PORT": str(engine["mllp"])}
    run = subprocess.run([sys.executable, "-m", "interfaces", "send", str(message)], capture_output=True,
                         text=True, timeout=60, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr
    assert "MSA|AA|E2E-1" in run.stdout
    again = subprocess.run([sys.executable, "-m", "interfaces", "send", str(tmp_path / "missing.hl7")],
                           capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert again.returncode != 0
    stop(engine)
