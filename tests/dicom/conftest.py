"""Fixtures of the DICOM tests: a started AE on a free loopback port, orders, DCMTK and pynetdicom peers.

DCMTK is called by absolute path (/usr/bin/...): the virtualenv's pynetdicom puts its own findscu/storescu on
PATH. Debian's DCMTK tools get TCP_NODELAY=1 in their environment. Every peer call is bounded in time.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from app.commands import Cause, CodeData, OrderData, OrderRef, PatientData, PlaceOrder, ProcedureData, StepData
from app.db import unit_of_work
from app.services.dispatch import apply_command
from app.storage import ArchiveStore
from interfaces.dicom.server import DicomServer

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
DCMTK = Path("/usr/bin")
TIMEOUT = 60


def corpus_file(*parts: str) -> Path:
    """A corpus file (referenced in place, never copied); skips the test when the corpus is absent."""
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not present at {CORPUS}: corpus test skipped")
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"corpus file missing: {path}")
    return path


def dcmtk(tool: str) -> str:
    path = DCMTK / tool
    if not path.exists():
        pytest.skip(f"DCMTK {tool} not installed at {path}")
    return str(path)


def run_dcmtk(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TCP_NODELAY="1")
    # errors="replace": the tools print received names in their own character set
    return subprocess.run([dcmtk(tool), *args], capture_output=True, text=True, errors="replace", timeout=TIMEOUT,
                          env=env, cwd=cwd)


def dump_to_dataset(dump: Path, out_dir: Path) -> Dataset:
    """A DCMTK dump file (corpus) made binary with dump2dcm and read back with pydicom."""
    target = out_dir / (dump.stem + ".dcm")
    result = run_dcmtk("dump2dcm", str(dump), str(target))
    assert result.returncode == 0, result.stderr
    return dcmread(target)


def nodelay(event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def scu(*contexts, ae_title: str = "TESTSCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for context in contexts:
        if isinstance(context, tuple):
            ae.add_requested_context(*context)
        else:
            ae.add_requested_context(context)
    return ae


def associate(ae: AE, port: int, called: str = "RIS"):
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
    assert assoc.is_established, "association rejected or failed"
    return assoc


@pytest.fixture
def store(settings) -> ArchiveStore:
    return ArchiveStore(settings.archive_path)


@pytest.fixture
def server(settings, session_factory, read_factory, store):
    srv = DicomServer(settings, session_factory, read_factory, store)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def place(session_factory, settings):
    """place(accession, **fields) -> accession: a PlaceOrder through the core's dispatcher."""

    def _place(accession: str, *, patient_id: str = "P-1", name: str = "DOE^JANE", issuer: str = "",
               birth_date: dt.date | None = None, sex: str = "", modality: str = "CT",
               aets: tuple[str, ...] = ("CT_ROOM1",), start: dt.datetime = dt.datetime(2024, 3, 12, 9, 30),
               rp_id: str = "", sps_id: str = "", study_uid: str = "", code: tuple[str, str, str] = ("", "", ""),
               station_name: str = "", step_description: str = "", procedure_description: str = "",
               placer: str = "", priority: str = "", referring: str = "", requesting: str = "",
               reason: str = "", performing: str = "", protocols: tuple[tuple[str, str, str], ...] = (),
               duration: float | None = None) -> str:
        command = PlaceOrder(
            patient=PatientData(patient_id=patient_id, issuer=issuer, name=name, birth_date=birth_date,
                                birth_date_given=birth_date is not None, sex=sex),
            order=OrderData(
                ref=OrderRef(placer_order_number=placer or f"PL-{accession}"), accession_number=accession,
                priority=priority, referring_physician=referring, requesting_physician=requesting, reason=reason,
                procedures=(ProcedureData(
                    requested_procedure_id=rp_id, study_instance_uid=study_uid, code_value=code[0],
                    code_scheme=code[1], code_meaning=code[2], description=procedure_description,
                    steps=(StepData(sps_id=sps_id, modality=modality, scheduled_start=start, station_aets=aets,
                                    station_name=station_name, description=step_description,
                                    performing_physician=performing, expected_duration_minutes=duration,
                                    protocol_codes=tuple(CodeData(*c) for c in protocols)),),
                ),),
            ),
        )
        with unit_of_work(session_factory) as session:
            apply_command(session, command, Cause("test"), uid_root=settings.uid_root)
        return accession

    return _place


def place_from_item(place, item: Dataset) -> str:
    """Schedule an order from a DICOM worklist item (corpus .dump files describe worklists this way)."""
    sps = item.ScheduledProcedureStepSequence[0]
    aets = sps.get("ScheduledStationAETitle", "")
    aets = tuple(aets) if not isinstance(aets, str) else ((aets,) if aets else ())
    date = sps.ScheduledProcedureStepStartDate
    time = (sps.get("ScheduledProcedureStepStartTime") or "000000").ljust(6, "0")[:6]
    return place(item.AccessionNumber, patient_id=item.get("PatientID", "P-X"), name=str(item.get("PatientName", "")),
                 modality=sps.get("Modality", "OT"), aets=aets, study_uid=item.get("StudyInstanceUID", ""),
                 rp_id=item.get("RequestedProcedureID", ""), sps_id=sps.get("ScheduledProcedureStepID", ""),
                 start=dt.datetime.strptime(date + time, "%Y%m%d%H%M%S"))


def findscu(port: int, out_dir: Path, *keys: str, query_file: Path | None = None,
            called: str = "RIS", calling: str = "FINDSCU",
            extra: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, list[Dataset]]:
    """DCMTK findscu -W; responses extracted (-X) into a fresh folder and read back with pydicom."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    args = ["-v", "-W", "-aec", called, "-aet", calling, "-to", "30", "-ta", "30", "-td", "30", "-X",
            "-od", str(out_dir), *extra]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(port)]
    if query_file is not None:
        args.append(str(query_file))
    result = run_dcmtk("findscu", *args)
    return result, [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


def final_status(result: subprocess.CompletedProcess) -> str:
    """The text findscu -v logs for the final C-FIND response, e.g. "Success"."""
    match = re.search(r"Received Final Find Response \(([^)]*)\)", result.stdout + result.stderr)
    assert match, f"no final response in findscu output:\n{result.stdout}\n{result.stderr}"
    return match.group(1)


def accessions(responses) -> list[str]:
    return sorted(str(r.AccessionNumber) for r in responses)


@pytest.fixture
def tmp_out(tmp_path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    yield out
    shutil.rmtree(out, ignore_errors=True)


# Query/retrieve and storage commitment peers -------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on loopback now (the peer binds it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen | None = None, attempts: int = 100) -> None:
    """Poll a loopback port until it accepts (at most ``attempts`` x 0.05 s)."""
    for _ in range(attempts):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"peer exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def storescp(tmp_path):
    """DCMTK storescp (AE STORESCP, every transfer syntax) on a free port, as a C-MOVE destination.

    Yields (port, folder of received files); stopped by its PID. DCMTK 3.6.7 storescp has no bind option: it
    listens on every interface, and the tests reach it on 127.0.0.1 only.
    """
    folder = tmp_path / "storescp"
    folder.mkdir()
    port = free_port()
    env = dict(os.environ, TCP_NODELAY="1")
    proc = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "+xa", "-od", str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        wait_listening(port, proc)
        yield port, folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def received_files(folder: Path) -> list[Dataset]:
    return [dcmread(p) for p in sorted(folder.iterdir()) if p.is_file()]


def archive_datasets(port: int, *datasets: Dataset) -> None:
    """C-STORE each data set into the engine (the real storage path), asserting success."""
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    ae = scu(*[(c, [t]) for c, t in contexts])
    assoc = associate(ae, port)
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
