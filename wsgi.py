"""WSGI entry for the web side alone (e.g. ``waitress-serve wsgi:app``, or gunicorn): the JSON API, FHIR and the
pages on the configured database. It is composed by the same function as ``ris serve``'s
(:func:`interfaces.runtime.open_database`), so both write the same outbox rows and keep the same site time."""

from config.settings import load_settings
from interfaces.runtime import web_application

settings = load_settings()
app, database = web_application(settings)
_engine = database.engine
