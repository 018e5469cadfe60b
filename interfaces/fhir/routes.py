"""FHIR R4 REST blueprint at /fhir (FHIR R4 3.1.0 RESTful API; CapabilityStatement 6.1).

The engine serves no FHIR resources yet: the CapabilityStatement says so (an empty resource
list), so a client never assumes an interaction that is not there. Errors are OperationOutcome.
"""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, Response, current_app
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from werkzeug.exceptions import HTTPException

FHIR_JSON = "application/fhir+json"
fhir = Blueprint("fhir", __name__, url_prefix="/fhir")


def _respond(resource, status: int = 200) -> Response:
    return Response(resource.model_dump_json(exclude_none=True), status=status, mimetype=FHIR_JSON)


def capability_statement() -> CapabilityStatement:
    settings = current_app.config["RIS_SETTINGS"]
    return CapabilityStatement.model_validate({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": dt.date.today().isoformat(),
        "kind": "instance",
        "software": {"name": "ris-engine", "version": "0.1.0"},
        "implementation": {"description": f"RIS integration engine ({settings.dicom_aet})"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "documentation": "No FHIR resources are served yet; orders arrive over HL7 v2 (MLLP).",
            "resource": [],
        }],
    })


@fhir.get("/metadata")
def metadata():
    return _respond(capability_statement())


@fhir.record_once
def _register_outcomes(state) -> None:
    state.app.extensions.setdefault("ris.error_renderers", {})["/fhir"] = _outcome


def _outcome(exc: HTTPException):
    outcome = OperationOutcome.model_validate({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-supported" if exc.code == 404 else "processing",
                   "diagnostics": exc.description or exc.name}],
    })
    return _respond(outcome, exc.code or 500)
