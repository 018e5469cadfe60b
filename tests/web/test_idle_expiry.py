"""Idle expiry while the board is open: the board's own refresh (X-RIS-Refresh: 1) is served but is no activity, so
it does not renew the session; the user's own requests do."""

from __future__ import annotations

import dataclasses
import time

from app.models import Role
from interfaces.runtime import build_wsgi_app
from interfaces.web.security import BACKGROUND_HEADER
from tests.web.conftest import sign_in

BACKGROUND = {BACKGROUND_HEADER: "1"}


def test_a_background_refresh_does_not_renew_the_cookie(client_as):
    client = client_as(Role.TECHNOLOGIST)
    own = client.get("/board")
    assert own.status_code == 200 and "ris_session=" in own.headers.get("Set-Cookie", "")
    background = client.get("/board", headers=BACKGROUND)
    assert background.status_code == 200 and 'id="board-results"' in background.text
    assert "Set-Cookie" not in background.headers


def test_an_open_board_does_not_keep_an_idle_session_alive(web_settings, session_factory, read_factory, users):
    app = build_wsgi_app(dataclasses.replace(web_settings, session_idle_minutes=0.02), session_factory, read_factory)
    board, active = app.test_client(), app.test_client()
    for client in (board, active):
        assert sign_in(client, users[Role.SCHEDULER]).status_code == 302
    answers = {"board": [], "active": []}
    for _ in range(5):             # every 0.6 s for 3 s; the session lasts 1.2 s without activity
        time.sleep(0.6)
        answers["board"].append(board.get("/board", headers=BACKGROUND).status_code)
        answers["active"].append(active.get("/board").status_code)
    assert answers["active"] == [200] * 5                   # the user's own requests keep it alive
    assert answers["board"][0] == 200 and answers["board"][-1] == 302   # the refreshes alone let it end
    assert board.get("/board").status_code == 302           # and it stays ended
