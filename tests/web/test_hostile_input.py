"""No route answers 5xx to bad input (issue 8, "Bad input"): every rule of the application - pages, JSON API, FHIR -
is walked with hostile values in its path, in every query parameter any view reads, and in the body of its unsafe
methods; script in a value is never echoed unescaped into a page."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest

from app.models import Role
from interfaces.fhir.registry import KINDS
from interfaces.inputs import RECORD_ID_MAX
from tests.web.conftest import csrf_of, file_image, order_message

SCRIPT = "<script>alert(1)</script>"
HOSTILE = (
    "99999999999999999999999", str(RECORD_ID_MAX + 1), "²", "٣", "-1", "0", "1e309", "NaN",
    "0001-01-01", "9999-12-31", "0001-01-01T00:00", "9999-12-31T23:59-05:00", "2026-02-30", "gt9999-12-31",
    "le0001-01-01", SCRIPT, "' OR 1=1 --", "%", "\u202e\u0000", "x" * 3000,
)
FHIR_COMMON = {"_count", "_offset", "_sort", "_id", "_lastUpdated", "_include", "_revinclude", "_summary",
               "_elements", "_format", "_total"}
PAGE_API_NAMES = sorted({
    "date", "modality", "station", "status", "q", "control_id", "patient_id", "accession", "type", "since", "until",
    "username", "action", "patient_key", "series", "image", "frame", "preset", "limit", "order_id", "link_status",
    "destination", "dry_run", "next", "resource", "day"})
SINGLE = ("99999999999999999999999", "²", "0001-01-01", "9999-12-31T23:59-05:00", SCRIPT, "\u0000x")
STEP_BUDGET_S = 400.0
# Every query parameter a view reads (pages, API, FHIR's common and per-type search parameters).
QUERY_NAMES = sorted(set(PAGE_API_NAMES) | FHIR_COMMON | {name for kind in KINDS.values() for name in kind.search_params})


@pytest.fixture
def populated(client_as, intake, web_settings, session_factory):
    """An order, its message, an archived study with an image, and an administrator (who may use every route)."""
    intake.handle(order_message())
    ds = file_image(web_settings, session_factory, accession="WEB-ACC", patient_id="WEB-PAT")
    return client_as(Role.ADMINISTRATOR), ds


def _paths(rule, value: str, ds) -> list[str]:
    """The rule's URL with ``value`` in each argument (a real FHIR type and the study's UIDs where they fit)."""
    args = {}
    for name in rule.arguments:
        if name == "type_name":
            args[name] = "Patient"
        elif name == "filename":
            args[name] = "ris.css"
        else:
            args[name] = value
    out = []
    for type_name in (["Patient", "ServiceRequest", "Task", "Appointment", "ImagingStudy", value]
                      if "type_name" in rule.arguments else [None]):
        if type_name is not None:
            args["type_name"] = type_name
        path = rule.rule
        for name, arg in args.items():
            path = path.replace(f"<{name}>", quote(arg, safe="")).replace(f"<int:{name}>", quote(arg, safe=""))
            path = path.replace(f"<path:{name}>", quote(arg, safe=""))
        out.append(path)
    if "study_uid" in rule.arguments:   # also the real study, so the viewer's own parameters are reached
        out.append(rule.rule.replace("<study_uid>", ds.StudyInstanceUID))
    if "sop_uid" in rule.arguments:
        out.append(rule.rule.replace("<sop_uid>", ds.SOPInstanceUID).replace("<int:number>", "1"))
    return out


def _body(value: str) -> dict:
    keys = ("message", "message_id", "status", "since", "until", "limit", "dry_run", "profile", "control_id",
            "resource", "start", "minutes", "sps_id", "step_id", "date", "text", "kind", "final", "reason",
            "name", "ae_title", "modalities", "opening_hours", "default_minutes", "slot_minutes")
    body = {k: value for k in keys}
    body.update({"message_id": int(value) if value.isascii() and value.isdigit() else value})
    return body


def _fhir_body(value: str) -> dict:
    return {"resourceType": "Patient", "id": value, "birthDate": value, "name": [{"family": value}],
            "identifier": [{"system": value, "value": value}]}


def test_every_route_answers_hostile_values_without_a_server_error(app, populated):
    client, ds = populated
    token = csrf_of(client.get("/board").text)
    failures, seen = [], 0
    deadline = time.monotonic() + STEP_BUDGET_S
    rules = [r for r in app.url_map.iter_rules() if r.endpoint not in ("web.logout",)]
    for rule in rules:
        for value in HOSTILE:
            query = "&".join(f"{n}={quote(value, safe='')}" for n in QUERY_NAMES)
            for path in _paths(rule, value, ds):
                for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                    assert time.monotonic() < deadline, f"the walk took longer than {STEP_BUDGET_S} s"
                    kwargs = {}
                    if method in ("POST", "PUT", "PATCH"):
                        if rule.endpoint.startswith("web."):
                            kwargs["data"] = {**{n: value for n in QUERY_NAMES}, "csrf_token": token,
                                              "mode": value, "username": value, "password": value}
                        elif rule.endpoint.startswith("fhir."):
                            kwargs.update(data=json.dumps(_fhir_body(value)), content_type="application/fhir+json")
                        else:
                            kwargs["json"] = _body(value)
                    response = client.open(f"{path}?{query}", method=method, **kwargs)
                    seen += 1
                    if response.status_code >= 500:
                        failures.append(f"{method} {path[:120]} [{value[:40]!r}] -> {response.status_code}")
                    if response.mimetype == "text/html" and SCRIPT in response.get_data(as_text=True):
                        failures.append(f"{method} {path[:120]} [{value[:40]!r}] echoes script unescaped")
    # One parameter at a time as well: with every parameter bad, the first one checked hides the others.
    fhir_names = {name: sorted(set(kind.search_params) | FHIR_COMMON) for name, kind in KINDS.items()}
    for rule in rules:
        if "GET" not in rule.methods or rule.endpoint in ("static", "web.static"):
            continue
        for path in _real_paths(rule, ds):
            kind = path.split("/")[2] if path.startswith("/fhir/") and len(path.split("/")) > 2 else ""
            names = fhir_names.get(kind, sorted(FHIR_COMMON)) if path.startswith("/fhir") else PAGE_API_NAMES
            for name in names:
                for value in SINGLE:
                    assert time.monotonic() < deadline, f"the walk took longer than {STEP_BUDGET_S} s"
                    response = client.get(f"{path}?{name}={quote(value, safe='')}")
                    seen += 1
                    if response.status_code >= 500:
                        failures.append(f"GET {path[:120]}?{name}= [{value[:40]!r}] -> {response.status_code}")
                    if response.mimetype == "text/html" and SCRIPT in response.get_data(as_text=True):
                        failures.append(f"GET {path[:120]}?{name}= [{value[:40]!r}] echoes script unescaped")
    print(f"requests walked: {seen} over {len(rules)} rules")
    assert seen > 3000
    assert failures == [], "\n".join(failures)


def _real_paths(rule, ds) -> list[str]:
    """The rule's URL with real arguments (record 1, the study's UIDs), so that its own parameters are read."""
    path = (rule.rule.replace("<study_uid>", ds.StudyInstanceUID).replace("<sop_uid>", ds.SOPInstanceUID)
            .replace("<int:number>", "1").replace("<rid>", "1").replace("<vid>", "1"))
    for name in rule.arguments:
        path = path.replace(f"<int:{name}>", "1")
    if "<type_name>" in path:
        return [path.replace("<type_name>", kind) for kind in KINDS]
    return [path]


def test_out_of_range_ids_and_dates_are_named_in_the_answer(populated):
    client, _ = populated
    api = client.get("/api/orders/99999999999999999999999")
    assert api.status_code == 404 and api.mimetype == "application/problem+json"
    assert "names no record" in api.json["detail"] and str(RECORD_ID_MAX) in api.json["detail"]
    listing = client.get("/api/messages?since=0001-01-01T00:00")
    assert listing.status_code == 400 and listing.json["location"] == "since"
    assert "out of range" in listing.json["detail"] and "1900-01-01" in listing.json["detail"]
    limit = client.get("/api/orders?limit=²")
    assert limit.status_code == 400 and "digits 0-9" in limit.json["detail"]
    board = client.get("/board?date=9999-12-31")
    assert board.status_code == 400 and 'value="9999-12-31"' in board.text
    assert "Dates go from 1900-01-01 to 2999-12-31." in board.text
    messages = client.get("/messages?until=9999-12-31T23:59-05:00")
    assert messages.status_code == 400 and 'value="9999-12-31T23:59-05:00"' in messages.text
    page = client.get("/orders/99999999999999999999999")
    assert page.status_code == 404 and "names no record" in page.text
    assert client.get("/api/orders/1").status_code == 200   # a real id still works
