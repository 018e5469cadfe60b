"""The HTTP side: a Flask application factory (health, JSON API); other blueprints (FHIR) are
registered by the composition root (interfaces.runtime)."""

from __future__ import annotations

from flask import Flask

from interfaces.http.api import api
from interfaces.http.mappings_api import mappings_api
from interfaces.http.outbox_api import outbox_api
from interfaces.http.problems import register_problem_handlers


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
    register_problem_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(outbox_api)
    app.register_blueprint(mappings_api)
    for bp in blueprints:
        app.register_blueprint(bp)
    return app
