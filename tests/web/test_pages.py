"""The pages through Flask's test client: what each shows, bad input, escaping, audit, and the image viewer."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.db import unit_of_work
from app.models import AuditEvent, Role
from interfaces.web.rendering import render_png
from tests.web.conftest import csrf_of, file_image, order_message

EVIL = "<script>alert(1)</script>^EVE"


def audit_rows(session_factory, **where):
    with unit_of_work(session_factory) as db:
        return [(e.username, e.action, e.entity, e.entity_id, e.patient_key)
                for e in db.query(AuditEvent).filter_by(**where).order_by(AuditEvent.id)]


def test_board_shows_the_days_procedures_by_modality_and_station(client_as, intake):
    intake.handle(order_message())
    intake.handle(order_message("WEB-2", "WEB-ACC2", "OTHER^OTTO", "WEB-PAT2", "20261204100000", "MR"))
    client = client_as(Role.TECHNOLOGIST)
    page = client.get("/board?date=2026-12-04").text
    assert "WEB-ACC" in page and "WEBTEST, WILMA" in page and "08:30" in page
    assert page.index("<h2 id=\"g-1\">CT") < page.index("<h2 id=\"g-2\">MR")
    assert 'class="status status-SCHEDULED"' in page and 'href="/orders/1"' in page
    only_mr = client.get("/board?date=2026-12-04&modality=MR").text
    assert "WEB-ACC2" in only_mr and ">WEB-ACC<" not in only_mr
    assert "No procedures match." in client.get("/board?date=2026-12-04&status=COMPLETED").text
    assert "No procedures match." in client.get("/board?date=2026-12-05").text
    assert "board.js" in page and "https://" not in page  # every asset served by the engine
    assert client.get("/assets/board.js").status_code == 200 and client.get("/assets/ris.css").status_code == 200


def test_bad_board_filters_show_errors_next_to_the_fields_and_keep_what_was_typed(client_as):
    client = client_as(Role.SCHEDULER)
    response = client.get("/board?date=31.12.2026&status=LOST&station=" + "S" * 80)
    assert response.status_code == 400
    text = response.text
    assert 'value="31.12.2026"' in text and "Enter a date as YYYY-MM-DD." in text
    assert '<option value="LOST" selected>LOST</option>' in text and "Choose one of SCHEDULED" in text
    assert "Enter at most 64 characters." in text and 'id="e-station"' in text
    assert 'role="alert"' in text


def test_a_patient_name_with_script_is_shown_as_text_everywhere(client_as, intake):
    intake.handle(order_message(name=EVIL))
    client = client_as(Role.ADMINISTRATOR)
    pages = [client.get("/board?date=2026-12-04").text, client.get("/orders/1").text,
             client.get("/patients?q=script").text, client.get("/patients/1").text,
             client.get("/messages").text, client.get("/messages/1").text]
    for text in pages:
        assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0]
    assert all("&lt;script&gt;" in t for t in pages[1:4] + pages[5:])
    csp = client.get("/orders/1").headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp


def test_order_page_shows_patient_procedures_steps_studies_and_messages(client_as, intake, web_settings,
                                                                      session_factory):
    intake.handle(order_message())
    file_image(web_settings, session_factory, accession="WEB-ACC", patient_id="WEB-PAT")
    client = client_as(Role.RADIOLOGIST)
    text = client.get("/orders/1").text
    for words in ("Order WEB-ACC", "WEBTEST, WILMA", "WEB-PAT", "WEB-ACC-SPS", "CT chest", "2026-12-04 08:30:00",
                  "LINKED", "Open viewer", "ORM^O01", "WEB-1"):
        assert words in text, words
    assert client.get("/orders/99").status_code == 404
    assert audit_rows(session_factory, entity="order") == [("radiologist-user", "view", "order", "1", "WEB-PAT")]


def test_patient_search_and_patient_page(client_as, intake, session_factory):
    intake.handle(order_message())
    client = client_as(Role.SCHEDULER)
    assert "Patient ID or name" in client.get("/patients").text
    for query in ("WEB-PAT", "wilma", "Webtest Wil", "WEBTEST^WILMA"):
        assert 'href="/patients/1"' in client.get(f"/patients?q={query}").text, query
    assert "No patient matches." in client.get("/patients?q=nobody").text
    assert "No patient matches." in client.get("/patients?q=%25%25").text  # LIKE wildcards are literal
    short = client.get("/patients?q=x")
    assert short.status_code == 400 and "Enter at least 2 characters." in short.text and 'value="x"' in short.text
    page = client.get("/patients/1").text
    assert "WEBTEST, WILMA" in page and 'href="/orders/1"' in page and "No merges." in page
    assert client.get("/patients/2").status_code == 404
    assert ("scheduler-user", "view", "patient", "1", "WEB-PAT") in audit_rows(session_factory)


def test_message_browser_searches_and_keeps_bad_input(client_as, intake):
    intake.handle(order_message())
    client = client_as(Role.ANALYST)
    for query in ("control_id=WEB-1", "patient_id=WEB-PAT", "accession=WEB-ACC", "type=ORM^O01", "status=PROCESSED",
                  "since=2000-01-01T00:00", ""):
        assert 'href="/messages/1"' in client.get(f"/messages?{query}").text, query
    assert 'href="/messages/1"' not in client.get("/messages?status=ERROR").text
    bad = client.get("/messages?since=yesterday&until=2000-01-01&status=NOPE&control_id=C1")
    assert bad.status_code == 400
    assert 'value="yesterday"' in bad.text and "Enter a date and time" in bad.text
    assert 'value="C1"' in bad.text and "Choose one of RECEIVED" in bad.text
    order = client.get("/messages?since=2026-01-02T00:00&until=2026-01-01T00:00")
    assert order.status_code == 400 and "Must be after &#39;since&#39;." in order.text


def test_message_page_with_fields_ack_changes_and_reprocess(client_as, intake, session_factory):
    cancel = order_message(control_id="WEB-C").replace(b"ORC|NW|", b"ORC|CA|")
    assert b"MSA|AE|WEB-C" in intake.handle(cancel)  # cancels an order not yet known
    intake.handle(order_message())
    client = client_as(Role.ANALYST)
    page = client.get("/messages/1")
    assert page.status_code == 200
    text = page.text
    for words in ("MSH|^~\\&amp;|HIS|HOSP", "MSA|AE|WEB-C", "PID-5", "Patient Name", "ERROR", "Dry run"):
        assert words in text, words
    token = csrf_of(text)
    dry = client.post("/messages/1/reprocess", data={"csrf_token": token, "mode": "dry-run"}).text
    assert "Dry run: nothing was changed" in dry and "Status PROCESSED, ACK AA" in dry and "CANCELLED" in dry
    assert client.get("/api/orders/1").json["status"] == "SCHEDULED"
    done = client.post("/messages/1/reprocess", data={"csrf_token": token, "mode": "apply"}).text
    assert "Reprocessed" in done and "Status PROCESSED, ACK AA" in done
    assert client.get("/api/orders/1").json["status"] == "CANCELLED"
    assert client.post("/messages/1/reprocess", data={"csrf_token": token, "mode": "x"}).status_code == 400
    assert client.get("/messages/99").status_code == 404
    changes = [r for r in audit_rows(session_factory, entity="message") if r[1] == "change"]
    assert changes == [("analyst-user", "change", "message", "1", "WEB-PAT")]


def test_audit_page_lists_who_saw_which_patient(client_as, intake, session_factory):
    intake.handle(order_message())
    client_as(Role.TECHNOLOGIST).get("/patients/1")
    admin = client_as(Role.ADMINISTRATOR)
    text = admin.get("/admin/audit?patient_key=WEB-PAT").text
    assert "technologist-user" in text and "patient 1" in text and "127.0.0.1" in text
    logins = admin.get("/admin/audit?action=login").text
    assert "technologist-user" in logins and "administrator-user" in logins
    bad = admin.get("/admin/audit?action=steal&since=soon")
    assert bad.status_code == 400 and 'value="soon"' in bad.text


def test_viewer_page_and_frames_of_ct_mr_and_multiframe(client_as, web_settings, session_factory):
    ct = file_image(web_settings, session_factory, patient_id="IMG-PAT")
    client = client_as(Role.RADIOLOGIST)
    page = client.get(f"/studies/{ct.StudyInstanceUID}/viewer")
    assert page.status_code == 200
    src = f"/instances/{ct.SOPInstanceUID}/frames/1.png?preset=auto"
    assert src in page.text and "Soft tissue" in page.text
    png = client.get(src)
    assert png.status_code == 200 and png.mimetype == "image/png"
    image = np.asarray(Image.open(io.BytesIO(png.data)))
    assert image.shape == (128, 128) and image.std() > 10  # an image, not a blank
    lung = np.asarray(Image.open(io.BytesIO(client.get(src.replace("auto", "lung")).data)))
    assert not np.array_equal(image, lung)
    for bad in ("?series=9", "?image=0", "?frame=x", "?preset=nope"):
        assert client.get(f"/studies/{ct.StudyInstanceUID}/viewer{bad}").status_code == 400, bad
    assert client.get(f"/instances/{ct.SOPInstanceUID}/frames/2.png").status_code == 400
    assert client.get("/instances/1.2.3/frames/1.png").status_code == 404
    assert ("radiologist-user", "view", "study", ct.StudyInstanceUID, "IMG-PAT") in audit_rows(session_factory)

    multi = file_image(web_settings, session_factory, name="rtdose.dcm")
    text = client.get(f"/studies/{multi.StudyInstanceUID}/viewer?frame=2").text
    assert "frame 2 of 15" in text and 'id="next-frame"' in text and 'id="prev-frame"' in text
    frames = [np.asarray(Image.open(io.BytesIO(client.get(
        f"/instances/{multi.SOPInstanceUID}/frames/{n}.png").data))) for n in (1, 8)]
    assert frames[0].shape == (10, 10) and not np.array_equal(frames[0], frames[1])


@pytest.mark.parametrize("name, shape", [("MR_small.dcm", (64, 64)), ("SC_rgb_jpeg_dcmtk.dcm", (100, 100, 3)),
                                         ("SC_ybr_full_422_uncompressed.dcm", (100, 100, 3))])
def test_rendering_of_pydicom_test_files(name, shape):
    from pydicom.data import get_testdata_file

    image = np.asarray(Image.open(io.BytesIO(render_png(get_testdata_file(name)))))
    assert image.shape == shape and image.std() > 5
