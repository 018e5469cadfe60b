"""Storage SCP: C-STORE into the archive (DICOM PS3.4 Annex B; IHE RAD TF-2 RAD-8 Modality Images Stored).

The data set is kept exactly as received: the File Meta Information (PS3.10 7.1) is put in front of the
received bytes (``event.encoded_dataset()``) and the result is written durably with ArchiveStore.write
(fsync before rename). Only the header is parsed (pydicom, ``stop_before_pixels``) to find the Study, Series
and SOP Instance UIDs and the values the archive index needs; nothing is decoded and re-encoded. The instance
is then indexed and linked to its order (app.services.archive.index_instance) in one unit of work. Success
(0000) is answered only after both; PS3.4 B.2.3 statuses come from interfaces.dicom.statuses:

- unreadable data set, or Study/Series/SOP Instance UID missing: failure, nothing written, nothing indexed;
- the archive cannot take the file (StorageError): A700 out of resources, nothing indexed;
- indexing fails after the write: the file is removed again (unless an earlier copy of the same instance is
  indexed at that path), failure status;
- a SOP Instance already archived (indexed, file present) follows the setting dicom_resent_instance
  (app.services.archive.ResentPolicy): ``replace`` writes and re-indexes it, ``ignore`` answers success and
  writes nothing, ``reject`` answers 0111 Duplicate SOP Instance and writes nothing. The check comes before
  the write, so a rejected or ignored copy never overwrites the archived file.

A failure never ends the association or the server.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.commands import InstanceData
from app.db import unit_of_work
from app.errors import InvalidInput
from app.models import Instance
from app.services.archive import ResentPolicy, admit_instance, check_identity, index_instance
from app.storage import ArchiveStore
from interfaces.dicom import statuses
from interfaces.dicom.values import text

log = logging.getLogger(__name__)

_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def read_instance(encoded: bytes, **context) -> InstanceData:
    """The index entry of a Part 10 byte string, from its header only (pixel data are not read).

    InvalidInput when the header cannot be parsed or lacks an identifying UID.
    """
    try:
        return instance_data(dcmread(BytesIO(encoded), stop_before_pixels=True), **context)
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom parses lazily: any error here means "cannot understand"
        raise InvalidInput(f"data set cannot be read: {type(exc).__name__}: {exc}") from None


def instance_data(ds: Dataset, *, calling_aet: str = "", affected_sop_uid: str = "",
                  sop_class_uid: str = "") -> InstanceData:
    """What the archive index needs from a header; InvalidInput naming a missing identifying UID."""
    if not any(text(ds, keyword) for keyword in (*_REQUIRED, "SOPClassUID", "PatientID", "Modality")):
        raise InvalidInput("the data set cannot be read as a DICOM image: it has none of the identifying "
                           "attributes (Study/Series/SOP Instance UID, SOP Class UID, Patient ID, Modality)",
                           location="SOPInstanceUID")
    for keyword in _REQUIRED:
        if not text(ds, keyword):
            raise InvalidInput(f"{keyword} missing: the instance cannot be filed", location=keyword, missing=True)
    sop_uid = text(ds, "SOPInstanceUID")
    if affected_sop_uid and sop_uid != affected_sop_uid:
        raise InvalidInput("SOPInstanceUID differs from the Affected SOP Instance UID", location="SOPInstanceUID")
    meta = getattr(ds, "file_meta", None)
    return InstanceData(
        study_instance_uid=text(ds, "StudyInstanceUID"),
        series_instance_uid=text(ds, "SeriesInstanceUID"),
        sop_instance_uid=sop_uid,
        sop_class_uid=text(ds, "SOPClassUID") or sop_class_uid,
        path="",
        size=0,
        transfer_syntax_uid=text(meta, "TransferSyntaxUID") if meta is not None else "",
        patient_id=text(ds, "PatientID", 64),
        issuer=text(ds, "IssuerOfPatientID", 64),
        patient_name=text(ds, "PatientName", 324),
        patient_birth_date=text(ds, "PatientBirthDate", 8),
        patient_sex=text(ds, "PatientSex", 16),
        accession_number=text(ds, "AccessionNumber"),
        study_id=text(ds, "StudyID", 16),
        referring_physician=text(ds, "ReferringPhysicianName", 324),
        study_date=text(ds, "StudyDate", 8),
        study_time=text(ds, "StudyTime", 16),
        study_description=text(ds, "StudyDescription", 64),
        modality=text(ds, "Modality", 16),
        series_number=text(ds, "SeriesNumber", 12),
        series_description=text(ds, "SeriesDescription", 64),
        instance_number=text(ds, "InstanceNumber", 12),
        calling_aet=calling_aet[:16],
    )


def handle_store(event, session_factory, read_factory, store: ArchiveStore,
                 policy: ResentPolicy = ResentPolicy.REPLACE) -> int | Dataset:
    """EVT_C_STORE: write the received bytes durably, then index; 0000 only after both."""
    relative = ""
    try:
        encoded = event.encoded_dataset()
        request = event.request
        data = read_instance(encoded, calling_aet=event.assoc.requestor.ae_title,
                             affected_sop_uid=str(request.AffectedSOPInstanceUID or ""),
                             sop_class_uid=str(request.AffectedSOPClassUID or ""))
        with unit_of_work(read_factory) as session:
            check_identity(session, data)  # before the file is written: a refused copy overwrites nothing
            if policy is not ResentPolicy.REPLACE and not admit_instance(session, store, data.sop_instance_uid,
                                                                         policy):
                log.info("re-sent %s from %s ignored (already archived)", data.sop_instance_uid, data.calling_aet)
                return statuses.SUCCESS
        relative = store.relative_path(data.study_instance_uid, data.series_instance_uid, data.sop_instance_uid)
        size = store.write(relative, encoded)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        return statuses.from_error(exc, statuses.C_STORE)
    data = dataclasses.replace(data, path=relative, size=size)
    try:
        _index(session_factory, data)
    except Exception as exc:  # noqa: BLE001
        _discard(store, read_factory, relative, data.sop_instance_uid)
        return statuses.from_error(exc, statuses.C_STORE)
    log.debug("stored %s (%d bytes) from %s", relative, size, data.calling_aet)
    return statuses.SUCCESS


def _index(session_factory, data: InstanceData) -> None:
    """One unit of work; retried once when a concurrent store created the same study or series first."""
    for attempt in (1, 2):
        try:
            with unit_of_work(session_factory) as session:
                index_instance(session, data)
            return
        except IntegrityError:
            if attempt == 2:
                raise


def _discard(store: ArchiveStore, read_factory, relative: str, sop_uid: str) -> None:
    """Remove a file whose indexing failed, unless the index already holds this instance at that path."""
    try:
        with unit_of_work(read_factory) as session:
            kept = session.scalars(select(Instance.id).where(Instance.sop_instance_uid == sop_uid,
                                                             Instance.path == relative)).first()
        if kept is None:
            store.delete(relative)
    except Exception:  # noqa: BLE001 - the failure status is answered anyway
        log.exception("could not clean up %s after a failed store", relative)


def bind(session_factory, read_factory, store: ArchiveStore, policy: ResentPolicy = ResentPolicy.REPLACE):
    return functools.partial(handle_store, session_factory=session_factory, read_factory=read_factory,
                             store=store, policy=policy)
