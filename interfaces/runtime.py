"""The composition root: builds every part of one engine process from its settings and runs it.

This is the one module that wires interfaces together: the database and archive (app), the
mapping profile (mappings), the MLLP listener with the HL7 intake, the DICOM AE, the HTTP side
(JSON API and FHIR) and the scheduler.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from dataclasses import dataclass

from sqlalchemy.engine import Engine as SAEngine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from waitress.server import create_server

from app.db import make_engine, make_session_factory, unit_of_work, upgrade
from app.errors import DomainError
from app.group_commit import GroupCommitter
from app.services import scheduling
from app.storage import ArchiveStore
from config.settings import Settings
from config.tls import server_context
from interfaces.dicom.dicomweb import dicomweb
from interfaces.dicom.server import DicomServer
from interfaces.fhir.routes import fhir
from interfaces.hl7.intake import HL7Intake
from interfaces.http import create_app
from interfaces.mllp.server import MLLPServer
from interfaces.fhir import subscription as fhir_subscription
from interfaces.outbound.dispatcher import Dispatcher, build_dispatcher, route_destinations
from interfaces.outbound.http import HttpChannel
from interfaces.scheduler.jobs import make_scheduler
from interfaces.mapping_tools import compare_candidates, mapping_test, worklist_preview
from interfaces.web import web
from mappings.profile import ProfileSet
from mappings.resources import ResourceFileError
from mappings.resources import read_folder as read_resources

log = logging.getLogger("interfaces.runtime")


@dataclass
class Database:
    """The database of one process and its two session factories, wired (:func:`wire_sessions`)."""

    engine: SAEngine
    sessions: sessionmaker
    read_sessions: sessionmaker

    def dispose(self) -> None:
        self.engine.dispose()


def wire_sessions(settings: Settings, session_factory: sessionmaker) -> None:
    """Tell every session of ``session_factory`` what the core needs from the settings: which destinations get outbox
    rows of which kind (IHE RAD-3 feedback, interfaces.outbound) and the site's zone (scheduling's "now"). The one
    place this is done, for ``ris serve`` and for the web side alone (wsgi.py) alike."""
    route_destinations(settings, session_factory)
    scheduling.configure(session_factory, settings.site_timezone)


def open_database(settings: Settings) -> Database:
    """The composition of the database side shared by every entry point (``ris serve``, wsgi.py): the engine, the
    schema brought up to date, both session factories wired, the scheduling resources of the data file loaded."""
    engine = make_engine(settings.database)
    upgrade(engine)
    database = Database(engine, make_session_factory(engine), make_session_factory(engine, read_only=True))
    for factory in (database.sessions, database.read_sessions):
        wire_sessions(settings, factory)
    try:
        load_resources(settings, database.sessions)
    except BaseException:
        engine.dispose()
        raise
    return database


def load_resources(settings: Settings, session_factory: sessionmaker) -> int:
    """Save the resources of the data files (RIS_RESOURCES_DIR, mappings.resources) - created, or replaced by name;
    resources made through the API and not in a file stay. Several processes may start at once: the one that loses
    the race for a new name tries again and replaces what the other wrote. Returns how many. A file or a value
    that cannot be used stops the start (:class:`StartupError` naming the file, line and key)."""
    try:
        found = read_resources(settings.resources_path)
        for attempt in range(2):
            try:
                with unit_of_work(session_factory) as session:
                    for data in found:
                        scheduling.save_resource(session, data)
                break
            except IntegrityError:
                if attempt:
                    raise
    except (ResourceFileError, DomainError) as exc:
        raise StartupError(f"scheduling resources in {settings.resources_path}: {exc} (fix the file, or point "
                           "RIS_RESOURCES_DIR elsewhere)") from None
    if found:
        log.info("%d scheduling resources from %s", len(found), settings.resources_path)
    return len(found)


def web_application(settings: Settings):
    """The web side alone (JSON API, FHIR, pages) on the configured database: what wsgi.py serves. Returns
    (application, database)."""
    database = open_database(settings)
    return build_wsgi_app(settings, database.sessions, database.read_sessions), database


def build_wsgi_app(settings: Settings, session_factory, read_factory, intake: HL7Intake | None = None):
    """The web application; ``intake`` serves message reprocessing and the mapping tools (built here
    when not given)."""
    fhir_subscription.watch(session_factory, settings)   # FHIR subscription notifications (idempotent)
    if intake is None:
        intake = HL7Intake(settings, session_factory, load_profiles(settings))
    return create_app(settings, session_factory, read_factory, blueprints=[fhir, dicomweb, web],
                      services={"reprocess_message": intake.reprocess,
                                "mapping_profiles": intake.profiles,
                                "describe_mappings": intake.profiles.describe,
                                "test_mapping": functools.partial(mapping_test, intake, settings),
                                "preview_worklist": functools.partial(worklist_preview, read_factory, settings),
                                "compare_mappings": functools.partial(compare_candidates, settings, session_factory)})


def load_profiles(settings: Settings) -> ProfileSet:
    """The mapping folder (RIS_MAPPINGS_DIR). Files that do not load are logged and left out; the
    default profile (RIS_MAPPING_PROFILE) must load."""
    profiles = ProfileSet(settings.mappings_path, settings.mapping_profile, strict=False)
    if settings.mapping_profile not in profiles.profiles and profiles.problems:
        raise profiles.problems[0]
    profiles.get(settings.mapping_profile)
    return profiles


def notification_channels(settings: Settings, session_factory, read_factory):
    """The outbox destinations of the FHIR subscriptions (interfaces.fhir.subscription), each an HTTP rest-hook
    (interfaces.outbound.http), asked for at every dispatcher run; subscriptions whose notifications went to the
    dead letter are set to status error first."""
    render = fhir_subscription.renderer(read_factory, settings)

    def channels() -> list[HttpChannel]:
        fhir_subscription.delivery_failed(session_factory)
        return [HttpChannel(t.name, t.endpoint, render=render, content_type=t.content_type, headers=t.headers,
                            timeout=settings.outbox_timeout) for t in fhir_subscription.targets(session_factory)]
    return channels


def build_delivery(settings: Settings, session_factory, read_factory) -> Dispatcher:
    """The outbox dispatcher: the configured HIS destinations and the FHIR subscriptions."""
    dispatcher = build_dispatcher(settings, session_factory) or Dispatcher(
        session_factory, [], timeout=settings.outbox_timeout, max_attempts=settings.outbox_max_attempts,
        backoff_s=settings.outbox_backoff_seconds, backoff_max_s=settings.outbox_backoff_max_seconds)
    dispatcher.more_channels = notification_channels(settings, session_factory, read_factory)
    return dispatcher


class StartupError(RuntimeError):
    """The engine cannot start; the message names the setting to change."""


@contextlib.contextmanager
def _listening(what: str, host: str, port: int, setting: str):
    try:
        yield
    except OSError as exc:
        raise StartupError(f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc} "
                           f"(change {setting} or RIS_HOST)") from exc


class Engine:
    """Every listener of one engine process. ``start()`` returns once all listen; ``stop()`` ends them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        settings.archive_path.mkdir(parents=True, exist_ok=True)
        self.database = open_database(settings)
        self.db, self.sessions, self.read_sessions = (self.database.engine, self.database.sessions,
                                                      self.database.read_sessions)
        self.profiles = load_profiles(settings)
        self.committer = GroupCommitter(self.sessions, name="hl7-group-commit") if settings.hl7_group_commit else None
        self.intake = HL7Intake(settings, self.sessions, self.profiles, self.committer)
        self.mllp = MLLPServer(self.intake.handle_frame, settings.host, settings.mllp_port,
                               max_message_size=settings.hl7_max_message_size,
                               idle_timeout=settings.mllp_idle_timeout, frame_timeout=settings.mllp_frame_timeout,
                               workers=settings.mllp_workers,
                               max_connections=settings.mllp_max_connections,
                               ssl_context=server_context(settings.mllp_tls_cert, settings.mllp_tls_key,
                                                          settings.mllp_tls_ca),
                               ordering_key=self.intake.ordering_key)
        self.dicom = DicomServer(settings, self.sessions, self.read_sessions, ArchiveStore(settings.archive_path))
        self.wsgi = build_wsgi_app(settings, self.sessions, self.read_sessions, self.intake)
        self.http = None
        self.dispatcher = (build_delivery(settings, self.sessions, self.read_sessions) if settings.scheduler_enabled
                           else None)
        self.scheduler = (make_scheduler(settings, self.sessions, self.intake, self.dispatcher)
                          if settings.scheduler_enabled else None)
        self._http_thread: threading.Thread | None = None

    def start(self) -> None:
        """Start every listener; a port that cannot be bound raises :class:`StartupError` naming its setting
        (what was started is stopped again)."""
        if self.committer is not None:
            self.committer.start()
        s = self.settings
        try:
            with _listening("MLLP", s.host, s.mllp_port, "RIS_MLLP_PORT"):
                self.mllp.start()
            with _listening("DICOM", s.host, s.dicom_port, "RIS_DICOM_PORT"):
                self.dicom.start()
            with _listening("HTTP", s.host, s.http_port, "RIS_HTTP_PORT"):
                self.http = create_server(self.wsgi, host=s.host, port=s.http_port, threads=8)
        except StartupError:
            self.stop()
            raise
        self._http_thread = threading.Thread(target=self.http.run, name="http", daemon=True)
        self._http_thread.start()
        if self.scheduler is not None:
            self.scheduler.start()
        s = self.settings
        log.info("database %s", self.db.url.render_as_string(hide_password=True))
        for profile in self.profiles.profiles.values():
            log.info("mapping profile %s (%s) for %s", profile.label, profile.file,
                     ", ".join(map(str, profile.senders)) or
                     ("other senders" if profile.name == s.mapping_profile else "no sender (a base)"))
        log.info("MLLP (HL7 v2%s) listening on %s:%s", " over TLS" if s.mllp_tls_cert else "", s.host, self.mllp.port)
        log.info("DICOM AE %s listening on %s:%s (echo, worklist, MPPS, storage; archive %s)",
                 s.dicom_aet, s.host, self.dicom.port, s.archive_path)
        log.info("HTTP listening on http://%s:%s (health /health, API /api, FHIR /fhir/metadata)",
                 s.host, self.http_port)
        for d in s.destinations:
            log.info("outbound destination %s: %s over MLLP to %s:%s%s", d.name, d.message, d.host, d.port,
                     "" if d.enabled else " (disabled)")

    @property
    def http_port(self) -> int:
        return self.http.effective_port if self.http is not None else 0

    def stop(self) -> None:
        log.info("stopping")
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.dispatcher is not None:
            self.dispatcher.close()
        self.mllp.stop()
        if self.committer is not None:
            self.committer.stop()
        self.dicom.stop()
        if self.http is not None:
            self.http.close()
            self._http_thread.join(timeout=5)
        self.db.dispose()
        log.info("stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
