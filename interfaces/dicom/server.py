"""The engine's DICOM Application Entity: one AE, one listening port, a module per service.

Services (SCP role), with the handler that serves each (plain functions bound to their dependencies with
functools.partial, as pynetdicom's apps/qrscp does):

- Verification, C-ECHO (PS3.4 Annex A): answered here;
- Modality Worklist Information Model - FIND, C-FIND (PS3.4 Annex K): interfaces.dicom.worklist;
- Modality Performed Procedure Step, N-CREATE / N-SET (PS3.4 F.7): interfaces.dicom.mpps;
- every Storage SOP Class pynetdicom knows (``AllStoragePresentationContexts``, PS3.4 Annex B), C-STORE:
  interfaces.dicom.storage.

Presentation contexts: on the acceptor side pynetdicom keeps one supported context per abstract syntax
(``AE.add_supported_context`` extends the transfer syntaxes of an existing one) and has no limit on how many
it supports; the 128 limit is on *requested* contexts (an A-ASSOCIATE-RQ holds at most 128, context ids being
odd numbers 1-255, PS3.8 9.3.2.2), so it binds the SCU, not us. We therefore support all storage SOP classes
with the same list of transfer syntaxes (:data:`STORAGE_TRANSFER_SYNTAXES`). Compressed syntaxes cost nothing:
the storage handler writes the bytes as received and decodes no pixel data.

Every association socket gets TCP_NODELAY (pynetdicom never sets it; without it small DIMSE messages wait for
delayed ACKs - about 20 stores/s instead of 140). It is set in the EVT_CONN_OPEN handler on
``event.assoc.dul.socket.socket`` (the accepted ``socket.socket`` inside pynetdicom's AssociationSocket).
"""

from __future__ import annotations

import logging
import socket

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind, Verification

from app.storage import ArchiveStore
from interfaces.dicom import mpps, statuses, storage, worklist

log = logging.getLogger(__name__)

STORAGE_TRANSFER_SYNTAXES = [
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
]

ACSE_TIMEOUT = 30.0       # seconds to wait for association messages
DIMSE_TIMEOUT = 60.0      # seconds to wait for a DIMSE message once an operation started
NETWORK_TIMEOUT = 120.0   # an association silent this long is aborted (each costs two polling threads)


def set_tcp_nodelay(event) -> None:
    """EVT_CONN_OPEN: disable Nagle's algorithm on the new association's socket."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # the peer may already be gone
        log.debug("TCP_NODELAY not set: %s", exc)


def handle_echo(event) -> int:
    """EVT_C_ECHO: Verification (PS3.4 A.4)."""
    return statuses.SUCCESS


class DicomServer:
    """The AE listening on ``settings.host``:``settings.dicom_port`` (0 = any free port, see :attr:`port`)."""

    def __init__(self, settings, session_factory, read_factory, store: ArchiveStore):
        self.settings = settings
        self.ae = AE(ae_title=settings.dicom_aet)
        self.ae.maximum_associations = settings.dicom_max_associations
        self.ae.acse_timeout = ACSE_TIMEOUT
        self.ae.dimse_timeout = DIMSE_TIMEOUT
        self.ae.network_timeout = NETWORK_TIMEOUT
        self.ae.add_supported_context(Verification)
        self.ae.add_supported_context(ModalityWorklistInformationFind)
        self.ae.add_supported_context(ModalityPerformedProcedureStep)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
        self.handlers = [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_FIND, worklist.bind(read_factory, settings)),
            (evt.EVT_N_CREATE, mpps.bind_create(session_factory, settings)),
            (evt.EVT_N_SET, mpps.bind_set(session_factory, settings)),
            (evt.EVT_C_STORE, storage.bind(session_factory, read_factory, store)),
        ]
        self._server = None

    def start(self) -> None:
        """Listen in background threads (returns at once)."""
        if self._server is not None:
            raise RuntimeError("DICOM server already started")
        self._server = self.ae.start_server((self.settings.host, self.settings.dicom_port), block=False,
                                            evt_handlers=self.handlers)
        log.info("DICOM AE %s listening on %s:%d", self.settings.dicom_aet, self.settings.host, self.port)

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when the setting is 0)."""
        if self._server is None:
            raise RuntimeError("DICOM server not started")
        return self._server.server_address[1]

    def stop(self) -> None:
        """Stop listening and abort open associations."""
        if self._server is None:
            return
        self._server = None
        self.ae.shutdown()
        log.info("DICOM AE %s stopped", self.settings.dicom_aet)

    def __enter__(self) -> "DicomServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
