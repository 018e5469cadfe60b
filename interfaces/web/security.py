"""Sign-in, roles, CSRF and the audit trail of the web side.

- Sessions: Flask's signed cookie (HttpOnly, SameSite=Lax, Secure when RIS_COOKIE_SECURE), ending after
  RIS_SESSION_IDLE_MINUTES without a request of the user (a page's own background refresh, header
  ``X-RIS-Refresh: 1``, does not count: :class:`IdleExpirySessions`); it holds the user id and a fingerprint
  of the password hash, so a changed password or a deactivated user ends every session at the next request.
- CSRF: a random token per session, required in every POST form (``csrf_token``) and, for API calls
  authenticated by the cookie, in the ``X-CSRF-Token`` header of every unsafe method.
- Roles: pages check a permission of app.services.auth and answer 403 to a user without it.
- The JSON API and FHIR: open unless RIS_AUTH_REQUIRED is on; then 401 without a signed-in user (or the bearer
  token RIS_API_TOKEN, whose role is RIS_API_TOKEN_ROLE) and 403 without a role that may use the area
  (/health and /fhir/metadata stay open).
- Audit: pages record their own events; every other successful API/FHIR read of patient data and every
  API change is recorded after the response is built.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

from flask import abort, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException

from app.db import unit_of_work
from app.errors import Conflict, DomainError, InvalidInput, NotFound
from app.models import utcnow
from app.services import audit, auth
from config.settings import SettingsError
from interfaces.web import web
from interfaces.web.forms import Form

log = logging.getLogger("interfaces.web")

_API_AREAS = (("/api/messages", "messages"), ("/api/mappings", "messages"), ("/api/outbox", "messages"),
              ("/api/", "patients"), ("/fhir/", "patients"), ("/dicomweb/", "images"))
_OPEN_PATHS = ("/health", "/fhir/metadata")
_UNSAFE = ("POST", "PUT", "PATCH", "DELETE")
MAX_FAILED_LOGINS = 10                 # per username within LOCKOUT: then sign-in is refused until they age out
LOCKOUT = dt.timedelta(minutes=15)


# Setup ---------------------------------------------------------------------------------------
def _stored_secret(data_dir) -> str:
    """A random key kept in <data_dir>/secret_key (created once, readable by the owner only)."""
    path = Path(data_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


BACKGROUND_HEADER = "X-RIS-Refresh"   # sent by the pages' own refreshes (board.js); "1" = not the user's doing


def is_background() -> bool:
    """Whether the request is one a page made by itself (the board's auto refresh), not an action of its user."""
    return request.headers.get(BACKGROUND_HEADER) == "1"


class IdleExpirySessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, renewed by every request of the user but not by background requests: the
    board's refresh every 30 s would otherwise keep a session alive for as long as a screen shows the board, and
    RIS_SESSION_IDLE_MINUTES would never end it. A background request is served as usual (a session that has ended
    gets the sign-in page), but its response carries no renewed cookie, so the cookie's signed time stays that of
    the user's last own request."""

    def should_set_cookie(self, app, session) -> bool:
        if is_background():
            return False
        return super().should_set_cookie(app, session)


@web.record_once
def _setup(state) -> None:
    app = state.app
    settings = app.config["RIS_SETTINGS"]
    if settings.api_token:
        try:
            auth.parse_role(settings.api_token_role)
        except InvalidInput as exc:
            raise SettingsError(f"RIS_API_TOKEN_ROLE: {exc.message}") from None
    app.secret_key = settings.secret_key or _stored_secret(settings.data_dir)
    app.config.update(SESSION_COOKIE_NAME="ris_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=settings.cookie_secure,
                      PERMANENT_SESSION_LIFETIME=dt.timedelta(minutes=settings.session_idle_minutes),
                      SESSION_REFRESH_EACH_REQUEST=True)
    app.session_interface = IdleExpirySessions()
    app.jinja_env.globals.update(may=lambda permission: bool(g.get("user")) and auth.may(g.user.role, permission),
                                 csrf_token=csrf_token)


def settings():
    return current_app.config["RIS_SETTINGS"]


def sessions():
    return current_app.extensions["ris.sessions"]


def reader():
    return unit_of_work(current_app.extensions["ris.read_sessions"])


# Users ---------------------------------------------------------------------------------------
def _fingerprint(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@web.before_app_request
def _load_user():
    g.user = None
    uid = session.get("uid")
    if isinstance(uid, int):
        with reader() as db:
            user = auth.active_user(db, uid)
            if user is not None and hmac.compare_digest(session.get("pwf", ""), _fingerprint(user.password_hash)):
                g.user = SimpleNamespace(id=user.id, username=user.username, role=user.role.value,
                                         full_name=user.full_name)
        if g.user is None:
            session.clear()
    if request.blueprint != "web":
        return _guard_api()
    return None


def _guard_api():
    path = request.path
    if not settings().auth_required or path in _OPEN_PATHS:
        return None
    area = next((perm for prefix, perm in _API_AREAS if path.startswith(prefix)), None)
    if area is None:
        return None
    by_token = g.user is None and _token_user()
    if g.user is None:
        abort(401, "sign in first, or send the API token (RIS_AUTH_REQUIRED is on)")
    if not auth.may(g.user.role, area):
        abort(403, f"the role {g.user.role} may not use {path}")
    if not by_token and request.method in _UNSAFE and not _csrf_ok(request.headers.get("X-CSRF-Token", "")):
        abort(403, "a request authenticated by the session cookie needs the X-CSRF-Token header")
    return None


def _token_user() -> bool:
    """``Authorization: Bearer <token>`` makes the request the token's (no cookie, so no CSRF check): a token
    made with ``ris token add`` (its role), or RIS_API_TOKEN (RIS_API_TOKEN_ROLE)."""
    kind, _, sent = request.headers.get("Authorization", "").partition(" ")
    sent = sent.strip()
    if kind.lower() != "bearer" or not sent:
        return False
    expected = settings().api_token
    if expected and hmac.compare_digest(sent.encode(), expected.encode()):
        g.user = SimpleNamespace(id=None, username="api-token",
                                 role=auth.parse_role(settings().api_token_role).value, full_name="RIS_API_TOKEN")
        return True
    with reader() as db:
        token = auth.token_for(db, sent)
        if token is None:
            return False
        g.user = SimpleNamespace(id=None, username=f"token:{token.name}", role=token.role.value,
                                 full_name=f"API token {token.name}")
    return True


def requires(permission: str):
    """The view answers 403 to a signed-in user whose role lacks ``permission``."""

    def wrap(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            if not auth.may(g.user.role, permission):
                record("denied", entity="page", entity_id=request.path)
                abort(403)
            return view(*args, **kwargs)

        return guarded

    return wrap


# CSRF ----------------------------------------------------------------------------------------
def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def _csrf_ok(sent: str) -> bool:
    expected = session.get("csrf", "")
    return bool(expected) and hmac.compare_digest(str(sent), expected)


@web.before_request
def _guard_pages():
    if request.endpoint in ("web.static",):
        return None
    if request.method in _UNSAFE and not _csrf_ok(request.form.get("csrf_token", "")):
        abort(400, "The form has expired or did not come from this site. Reload the page and try again.")
    if g.user is None and request.endpoint not in ("web.login",):
        return redirect(url_for("web.login", next=request.full_path if request.query_string else request.path))
    return None


@web.after_request
def _page_headers(response):
    response.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "web.static":
        response.headers.setdefault("Cache-Control", "no-store")
    return response


# Audit ---------------------------------------------------------------------------------------
def record(action: str, *, channel: str = "web", username: str = "", **fields) -> None:
    """One audit event for the current request, in its own unit of work (``username``: who tried, when
    nobody is signed in)."""
    user = g.get("user")
    with unit_of_work(sessions()) as db:
        audit.record(db, action, username=user.username if user else username, role=user.role if user else "",
                     source=request.remote_addr or "", channel=channel, **fields)


@web.after_app_request
def _audit_api(response):
    path = request.path
    if request.blueprint == "web" or path in _OPEN_PATHS or not path.startswith(("/api/", "/fhir/")):
        return response
    if path.startswith("/api/mappings") and request.method not in _UNSAFE:
        return response
    if response.status_code >= 400 or request.method in ("HEAD", "OPTIONS"):
        return response
    record("change" if request.method in _UNSAFE else "view", channel="fhir" if path.startswith("/fhir/") else "api",
           entity=path.split("/")[2], detail=request.full_path.rstrip("?"))
    return response


# Errors of pages -----------------------------------------------------------------------------
_TITLES = {400: "The request cannot be used", 401: "Sign in first", 429: "Too many attempts", 403: "Not allowed",
           404: "Not found", 405: "Not allowed here", 409: "Conflict", 422: "Cannot be done"}


def error_page(status: int, detail: str = ""):
    return render_template("error.html", status=status, title=_TITLES.get(status, "Error"), detail=detail), status


@web.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    detail = exc.description if exc.code != 403 else "Your role does not give access to this page."
    return error_page(exc.code or 500, detail if exc.code in (400, 403, 404, 405) else "")


@web.errorhandler(DomainError)
def _domain_error(exc: DomainError):
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else \
        400 if isinstance(exc, InvalidInput) else 422
    return error_page(status, exc.message)


@web.errorhandler(Exception)
def _unexpected(exc: Exception):
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_page(500, "Something went wrong; the engine log has the details.")


# Sign in and out -----------------------------------------------------------------------------
def safe_next(target: str) -> str:
    """Only a path of this site (no scheme, no host, no '//' or '\\' tricks) is followed after sign-in."""
    parts = urlsplit(target)
    if not target.startswith("/") or target.startswith(("//", "/\\")) or parts.scheme or parts.netloc:
        return url_for("web.home")
    return target


@web.route("/login", methods=["GET", "POST"])
def login():
    form = Form(request.form if request.method == "POST" else request.args, ("username", "password", "next"))
    form.values["password"] = ""  # never sent back
    next_page = safe_next(form.values["next"] or "/")
    if request.method == "GET":
        if g.user is not None:
            return redirect(next_page)
        return render_template("login.html", form=form)
    username = form.text("username", required=True)
    password = request.form.get("password", "")
    if not password:
        form.errors["password"] = "Enter your password."
    if not form.ok:
        return render_template("login.html", form=form), 400
    with reader() as db:
        failures = audit.failed_logins(db, username[:64], utcnow() - LOCKOUT)
    if failures >= MAX_FAILED_LOGINS:
        record("login-failed", username=username, detail=f"refused: {failures} failed attempts in {LOCKOUT}")
        form.errors["password"] = "Too many failed attempts for this username; try again in 15 minutes."
        return render_template("login.html", form=form), 429
    with unit_of_work(sessions()) as db:
        user = auth.authenticate(db, username, password)
        found = None if user is None else SimpleNamespace(id=user.id, username=user.username,
                                                            role=user.role.value, pwf=_fingerprint(user.password_hash))
    if found is None:
        record("login-failed", username=username, detail="unknown user, inactive user or wrong password")
        form.errors["password"] = "The username or the password is not right."
        return render_template("login.html", form=form), 401
    session.clear()
    session.permanent = True
    session.update(uid=found.id, pwf=found.pwf, csrf=secrets.token_urlsafe(32))
    g.user = found
    record("login")
    return redirect(next_page)


@web.post("/logout")
def logout():
    record("logout")
    session.clear()
    return redirect(url_for("web.login"))


@web.get("/")
def home():
    for permission, endpoint in (("board", "web.board"), ("messages", "web.messages"), ("audit", "web.audit_log")):
        if auth.may(g.user.role, permission):
            return redirect(url_for(endpoint))
    abort(403)
