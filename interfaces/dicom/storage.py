"""Storage SCP: C-STORE into the archive (DICOM PS3.4 Annex B; IHE RAD TF-2 RAD-8 Modality Images Stored).

The data set is kept exactly as received: the File Meta Information (PS3.10 7.1) is put in front of the
received bytes (``event.encoded_dataset()``); nothing is decoded and re-encoded (unless coercion on store is
configured and changes something). Only the header is parsed (pydicom, ``stop_before_pixels``) to find the
Study, Series and SOP Instance UIDs, the Request Attributes Sequence and the values the archive index needs.

Durable before success, with the device flushes overlapping: the bytes are written under a temporary name
next to their place (app.storage.ArchiveStore.stage); one unit of work checks the instance against the archive,
renames the file into place, indexes and links it (app.services.archive: the next image of a series by one
INSERT, anything else through index_instance) and, when forwarding is configured, writes one outbox row per
destination; it is committed by the server's group committer (app.group_commit), so the stores of concurrent
associations share one commit. While it runs, this thread fsyncs the file's data and, once it is renamed, its
folder. Success (0000) is answered only when the file, its name and the index entry are durable.
PS3.4 B.2.3 statuses come from interfaces.dicom.statuses:

- unreadable data set, or Study/Series/SOP Instance UID missing: failure, nothing written, nothing indexed;
- the archive cannot take the file (StorageError): A700 out of resources, nothing indexed;
- indexing fails: the file is removed again (unless an earlier copy of the same instance is indexed at that
  path), failure status, nothing of the instance in the index;
- a SOP Instance already archived (indexed, file present) follows the setting dicom_resent_instance
  (app.services.archive.ResentPolicy): ``replace`` writes and re-indexes it, ``ignore`` answers success and
  keeps the archived copy, ``reject`` answers 0111 Duplicate SOP Instance; the check comes before the staged
  copy is renamed into place, so a rejected or ignored copy never overwrites the archived file;
- coercion on store (setting dicom_coerce_on_store, interfaces.dicom.coercion) from the order the instance
  links to: B000 "Coercion of data elements" when it changed something.

A failure never ends the association or the server.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.commands import Cause, InstanceData
from app.db import unit_of_work
from app.errors import InvalidInput
from app.group_commit import GroupCommitter, GroupCommitStopped
from app.models import Instance
from app.services import outbox
from app.services.archive import (Claim, ResentPolicy, add_instance, admit_instance, check_identity, find_link,
                                  index_instance, next_instance_of_series, order_attributes, procedure_of)
from app.storage import ArchiveStore, Staged, StorageError
from interfaces.dicom import coercion, statuses

log = logging.getLogger(__name__)

_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_FOLDER_SYNCS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="archive-fsync")   # folders, alongside files
COERCED = 0xB000                       # C-STORE warning "Coercion of data elements", PS3.4 Table B.2-1
FORWARD = "instance.stored"            # outbox kind: an instance to forward (interfaces.outbound.dicom)


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


def _reader(ds: Dataset):
    """``value(keyword, limit)``: the first value of an attribute of ``ds`` as trimmed text ("" when absent or
    empty), looked up by tag (the hot path of every C-STORE: a keyword lookup per attribute costs more than the
    whole header parse)."""

    def value(keyword: str, limit: int = 0) -> str:
        try:
            found = ds[_TAGS[keyword]].value
        except KeyError:
            return ""
        if found is None:
            return ""
        if isinstance(found, (MultiValue, list)):
            found = found[0] if len(found) else ""
        result = str(found).strip().rstrip("\0")
        return result[:limit] if limit else result

    return value


_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientID", "Modality",
             "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
             "ReferringPhysicianName", "StudyDate", "StudyTime", "StudyDescription", "SeriesNumber",
             "SeriesDescription", "InstanceNumber", "RequestedProcedureID", "ScheduledProcedureStepID",
             "TransferSyntaxUID")
_TAGS = {keyword: tag_for_keyword(keyword) for keyword in _KEYWORDS}


def instance_data(ds: Dataset, *, calling_aet: str = "", affected_sop_uid: str = "",
                  sop_class_uid: str = "") -> InstanceData:
    """What the archive index needs from a header; InvalidInput naming a missing identifying UID."""
    text = _reader(ds)
    if not any(text(keyword) for keyword in (*_REQUIRED, "SOPClassUID", "PatientID", "Modality")):
        raise InvalidInput("the data set cannot be read as a DICOM image: it has none of the identifying "
                           "attributes (Study/Series/SOP Instance UID, SOP Class UID, Patient ID, Modality)",
                           location="SOPInstanceUID")
    for keyword in _REQUIRED:
        if not text(keyword):
            raise InvalidInput(f"{keyword} missing: the instance cannot be filed", location=keyword, missing=True)
    sop_uid = text("SOPInstanceUID")
    if affected_sop_uid and sop_uid != affected_sop_uid:
        raise InvalidInput("SOPInstanceUID differs from the Affected SOP Instance UID", location="SOPInstanceUID")
    meta = getattr(ds, "file_meta", None)
    requests = ds.get("RequestAttributesSequence") or []
    request = _reader(requests[0] if len(requests) else Dataset())
    return InstanceData(
        study_instance_uid=text("StudyInstanceUID"),
        series_instance_uid=text("SeriesInstanceUID"),
        sop_instance_uid=sop_uid,
        sop_class_uid=text("SOPClassUID") or sop_class_uid,
        path="",
        size=0,
        transfer_syntax_uid=_reader(meta)("TransferSyntaxUID") if meta is not None else "",
        patient_id=text("PatientID", 64),
        issuer=text("IssuerOfPatientID", 64),
        patient_name=text("PatientName", 324),
        patient_birth_date=text("PatientBirthDate", 8),
        patient_sex=text("PatientSex", 16),
        accession_number=(text("AccessionNumber") or request("AccessionNumber"))[:16],
        study_id=text("StudyID", 16),
        referring_physician=text("ReferringPhysicianName", 324),
        study_date=text("StudyDate", 8),
        study_time=text("StudyTime", 16),
        study_description=text("StudyDescription", 64),
        modality=text("Modality", 16),
        series_number=text("SeriesNumber", 12),
        series_description=text("SeriesDescription", 64),
        instance_number=text("InstanceNumber", 12),
        calling_aet=calling_aet[:16],
        requested_procedure_id=request("RequestedProcedureID", 64),
        sps_id=request("ScheduledProcedureStepID", 64),
    )


@dataclass
class StorageContext:
    """What the C-STORE handler works with (built once by interfaces.dicom.server)."""

    session_factory: object
    read_factory: object
    store: ArchiveStore
    policy: ResentPolicy = ResentPolicy.REPLACE
    committer: GroupCommitter | None = None
    forward_to: tuple[str, ...] = ()
    coerce_on_store: bool = False
    aet: str = "RIS"


def handle_store(event, context: StorageContext) -> int | Dataset:
    """EVT_C_STORE: :func:`store_instance` of the received bytes."""
    try:
        encoded = event.encoded_dataset()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        return statuses.from_error(exc, statuses.C_STORE)
    request = event.request
    return store_instance(context, encoded, calling_aet=event.assoc.requestor.ae_title,
                          affected_sop_uid=str(request.AffectedSOPInstanceUID or ""),
                          sop_class_uid=str(request.AffectedSOPClassUID or ""))


def store_instance(context: StorageContext, encoded: bytes, *, calling_aet: str = "", affected_sop_uid: str = "",
                   sop_class_uid: str = "") -> int | Dataset:
    """Archive one Part 10 byte string (C-STORE, STOW-RS): stage it, index it while it is fsynced; success only
    when the file (data and name) and the index entry are durable (module docstring). The C-STORE status."""
    store = context.store
    try:
        data = read_instance(encoded, calling_aet=calling_aet, affected_sop_uid=affected_sop_uid,
                             sop_class_uid=sop_class_uid)
        status = statuses.SUCCESS
        if context.coerce_on_store:
            coerced = _coerce_from_order(context, data, encoded)
            if coerced is not None:
                encoded, data, status = coerced[0], coerced[1], COERCED
        relative = store.relative_path(data.study_instance_uid, data.series_instance_uid, data.sop_instance_uid)
        staged = store.stage(relative, encoded)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a status
        return statuses.from_error(exc, statuses.C_STORE)
    data = dataclasses.replace(data, path=relative, size=len(encoded))
    try:
        admitted = _index_while_syncing(context, data, staged)
    except Exception as exc:  # noqa: BLE001
        staged.discard()
        if staged.placed:
            _discard(store, context.read_factory, relative, data.sop_instance_uid)
        return statuses.from_error(exc, statuses.C_STORE)
    if not admitted:
        staged.discard()
        log.info("re-sent %s from %s ignored (already archived)", data.sop_instance_uid, data.calling_aet)
        return statuses.SUCCESS
    log.debug("stored %s (%d bytes) from %s", relative, data.size, data.calling_aet)
    return _coerced_status() if status == COERCED else status


def _coerced_status() -> Dataset:
    ds = Dataset()
    ds.Status = COERCED
    ds.ErrorComment = "patient/order attributes coerced from the order"
    return ds


def _coerce_from_order(context: StorageContext, data: InstanceData, encoded: bytes):
    """(bytes, header) of the instance coerced from the order it links to; None when it links to none or
    already says what the order says."""
    with unit_of_work(context.read_factory) as session:
        finding = find_link(session, Claim.of(data))
        if finding.order is None:
            return None
        proc, step = procedure_of(finding.order, data.study_instance_uid, data.sps_id, data.requested_procedure_id,
                                  (data.modality,) if data.modality else ())
        wanted = order_attributes(finding.order, proc, step)
    coerced = coercion.coerce_encoded(encoded, wanted, reason=coercion.COERCE, system=context.aet)
    if coerced is None:
        return None
    return coerced, read_instance(coerced, calling_aet=data.calling_aet)


def _index_while_syncing(context: StorageContext, data: InstanceData, staged: Staged) -> bool:
    """Index ``data`` while its file is made durable: the device flushes of the file's data (this thread), its
    folder (a helper thread) and the index commit (the group committer) overlap. A new file is named at once
    (:meth:`ArchiveStore.place_new` never replaces a file); one replacing an archived copy only after the checks of
    the unit of work, and its folder is synced after that. True when the instance was indexed, False when it was
    ignored (re-sent, policy ignore). Retried once when a concurrent store created the same study or series first."""
    decided = threading.Event()
    new_file = context.store.place_new(staged)    # no archived file had its name: nothing to protect (or heal)
    folders = [_FOLDER_SYNCS.submit(staged.sync_folder)] if staged.placed else []

    def job(session):
        try:
            series_id = next_instance_of_series(session, data)
            if series_id is not None:        # the next image of a series: one INSERT, no ORM
                _place(context, staged)
                add_instance(session, series_id, data)
            else:
                found = check_identity(session, data)
                if context.policy is not ResentPolicy.REPLACE and not new_file and not admit_instance(
                        session, context.store, data.sop_instance_uid, context.policy, found.instance):
                    return False
                _place(context, staged)
                index_instance(session, data, found)
        finally:
            decided.set()
        destinations = [f"dicom:{aet}" for aet in context.forward_to if aet != data.calling_aet.strip()]
        if destinations:
            outbox.enqueue(session, FORWARD, forward_payload(data),
                           Cause("dicom", reference=data.sop_instance_uid, sender=data.calling_aet),
                           destinations=destinations)
        session.flush()
        return True

    def run_job() -> bool:
        decided.clear()
        future = _submit(context, job)
        future.add_done_callback(lambda _: decided.set())      # also when the job never ran
        if not staged.synced:
            try:
                staged.sync()                # while the index entry is written and committed
            except StorageError as exc:
                errors.append(exc)
        decided.wait()
        if not folders and staged.placed:
            folders.append(_FOLDER_SYNCS.submit(staged.sync_folder))
        return future.result()

    errors: list[StorageError] = []
    try:
        try:
            indexed = run_job()
        except IntegrityError:
            indexed = run_job()
    finally:
        for pending in folders:
            try:
                pending.result()
            except StorageError as exc:
                errors.append(exc)
    if errors:
        raise errors[0]                      # not durable: a failure status, the modality sends it again
    return indexed


def _place(context: StorageContext, staged: Staged) -> None:
    if not staged.placed:
        context.store.place(staged)


def _submit(context: StorageContext, job) -> Future:
    """The job's future: in the server's group commit, or (committer stopped or absent) in a unit of work of its
    own, run here."""
    if context.committer is not None:
        try:
            return context.committer.submit(job)
        except GroupCommitStopped:
            pass
    future: Future = Future()
    try:
        with unit_of_work(context.session_factory) as session:
            future.set_result(job(session))
    except Exception as exc:  # noqa: BLE001 - handed over like the committer's
        future.set_exception(exc)
    return future


def forward_payload(data: InstanceData) -> dict:
    return {"sop_instance_uid": data.sop_instance_uid, "sop_class_uid": data.sop_class_uid,
            "study_instance_uid": data.study_instance_uid, "transfer_syntax_uid": data.transfer_syntax_uid,
            "path": data.path}


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


def bind(context: StorageContext):
    return functools.partial(handle_store, context=context)
