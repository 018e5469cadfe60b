"""The resource types this server serves: the single list that routes and CapabilityStatement read."""

from __future__ import annotations

from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import select
from sqlalchemy.orm import Session

from interfaces.fhir.appointment import AppointmentKind
from interfaces.fhir.diagnostic_report import DiagnosticReportKind
from interfaces.fhir.imaging_study import ImagingStudyKind
from interfaces.fhir.kinds import Kind
from interfaces.fhir.patient import PatientKind
from interfaces.fhir.service_request import ServiceRequestKind
from interfaces.fhir.subscription import SubscriptionKind
from interfaces.fhir.task import TaskKind

# System interactions (http.html 3.1.0.11): POST of a Bundle of these types to the base URL.
SYSTEM_INTERACTIONS = ("transaction", "batch")

KINDS: dict[str, Kind] = {k.name: k for k in (PatientKind(), ServiceRequestKind(), TaskKind(), ImagingStudyKind(),
                                               AppointmentKind(), DiagnosticReportKind(), SubscriptionKind())}


def includes(kind: Kind) -> list[str]:
    """_include values of a type: its reference parameters on a key column to a served type."""
    return [f"{kind.name}:{p.name}" for p in kind.search_params.values() if p.target in KINDS]


def revincludes(kind: Kind) -> list[str]:
    """_revinclude values of a type: the served types' reference parameters that point at it."""
    return [f"{other.name}:{p.name}" for other in KINDS.values() for p in other.search_params.values()
            if p.target == kind.name]


def is_fhir_type(name: str) -> bool:
    """Whether ``name`` is a resource type of FHIR R4 (R4B's model list, which R4 types are part of)."""
    try:
        get_fhir_model_class(name)
    except (ValueError, KeyError, AttributeError, ImportError):
        return False
    return name[:1].isupper()


def included(session: Session, kind: Kind, rows: list, wanted_includes: list[str],
             wanted_revincludes: list[str]) -> list[tuple[Kind, object]]:
    """(kind, row) pairs that _include/_revinclude add to a page of ``rows`` (search.html 3.1.1.5.4),
    each once and none that is already a match."""
    ids = [row.id for row in rows]
    found, seen = [], {(kind.name, i) for i in ids}
    if not ids:
        return found
    for spec in wanted_includes:
        param = kind.search_params[spec.split(":", 1)[1]]
        target = KINDS[param.target]
        keys = kind.joined(select(param.column).select_from(kind.model)).where(kind.model.id.in_(ids))
        found += [(target, r) for r in session.scalars(target.query().where(target.model.id.in_(keys))).unique()]
    for spec in wanted_revincludes:
        source_name, param_name = spec.split(":", 1)
        source = KINDS[source_name]
        param = source.search_params[param_name]
        clause = param.keys(ids) if param.keys is not None else param.column.in_(ids)
        found += [(source, r) for r in session.scalars(source.query().where(clause)).unique()]
    unique = []
    for other, row in found:
        if (other.name, row.id) not in seen:
            seen.add((other.name, row.id))
            unique.append((other, row))
    return unique
