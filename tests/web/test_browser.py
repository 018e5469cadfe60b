"""The pages in headless Chromium (Debian's chromium, driven by Playwright without a browser download):
sign in, see an order on the procedure board after an ORM arrives over a real MLLP connection, open the
order page, and see the image the modality sent over C-STORE drawn in the viewer (its pixels checked).

The engine runs in-process (interfaces.runtime.Engine) on ports chosen by the system, on loopback.
Screenshots of the pages go to test-artifacts/screenshots/ (or RIS_SCREENSHOTS)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
from pathlib import Path
from zoneinfo import ZoneInfo

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from app.db import unit_of_work
from app.models import Role
from app.queries.orders import search_orders
from app.services import auth
from interfaces.mllp.client import MLLPClient
from interfaces.runtime import Engine
from tests.corpus import REPO
from tests.web.conftest import PASSWORD, order_message

CHROMIUM = os.environ.get("RIS_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("RIS_SCREENSHOTS", REPO / "test-artifacts" / "screenshots"))

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() or shutil.which("chromium")),
    reason=f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install chromium chromium-driver; "
           "./test.sh does it) to run the browser tests")


@pytest.fixture
def engine(settings):
    engine = Engine(dataclasses.replace(settings, scheduler_enabled=False))
    engine.start()
    with unit_of_work(engine.sessions) as db:
        auth.add_user(db, "rita", PASSWORD, Role.RADIOLOGIST, full_name="Rita Radiologist")
    yield engine
    engine.stop()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    headless=True)
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        context.set_default_timeout(20_000)
        yield context.new_page()
        context.close()
        browser.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def c_store(port: int, aet: str, ds: pydicom.Dataset) -> None:
    ae = AE(ae_title="BROWSERCT")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()


def test_sign_in_see_the_order_on_the_board_open_it_and_view_its_image(engine, page):
    base = f"http://127.0.0.1:{engine.http_port}"
    today = dt.datetime.now(ZoneInfo(engine.settings.site_timezone)).date()

    page.goto(f"{base}/board")
    assert "/login" in page.url
    page.get_by_label("Username").fill("rita")
    page.get_by_label("Password").fill("wrong password!")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_text("The username or the password is not right.").is_visible()
    assert page.get_by_label("Username").input_value() == "rita"
    shot(page, "login")
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/board")
    assert page.get_by_text("No procedures match.").is_visible()

    # The order arrives over MLLP while the board is open; the board's own refresh shows it.
    message = order_message("BROWSER-1", "BR-ACC", "BROWSER^<b>BOLD</b>", "BR-PAT",
                            today.strftime("%Y%m%d") + "091500", "CT")
    with MLLPClient("127.0.0.1", engine.mllp.port, timeout=30) as client:
        assert b"MSA|AA|BROWSER-1" in client.send(message)
    page.evaluate("window.risRefreshBoard()")
    link = page.get_by_role("link", name="BR-ACC")
    link.wait_for()
    row = page.locator("tr", has=link)
    assert "09:15" in row.inner_text() and "SCHEDULED" in row.inner_text()
    assert "BROWSER, <b>BOLD</b>" in row.inner_text()  # the name's markup shown as text
    assert page.locator("tr b").count() == 0
    shot(page, "board")

    # The modality sends the image; the order page links it; the viewer draws it.
    with unit_of_work(engine.read_sessions) as db:
        [found] = search_orders(db, accession="BR-ACC")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.AccessionNumber, ds.PatientID = "BR-ACC", "BR-PAT"
    ds.StudyInstanceUID = found["procedures"][0]["study_instance_uid"]
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    c_store(engine.dicom.port, engine.settings.dicom_aet, ds)

    link.focus()
    page.keyboard.press("Enter")  # the keyboard opens the order
    page.wait_for_url(f"{base}/orders/{found['id']}")
    assert page.get_by_role("heading", level=1).inner_text().startswith("Order BR-ACC")
    assert page.get_by_role("cell", name="LINKED", exact=True).is_visible()
    shot(page, "order")

    page.get_by_role("link", name="Open viewer").click()
    image = page.locator("img#frame")
    image.wait_for()
    page.wait_for_function("document.getElementById('frame').complete")
    spread = page.evaluate("""() => {
        const img = document.getElementById('frame');
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const ctx = canvas.getContext('2d');
        ctx.drawImage(img, 0, 0);
        const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        let min = 255, max = 0;
        for (let i = 0; i < data.length; i += 4) { min = Math.min(min, data[i]); max = Math.max(max, data[i]); }
        return {width: img.naturalWidth, min: min, max: max};
    }""")
    assert spread["width"] == 128 and spread["max"] - spread["min"] > 100, spread
    shot(page, "viewer")
    page.keyboard.press("3")  # the keyboard chooses the lung window
    page.wait_for_url("**preset=lung**")
    assert page.locator("#preset").input_value() == "lung"


def test_analyst_searches_messages_with_the_keyboard_and_dry_runs_one(engine, page):
    base = f"http://127.0.0.1:{engine.http_port}"
    with unit_of_work(engine.sessions) as db:
        auth.add_user(db, "anna", PASSWORD, Role.ANALYST)
        auth.add_user(db, "adam", PASSWORD, Role.ADMINISTRATOR)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    evil = order_message("EVIL-1", "EV-ACC", "<script>alert('x')</script>^<img src=x onerror=alert(2)>", "EV-PAT")
    cancel = order_message("EVIL-0", "EV-ACC", "EVIL^EVE", "EV-PAT").replace(b"ORC|NW|", b"ORC|CA|")
    with MLLPClient("127.0.0.1", engine.mllp.port, timeout=30) as client:
        assert b"MSA|AE|EVIL-0" in client.send(cancel)  # the order is not known yet
        assert b"MSA|AA|EVIL-1" in client.send(evil)

    page.goto(f"{base}/messages")
    page.get_by_label("Username").fill("anna")
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/messages")
    page.get_by_label("Control ID").fill("EVIL-0")
    page.get_by_label("Received from").fill("2026-01-02T00:00")
    page.get_by_label("Received before").fill("2026-01-01T00:00")
    page.keyboard.press("Enter")
    page.get_by_text("Must be after 'since'.").wait_for()
    assert page.get_by_label("Control ID").input_value() == "EVIL-0"
    page.get_by_label("Received from").fill("")
    page.get_by_label("Received before").fill("")
    page.get_by_label("Control ID").press("Enter")
    page.get_by_role("link", name="EVIL-0").click()
    assert page.get_by_text("MSA|AE|EVIL-0").is_visible()
    shot(page, "messages")
    page.get_by_role("button", name="Dry run").focus()
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Dry run: nothing was changed").wait_for()
    assert page.get_by_text("Status PROCESSED, ACK AA").is_visible()
    shot(page, "message-dry-run")
    assert page.get_by_role("link", name="Patients").count() == 0  # no clinical pages for an analyst

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Username").fill("adam")
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/board")
    page.goto(f"{base}/patients?q=EV-PAT")
    page.get_by_role("link", name="<script>alert('x')</script>, <img src").click()
    page.get_by_role("heading", name="Orders").wait_for()
    shot(page, "patient")
    page.goto(f"{base}/admin/audit?patient_key=EV-PAT")
    assert page.locator("tr", has_text="adam").filter(has_text="patient").first.is_visible()
    page.goto(f"{base}/admin/audit?username=anna")
    assert page.locator("tr", has_text="dry run of reprocess").count() == 1
    shot(page, "audit")
    assert dialogs == []  # no script of a patient name ever ran
