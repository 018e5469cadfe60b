"""The FHIR edge's one error translation: every failure becomes an OperationOutcome.

FHIR R4 http.html section 3.1.0.4 ("Create"/"Update" and "General Rules") and operationoutcome.html:
an error response carries an OperationOutcome with one issue per problem; ``issue.code`` from the
IssueType value set, ``diagnostics`` saying what is wrong and ``expression`` (FHIRPath) saying where.

Status codes used (http.html 3.1.0.4.1, 3.1.0.5, search.html 3.1.1.4):

- 400 the body cannot be read (malformed JSON) or does not pass FHIR structure validation
  (fhir.resources R4B models), or a search is malformed or names an unknown parameter under
  ``Prefer: handling=strict``;
- 404 unknown resource type or unknown id; 405 interaction not offered for a type; 409 the change
  contradicts stored state (duplicate identifier); 410 never (nothing is deleted);
- 412 ``If-Match`` names a version that is not the current one (http.html#concurrency);
- 415 a body that is not FHIR JSON or declares another FHIR version (http.html#version-parameter);
- 422 the resource is valid FHIR but breaks a business rule of the engine (domain InvalidInput,
  a reference that does not resolve, a non-imaging order);
- 409 also for a unique key raced by a concurrent request, 503 for a busy database (retry), 500 else.

Domain errors (app.errors) carry a domain ``location`` ("patient.id", "step.modality"); the
translator that built the command says which FHIRPath expression each location came from, so the
client is pointed at its own element.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError, OperationalError

from app.errors import Conflict, DomainError, InvalidInput, NotFound, UnknownCode, Unsupported

# Domain error -> (HTTP status, IssueType code). First match wins.
_DOMAIN = [(NotFound, 404, "not-found"), (Conflict, 409, "conflict"), (InvalidInput, 422, "processing"),
           (UnknownCode, 422, "code-invalid"), (Unsupported, 422, "not-supported"), (DomainError, 422, "processing")]


@dataclass
class FhirError(Exception):
    """An error of the FHIR edge itself (not of the core): status, IssueType code, where and what."""

    status: int
    code: str
    diagnostics: str
    expression: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.diagnostics


class OutcomeError(Exception):
    """A failure already expressed as an OperationOutcome of several issues (a transaction naming its entries)."""

    def __init__(self, status: int, outcome: dict):
        super().__init__("; ".join(i.get("diagnostics", "") for i in outcome.get("issue", [])))
        self.status = status
        self.outcome = outcome


def operation_outcome(issues: list[dict]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": issues}


def issue(code: str, diagnostics: str, expression=(), severity: str = "error") -> dict:
    item = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        item["expression"] = list(expression)
    return item


def fhirpath(resource_type: str, loc) -> str:
    """A pydantic error location as a FHIRPath expression: ('name', 0, 'family') -> Patient.name[0].family."""
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("__root__",):
            path += f".{part}"
    return path


def validation_error(resource_type: str, exc: ValidationError, *, r5_hint: bool = False) -> FhirError:
    """fhir.resources (pydantic) validation errors as one 400 with an expression per error."""
    errors = exc.errors()
    exprs, texts = [], []
    for err in errors[:20]:
        where = fhirpath(resource_type, err.get("loc", ()))
        exprs.append(where)
        texts.append(f"{where}: {err.get('msg', 'invalid')}")
    prefix = ("this is FHIR R5 content (it validates as R5, not as R4); this endpoint serves FHIR R4 (4.0.1) "
              "only. " if r5_hint else "")
    return FhirError(400, "structure", f"{prefix}invalid {resource_type}: " + "; ".join(texts), tuple(exprs))


def translate(exc: BaseException, locations: dict[str, str] | None = None) -> tuple[int, dict]:
    """(status, OperationOutcome) for any exception reaching the FHIR edge; ``locations`` maps
    domain locations to the FHIRPath expressions they were read from."""
    if isinstance(exc, FhirError):
        return exc.status, operation_outcome([issue(exc.code, exc.diagnostics, exc.expression)])
    if isinstance(exc, OutcomeError):
        return exc.status, exc.outcome
    if isinstance(exc, DomainError):
        status, code = next((s, c) for kind, s, c in _DOMAIN if isinstance(exc, kind))
        if isinstance(exc, InvalidInput) and exc.missing:
            code = "required"
        where = ()
        if exc.location:
            where = ((locations or {}).get(exc.location) or _fallback(exc.location),)
        return status, operation_outcome([issue(code, exc.message, where)])
    if isinstance(exc, IntegrityError):
        return 409, operation_outcome([issue("conflict", "a concurrent change created the same record first; "
                                             "nothing was applied: read and retry")])
    if isinstance(exc, OperationalError):
        return 503, operation_outcome([issue("transient", "the database is busy or unreachable; nothing was "
                                             "applied: retry later")])
    return 500, operation_outcome([issue("exception", f"internal error ({type(exc).__name__}); see the engine log")])


def _fallback(location: str) -> str:
    """A domain location with no recorded origin: name the closest FHIR element."""
    head = location.split(".", 1)[0]
    return {"patient": "Patient", "order": "ServiceRequest", "procedure": "ServiceRequest",
            "step": "ServiceRequest"}.get(head, location)
