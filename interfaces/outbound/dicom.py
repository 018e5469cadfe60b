"""Forwarding archived instances to other DICOM nodes by C-STORE (DICOM PS3.4 Annex B as SCU; IHE RAD TF-2
RAD-8/RAD-10 "Image Manager forwards"), from the outbox like the HL7 delivery (DESIGN.md 3, "Out").

The C-STORE handler writes one outbox row (kind ``instance.stored``) per instance and per node of the setting
``dicom_forward`` (never to the AE the instance came from), in the same transaction that indexes it. One
:class:`DicomStoreChannel` per node sends them: ``render`` keeps the reference to the archived instance (the row's
payload, never the image bytes), ``deliver`` reads the file, gives it the patient and order attributes of the
archive index when ``dicom_coerce_on_retrieve`` is on (interfaces.dicom.coercion, as for C-MOVE), and sends it on
an association that is kept open for the rows that follow (a new one when the instance needs a presentation
context the open one lacks, or after :data:`IDLE_S` without use).

Outcomes (PS3.4 B.2.3 statuses of the C-STORE response):

- success, a warning (B000 coercion, B007 data set does not match SOP class, B006 elements discarded), or 0111
  duplicate SOP instance (the node has it): delivered;
- A7xx out of resources, 0110 processing failure, no response, the node down or the association rejected
  transiently or aborted: transient, tried again with back-off;
- A9xx, Cxxx (the node cannot understand it), 0122 SOP class not supported, no accepted presentation context,
  an association rejected permanently, or the archived file gone: permanent (dead letter, visible in the outbox
  API, retried by hand).
"""

from __future__ import annotations

import json
import logging
import time

from pydicom import dcmread
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt

from app.db import unit_of_work
from app.services.archive import study_attributes
from app.storage import ArchiveStore
from interfaces.dicom import coercion
from interfaces.dicom.network import KnownAE, set_tcp_nodelay
from interfaces.outbound.channel import PermanentError, TransientError

log = logging.getLogger("interfaces.outbound.dicom")

FORWARD = "instance.stored"
IDLE_S = 30.0
TIMEOUT_S = 30.0
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_CONVERTIBLE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}
_DELIVERED_WARNINGS = (0xB000, 0xB006, 0xB007, 0x0111)


def destination_name(aet: str) -> str:
    """The outbox destination of a forwarding node."""
    return f"dicom:{aet}"


class DicomStoreChannel:
    """The channel of one forwarding node. Not thread-safe: the dispatcher uses it from one thread at a time."""

    def __init__(self, node: KnownAE, *, calling_aet: str, store: ArchiveStore, read_factory,
                 coerce_on_retrieve: bool = True, timeout: float = TIMEOUT_S) -> None:
        self.node = node
        self.name = destination_name(node.ae_title)
        self.calling_aet = calling_aet
        self.store = store
        self.read_factory = read_factory
        self.coerce_on_retrieve = coerce_on_retrieve
        self.timeout = timeout
        self._assoc = None
        self._contexts: set[tuple[str, str]] = set()
        self._used_at = 0.0

    def render(self, kind: str, payload: dict, message_id: str) -> bytes:
        if kind != FORWARD:
            raise PermanentError(f"destination {self.name} (DICOM C-STORE) cannot send {kind!r} messages")
        missing = [key for key in ("sop_instance_uid", "sop_class_uid", "path") if not payload.get(key)]
        if missing:
            raise PermanentError(f"the outbox row names no {', '.join(missing)}")
        return json.dumps(payload, sort_keys=True).encode("utf-8")

    def deliver(self, data: bytes, message_id: str) -> bytes:
        ref = json.loads(data)
        path = self.store.absolute(ref["path"])
        try:
            ds = dcmread(path)
        except FileNotFoundError:
            raise PermanentError(f"the archived file of {ref['sop_instance_uid']} is gone ({ref['path']})") from None
        except Exception as exc:  # noqa: BLE001 - an unreadable file will not get better by waiting
            raise PermanentError(f"the archived file of {ref['sop_instance_uid']} cannot be read: {exc}") from None
        if self.coerce_on_retrieve and ref.get("study_instance_uid"):
            with unit_of_work(self.read_factory) as session:
                wanted = study_attributes(session, [ref["study_instance_uid"]]).get(ref["study_instance_uid"])
            if wanted is not None:
                coercion.coerce(ds, wanted, reason=coercion.CORRECT, system=self.calling_aet)
        stored_ts = str(ds.file_meta.TransferSyntaxUID)
        assoc = self._association(str(ds.SOPClassUID), stored_ts)
        try:
            status = assoc.send_c_store(ds)
        except Exception as exc:  # noqa: BLE001 - a broken association: try again on a new one
            self.close()
            raise TransientError(f"C-STORE to {self._where()} failed: {type(exc).__name__}: {exc}") from None
        self._used_at = time.monotonic()
        if status is None or "Status" not in status:
            self.close()
            raise TransientError(f"no C-STORE response from {self._where()} (timeout or association aborted)")
        code = int(status.Status)
        reply = f"C-STORE status 0x{code:04X}".encode("ascii")
        if code == 0x0000 or code in _DELIVERED_WARNINGS:
            return reply
        comment = str(status.get("ErrorComment", "") or "")
        reason = f"{self._where()} answered C-STORE 0x{code:04X}" + (f" ({comment})" if comment else "")
        if (code & 0xF000) in (0xA000, 0xC000) and (code & 0xFF00) != 0xA700 or code == 0x0122:
            raise PermanentError(reason, reply)
        raise TransientError(reason, reply)

    def _where(self) -> str:
        return f"{self.node.ae_title} at {self.node.host}:{self.node.port}"

    def _association(self, sop_class: str, stored_ts: str):
        wanted = {(sop_class, ts) for ts in (_UNCOMPRESSED if stored_ts in _CONVERTIBLE else (stored_ts,))}
        fresh = self._assoc is not None and self._assoc.is_established and time.monotonic() - self._used_at < IDLE_S
        if fresh and wanted & self._contexts:
            return self._assoc
        self.close()
        syntaxes = list(_UNCOMPRESSED) if stored_ts in _CONVERTIBLE else [stored_ts]
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        answers: list = []

        def on_acse(event) -> None:
            if getattr(event.primitive, "result", None) is not None:
                answers.append(event.primitive.result)

        try:
            assoc = ae.associate(self.node.host, self.node.port, ae_title=self.node.ae_title,
                                 contexts=[build_context(sop_class, syntaxes)],
                                 evt_handlers=[(evt.EVT_CONN_OPEN, set_tcp_nodelay), (evt.EVT_ACSE_RECV, on_acse)])
        except Exception as exc:  # noqa: BLE001
            raise TransientError(f"cannot associate with {self._where()}: {exc}") from None
        if assoc.is_rejected:
            permanent = bool(answers) and answers[-1] == 0x01              # rejected-permanent, PS3.8 9.3.4
            raise (PermanentError if permanent else TransientError)(
                f"{self._where()} rejected the association ({'permanently' if permanent else 'transiently'})")
        if not assoc.is_established:
            if getattr(assoc, "_rejected_cx", None):
                raise PermanentError(f"{self._where()} accepts no presentation context for SOP class {sop_class} "
                                     f"in {', '.join(syntaxes)}")
            raise TransientError(f"cannot associate with {self._where()} (refused, down or no answer)")
        accepted = {(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts}
        self._assoc, self._contexts, self._used_at = assoc, accepted, time.monotonic()
        return assoc

    def close(self) -> None:
        assoc, self._assoc = self._assoc, None
        self._contexts = set()
        if assoc is not None and assoc.is_established:
            try:
                assoc.release()
            except Exception:  # noqa: BLE001 - the node went away: nothing to release
                assoc.abort()
