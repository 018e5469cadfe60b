"""Fixtures of the FHIR tests: the engine's WSGI app through Flask's test client, an HL7 intake on
the same database, and an oracle: every FHIR JSON answer must validate as R4 (fhir.resources R4B)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import func, select

from app.db import unit_of_work
from app.models import Order, Patient, ResourceVersion
from app.queries.worklist import Text, WorklistQuery, find_worklist_items
from interfaces.hl7.intake import HL7Intake
from interfaces.runtime import build_wsgi_app
from mappings.profile import ProfileSet

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ACSN = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}


def fixture(name: str, **fill) -> dict:
    """A synthetic resource from tests/fhir/fixtures, with {placeholders} filled."""
    text = (FIXTURES / name).read_text(encoding="utf-8")
    for key, value in fill.items():
        text = text.replace("{" + key + "}", str(value))
    return json.loads(text)


def _no_empty(node, where: str) -> None:
    """FHIR JSON (R4 json.html): no empty arrays, objects or strings, no nulls."""
    assert node not in ([], {}, "", None), f"{where} is empty ({node!r}): not allowed in FHIR JSON"
    if isinstance(node, dict):
        for key, value in node.items():
            _no_empty(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _no_empty(value, f"{where}[{i}]")


def valid_r4(body: dict) -> dict:
    """The body, after checking it is valid FHIR R4 (R4B models read R4) and valid FHIR JSON."""
    get_fhir_model_class(body["resourceType"]).model_validate(body)
    _no_empty(body, body["resourceType"])
    return body


class FhirClient:
    """Flask test client speaking application/fhir+json; checks every JSON answer is valid R4."""

    def __init__(self, client):
        self.client = client

    def call(self, method: str, url: str, body=None, *, headers: dict | None = None, raw: bytes | str | None = None,
             content_type: str = "application/fhir+json"):
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        response = self.client.open(url, method=method, data=data, headers=headers or {},
                                    content_type=content_type if data is not None else None)
        assert response.mimetype == "application/fhir+json", (response.status_code, response.get_data(as_text=True))
        if response.get_data():
            valid_r4(response.json)
        if response.status_code >= 400:
            assert response.json["resourceType"] == "OperationOutcome", response.json
        return response

    def get(self, url, **kw):
        return self.call("GET", url, **kw)

    def post(self, url, body=None, **kw):
        return self.call("POST", url, body, **kw)

    def put(self, url, body=None, **kw):
        return self.call("PUT", url, body, **kw)

    def create(self, body: dict) -> dict:
        response = self.post(f"/fhir/{body['resourceType']}", body)
        assert response.status_code == 201, response.json
        return response.json

    def search(self, url: str, **kw) -> dict:
        response = self.get(url, **kw)
        assert response.status_code == 200, response.json
        assert response.json["type"] == "searchset"
        return response.json


def matches(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def worklist(read_factory, accession: str):
    """The worklist items (app.queries.worklist, what C-FIND answers) of one accession number."""
    with unit_of_work(read_factory) as session:
        return find_worklist_items(session, WorklistQuery(accession_number=Text(accession)))


def counts(session_factory) -> tuple[int, int, int]:
    """How many patients, orders and kept versions exist (to show nothing was half-applied)."""
    with unit_of_work(session_factory) as session:
        return tuple(session.scalar(select(func.count()).select_from(m)) for m in (Patient, Order, ResourceVersion))


def outcome(response) -> dict:
    """The one issue of an error OperationOutcome."""
    [item] = response.json["issue"]
    return item


@pytest.fixture
def app(settings, session_factory, read_factory):
    app = build_wsgi_app(settings, session_factory, read_factory)
    app.testing = True
    return app


@pytest.fixture
def fhir(app) -> FhirClient:
    return FhirClient(app.test_client())


@pytest.fixture
def intake(settings, session_factory):
    return HL7Intake(settings, session_factory, ProfileSet(settings.mappings_path).get("default"))


@pytest.fixture
def patient(fhir) -> dict:
    return fhir.create(fixture("patient_doe.json"))
