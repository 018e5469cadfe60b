"""Network concerns of the engine's AE: peers it knows, who may associate, and sockets.

Known AEs (setting ``dicom_known_aes``, ``RIS_DICOM_KNOWN_AES="PACS=10.0.0.5:104,VIEWER=10.0.0.9:11112"``) are the
C-MOVE destinations (PS3.4 C.4.2.1: the SCP must know the Move Destination AE's address), the addresses storage
commitment results are sent to on a new association (PS3.4 J.3.3), and, when ``dicom_check_callers`` is on, the
only callers accepted: the calling AE title must be known and the peer must connect from its configured host,
else the association is rejected (A-ASSOCIATE-RJ rejected-permanent, service-user, "calling AE title not
recognized", PS3.8 9.3.4).

Every association socket, accepted or requested, gets TCP_NODELAY (pynetdicom never sets it; without it small
DIMSE messages wait for delayed ACKs - about 20 stores/s instead of 140).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from config.settings import SettingsError

log = logging.getLogger(__name__)

REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED = 0x01, 0x01, 0x03


@dataclass(frozen=True)
class KnownAE:
    ae_title: str
    host: str
    port: int


def known_aes(entries: tuple[str, ...]) -> dict[str, KnownAE]:
    """AE title -> address from ``AET=host:port`` entries; SettingsError naming a malformed entry."""
    table: dict[str, KnownAE] = {}
    for entry in entries:
        title, _, address = entry.partition("=")
        host, _, port = address.strip().rpartition(":")
        title = title.strip()
        if not title or len(title) > 16 or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"RIS_DICOM_KNOWN_AES: {entry!r} is not AET=host:port")
        table[title] = KnownAE(title, host.strip("[]"), int(port))
    return table


def forward_nodes(settings) -> list[KnownAE]:
    """The known AEs setting dicom_forward names (instances are forwarded to them); SettingsError for a title that
    is not a known AE (its address would be unknown)."""
    known = known_aes(settings.dicom_known_aes)
    missing = [aet for aet in settings.dicom_forward if aet not in known]
    if missing:
        raise SettingsError(f"RIS_DICOM_FORWARD: {', '.join(missing)} not in RIS_DICOM_KNOWN_AES (AET=host:port)")
    return [known[aet] for aet in settings.dicom_forward]


def set_tcp_nodelay(event) -> None:
    """EVT_CONN_OPEN: disable Nagle's algorithm on the new association's socket."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # the peer may already be gone
        log.debug("TCP_NODELAY not set: %s", exc)


def _same_host(configured: str, address: str) -> bool:
    if configured == address:
        return True
    try:
        return address in {info[4][0] for info in socket.getaddrinfo(configured, None)}
    except OSError:
        return False


def bind_caller_check(table: dict[str, KnownAE]):
    """EVT_REQUESTED handler rejecting callers that are not known AEs calling from their host."""

    def check_caller(event) -> None:
        requestor = event.assoc.requestor
        # At EVT_REQUESTED only the A-ASSOCIATE-RQ primitive holds the calling AE title.
        title = str(requestor.primitive.calling_ae_title or "").strip()
        known = table.get(title)
        if known is None or not _same_host(known.host, requestor.address):
            log.warning("association from %r at %s rejected: not a known AE from its host", title,
                        requestor.address)
            event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED)
            # As pynetdicom does after its own rejections: let the DUL send the A-ASSOCIATE-RJ before the socket
            # is shut down (otherwise the peer may see an abort instead).
            event.assoc.kill()

    return check_caller
