"""The HTTP side: a Flask application factory (health, JSON API); other blueprints (FHIR) are
registered by the composition root (interfaces.runtime)."""

from __future__ import annotations

from flask import Flask, request

from interfaces.http.api import api
from interfaces.http.mappings_api import mappings_api
from interfaces.http.outbox_api import outbox_api
from interfaces.http.procedures_api import procedures_api
from interfaces.http.scheduling_api import scheduling_api
from interfaces.http.problems import register_problem_handlers
from interfaces.inputs import RecordIdConverter, refuse_nul_characters
from interfaces.http.reconciliation_api import reconciliation_api


def create_app(settings, session_factory, read_factory, *, blueprints=(), services=None) -> Flask:
    """Build the web application. ``settings``, the session factories and the services of other
    adapters (``services``: e.g. ``reprocess_message``) are passed in, so tests give their own
    (Flask tutorial's factory pattern)."""
    app = Flask("ris")
    app.config["RIS_SETTINGS"] = settings
    app.extensions["ris.sessions"] = session_factory
    app.extensions["ris.read_sessions"] = read_factory
    app.extensions["ris.services"] = dict(services or {})
    app.json.sort_keys = False
    # Every <int:...> of every blueprint is a record number with bounds (interfaces.inputs); set before any
    # blueprint adds its routes.
    app.url_map.converters["int"] = RecordIdConverter
    app.before_request(lambda: refuse_nul_characters(request))   # first of every request's checks
    register_problem_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(outbox_api)
    app.register_blueprint(procedures_api)
    app.register_blueprint(scheduling_api)
    app.register_blueprint(reconciliation_api)
    app.register_blueprint(mappings_api)
    for bp in blueprints:
        app.register_blueprint(bp)
    return app
