"""Web pages for the department and its interface analysts (issue 8): server-rendered Jinja templates,
every asset served from ``static/`` (no CDN), sign-in with roles, CSRF tokens on every form, and an
audit trail of every view of patient data and every change.

The blueprint ``web`` is registered by the composition root (interfaces.runtime.build_wsgi_app); on
registration it sets the session cookie up (signed, HttpOnly, SameSite=Lax, idle expiry) and guards the
JSON API and FHIR when RIS_AUTH_REQUIRED is on (see security.py).
"""

from __future__ import annotations

from flask import Blueprint

web = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/assets")

from interfaces.web import security, pages, viewer  # noqa: E402,F401  (routes register on import)
