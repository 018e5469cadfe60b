"""HL7 v2 intake: raw bytes in, acknowledgment bytes out (transport-independent).

The flow of DESIGN.md section 3, "HL7 in":

1. the raw bytes are stored as an InboundMessage and committed (durable before anything else);
2. decoded by MSH-18 (interfaces.hl7.charsets), tokenized (interfaces.hl7.tokenizer);
3. a resent message (same sender MSH-3^MSH-4, control id MSH-10 and content) gets the original ACK
   and changes nothing. The content is the tokenized segments without MSH-7 (segment terminators,
   a trailing CR and trailing empty fields do not count; a re-stamped MSH-7 does not either, since a
   sender may rebuild a message it resends; any other difference is another message, BUG-28); see
   :mod:`app.services.messages`;
4. the mapping profile of its sender (MSH-3/MSH-4; mappings.profile.ProfileSet) turns it into
   domain commands, applied in one unit of work together with the message's final status and
   the profile's name and version;
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

from app.changes import ChangeRecorder
from app.commands import Cause
from app.db import unit_of_work
from app.group_commit import GroupCommitStopped, GroupCommitter
from app.errors import Conflict, DomainError, InvalidInput, NotFound, UnknownCode, Unsupported
from app.models import InboundMessage, MessageStatus, Order
from app.queries.worklist import to_item
from app.services import messages as store
from app.services import outbox
from app.services.dispatch import apply, as_orm
from config.settings import Settings
from interfaces.hl7 import charsets, timestamps
from interfaces.hl7.ack import (APPLICATION_ACK, ErrorDetail, build_ack, build_reject_for_unparsable, scrape_header,
                                version_tuple)
from interfaces.hl7.structure import StructureError, validate_structure
from interfaces.hl7.tokenizer import HL7ParseError, Message, parse, split_messages
from mappings.hl7v2 import LocatedWarning, Mapper, charset_policy, locate, message_type, where
from mappings.profile import Profile, ProfileSet, SingleProfile
from mappings.transforms import Context

log = logging.getLogger("interfaces.hl7.intake")


@dataclass(frozen=True)
class Outcome:
    status: MessageStatus
    ack_code: str
    error: ErrorDetail | None = None


@dataclass(frozen=True)
class Result:
    """What processing a message gave: the ACK bytes and what is recorded about it."""

    ack: bytes
    status: MessageStatus
    ack_code: str
    error: str = ""
    warnings: tuple[str, ...] = ()
    changes: list = dataclasses.field(default_factory=list)
    raw: bytes = b""  # the message
    reply: bytes | None = None  # the answer on the connection when it is not ``ack`` (enhanced mode); b"": none
    reply_differs: bool = False

    @classmethod
    def of(cls, row: InboundMessage) -> "Result":
        return cls(row.ack or b"", row.status, row.ack_code, row.error,
                   tuple(w for w in row.warnings.split("\n") if w), list(row.changes or []), row.raw,
                   row.reply, row.reply is not None)

    @property
    def answer(self) -> bytes | None:
        """What is sent back on the connection (None: nothing)."""
        return (self.reply or None) if self.reply_differs else self.ack

    def as_dict(self) -> dict:
        return {"status": self.status.value, "ack_code": self.ack_code, "error": self.error,
                "warnings": list(self.warnings), "changes": self.changes,
                "ack": self.ack.decode("latin-1").replace("\r", "\n")}


@dataclass(frozen=True)
class Trial:
    """A dry run of one message (:meth:`HL7Intake.trial`): nothing of it was kept."""

    result: Result
    profile: Profile | None           # None: the message could not be read far enough to choose one
    commands: list
    worklist: list                     # app.queries.worklist.WorklistItem, as the worklist would offer them


# What :meth:`HL7Intake.reprocess` accepts: messages that changed nothing.
REPROCESSABLE = (MessageStatus.ERROR, MessageStatus.RECEIVED, MessageStatus.REJECTED)


def _condition(value: str) -> str:
    """An acknowledgment condition of table 0155; anything else counts as not given."""
    value = value.strip().upper()
    return value if value in ("AL", "NE", "ER", "SU") else ""


def _wanted(condition: str, success: bool) -> bool:
    """HL7 table 0155: AL always, NE never, ER on error or reject, SU on success."""
    return condition == "AL" or (condition == "ER" and not success) or (condition == "SU" and success)


def is_batch(text: str) -> bool:
    """An HL7 batch (FHS/BHS headers, HL7 v2.5.1 2.10.3) or several messages in one frame."""
    head = text.lstrip(" \t\r\n\x00\x0b\x1c\ufeff")[:3]
    if head in ("FHS", "BHS"):
        return True
    return head == "MSH" and ("\rMSH" in text or "\nMSH" in text)


class HeaderRefused(Unsupported):
    """MSH-11 or MSH-12 names a processing id or version this engine does not apply (table 0357 202/203)."""

    def __init__(self, message: str, *, location: str, code: str):
        super().__init__(message, location=location)
        self.code = code


def check_header(msg: Message, settings: Settings) -> bool:
    """Whether the message is to be applied (True) or only checked (False: a training message); refuses it
    when its header is not acceptable.

    MSH-11 processing id (PT-1, HL7 table 0103: P production, T training, D debugging): applied when in
    ``RIS_HL7_PROCESSING_IDS`` (default P); checked and acknowledged but never applied when in
    ``RIS_HL7_TRAINING_PROCESSING_IDS`` (default T: kept out of production data); otherwise refused, ERR code 202
    "unsupported processing id". MSH-12 version (VID-1, table 0104) must be one of ``RIS_HL7_VERSIONS``
    (2.2-2.8), else ERR code 203 "unsupported version id". Both fields are required (HL7 v2.5.1 2.15.9.11-12);
    2.9.2 / 2.9.3.1: a message whose processing id or version the receiver does not accept is answered AR
    (CR in enhanced mode)."""
    processing = msg.value("MSH", 11).strip().upper()
    applied = tuple(p.strip().upper() for p in settings.hl7_processing_ids)
    training = tuple(p.strip().upper() for p in settings.hl7_training_processing_ids)
    if processing not in applied and processing not in training:
        shown = f"processing id {processing!r}" if processing else "no processing id"
        raise HeaderRefused(f"MSH-11 gives {shown}; this engine applies {', '.join(applied) or 'none'} "
                            f"(RIS_HL7_PROCESSING_IDS) and checks without applying {', '.join(training) or 'none'} "
                            f"(RIS_HL7_TRAINING_PROCESSING_IDS)", location="MSH-11", code="202")
    version = msg.version.strip()
    number = version_tuple(version)
    if number is None or not any(number[:len(v)] == v for v in
                                 (version_tuple(a) for a in settings.hl7_versions) if v):
        shown = f"version {version!r}" if version else "no version"
        raise HeaderRefused(f"MSH-12 gives {shown}; this engine reads {', '.join(settings.hl7_versions)} "
                            f"(RIS_HL7_VERSIONS)", location="MSH-12", code="203")
    return processing in applied


def ack_for_error(exc: Exception) -> Outcome:
    """Domain error -> message status, ACK code and HL7 table 0357 error code."""
    location = getattr(exc, "location", None)
    text = str(getattr(exc, "message", None) or exc)
    if isinstance(exc, HeaderRefused):
        return Outcome(MessageStatus.REJECTED, "AR", ErrorDetail(exc.code, text, location))
    if isinstance(exc, Unsupported):
        return Outcome(MessageStatus.REJECTED, "AR", ErrorDetail("200", text, location))
    if isinstance(exc, HL7ParseError):
        # no MSH first: a segment sequence error (100); a header that cannot be read: a data type error (102)
        code = "100" if exc.location == "MSH" else "102"
        return Outcome(MessageStatus.REJECTED, "AR", ErrorDetail(code, exc.reason, exc.location))
    if isinstance(exc, charsets.CharsetError):
        return Outcome(MessageStatus.REJECTED, "AR", ErrorDetail("102", str(exc), "MSH-18"))
    if isinstance(exc, StructureError):
        return Outcome(MessageStatus.REJECTED, "AR", ErrorDetail("100", text, location))
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


def refuse_nul_in_message(text: str) -> None:
    """InvalidInput naming the field of the first NUL character (U+0000) of a message: no value the engine keeps may
    hold one (PostgreSQL refuses it in every text column, a modality would get it in the worklist; the HTTP edge
    refuses it too, interfaces.inputs). NULs between frames are the transport's, dropped by the MLLP framer."""
    at = text.find("\x00")
    if at < 0:
        return
    start = max(text.rfind("\r", 0, at), text.rfind("\n", 0, at)) + 1
    segment = text[start:start + 3]
    separator = text[3] if len(text) > 3 else "|"
    field = text.count(separator, start, at) + (1 if segment == "MSH" else 0)
    lines = text[:start].replace("\n", "\r").split("\r")
    occurrence = 1 + sum(1 for line in lines if line.startswith(segment))
    location = where(segment, occurrence, field)
    raise InvalidInput(f"{location} contains a NUL character (U+0000), which no value may hold", location=location)


class HL7Intake:
    """Applies HL7 v2 messages to the core. Thread-safe: one instance serves every connection."""

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session],
                 profiles: ProfileSet | SingleProfile | Profile, committer: GroupCommitter | None = None):
        """``profiles``: the folder of profiles (chosen per message by sender), or one profile for all."""
        self.settings = settings
        self.factory = session_factory
        self.committer = committer
        self.profiles = SingleProfile(profiles) if isinstance(profiles, Profile) else profiles
        self.site_tz = ZoneInfo(settings.site_timezone)
        self._ids = itertools.count(1)
        self._prefix = f"{int(time.time()):x}"

    # Entry points ------------------------------------------------------------------------
    def handle_frame(self, event, peer: str) -> bytes | None:
        """MLLP server handler: one frame in, the ACK out (interfaces.mllp.server contract)."""
        if getattr(event, "oversize", False):
            return self.reject_oversize(event.payload, event.size, peer)
        return self.handle(event.payload, peer=peer)

    def handle(self, raw: bytes, *, peer: str = "", transport: str = "mllp") -> bytes | None:
        """Store, apply and acknowledge one message. Never raises: every failure becomes an ACK.

        With a group committer (the engine's default) the message is stored and applied in one job of the
        next group commit: one fsync is shared by the messages of every connection that arrive together.
        Should that job fail for any reason (it is then rolled back as a whole, raw bytes included), the
        message takes the separate path: stored in its own transaction, then applied with retries.
        """
        if self.committer is not None:
            try:
                outcome = self.committer.run(lambda session: self._store_and_apply(session, raw, peer, transport))
            except GroupCommitStopped:
                pass
            except Exception as exc:  # noqa: BLE001 - nothing of it was kept: take the separate path
                log.info("message from %s: group commit failed (%s), storing it on its own", peer, exc)
            else:
                if isinstance(outcome, Result):
                    return outcome.answer
                msg_id, batch = outcome
                return self._process_batch(msg_id, batch, reprocess=False, dry_run=False).answer
        try:
            with unit_of_work(self.factory) as session:
                msg_id = store.store_received(session, raw, transport=transport, peer=peer).id
        except Exception as exc:  # the store is down: say so, the sender will resend
            log.exception("could not store a message from %s", peer)
            return self._reject_unstored(raw, exc)
        return self.process(msg_id)

    def _store_and_apply(self, session: Session, raw: bytes, peer: str, transport: str):
        """Group-commit job: store ``raw`` and apply it; a Result, or (id, batch) for a batch stored with its
        messages, to be applied once it is committed."""
        started = time.perf_counter()
        row = store.receive(session, raw, transport=transport, peer=peer)
        result, batch = self._process_row(session, row, reprocess=False, dry_run=False)
        if batch is None:
            row.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        store.save(session, row)
        return (row.id, batch) if batch is not None else result

    def process(self, msg_id: int) -> bytes | None:
        """Apply the stored message ``msg_id`` (also the recovery path for unfinished messages);
        returns the reply for the sender (None when its acknowledgment rules ask for none)."""
        result = self._with_retries(msg_id, reprocess=False, dry_run=False)
        return result.answer

    def _reply(self, msg: Message, decoded, ack_code: str, ack: bytes, error: ErrorDetail | None) -> bytes | None:
        """The answer on the connection, by the acknowledgment rules of HL7 v2.5.1 2.9.

        Original mode (MSH-15 and MSH-16 both empty): the application ACK (AA/AE/AR).
        Enhanced mode (2.9.3): MSH-15 decides the accept ACK, MSH-16 the application ACK, each under its
        condition AL/NE/ER/SU (table 0155; empty MSH-15 counts as NE, empty MSH-16 as AL). The accept ACK
        reports whether the message was taken into safe storage (2.9.3.1): CA for every stored message, CR
        only for one refused as a message (our AR); whether it could be applied is the application ACK's
        business (AA/AE). When both are due, the accept ACK is the answer on the connection and the application
        ACK is a message of its own to the sender's application (2.9.3.2), sent through the outbox
        (:meth:`_send_application_ack`). MSH-15 AL with MSH-16 NE: the accept ACK only, never AA (the sender
        asked for no application ACK).
        """
        accept_type = _condition(msg.value("MSH", 15))
        app_type = _condition(msg.value("MSH", 16))
        if not accept_type and not app_type:
            return ack
        accepted = ack_code != "AR"
        if _wanted(accept_type or "NE", accepted):
            code = "CA" if accepted else "CR"
            # a CR says why, as the AR would have (its table 0357 code and location: 202, 203, 200...)
            errors = [] if accepted else [error or ErrorDetail("207", "refused", None)]
            text = build_ack(msg, code, errors=errors, app=self.settings.hl7_application,
                             facility=self.settings.hl7_facility, control_id=self._new_id(), now=self._now())
            return charsets.encode_text(text, decoded.codec)
        if _wanted(app_type or "AL", ack_code == "AA"):
            return ack
        return None

    def reprocess(self, msg_id: int, *, dry_run: bool = False) -> "Result":
        """Apply a stored message that was not applied, again (e.g. after a mapping or an order was fixed).

        Only a message that changed nothing can be reprocessed (:data:`REPROCESSABLE`: ERROR, RECEIVED,
        REJECTED, e.g. once a profile handles its type). A PROCESSED message was applied: applying
        it again would apply it twice (a second NW "already exists", a merge repeated) and overwrite its ACK and
        change record, so it is refused with :class:`~app.errors.Conflict` (409 at the HTTP edge); so is a
        DUPLICATE (its original is the message). There is no force: to change what a processed message did,
        send the correcting message (XO, A08, CA...). With ``dry_run`` nothing is written: the result says
        what would happen (status, ACK, the changes it would make); a dry run of a message that was applied
        shows its stored result. A batch is reprocessed through its messages; those already processed are left
        as they are.
        """
        if dry_run:
            return self._with_retries(msg_id, reprocess=True, dry_run=True)
        session = self.factory()
        try:
            row = session.get(InboundMessage, msg_id)
            if row is None:
                raise NotFound(f"no message {msg_id}", location="message_id")
            status = row.status
        finally:
            session.close()
        if status not in REPROCESSABLE:
            what = ("it was applied: reprocessing would apply it twice; send a correcting message instead"
                    if status is MessageStatus.PROCESSED else "it is a duplicate: its original is the message")
            raise Conflict(f"message {msg_id} is {status.value}: {what} (only messages that were not applied "
                           f"can be reprocessed: {', '.join(s.value for s in REPROCESSABLE)})", location="status")
        return self._with_retries(msg_id, reprocess=True, dry_run=dry_run)

    def trial(self, raw: bytes | None = None, *, message_id: int | None = None,
              profile_name: str | None = None) -> "Trial":
        """What a message (``raw``, or the stored message ``message_id``) would do, committing nothing:
        the profile chosen for it (or ``profile_name``), the commands, the worklist items and the ACK.

        The message is stored and applied in one transaction that is rolled back (the analyst's
        dry run); a stored message is applied as a reprocess (no duplicate check).
        """
        session = self.factory()
        try:
            profile = self.profiles.get(profile_name) if profile_name else None
            if message_id is not None:
                row = session.get(InboundMessage, message_id)
                if row is None:
                    raise NotFound(f"no message {message_id}", location="message_id")
            else:
                row = store.store_received(session, raw or b"", transport="test", peer="mapping test")
            trace: dict = {}
            result, batch = self._process_row(session, row, reprocess=True, dry_run=True, profile=profile, trace=trace)
            if batch is not None:
                raise Unsupported("a batch: test its messages one by one", location="message")
            return Trial(result, trace.get("profile"), list(trace.get("commands", [])), trace.get("worklist", []))
        finally:
            session.rollback()
            session.close()

    def _with_retries(self, msg_id: int, *, reprocess: bool, dry_run: bool) -> "Result":
        for attempt in range(3):
            try:
                return self._process_once(msg_id, reprocess=reprocess, dry_run=dry_run)
            except (IntegrityError, OperationalError) as exc:
                # Two connections raced on a new key (e.g. the same new patient): retry once it is there.
                log.warning("message %s: retrying after %s", msg_id, type(exc).__name__)
                if attempt == 2:
                    if dry_run:
                        raise
                    return self._finish_failed(msg_id, exc)
        raise AssertionError("unreachable")

    def ordering_key(self, event) -> tuple[str, ...] | None:
        """MLLP ordering keys: the patients a frame is about, read without parsing: PID-3.1 of every PID and
        MRG-1.1 of every MRG (the prior identifier of a merge or change of identifier; HL7 v2.5.1 chapter 3), as
        ``patient:<id>``.

        Frames that share a key are applied in arrival order, even from several connections; frames of
        different patients run in parallel. An A40 carries both keys, so it is ordered against the messages
        of the surviving patient and against those of the one merged away.
        """
        payload = event.payload
        if len(payload) < 8:
            return None
        sep, comp, rep = payload[3:4], payload[4:5], payload[5:6]
        keys: list[str] = []
        for name, number in ((b"PID", 3), (b"MRG", 1)):
            start = payload.find(name, 3)
            while start > 0:
                if payload[start - 1] in (0x0D, 0x0A):
                    ends = [i for i in (payload.find(b"\r", start), payload.find(b"\n", start)) if i >= 0]
                    fields = payload[start:min(ends) if ends else None].split(sep, number + 1)
                    if len(fields) > number:
                        key = fields[number].split(rep, 1)[0].split(comp, 1)[0].strip()
                        if key and key != b'""':
                            keys.append("patient:" + key.decode("latin-1"))
                start = payload.find(name, start + 3)
        return tuple(dict.fromkeys(keys)) or None

    # Steps -------------------------------------------------------------------------------
    def _decode(self, raw: bytes, profile: Profile | None = None):
        default, mismatch = charset_policy(self.profiles, raw, self.settings.hl7_default_charset,
                                           self.settings.hl7_charset_mismatch, profile)  # the profile's, else settings
        return charsets.decode_message(raw, default=default, mismatch=mismatch)

    def _process_once(self, msg_id: int, *, reprocess: bool, dry_run: bool) -> "Result":
        started = time.perf_counter()
        session = self.factory()
        try:
            row = session.get(InboundMessage, msg_id)
            if row is None:
                raise KeyError(f"no message {msg_id}")
            if not reprocess and row.status is not MessageStatus.RECEIVED and row.ack is not None:
                return Result.of(row)
            if reprocess and row.status not in REPROCESSABLE:  # a batch's message that was applied: kept
                return Result.of(row)
            result, batch = self._process_row(session, row, reprocess=reprocess, dry_run=dry_run)
            if batch is None:
                if not dry_run:
                    row.duration_ms = round((time.perf_counter() - started) * 1000, 3)
                    session.commit()
                return result
            session.commit()  # the batch's messages are stored: now apply them one by one
        finally:
            if dry_run:
                session.rollback()
            session.close()
        return self._process_batch(msg_id, batch, reprocess=reprocess, dry_run=dry_run)

    def _process_row(self, session: Session, row: InboundMessage, *, reprocess: bool, dry_run: bool,
                     profile: Profile | None = None, trace: dict | None = None):
        """(result, None) for a message; (None, (decoded, [child ids])) for a batch to apply next.

        ``profile`` overrides the sender's profile; ``trace`` (a dry run's) receives the profile, the
        commands and the worklist items the message gives before they are rolled back."""
        try:
            decoded = self._decode(row.raw, profile)
            if is_batch(decoded.text):
                return None, (decoded, self._store_batch(session, row, decoded))
            msg = parse(decoded.text)
        except (HL7ParseError, charsets.CharsetError) as exc:
            outcome = ack_for_error(exc)
            ack = self._reject(row.raw.decode("latin-1"), outcome)
            self._label_from_header(row, row.raw.decode("latin-1"))
            if not dry_run:
                store.finish(row, outcome.status, ack=ack, ack_code=outcome.ack_code, error=str(exc))
            log.info("message %s from %s %s: %s", row.id, row.peer,
                     "would be rejected (dry run, nothing written)" if dry_run else "rejected", exc)
            return Result(ack, outcome.status, outcome.ack_code, str(exc), raw=row.raw), None

        row.sender = f"{msg.sending_application}^{msg.sending_facility}"[:255]
        row.control_id = msg.control_id[:199]
        row.message_type = message_type(msg)[:32]
        row.charset = decoded.codec
        row.digest = store.content_digest(segment.fields for segment in msg.segments)  # the duplicate rule's content
        profile = profile or self.profiles.for_sender(msg.sending_application, msg.sending_facility)
        row.profile = profile.label[:128]
        if trace is not None:
            trace["profile"] = profile
        if not reprocess:
            window = dt.timedelta(days=self.settings.hl7_dedup_window_days)
            original = store.find_original(session, row, since=row.received_at - window)
            if original is not None:  # answered as the original was
                if not dry_run:
                    store.finish(row, MessageStatus.DUPLICATE, ack=original.ack, ack_code=original.ack_code,
                                 warnings=[f"duplicate of message {original.id}"])
                    row.duplicate_of_fk = original.id
                    row.reply = original.reply
                return Result(original.ack, MessageStatus.DUPLICATE, original.ack_code, raw=row.raw,
                              reply=original.reply, reply_differs=original.reply is not None), None

        warnings = list(decoded.warnings)
        ctx = self._context(msg, row, profile)
        savepoint = session.begin_nested()
        recorder = ChangeRecorder(session)
        origins = ctx.origins  # where the values of the command being applied were read from
        training = False
        try:
            training = not check_header(msg, self.settings)
            refuse_nul_in_message(decoded.text)
            if profile.strict_structure:
                validate_structure(decoded.text)
            result = Mapper(profile).commands(msg, ctx)
            if trace is not None:
                trace["commands"] = result.commands
            cause = Cause("hl7", reference=msg.control_id, sender=row.sender, message_fk=row.id)
            for index, command in enumerate(result.commands):
                origins = result.origins[index] if index < len(result.origins) else ctx.origins
                changed = apply(session, command, cause, uid_root=profile.uid_root or self.settings.uid_root,
                                accession_prefix=profile.accession_prefix)
                self._remember_keys(row, changed)
                if trace is not None and isinstance(order := as_orm(session, changed), Order):
                    trace.setdefault("worklist", []).extend(
                        to_item(step) for proc in order.procedures for step in proc.steps)
            session.flush()
            warnings += result.warnings
            outcome = Outcome(MessageStatus.PROCESSED, "AA")
        except (IntegrityError, OperationalError):
            recorder.close()
            savepoint.rollback()
            raise
        except Exception as exc:
            outcome = ack_for_error(exc)
            if isinstance(exc, DomainError) and exc.location and exc.location[:1].islower():  # a domain key
                where = locate(profile, exc.location, msg, origins) or exc.location
                outcome = dataclasses.replace(outcome, error=dataclasses.replace(outcome.error, location=where))
            if not isinstance(exc, DomainError):
                log.exception("message %s: unexpected failure", row.id)
        changes = recorder.close()
        if training and outcome.status is MessageStatus.PROCESSED:
            warnings.append(LocatedWarning(f"MSH-11 {msg.value('MSH', 11).strip()}: a training message, checked "
                                           "and acknowledged, nothing applied", "MSH-11"))
            changes = []
        if dry_run or training or outcome.status is not MessageStatus.PROCESSED:
            savepoint.rollback()
        else:
            savepoint.commit()
        ack_text = build_ack(msg, outcome.ack_code, errors=self._ack_errors(msg, outcome, warnings),
                             app=self.settings.hl7_application, facility=self.settings.hl7_facility,
                             control_id=self._new_id(), now=self._now())
        ack = charsets.encode_text(ack_text, decoded.codec)
        error = outcome.error.text if outcome.error else ""
        reply = self._reply(msg, decoded, outcome.ack_code, ack, outcome.error)
        differs = reply is not ack
        if not dry_run and differs and _wanted(_condition(msg.value("MSH", 16)) or "AL", outcome.ack_code == "AA"):
            warnings.append(self._send_application_ack(session, msg, row, ack_text, decoded.codec))
        if not dry_run:
            store.finish(row, outcome.status, ack=ack, ack_code=outcome.ack_code, error=error, warnings=warnings,
                         changes=changes if outcome.status is MessageStatus.PROCESSED else [])
            row.reply = (reply or b"") if differs else None
        log.debug("message %s %s -> %s", row.id, row.message_type, outcome.ack_code)
        return Result(ack, outcome.status, outcome.ack_code, error, tuple(warnings),
                      changes if outcome.status is MessageStatus.PROCESSED else [], row.raw,
                      (reply or b"") if differs else None, differs), None

    def _send_application_ack(self, session: Session, msg: Message, row: InboundMessage, ack_text: str,
                              codec: str) -> str:
        """Enhanced mode (HL7 v2.5.1 2.9.3): the accept ACK answered on the connection, and MSH-16 asks for the
        application ACK too; that is a message of its own from us to the sender's application. It is written to
        the outbox (in this transaction) for the enabled destination that receives ``hl7.application_ack`` for
        this sender (its ``application``/``facility`` options, when set, equal MSH-3/MSH-4); with none, it stays
        in the store (``ack``) only. Returns the warning that says which."""
        code = ack_text.split("\r")[1][4:6] if "\rMSA" in ack_text else "?"
        for destination in self.settings.destinations:
            if (destination.enabled and APPLICATION_ACK in destination.kinds
                    and destination.application in ("", msg.sending_application)
                    and destination.facility in ("", msg.sending_facility)):
                cause = Cause("hl7", reference=msg.control_id, sender=row.sender, message_fk=row.id)
                [queued] = outbox.enqueue(session, APPLICATION_ACK, {"message": ack_text, "codec": codec,
                                                                   "sender": row.sender}, cause,
                                          destinations=[destination.name])
                return (f"application ACK {code} queued for {destination.name} ({destination.host}:"
                        f"{destination.port}, outbox message {queued.id}); the connection got the accept ACK")
        return (f"application ACK {code} not sent: no outbound destination receives {APPLICATION_ACK} for "
                f"{row.sender} (RIS_OUTBOUND_DESTINATIONS ...;kinds={APPLICATION_ACK};application=...); it is kept "
                f"here as this message's ACK, the connection got the accept ACK")

    @staticmethod
    def _ack_errors(msg: Message, outcome: Outcome, warnings: list[str]) -> list[ErrorDetail]:
        """The ERR segments of the ACK: the error; for an applied message of v2.5 or later, one ERR of severity
        W (table 0516) per warning (a value that could not be read and was left out, a charset mismatch...),
        with code 0 "message accepted" (table 0357), so the sender learns it without the message failing.
        Before v2.5 the ERR segment has no severity, so warnings stay in the message store only."""
        if outcome.error:
            return [outcome.error]
        if outcome.ack_code != "AA" or not warnings or (version_tuple(msg.version) or (0,)) < (2, 5):
            return []
        return [ErrorDetail("0", warning[:250], getattr(warning, "location", None), "W") for warning in warnings[:10]]

    @staticmethod
    def _remember_keys(row: InboundMessage, changed) -> None:
        """Index the message by the patient and accession it changed (for the message search)."""
        patient_id = getattr(changed, "patient_id", None) or getattr(getattr(changed, "patient", None), "patient_id", None)
        if patient_id and not row.patient_key:
            row.patient_key = patient_id[:64]
        if getattr(changed, "accession_number", None) and not row.accession_number:
            row.accession_number = changed.accession_number[:16]

    def _store_batch(self, session: Session, row: InboundMessage, decoded) -> list[int]:
        """Store each message of a batch (HL7 v2.5.1 2.10.3) as its own message, once."""
        row.message_type = "BATCH"
        row.charset = decoded.codec
        header = self._batch_header(decoded)
        row.sender = f"{header['app']}^{header['facility']}"[:255]
        row.control_id = header["control_id"][:199]
        existing = store.batch_children(session, row)
        if existing:
            return [child.id for child in existing]
        ids = []
        for text in split_messages(decoded.text):
            child = store.store_received(session, charsets.encode_text(text, decoded.codec), transport="batch",
                                         peer=row.peer, received_at=row.received_at)
            child.batch_fk = row.id
            ids.append(child.id)
        return ids

    def _process_batch(self, msg_id: int, batch, *, reprocess: bool, dry_run: bool) -> "Result":
        """Apply every message of the batch in order; the answer is a batch of their ACKs."""
        decoded, child_ids = batch
        results = [self._with_retries(cid, reprocess=reprocess, dry_run=dry_run) for cid in child_ids]
        ack = charsets.encode_text(self._batch_ack(decoded, results), decoded.codec)
        worst = "AA" if all(r.ack_code in ("AA", "CA") for r in results) else "AE"
        status = MessageStatus.PROCESSED if worst == "AA" else MessageStatus.ERROR
        if not dry_run:
            with unit_of_work(self.factory) as session:
                row = session.get(InboundMessage, msg_id)
                store.finish(row, status, ack=ack, ack_code=worst,
                             error="" if worst == "AA" else "a message of the batch was not applied")
        return Result(ack, status, worst, "", (), [c for r in results for c in r.changes])

    @staticmethod
    def _batch_header(decoded) -> dict[str, str]:
        """The fields of the FHS or BHS that opens a batch (HL7 v2.5.1 2.15.2/2.15.5): separator, encoding
        characters, sending application and facility (-3/-4), control id (-11), file or batch kind."""
        header = decoded.text.lstrip(" \t\r\n\x00\x0b\x1c\ufeff")
        sep = header[3] if len(header) > 3 else "|"
        fields = header.split("\r", 1)[0].split("\n", 1)[0].split(sep)

        def field(n: int, default: str = "") -> str:
            return fields[n - 1] if len(fields) > n - 1 else default
        return {"sep": sep, "encoding": field(2, "^~\\&"), "app": field(3), "facility": field(4),
                "control_id": field(11), "file": "1" if header.startswith("FHS") else ""}

    def _batch_ack(self, decoded, results: list["Result"]) -> str:
        """BHS ... one ACK per message ... BTS (wrapped in FHS/FTS when the batch came in a file)."""
        h = self._batch_header(decoded)
        sep = h["sep"]
        now = timestamps.format_dtm(self._now().replace(microsecond=0))
        head = sep.join(["", h["encoding"], self.settings.hl7_application, self.settings.hl7_facility, h["app"],
                         h["facility"], now, "", "", "", self._new_id(), h["control_id"]])
        acks = "".join(r.ack.decode(decoded.codec, errors="replace") for r in results)
        lines = [f"BHS{head}", acks.rstrip("\r"), f"BTS{sep}{len(results)}"]
        if h["file"]:
            lines = [f"FHS{head}", *lines, f"FTS{sep}1"]
        return "\r".join(lines) + "\r"

    def _context(self, msg: Message, row: InboundMessage, profile: Profile) -> Context:
        """Times without an offset are in MSH-7's zone, else the profile's, else the site's
        (HL7 v2.5.1 chapter 2A, data type DTM: a time without offset is the sender's local time)."""
        message_tz = ZoneInfo(profile.timezone) if profile.timezone else None
        try:
            sent = timestamps.parse_dtm(msg.value("MSH", 7))
            if sent is not None and sent.tzinfo is not None:
                message_tz = sent.tzinfo
        except ValueError:
            pass
        received = row.received_at.replace(tzinfo=dt.timezone.utc)
        return Context(received_at=received, site_tz=self.site_tz, message_tz=message_tz,
                       parse_dtm=timestamps.parse_dtm, parse_date=timestamps.parse_date)

    def _finish_failed(self, msg_id: int, exc: Exception) -> "Result":
        log.error("message %s failed after retries: %s", msg_id, exc)
        with unit_of_work(self.factory) as session:
            row = session.get(InboundMessage, msg_id)
            outcome = Outcome(MessageStatus.ERROR, "AE", ErrorDetail("206", f"database busy: {type(exc).__name__}"))
            ack = self._ack_or_reject(row.raw, outcome)
            store.finish(row, outcome.status, ack=ack, ack_code="AE", error=str(exc)[:4000])
            return Result(ack, outcome.status, "AE", str(exc)[:4000])

    def reject_oversize(self, head: bytes, size: int, peer: str) -> bytes:
        """A frame larger than RIS_HL7_MAX_MESSAGE_SIZE: its head is kept, the answer is AR."""
        problem = (f"message too large: {size} bytes, the limit is {self.settings.hl7_max_message_size} "
                   f"(RIS_HL7_MAX_MESSAGE_SIZE)")
        outcome = Outcome(MessageStatus.REJECTED, "AR", ErrorDetail("207", problem, "MSH"))
        ack = self._ack_or_reject(head, outcome)
        try:
            with unit_of_work(self.factory) as session:
                row = store.store_received(session, head, transport="mllp", peer=peer)
                row.size = size
                self._label_from_header(row, head.decode("latin-1"))
                store.finish(row, outcome.status, ack=ack, ack_code="AR", error=problem,
                             warnings=["only the first bytes of the message are kept"])
        except Exception:
            log.exception("could not record an oversize message from %s", peer)
        return ack

    @staticmethod
    def _label_from_header(row: InboundMessage, text: str) -> None:
        """Sender, control id and type read from the MSH line alone, for a message that cannot be read whole
        (so that the analyst finds it by its control id)."""
        line = text.lstrip(" \t\r\n\x00\x0b\x1c\ufeff").split("\r", 1)[0].split("\n", 1)[0]
        try:
            head = parse(line)
        except HL7ParseError:  # even the MSH line cannot be tokenized: what a split on MSH-1 shows
            echo = scrape_header(line)
            row.sender = f"{echo.sending_application}^{echo.sending_facility}"[:255] if echo.control_id else ""
            row.control_id = echo.control_id[:199]
            return
        row.sender = f"{head.sending_application}^{head.sending_facility}"[:255]
        row.control_id = head.control_id[:199]
        row.message_type = message_type(head)[:32]

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
            return self._reject(raw.decode("latin-1"), outcome)

    def _reject(self, text: str, outcome: Outcome) -> bytes:
        """The ACK for a message that cannot be tokenized, built from what its header shows."""
        ack = build_reject_for_unparsable(text, outcome.ack_code, outcome.error, app=self.settings.hl7_application,
                                          facility=self.settings.hl7_facility, control_id=self._new_id(),
                                          now=self._now())
        return ack.encode("latin-1", "replace")

    def _new_id(self) -> str:
        """Control id of our ACKs: unique per process start and message (MSH-10, ST 20)."""
        return f"{self._prefix}{next(self._ids):08d}"[:20]

    def _now(self) -> dt.datetime:
        return dt.datetime.now(self.site_tz)
