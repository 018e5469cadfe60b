"""The composition root: builds every part of one engine process from its settings and runs it.

This is the one module that wires interfaces together: the database and archive (app), the
mapping profile (mappings), the MLLP listener with the HL7 intake, the DICOM AE, the HTTP side
(JSON API and FHIR) and the scheduler.
"""

from __future__ import annotations

import logging
import signal
import threading

from waitress.server import create_server

from app.db import make_engine, make_session_factory, upgrade
from app.storage import ArchiveStore
from config.settings import Settings
from config.tls import server_context
from interfaces.dicom.server import DicomServer
from interfaces.fhir.routes import fhir
from interfaces.hl7.intake import HL7Intake
from interfaces.http import create_app
from interfaces.mllp.server import MLLPServer
from interfaces.scheduler.jobs import make_scheduler
from mappings.profile import ProfileSet

log = logging.getLogger("interfaces.runtime")


def build_wsgi_app(settings: Settings, session_factory, read_factory, intake: HL7Intake | None = None):
    """The web application; ``intake`` serves message reprocessing (built here when not given)."""
    if intake is None:
        intake = HL7Intake(settings, session_factory, load_profile(settings))
    return create_app(settings, session_factory, read_factory, blueprints=[fhir],
                      services={"reprocess_message": intake.reprocess})


def load_profile(settings: Settings):
    return ProfileSet(settings.mappings_path).get(settings.mapping_profile)


class Engine:
    """Every listener of one engine process. ``start()`` returns once all listen; ``stop()`` ends them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        settings.archive_path.mkdir(parents=True, exist_ok=True)
        self.db = make_engine(settings.database)
        upgrade(self.db)
        self.sessions = make_session_factory(self.db)
        self.read_sessions = make_session_factory(self.db, read_only=True)
        self.profile = load_profile(settings)
        self.intake = HL7Intake(settings, self.sessions, self.profile)
        self.mllp = MLLPServer(self.intake.handle_frame, settings.host, settings.mllp_port,
                               max_message_size=settings.hl7_max_message_size,
                               idle_timeout=settings.mllp_idle_timeout, workers=settings.mllp_workers,
                               max_connections=settings.mllp_max_connections,
                               ssl_context=server_context(settings.mllp_tls_cert, settings.mllp_tls_key,
                                                          settings.mllp_tls_ca),
                               ordering_key=self.intake.ordering_key)
        self.dicom = DicomServer(settings, self.sessions, self.read_sessions, ArchiveStore(settings.archive_path))
        self.wsgi = build_wsgi_app(settings, self.sessions, self.read_sessions, self.intake)
        self.http = None
        self.scheduler = make_scheduler(settings, self.sessions, self.intake) if settings.scheduler_enabled else None
        self._http_thread: threading.Thread | None = None

    def start(self) -> None:
        self.mllp.start()
        self.dicom.start()
        self.http = create_server(self.wsgi, host=self.settings.host, port=self.settings.http_port, threads=8)
        self._http_thread = threading.Thread(target=self.http.run, name="http", daemon=True)
        self._http_thread.start()
        if self.scheduler is not None:
            self.scheduler.start()
        s = self.settings
        log.info("database %s", self.db.url.render_as_string(hide_password=True))
        log.info("mapping profile %s (%s)", self.profile.label, self.profile.file)
        log.info("MLLP (HL7 v2%s) listening on %s:%s", " over TLS" if s.mllp_tls_cert else "", s.host, self.mllp.port)
        log.info("DICOM AE %s listening on %s:%s (echo, worklist, MPPS, storage; archive %s)",
                 s.dicom_aet, s.host, self.dicom.port, s.archive_path)
        log.info("HTTP listening on http://%s:%s (health /health, API /api, FHIR /fhir/metadata)",
                 s.host, self.http_port)

    @property
    def http_port(self) -> int:
        return self.http.effective_port if self.http is not None else 0

    def stop(self) -> None:
        log.info("stopping")
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.mllp.stop()
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
