"""WSGI entry for the web side alone (e.g. ``waitress-serve wsgi:app``, or gunicorn): the JSON API and
FHIR on the configured database. ``ris serve`` runs the same application in-process with the listeners."""

from app.db import make_engine, make_session_factory, upgrade
from config.settings import load_settings
from interfaces.runtime import build_wsgi_app

settings = load_settings()
_engine = make_engine(settings.database)
upgrade(_engine)
app = build_wsgi_app(settings, make_session_factory(_engine), make_session_factory(_engine, read_only=True))
