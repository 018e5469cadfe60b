"""HL7 v2 intake: raw bytes in, acknowledgment bytes out (transport-independent).

The flow of DESIGN.md section 3, "HL7 in":

1. the raw bytes are stored as an InboundMessage and committed (durable before anything else);
2. decoded by MSH-18 (interfaces.hl7.charsets), tokenized (interfaces.hl7.tokenizer);
3. a resent message (same sender MSH-3^MSH-4, control id MSH-10 and bytes) gets the original ACK
   and changes nothing;
4. the mapping profile turns it into domain commands, applied in one unit of work together with
   the message's final status;
5. the ACK (HL7 v2.5.1 2.9, original mode): AA when applied, AE with an ERR segment when the
   message could not be applied (the sender may correct and resend it; it is kept for reprocessing),
   AR when the engine refuses the message itself (unreadable, unsupported type).

Domain errors are translated to ACK codes and HL7 table 0357 error codes here, in one place
(:func:`ack_for_error`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import time
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.commands import Cause
from app.db import unit_of_work
from app.errors import Conflict, DomainError, InvalidInput, NotFound, UnknownCode, Unsupported
from app.models import InboundMessage, MessageStatus
from app.services import messages as store
from app.services.dispatch import apply_command
from config.settings import Settings
from interfaces.hl7 import charsets, timestamps
from interfaces.hl7.ack import ErrorDetail, build_ack, build_reject_for_unparsable
from interfaces.hl7.tokenizer import HL7ParseError, Message, parse
from mappings.hl7v2 import Mapper, locate, message_type
from mappings.profile import Profile
from mappings.transforms import Context

log = logging.getLogger("interfaces.hl7.intake")


@dataclass(frozen=True)
class Outcome:
    status: MessageStatus
    ack_code: str
    error: ErrorDetail | None = None


def ack_for_error(exc: Exception) -> Outcome:
    """Domain error -> message status, ACK code and HL7 table 0357 error code."""
    location = getattr(exc, "location", None)
    text = str(getattr(exc, "message", None) or exc)
    if isinstance(exc, Unsupported):
        return Outcome(MessageStatus.REJECTED, "AR", ErrorDetail("200", text, location))
    if isinstance(exc, HL7ParseError):
        return Outcome(MessageStatus.REJECTED, "AR", ErrorDetail("102", exc.reason, exc.location))
    if isinstance(exc, charsets.CharsetError):
        return Outcome(MessageStatus.REJECTED, "AR", ErrorDetail("102", str(exc), "MSH-18"))
    if isinstance(exc, InvalidInput):
        return Outcome(MessageStatus.ERROR, "AE", ErrorDetail("101" if exc.missing else "102", text, location))
    if isinstance(exc, UnknownCode):
        return Outcome(MessageStatus.ERROR, "AE", ErrorDetail("103", text, location))
    if isinstance(exc, NotFound):
        return Outcome(MessageStatus.ERROR, "AE", ErrorDetail("204", text, location))
    if isinstance(exc, Conflict):
        return Outcome(MessageStatus.ERROR, "AE", ErrorDetail("205", text, location))
    if isinstance(exc, DomainError):
        return Outcome(MessageStatus.ERROR, "AE", ErrorDetail("207", text, location))
    return Outcome(MessageStatus.ERROR, "AE", ErrorDetail("207", f"internal error: {type(exc).__name__}: {exc}"))


class HL7Intake:
    """Applies HL7 v2 messages to the core. Thread-safe: one instance serves every connection."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], profile: Profile):
        self.settings = settings
        self.factory = session_factory
        self.profile = profile
        self.mapper = Mapper(profile)
        self.site_tz = ZoneInfo(settings.site_timezone)
        self._ids = itertools.count(1)
        self._prefix = f"{int(time.time()):x}"

    # Entry points ------------------------------------------------------------------------
    def handle_frame(self, event, peer: str) -> bytes:
        """MLLP server handler: one frame in, the ACK out (interfaces.mllp.server contract)."""
        if getattr(event, "oversize", False):
            return self.reject_oversize(event.payload, event.size, peer)
        return self.handle(event.payload, peer=peer)

    def handle(self, raw: bytes, *, peer: str = "", transport: str = "mllp") -> bytes:
        """Store, apply and acknowledge one message. Never raises: every failure becomes an ACK."""
        try:
            with unit_of_work(self.factory) as session:
                msg_id = store.store_received(session, raw, transport=transport, peer=peer).id
        except Exception as exc:  # the store is down: say so, the sender will resend
            log.exception("could not store a message from %s", peer)
            return self._reject_unstored(raw, exc)
        return self.process(msg_id)

    def process(self, msg_id: int) -> bytes:
        """Apply the stored message ``msg_id`` (also the recovery path for unfinished messages)."""
        for attempt in range(3):
            try:
                return self._process_once(msg_id)
            except (IntegrityError, OperationalError) as exc:
                # Two connections raced on a new key (e.g. the same new patient): retry once it is there.
                log.warning("message %s: retrying after %s", msg_id, type(exc).__name__)
                if attempt == 2:
                    return self._finish_failed(msg_id, exc)
        raise AssertionError("unreachable")

    # Steps -------------------------------------------------------------------------------
    def _decode(self, raw: bytes):
        return charsets.decode_message(raw, default=self.settings.hl7_default_charset,
                                       mismatch=self.settings.hl7_charset_mismatch)

    def _process_once(self, msg_id: int) -> bytes:
        with unit_of_work(self.factory) as session:
            row = session.get(InboundMessage, msg_id)
            if row.status is not MessageStatus.RECEIVED and row.ack is not None:
                return row.ack
            try:
                decoded = self._decode(row.raw)
                msg = parse(decoded.text)
            except (HL7ParseError, charsets.CharsetError) as exc:
                text = row.raw.decode("latin-1")
                outcome = ack_for_error(exc)
                ack = build_reject_for_unparsable(text, outcome.ack_code, outcome.error, app=self.settings.hl7_application,
                                                  facility=self.settings.hl7_facility, control_id=self._new_id(),
                                                  now=self._now()).encode("latin-1", "replace")
                store.finish(row, outcome.status, ack=ack, ack_code=outcome.ack_code, error=str(exc))
                log.info("message %s from %s rejected: %s", msg_id, row.peer, exc)
                return ack
            row.sender = f"{msg.sending_application}^{msg.sending_facility}"[:255]
            row.control_id = msg.control_id[:199]
            row.message_type = message_type(msg)[:32]
            row.charset = decoded.codec
            row.profile = self.profile.label
            original = store.find_original(session, row)
            if original is not None:
                store.finish(row, MessageStatus.DUPLICATE, ack=original.ack, ack_code=original.ack_code,
                             warnings=[f"duplicate of message {original.id}"])
                row.duplicate_of_fk = original.id
                return original.ack

            warnings = list(decoded.warnings)
            savepoint = session.begin_nested()
            ctx = self._context(msg, row)
            try:
                result = self.mapper.commands(msg, ctx)
                cause = Cause("hl7", reference=msg.control_id, sender=row.sender, message_fk=row.id)
                for command in result.commands:
                    apply_command(session, command, cause, uid_root=self.settings.uid_root,
                                  accession_prefix=self.profile.accession_prefix)
                savepoint.commit()
                warnings += result.warnings
                outcome = Outcome(MessageStatus.PROCESSED, "AA")
            except (IntegrityError, OperationalError):
                savepoint.rollback()
                raise
            except Exception as exc:
                savepoint.rollback()
                outcome = ack_for_error(exc)
                if isinstance(exc, DomainError) and exc.location and "." in exc.location:
                    where = locate(self.profile, exc.location, msg, ctx.origins) or exc.location
                    outcome = dataclasses.replace(outcome, error=dataclasses.replace(outcome.error, location=where))
                if not isinstance(exc, DomainError):
                    log.exception("message %s: unexpected failure", msg_id)
            ack_text = build_ack(msg, outcome.ack_code, errors=[outcome.error] if outcome.error else [],
                                 app=self.settings.hl7_application, facility=self.settings.hl7_facility,
                                 control_id=self._new_id(), now=self._now())
            ack = charsets.encode_text(ack_text, decoded.codec)
            store.finish(row, outcome.status, ack=ack, ack_code=outcome.ack_code,
                         error=outcome.error.text if outcome.error else "", warnings=warnings)
            log.debug("message %s %s -> %s", msg_id, row.message_type, outcome.ack_code)
            return ack

    def _context(self, msg: Message, row: InboundMessage) -> Context:
        message_tz = None
        try:
            sent = timestamps.parse_dtm(msg.value("MSH", 7))
            if sent is not None and sent.tzinfo is not None:
                message_tz = sent.tzinfo
        except ValueError:
            pass
        received = row.received_at.replace(tzinfo=dt.timezone.utc)
        return Context(received_at=received, site_tz=self.site_tz, message_tz=message_tz,
                       parse_dtm=timestamps.parse_dtm, parse_date=timestamps.parse_date)

    def _finish_failed(self, msg_id: int, exc: Exception) -> bytes:
        log.error("message %s failed after retries: %s", msg_id, exc)
        with unit_of_work(self.factory) as session:
            row = session.get(InboundMessage, msg_id)
            outcome = Outcome(MessageStatus.ERROR, "AE", ErrorDetail("206", f"database busy: {type(exc).__name__}"))
            ack = self._ack_or_reject(row.raw, outcome)
            store.finish(row, outcome.status, ack=ack, ack_code="AE", error=str(exc)[:4000])
            return ack

    def reject_oversize(self, head: bytes, size: int, peer: str) -> bytes:
        """A frame larger than RIS_HL7_MAX_MESSAGE_SIZE: its head is kept, the answer is AR."""
        problem = (f"message too large: {size} bytes, the limit is {self.settings.hl7_max_message_size} "
                   f"(RIS_HL7_MAX_MESSAGE_SIZE)")
        outcome = Outcome(MessageStatus.REJECTED, "AR", ErrorDetail("207", problem, "MSH"))
        ack = self._ack_or_reject(head, outcome)
        try:
            with unit_of_work(self.factory) as session:
                row = store.store_received(session, head, transport="mllp", peer=peer)
                store.finish(row, outcome.status, ack=ack, ack_code="AR", error=problem,
                             warnings=["only the first bytes of the message are kept"])
        except Exception:
            log.exception("could not record an oversize message from %s", peer)
        return ack

    def _reject_unstored(self, raw: bytes, exc: Exception) -> bytes:
        return self._ack_or_reject(raw, Outcome(MessageStatus.ERROR, "AE",
                                                ErrorDetail("206", f"message store unavailable: {type(exc).__name__}")))

    def _ack_or_reject(self, raw: bytes, outcome: Outcome) -> bytes:
        """An ACK for ``raw`` with ``outcome``, built from its header when it can be read."""
        try:
            decoded = self._decode(raw)
            msg = parse(decoded.text)
            text = build_ack(msg, outcome.ack_code, errors=[outcome.error], app=self.settings.hl7_application,
                             facility=self.settings.hl7_facility, control_id=self._new_id(), now=self._now())
            return charsets.encode_text(text, decoded.codec)
        except Exception:
            text = build_reject_for_unparsable(raw.decode("latin-1"), outcome.ack_code, outcome.error,
                                               app=self.settings.hl7_application, facility=self.settings.hl7_facility,
                                               control_id=self._new_id(), now=self._now())
            return text.encode("latin-1", "replace")

    def _new_id(self) -> str:
        """Control id of our ACKs: unique per process start and message (MSH-10, ST 20)."""
        return f"{self._prefix}{next(self._ids):08d}"[:20]

    def _now(self) -> dt.datetime:
        return dt.datetime.now(self.site_tz)
