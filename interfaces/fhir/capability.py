"""The CapabilityStatement (FHIR R4 capabilitystatement.html), generated from the registry.

Every resource type, interaction, conditional interaction, operation, search parameter, _include and
_revinclude listed here is read from interfaces.fhir.registry (KINDS, SYSTEM_INTERACTIONS), the same
objects the routes dispatch to (interfaces.fhir.interactions.find_kind): nothing is announced that is not
served, and nothing served goes unannounced (tests/fhir/test_capability.py calls every one of them).
"""

from __future__ import annotations

import datetime as dt

from interfaces.fhir.registry import KINDS, SYSTEM_INTERACTIONS, includes, revincludes
from interfaces.fhir.search import DEFAULT_COUNT, MAX_COUNT, SORT_PARAMS


def _resource(kind) -> dict:
    entry = {
        "type": kind.name,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{kind.name}",
        "documentation": kind.documentation,
        "interaction": [{"code": code} for code in kind.interactions],
        "versioning": "versioned-update" if kind.versioned else "no-version",
        "readHistory": "vread" in kind.interactions,
        "updateCreate": False,
        "conditionalCreate": kind.conditional_create,
        "conditionalRead": "not-supported",
        "conditionalUpdate": kind.conditional_update,
        "conditionalDelete": kind.conditional_delete,
        "searchInclude": includes(kind),
        "searchRevInclude": revincludes(kind),
        "searchParam": [{k: v for k, v in {"name": p.name, "definition": p.definition or None, "type": p.type,
                                           "documentation": p.documentation}.items() if v}
                        for p in kind.search_params.values()],
    }
    entry = {k: v for k, v in entry.items() if v != []}   # FHIR JSON has no empty arrays
    if kind.capability_extensions:
        entry = {"extension": kind.capability_extensions, **entry}
    if kind.operations:
        entry["operation"] = [{"name": op.name, "definition": op.definition, "documentation": op.documentation}
                              for op in kind.operations.values()]
    return entry


def _documentation() -> str:
    def names(test) -> str:
        return ", ".join(k.name for k in KINDS.values() if test(k)) or "none"

    return (f"FHIR R4 (4.0.1), JSON only. Search: _count (default {DEFAULT_COUNT}, at most {MAX_COUNT}) with paging "
            f"links (_offset); _sort on {', '.join(SORT_PARAMS)} (and each type's date parameters; '-' descending); "
            "Prefer: handling=strict refuses unknown parameters, lenient (default) ignores them and says so in an "
            f"OperationOutcome entry. Versioned types ({names(lambda k: k.versioned)}) answer ETag and honour "
            "If-Match (412 when stale); If-Match on a type that is not versioned is refused (412). "
            f"Batch and transaction Bundles at the base URL (transaction all-or-nothing). "
            f"JSON Patch (application/json-patch+json): {names(lambda k: 'patch' in k.interactions)}. "
            f"Delete: {names(lambda k: 'delete' in k.interactions)}.")


def capability_statement(settings) -> dict:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": dt.date.today().isoformat(),
        "kind": "instance",
        "software": {"name": "ris-engine", "version": "0.1.0"},
        "implementation": {"description": f"RIS integration engine ({settings.dicom_aet})"},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        **({"patchFormat": ["application/json-patch+json"]} if any("patch" in k.interactions for k in KINDS.values())
           else {}),
        "rest": [{
            "mode": "server",
            "documentation": _documentation(),
            "resource": [_resource(kind) for kind in KINDS.values()],
            "interaction": [{"code": code} for code in SYSTEM_INTERACTIONS],
        }],
    }
