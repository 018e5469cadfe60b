"""Sign-in, roles, CSRF, session cookies and the API guard (RIS_AUTH_REQUIRED), through Flask's test client."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest

from app.db import unit_of_work
from app.models import ApiToken, AuditEvent, Role, User
from app.services import auth
from interfaces.runtime import build_wsgi_app
from tests.corpus import REPO
from tests.web.conftest import PASSWORD, USERS, csrf_of, order_message, sign_in

PAGES = {"/board": "board", "/patients": "patients", "/orders/1": "patients", "/messages": "messages",
         "/admin/audit": "audit", "/studies/1.2.3/viewer": "images"}


def test_pages_send_a_stranger_to_the_login_page(app):
    client = app.test_client()
    for page in PAGES:
        response = client.get(page)
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")


def test_sign_in_sets_a_safe_session_cookie_and_sign_out_ends_it(app, users):
    client = app.test_client()
    response = sign_in(client, users[Role.SCHEDULER])
    assert response.status_code == 302 and response.headers["Location"] == "/"
    cookie = next(v for k, v in response.headers.items() if k == "Set-Cookie" and v.startswith("ris_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Expires=" in cookie
    assert client.get("/").headers["Location"] == "/board"
    board = client.get("/board")
    assert board.status_code == 200 and "scheduler-user (scheduler)" in board.text
    assert client.post("/logout", data={"csrf_token": csrf_of(board.text)}).status_code == 302
    assert client.get("/board").status_code == 302


def test_a_wrong_password_keeps_the_username_and_says_so_next_to_the_field(app, users):
    client = app.test_client()
    response = sign_in(client, users[Role.ANALYST], "not the password")
    assert response.status_code == 401
    assert 'value="analyst-user"' in response.text
    assert 'aria-invalid="true" aria-describedby="e-password"' in response.text
    assert "The username or the password is not right." in response.text
    assert "not the password" not in response.text
    assert sign_in(client, "nobody", PASSWORD).status_code == 401
    empty = client.post("/login", data={"username": "", "password": "", "csrf_token": csrf_of(client.get("/login").text)})
    assert empty.status_code == 400 and "Enter a value." in empty.text and "Enter your password." in empty.text


def test_sign_in_follows_only_paths_of_this_site(app, users):
    client = app.test_client()
    for target, expected in (("/messages?status=ERROR", "/messages?status=ERROR"), ("https://evil.example/", "/"),
                             ("//evil.example/x", "/"), ("/\\evil.example", "/")):
        token = csrf_of(client.get("/login").text)
        response = client.post("/login", data={"username": users[Role.ANALYST], "password": PASSWORD,
                                               "csrf_token": token, "next": target})
        assert response.headers["Location"] == expected, target
        client.post("/logout", data={"csrf_token": csrf_of(client.get("/messages").text)})


@pytest.mark.parametrize("role", list(Role))
def test_each_role_gets_403_not_the_page_where_it_has_no_permission(client_as, role):
    client = client_as(role)
    for page, permission in PAGES.items():
        response = client.get(page)
        if auth.may(role, permission):
            assert response.status_code in (200, 404), (role, page)  # 404: order 1 / the study does not exist
        else:
            assert response.status_code == 403, (role, page)
            assert "Your role does not give access to this page." in response.text
            assert "<table" not in response.text


def test_reprocess_is_refused_to_a_role_without_it(client_as, intake):
    intake.handle(order_message())
    client = client_as(Role.RADIOLOGIST)
    token = csrf_of(client.get("/board").text)
    assert client.post("/messages/1/reprocess", data={"csrf_token": token, "mode": "apply"}).status_code == 403


def test_forms_without_the_csrf_token_are_refused(app, client_as, users, intake):
    intake.handle(order_message())
    stranger = app.test_client()
    assert stranger.post("/login", data={"username": users[Role.ANALYST], "password": PASSWORD}).status_code == 400
    client = client_as(Role.ANALYST)
    for data in ({"mode": "dry-run"}, {"mode": "dry-run", "csrf_token": "forged"}):
        response = client.post("/messages/1/reprocess", data=data)
        assert response.status_code == 400 and "The form has expired" in response.text
    assert client.post("/logout").status_code == 400
    assert client.get("/messages").status_code == 200  # still signed in


def test_a_changed_password_or_a_deactivated_user_ends_the_session(client_as, session_factory, users):
    client = client_as(Role.TECHNOLOGIST)
    assert client.get("/board").status_code == 200
    with unit_of_work(session_factory) as db:
        auth.set_password(db, users[Role.TECHNOLOGIST], "another long password")
    assert client.get("/board").status_code == 302
    other = client_as(Role.SCHEDULER)
    with unit_of_work(session_factory) as db:
        auth.find_user(db, users[Role.SCHEDULER]).active = False
    assert other.get("/board").status_code == 302
    assert sign_in(other, users[Role.SCHEDULER]).status_code == 401


def test_an_idle_session_expires(web_settings, session_factory, read_factory, users):
    app = build_wsgi_app(dataclasses.replace(web_settings, session_idle_minutes=0.01), session_factory, read_factory)
    client = app.test_client()
    assert sign_in(client, users[Role.SCHEDULER]).status_code == 302
    assert client.get("/board").status_code == 200
    time.sleep(2.1)  # the cookie's signature carries whole seconds
    assert client.get("/board").status_code == 302


def test_passwords_are_stored_as_salted_hashes(session_factory, users):
    with unit_of_work(session_factory) as db:
        hashes = [u.password_hash for u in db.query(User)]
    assert len(set(hashes)) == len(USERS) and all(h.startswith("scrypt$") and PASSWORD not in h for h in hashes)
    assert auth.check_password(hashes[0], PASSWORD) and not auth.check_password(hashes[0], PASSWORD + "x")
    assert not auth.check_password("garbage", PASSWORD)


def test_api_stays_open_by_default(app):
    assert app.test_client().get("/api/orders").status_code == 200


@pytest.fixture
def guarded(web_settings, session_factory, read_factory, users):
    app = build_wsgi_app(dataclasses.replace(web_settings, auth_required=True), session_factory, read_factory)
    app.testing = True
    return app


def test_with_auth_required_the_api_needs_a_signed_in_user_with_the_role(guarded, users, intake):
    intake.handle(order_message())
    stranger = guarded.test_client()
    assert stranger.get("/health").status_code == 200
    assert stranger.get("/fhir/metadata").status_code == 200
    response = stranger.get("/api/orders")
    assert response.status_code == 401 and response.mimetype == "application/problem+json"
    assert stranger.get("/fhir/Patient").status_code == 401
    assert stranger.get("/fhir/Patient").json["resourceType"] == "OperationOutcome"

    clinician = guarded.test_client()
    sign_in(clinician, users[Role.RADIOLOGIST])
    assert clinician.get("/api/orders").json["count"] == 1
    assert clinician.get("/api/messages").status_code == 403

    analyst = guarded.test_client()
    sign_in(analyst, users[Role.ANALYST])
    assert analyst.get("/api/messages").json["count"] == 1
    assert analyst.post("/api/messages/1/reprocess?dry_run=true").status_code == 403  # no X-CSRF-Token
    token = csrf_of(analyst.get("/messages").text)
    response = analyst.post("/api/messages/1/reprocess?dry_run=true", headers={"X-CSRF-Token": token})
    assert response.status_code == 200 and response.json["dry_run"] is True


def test_api_reads_and_changes_are_audited(app, users, intake, session_factory):
    intake.handle(order_message())
    client = app.test_client()
    assert client.get("/api/orders?accession=WEB-ACC").status_code == 200
    assert client.post("/api/messages/1/reprocess?dry_run=true").status_code == 200
    with unit_of_work(session_factory) as db:
        events = [(e.action, e.channel, e.detail) for e in db.query(AuditEvent).order_by(AuditEvent.id)]
    assert events == [("view", "api", "/api/orders?accession=WEB-ACC"),
                      ("change", "api", "/api/messages/1/reprocess?dry_run=true")]


def test_ris_user_add_creates_a_user_who_can_sign_in(web_settings, db_url, app, tmp_path):
    env = {**os.environ, "RIS_DATA_DIR": str(tmp_path), "RIS_DATABASE_URL": db_url,
           "RIS_USER_PASSWORD": "the first admin's password"}
    run = subprocess.run([sys.executable, "-m", "interfaces", "user", "add", "chief", "--role", "administrator"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "added user chief with role administrator" in run.stdout
    again = subprocess.run([sys.executable, "-m", "interfaces", "user", "add", "Chief", "--role", "analyst"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "exists" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "interfaces", "user", "add", "x", "--role", "nurse"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "is not one of" in bad.stderr
    no_password = subprocess.run([sys.executable, "-m", "interfaces", "user", "add", "y", "--role", "analyst"],
                                 cwd=REPO, env={k: v for k, v in env.items() if k != "RIS_USER_PASSWORD"},
                                 capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert no_password.returncode == 2 and "RIS_USER_PASSWORD" in no_password.stderr
    client = app.test_client()
    assert sign_in(client, "chief", "the first admin's password").headers["Location"] == "/"
    assert client.get("/").headers["Location"] == "/board"
    assert client.get("/admin/audit").status_code == 200
    assert "added user chief" in client.get("/admin/audit?action=change").text


def test_the_api_token_opens_the_api_for_automation(web_settings, session_factory, read_factory, intake):
    from config.settings import SettingsError

    intake.handle(order_message())
    app = build_wsgi_app(dataclasses.replace(web_settings, auth_required=True, api_token="s3cret-token-for-tests"),
                         session_factory, read_factory)
    client = app.test_client()
    bearer = {"Authorization": "Bearer s3cret-token-for-tests"}
    assert client.get("/api/messages", headers=bearer).json["count"] == 1  # role: analyst (the default)
    assert client.post("/api/messages/1/reprocess?dry_run=true", headers=bearer).status_code == 200
    assert client.get("/api/orders", headers=bearer).status_code == 403
    assert client.get("/api/messages", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/board", headers=bearer).status_code == 302  # the token is not a sign-in to the pages
    with unit_of_work(session_factory) as db:
        assert db.query(AuditEvent).filter_by(username="api-token").count() == 2
    with pytest.raises(SettingsError, match="RIS_API_TOKEN_ROLE"):
        build_wsgi_app(dataclasses.replace(web_settings, api_token="x", api_token_role="boss"), session_factory,
                       read_factory)


def test_ris_token_add_gives_a_system_its_own_bearer_token_with_a_role(web_settings, db_url, session_factory,
                                                                        read_factory, intake, tmp_path):
    """`ris token add NAME --role R` prints the secret once (only its digest is kept); the JSON API and FHIR take it
    as a bearer token with that role; `ris token revoke` ends it; every change is audited (issue 8)."""
    env = {**os.environ, "RIS_DATA_DIR": str(tmp_path), "RIS_DATABASE_URL": db_url}

    def ris(*args):
        return subprocess.run([sys.executable, "-m", "interfaces", "token", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)

    added = ris("add", "his-fhir", "--role", "scheduler")
    assert added.returncode == 0, added.stderr
    secret = added.stdout.split("Authorization: Bearer ", 1)[1].strip()
    assert secret.startswith("ris_") and len(secret) > 40 and "shown once" in added.stderr
    assert ris("add", "HIS-FHIR", "--role", "analyst").returncode == 1                 # names are unique
    assert ris("add", "robot", "--role", "nurse").returncode == 1
    with unit_of_work(session_factory) as db:
        assert secret not in str([(t.name, t.digest) for t in db.query(ApiToken)])      # never stored as such
    intake.handle(order_message())
    app = build_wsgi_app(dataclasses.replace(web_settings, auth_required=True), session_factory, read_factory)
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/orders?accession=WEB-ACC", headers=bearer).status_code == 200   # scheduler: orders
    assert client.get("/api/messages", headers=bearer).status_code == 403                  # not the message store
    assert client.get("/api/orders", headers={"Authorization": f"Bearer {secret}x"}).status_code == 401
    assert "his-fhir\tscheduler\tactive" in ris("list").stdout
    assert ris("revoke", "his-fhir").returncode == 0
    assert client.get("/api/orders?accession=WEB-ACC", headers=bearer).status_code == 401
    assert ris("revoke", "nobody").returncode == 1
    with unit_of_work(session_factory) as db:
        details = [e.detail for e in db.query(AuditEvent).filter_by(entity="api_token").order_by(AuditEvent.id)]
        used = db.query(AuditEvent).filter_by(username="token:his-fhir").count()
    assert details == ["added API token his-fhir with role scheduler", "revoked API token his-fhir"]
    assert used == 1                                                                      # the order it read


def test_password_guessing_is_stopped_after_ten_failures(app, users):
    from interfaces.web.security import MAX_FAILED_LOGINS

    client = app.test_client()
    for _ in range(MAX_FAILED_LOGINS):
        assert sign_in(client, users[Role.ANALYST], "guess guess guess").status_code == 401
    refused = sign_in(client, users[Role.ANALYST])  # even the right password, for now
    assert refused.status_code == 429 and "Too many failed attempts" in refused.text
    assert sign_in(client, users[Role.SCHEDULER]).status_code == 302  # other users are not affected
