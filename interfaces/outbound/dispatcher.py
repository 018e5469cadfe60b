"""The outbox dispatcher: claims due rows, renders and delivers them per destination, records each attempt
(DESIGN.md 3, "Out"; the claim rules are those of :mod:`app.services.outbox`).

One :meth:`Dispatcher.run_once` (called by the scheduler job ``dispatch_outbox``) works each destination's queue in
order: claim the oldest unfinished row if it is due (compare-and-set, committed before anything is sent, so
any number of dispatchers in any number of processes can share one database), render it at its first attempt (the
bytes are kept, so retries send the same bytes), deliver it outside any transaction, record the result. A transient
failure backs the row off and ends the destination's turn - the rows after it wait, so nothing overtakes it; a
permanent failure dead-letters it and the queue moves on. The claim's lease covers the longest attempt (connect +
reply, each bounded by the timeout) with a wide margin, so a live dispatcher never loses its row to another.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy.orm import Session, sessionmaker

from app.db import unit_of_work
from app.models import OutboxStatus
from app.services import outbox
from app.storage import ArchiveStore
from config.settings import Settings
from interfaces.dicom.network import forward_nodes
from interfaces.outbound.channel import Channel, DeliveryError, PermanentError, TransientError
from interfaces.outbound.dicom import DicomStoreChannel
from interfaces.outbound.mllp import HL7MLLPChannel


log = logging.getLogger("interfaces.outbound")


def worker_name() -> str:
    """This dispatcher's name in ``claimed_by``: host, process and a random part (two in one process differ)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Dispatcher:
    def __init__(self, session_factory: sessionmaker[Session], channels: Iterable[Channel], *,
                 timeout: float = 10.0, max_attempts: int = 10, backoff_s: float = 5.0, backoff_max_s: float = 600.0,
                 batch: int = 100, worker: str | None = None,
                 more_channels: Callable[[], Iterable[Channel]] | None = None) -> None:
        self.sessions = session_factory
        self.channels = list(channels)
        self.more_channels = more_channels   # destinations that come and go (FHIR subscriptions): asked each run
        self.worker = worker or worker_name()
        self.lease_s = 4 * timeout + 60
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.batch = batch

    def run_once(self) -> dict[str, int]:
        """Deliver what is due, destination by destination; returns how many rows each one finished."""
        more = list(self.more_channels()) if self.more_channels is not None else []
        return {channel.name: self._drain(channel) for channel in [*self.channels, *more]}

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def _drain(self, channel: Channel) -> int:
        finished = 0
        for _ in range(self.batch):
            status = self._attempt(channel)
            if status not in outbox.FINAL:
                break  # nothing due, or backing off: the rows behind it wait
            finished += 1
        return finished

    def _attempt(self, channel: Channel) -> OutboxStatus | None:
        """Claim, render, deliver and record the next row of ``channel``; None when none is due."""
        with unit_of_work(self.sessions) as session:
            row = outbox.claim_next(session, channel.name, self.worker, lease_s=self.lease_s)
            if row is None:
                return None
            row_id, message_id, attempt = row.id, row.message_id, row.attempts
            if row.rendered is None:
                try:
                    row.rendered = channel.render(row.kind, row.payload, row.message_id)
                except PermanentError as exc:
                    return self._record(session, channel, row_id, message_id, exc, attempt)
                except Exception as exc:  # noqa: BLE001 - a renderer bug dead-letters the row, never the job
                    log.exception("destination %s: rendering outbox message %s failed", channel.name, row_id)
                    return self._record(session, channel, row_id, message_id,
                                        PermanentError(f"rendering failed: {type(exc).__name__}: {exc}"), attempt)
            data = row.rendered
        try:
            reply = channel.deliver(data, message_id)
            error = None
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - an unexpected failure is retried, never lost
            log.exception("destination %s: delivering outbox message %s failed", channel.name, row_id)
            error = TransientError(f"{type(exc).__name__}: {exc}")
        with unit_of_work(self.sessions) as session:
            if error is not None:
                return self._record(session, channel, row_id, message_id, error, attempt)
            if not outbox.record_sent(session, row_id, self.worker, reply=reply):
                log.warning("destination %s: outbox message %s was sent but its claim had passed to another "
                            "dispatcher", channel.name, row_id)
                return OutboxStatus.SENT
        log.info("destination %s: sent %s (outbox %s, attempt %s)", channel.name, message_id, row_id, attempt)
        return OutboxStatus.SENT

    def _record(self, session: Session, channel: Channel, row_id: int, message_id: str, error: DeliveryError,
                attempt: int) -> OutboxStatus | None:
        status = outbox.record_failure(session, row_id, self.worker, error.reason,
                                       permanent=isinstance(error, PermanentError), max_attempts=self.max_attempts,
                                       backoff_s=self.backoff_s, backoff_max_s=self.backoff_max_s, reply=error.reply)
        level = logging.ERROR if status is OutboxStatus.DEAD else logging.WARNING
        log.log(level, "destination %s: %s (outbox %s, attempt %s) %s: %s", channel.name, message_id, row_id, attempt,
                status.value if status else "lost its claim", error.reason)
        return status


# Wiring (used by the composition root) -----------------------------------------------------------
def route_destinations(settings: Settings, session_factory: sessionmaker[Session]) -> None:
    """Make the sessions of ``session_factory`` write outbox rows for every enabled destination of each kind
    (forwarding rows name their DICOM destinations themselves, interfaces.dicom.storage)."""
    routes: dict[str, list[str]] = {}
    for destination in settings.destinations:
        if destination.enabled:
            for kind in destination.kinds:
                routes.setdefault(kind, []).append(destination.name)
    outbox.route(session_factory, routes)


def build_dispatcher(settings: Settings, session_factory: sessionmaker[Session]) -> Dispatcher | None:
    """The dispatcher for the enabled destinations of ``settings`` and its DICOM forwarding nodes; None when there
    is none."""
    channels: list[Channel] = [HL7MLLPChannel(d, application=settings.hl7_application,
                                              facility=settings.hl7_facility, timeout=settings.outbox_timeout,
                                              zone=settings.site_timezone)
                               for d in settings.destinations if d.enabled]
    channels += forwarding_channels(settings, session_factory)
    if not channels:
        return None
    return Dispatcher(session_factory, channels, timeout=settings.outbox_timeout,
                      max_attempts=settings.outbox_max_attempts, backoff_s=settings.outbox_backoff_seconds,
                      backoff_max_s=settings.outbox_backoff_max_seconds)


def forwarding_channels(settings: Settings, session_factory: sessionmaker[Session]) -> list[Channel]:
    """One C-STORE channel per node of setting dicom_forward (interfaces.outbound.dicom)."""
    nodes = forward_nodes(settings)
    store = ArchiveStore(settings.archive_path)
    return [DicomStoreChannel(node, calling_aet=settings.dicom_aet, store=store, read_factory=session_factory,
                              coerce_on_retrieve=settings.dicom_coerce_on_retrieve, timeout=settings.outbox_timeout)
            for node in nodes]
