"""The board's actions in headless Chromium (issue 8 page 1): a technologist marks the patient arrived and starts the
procedure from the board, with the mouse and with the keyboard; the order page shows the status history with who
did it. Screenshots go where test_browser.py puts them."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from app.db import unit_of_work
from app.models import Role
from app.services import auth
from interfaces.mllp.client import MLLPClient
from tests.web.conftest import PASSWORD, order_message
from tests.web.test_browser import engine, page, pytestmark, shot  # noqa: F401 - fixtures and the Chromium guard


def test_a_technologist_moves_a_procedure_from_the_board(engine, page):  # noqa: F811 - fixtures
    with unit_of_work(engine.sessions) as db:
        auth.add_user(db, "toni", PASSWORD, Role.TECHNOLOGIST, full_name="Toni Technologist")
    base = f"http://127.0.0.1:{engine.http_port}"
    today = dt.datetime.now(ZoneInfo(engine.settings.site_timezone)).date()
    with MLLPClient("127.0.0.1", engine.mllp.port, timeout=30) as client:
        message = order_message("BOARD-1", "BD-ACC", "BOARD^BEN", "BD-PAT", today.strftime("%Y%m%d") + "101500")
        assert b"MSA|AA|BOARD-1" in client.send(message)

    page.goto(f"{base}/board")
    page.get_by_label("Username").fill("toni")
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/board")
    row = page.locator("tr", has=page.get_by_role("link", name="BD-ACC"))
    assert "SCHEDULED" in row.inner_text()
    assert row.get_by_role("button", name="Complete: BOARD, BEN, BD-ACC").count() == 0    # not yet
    with page.expect_navigation():       # the form posts and the board comes back on the same URL
        row.get_by_role("button", name="Arrived: BOARD, BEN, BD-ACC").click()
    row = page.locator("tr", has=page.get_by_role("link", name="BD-ACC"))
    assert "ARRIVED" in row.inner_text()
    shot(page, "board-actions")

    start = row.get_by_role("button", name="Start: BOARD, BEN, BD-ACC")
    start.focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")                               # the keyboard works as well as the mouse
    row = page.locator("tr", has=page.get_by_role("link", name="BD-ACC"))
    assert "IN PROGRESS" in row.inner_text()
    assert row.get_by_role("button", name="Complete: BOARD, BEN, BD-ACC").is_visible()

    page.get_by_role("link", name="BD-ACC").click()
    history = page.get_by_role("table", name="Status history of BD-ACC-RP")
    text = history.inner_text()
    assert text.count("toni (technologist via web)") == 2 and "ARRIVED" in text and "IN PROGRESS" in text
    assert "HL7 message BOARD-1 from HIS^HOSP" in text
    shot(page, "order-history")
