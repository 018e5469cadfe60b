"""HL7 v2 over MLLP to one destination (the HIS, IHE RAD-3): one persistent connection, ACK correlation.

Rendering: the order status message of :mod:`interfaces.hl7.writer` (ORM^O01 or OMG^O19 per destination) for the
kinds ``order.status`` and ``step.status`` (a step's change: the order's message whose OBR-20 names the step), the
ORU^R01 of a signed report for kind ``report``, the application ACK the intake built (enhanced mode) for kind
``hl7.application_ack``, with MSH-10 the row's message id;
MSH-10 = the outbox row's stable ``message_id``, MSH-5/MSH-6 the destination's application and facility (default:
the order's sender, MSH-3/MSH-4 of the message that placed it), MSH-7 now in the site's zone.

Delivery (HL7 v2.5.1 Appendix C MLLP; 2.9.2 original acknowledgment rules): the connection is opened on first use
and kept; before it is reused, a connection the peer closed or sent unasked-for bytes on is dropped
(:meth:`MLLPClient.drop_if_stale`). The reply must be an ACK whose MSA-2 equals the MSH-10 sent - any other reply
never confirms the message: the connection is closed (its state is unknown) and the attempt is transient. MSA-1
AA/CA: accepted; AE/CE: transient (the receiver may accept it later); AR/CR: permanent. Connection errors and
timeouts (:class:`MLLPError`) are transient.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from zoneinfo import ZoneInfo

from app.services.outbox import ORDER_STATUS, STEP_STATUS
from interfaces.hl7.ack import APPLICATION_ACK
from interfaces.hl7.charsets import encode_text
from app.services.reports import REPORT
from config.outbound import Destination
from interfaces.hl7.ack_reader import NotAnAck, read_ack
from interfaces.hl7.writer import Header, encode, order_status_message, report_message
from interfaces.mllp.client import MLLPClient, MLLPError
from interfaces.outbound.channel import PermanentError, TransientError

log = logging.getLogger("interfaces.outbound.mllp")


class HL7MLLPChannel:
    """The channel of one MLLP destination. Not thread-safe: the dispatcher uses it from one thread at a time."""

    def __init__(self, destination: Destination, *, application: str, facility: str, timeout: float,
                 zone: str = "UTC", ssl_context: ssl.SSLContext | None = None) -> None:
        self.destination = destination
        self.name = destination.name
        self.application = application
        self.facility = facility
        self.timeout = timeout
        self.zone = ZoneInfo(zone)
        self.ssl_context = ssl_context
        self._client: MLLPClient | None = None

    def render(self, kind: str, payload: dict, message_id: str) -> bytes:
        if kind == APPLICATION_ACK:
            return self._application_ack(payload, message_id)
        if kind not in (ORDER_STATUS, STEP_STATUS, REPORT):   # step.status: the order's message naming the step
            raise PermanentError(f"destination {self.name} (HL7 over MLLP) cannot send {kind!r} messages")
        sender = (payload.get("sender") or "").split("^")
        header = Header(
            sending_application=self.application, sending_facility=self.facility,
            receiving_application=self.destination.application or sender[0],
            receiving_facility=self.destination.facility or (sender[1] if len(sender) > 1 else ""),
            control_id=message_id, now=dt.datetime.now(self.zone).replace(microsecond=0),
        )
        try:
            if kind == REPORT:
                return encode(report_message(payload, header=header))
            return encode(order_status_message(payload, header=header, message=self.destination.message))
        except ValueError as exc:
            raise PermanentError(f"cannot write the HL7 message: {exc}") from None

    @staticmethod
    def _application_ack(payload: dict, message_id: str) -> bytes:
        """The application ACK the intake built (enhanced mode, HL7 v2.5.1 2.9.3), its MSH-10 set to the row's stable
        message id (so the receiver's answer, MSA-2, is matched and a repeat can be dropped), in its own charset."""
        text = payload.get("message") or ""
        head, sep, rest = text.partition("\r")
        if not head.startswith("MSH") or len(head) < 4:
            raise PermanentError("the application ACK in the outbox has no MSH segment")
        fields = head.split(head[3])
        fields += [""] * (10 - len(fields))
        fields[9] = message_id
        try:
            return encode_text(head[3].join(fields) + sep + rest, payload.get("codec") or "ascii")
        except LookupError as exc:
            raise PermanentError(f"cannot encode the application ACK: {exc}") from None

    def deliver(self, data: bytes, message_id: str) -> bytes:
        client = self._client
        if client is not None and client.drop_if_stale():
            log.info("destination %s: the idle connection was closed by the peer; reconnecting", self.name)
        try:
            if client is None:
                client = self._client = MLLPClient(self.destination.host, self.destination.port,
                                                   timeout=self.timeout, ssl_context=self.ssl_context)
            reply = client.send(data)
        except MLLPError as exc:
            raise TransientError(str(exc)) from None
        try:
            ack = read_ack(reply)
        except NotAnAck as exc:
            client.close()
            raise TransientError(str(exc), reply) from None
        if ack.control_id != message_id:
            client.close()
            raise TransientError(f"the reply's MSA-2 {ack.control_id!r} does not answer MSH-10 {message_id!r} "
                                 f"({ack.code}); not taken as its acknowledgment", reply)
        if ack.accepted:
            return reply
        reason = f"{ack.code}: {ack.text or 'no reason given'}"
        if ack.rejected:
            raise PermanentError(reason, reply)
        raise TransientError(reason, reply)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
