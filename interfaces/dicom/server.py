"""The engine's DICOM Application Entity: one AE, one listening port, a module per service.

Services (SCP role), with the handler that serves each (plain functions bound to their dependencies with
functools.partial, as pynetdicom's apps/qrscp does):

- Verification, C-ECHO (PS3.4 Annex A): answered here;
- Modality Worklist Information Model - FIND, C-FIND (PS3.4 Annex K): interfaces.dicom.worklist;
- Modality Performed Procedure Step, N-CREATE / N-SET (PS3.4 F.7): interfaces.dicom.mpps;
- every Storage SOP Class pynetdicom knows (``AllStoragePresentationContexts``, PS3.4 Annex B), C-STORE:
  interfaces.dicom.storage (re-sent instances per setting dicom_resent_instance);
- Patient Root and Study Root Query/Retrieve FIND, MOVE and GET (PS3.4 Annex C), C-FIND / C-MOVE / C-GET:
  interfaces.dicom.query_retrieve (C-FIND requests are routed by SOP Class between it and the worklist);
- Storage Commitment Push Model (PS3.4 Annex J), N-ACTION and N-EVENT-REPORT: interfaces.dicom.commitment.

The storage contexts accept SCP/SCU Role Selection (PS3.7 D.3.3.4) with both roles, so that a C-GET SCU can
take the SCP role and receive the instances on the same association. Association admission: at most
``dicom_max_associations`` at once (more are rejected by pynetdicom, A-ASSOCIATE-RJ "local limit exceeded"); with
``dicom_check_callers``, only the known AEs from their hosts (interfaces.dicom.network).

Presentation contexts: on the acceptor side pynetdicom keeps one supported context per abstract syntax
(``AE.add_supported_context`` extends the transfer syntaxes of an existing one) and has no limit on how many
it supports; the 128 limit is on *requested* contexts (an A-ASSOCIATE-RQ holds at most 128, context ids being
odd numbers 1-255, PS3.8 9.3.2.2), so it binds the SCU, not us. We therefore support all storage SOP classes
with the same list of transfer syntaxes (:data:`STORAGE_TRANSFER_SYNTAXES`). Compressed syntaxes cost nothing:
the storage handler writes the bytes as received and decodes no pixel data.

pynetdicom reads a PDU in one go and its two polling loops per association are woken when there is work instead of
after their next 1 ms sleep (interfaces.dicom.pynetdicom_tuning); the largest PDU we accept is
:data:`MAXIMUM_PDU_SIZE`, so a C-STORE costs a few PDUs instead of dozens.

Every association socket gets TCP_NODELAY (pynetdicom never sets it; without it small DIMSE messages wait for
delayed ACKs - about 20 stores/s instead of 140). It is set in the EVT_CONN_OPEN handler on
``event.assoc.dul.socket.socket`` (the accepted ``socket.socket`` inside pynetdicom's AssociationSocket), and on
the associations the AE requests itself (C-MOVE destinations, storage commitment reports).
"""

from __future__ import annotations

import copy
import logging
import time

from pydicom import uid
from pynetdicom import AE, AllStoragePresentationContexts, _config as pynetdicom_config, evt
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
    Verification,
)

from app.group_commit import GroupCommitter
from app.services import archive
from app.services.archive import AccessionStudies, ResentPolicy
from app.storage import ArchiveStore
from config.settings import SettingsError
from interfaces.dicom import commitment, mpps, pynetdicom_tuning, query_retrieve, sending, statuses, storage, worklist
from interfaces.dicom.network import bind_caller_check, forward_nodes, known_aes, set_tcp_nodelay

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

# Largest P-DATA PDU we accept (A-ASSOCIATE-AC Maximum Length, PS3.8 D.3.3.1): a sender's PDUs are cut to it. At
# pynetdicom's default (16 kB) a 512 kB image takes 32 PDUs, each decoded in Python; 256 kB costs 2-3.
MAXIMUM_PDU_SIZE = 262144
ACSE_TIMEOUT = 30.0       # seconds to wait for association messages
DIMSE_TIMEOUT = 60.0      # seconds to wait for a DIMSE message once an operation started
NETWORK_TIMEOUT = 120.0   # an association silent this long is aborted (each costs two polling threads)


def handle_echo(event) -> int:
    """EVT_C_ECHO: Verification (PS3.4 A.4)."""
    return statuses.SUCCESS


def route_find(worklist_find, archive_find):
    """EVT_C_FIND (one handler per event in pynetdicom): the worklist or the archive, by SOP Class."""

    def handle_find(event):
        if event.request.AffectedSOPClassUID == ModalityWorklistInformationFind:
            return worklist_find(event)
        return archive_find(event)

    return handle_find


class ContextsCopiedCheaply(list):
    """The server's supported presentation contexts, as pynetdicom copies them for each new association.

    pynetdicom deep-copies the acceptor's supported contexts for every association (``deepcopy`` in
    ``RequestHandler._create_association``). With every storage SOP Class and its 13 transfer syntaxes that is
    about 2,000 pydicom UIDs, each rebuilt and validated by a regular expression: 30 ms of CPU before an
    association can even answer (docs/performance.md). A UID is an immutable string, so a copy of each
    context with its own list of the same UIDs is an equal and independent copy, made in a fraction of that."""

    def __deepcopy__(self, memo):
        copies = []
        for context in self:
            duplicate = copy.copy(context)
            duplicate._transfer_syntax = list(context._transfer_syntax)
            copies.append(duplicate)
        return copies


def quiet_pynetdicom() -> None:
    """Unless the pynetdicom logger is on (INFO or lower), keep pynetdicom from formatting what it would log:
    its standard handlers build a text of every DIMSE message, and it renders every C-FIND request and
    response Identifier as text (``pretty_dataset``) even when nothing is logged - for a worklist answer,
    more time than building the answer itself (docs/performance.md)."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        return
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


LISTEN_BACKLOG = 128   # pending connections the kernel keeps for accept (asyncio's default is 100)


class DicomServer:
    """The AE listening on ``settings.host``:``settings.dicom_port`` (0 = any free port, see :attr:`port`)."""

    def __init__(self, settings, session_factory, read_factory, store: ArchiveStore):
        quiet_pynetdicom()
        sending.install()
        self.settings = settings
        self.known_aes = known_aes(settings.dicom_known_aes)
        try:
            policy = ResentPolicy(settings.dicom_resent_instance)
        except ValueError:
            raise SettingsError(f"RIS_DICOM_RESENT_INSTANCE={settings.dicom_resent_instance!r}: "
                                f"one of {', '.join(p.value for p in ResentPolicy)}") from None
        try:
            archive.configure(session_factory, AccessionStudies(settings.dicom_accession_studies))
        except ValueError:
            raise SettingsError(f"RIS_DICOM_ACCESSION_STUDIES={settings.dicom_accession_studies!r}: one of "
                                f"{', '.join(p.value for p in AccessionStudies)}") from None
        self.known_forwards = tuple(node.ae_title for node in forward_nodes(settings))
        self.store = store
        self.session_factory = session_factory
        self.committer = GroupCommitter(session_factory, name="dicom-group-commit")
        self.ae = AE(ae_title=settings.dicom_aet)
        self.ae.maximum_associations = settings.dicom_max_associations
        self.ae.require_called_aet = settings.dicom_check_called_aet
        self.ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
        self.ae.acse_timeout = ACSE_TIMEOUT
        self.ae.dimse_timeout = DIMSE_TIMEOUT
        self.ae.network_timeout = NETWORK_TIMEOUT
        self.ae.add_supported_context(Verification)
        self.ae.add_supported_context(ModalityWorklistInformationFind)
        self.ae.add_supported_context(ModalityPerformedProcedureStep)
        self.ae.add_supported_context(StorageCommitmentPushModel)
        for sop_class in query_retrieve.SOP_CLASSES:
            self.ae.add_supported_context(sop_class)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES,
                                          scu_role=True, scp_role=True)
        self.commitment = commitment.CommitmentReporter(self.ae, settings, read_factory, store, self.known_aes)
        pynetdicom_tuning.install()
        self.handlers = [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_CONN_OPEN, pynetdicom_tuning.attach),
            (evt.EVT_CONN_CLOSE, pynetdicom_tuning.detach),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_FIND, route_find(worklist.bind(read_factory, settings),
                                        query_retrieve.bind_find(read_factory, settings))),
            (evt.EVT_C_MOVE, query_retrieve.bind_move(read_factory, store, self.known_aes, settings)),
            (evt.EVT_C_GET, query_retrieve.bind_get(read_factory, store, settings)),
            (evt.EVT_N_CREATE, mpps.bind_create(session_factory, settings)),
            (evt.EVT_N_SET, mpps.bind_set(session_factory, settings)),
            (evt.EVT_N_ACTION, commitment.bind(self.commitment)),
            (evt.EVT_C_STORE, storage.bind(storage.StorageContext(
                session_factory=session_factory, read_factory=read_factory, store=store, policy=policy,
                committer=self.committer, forward_to=self.known_forwards,
                coerce_on_store=settings.dicom_coerce_on_store, aet=settings.dicom_aet))),
        ]
        if settings.dicom_check_callers:
            self.handlers.append((evt.EVT_REQUESTED, bind_caller_check(self.known_aes)))
        self._server = None

    def start(self) -> None:
        """Listen in background threads (returns at once)."""
        if self._server is not None:
            raise RuntimeError("DICOM server already started")
        self.committer.start()
        self._server = self.ae.start_server((self.settings.host, self.settings.dicom_port), block=False,
                                            evt_handlers=self.handlers)
        # socketserver listens with a backlog of 5: a burst of modalities connecting at once (a morning's
        # worklist refresh, a study sent over many associations) overflowed it, and the kernel then drops the
        # SYNs beyond it, each retried only after a second. listen() again with the MLLP listener's depth.
        self._server.socket.listen(LISTEN_BACKLOG)
        self._server.contexts = ContextsCopiedCheaply(self._server.contexts)
        log.debug("DICOM AE %s listening on %s:%d", self.settings.dicom_aet, self.settings.host, self.port)

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when the setting is 0)."""
        if self._server is None:
            raise RuntimeError("DICOM server not started")
        return self._server.server_address[1]

    def stop(self, grace: float = 10.0) -> None:
        """Stop listening, give open associations up to ``grace`` seconds to finish (a modality in the middle
        of sending a study is not cut off by a restart), then abort what is still open."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.shutdown()  # no new associations; the running ones go on
        deadline = time.monotonic() + grace
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        if server.active_associations:
            log.warning("DICOM AE %s: aborting %d association(s) still open after %.0f s",
                        self.settings.dicom_aet, len(server.active_associations), grace)
        self.ae.shutdown()
        self.commitment.shutdown()
        self.committer.stop()
        log.info("DICOM AE %s stopped", self.settings.dicom_aet)

    def __enter__(self) -> "DicomServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
