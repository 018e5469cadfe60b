"""The CapabilityStatement (FHIR R4 capabilitystatement.html), generated from the registry.

Every resource type, interaction and search parameter listed here is read from
interfaces.fhir.registry.KINDS, the same objects the routes dispatch to: nothing is announced that
is not served, and nothing served goes unannounced.
"""

from __future__ import annotations

import datetime as dt

from interfaces.fhir.registry import KINDS, includes, revincludes
from interfaces.fhir.search import DEFAULT_COUNT, MAX_COUNT


def capability_statement(settings) -> dict:
    resources = []
    for kind in KINDS.values():
        entry = {
            "type": kind.name,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{kind.name}",
            "documentation": kind.documentation,
            "interaction": [{"code": code} for code in kind.interactions],
            "versioning": "versioned-update" if kind.versioned else "no-version",
            "readHistory": "vread" in kind.interactions,
            "updateCreate": False,
            "conditionalCreate": "create" in kind.interactions,
            "conditionalRead": "not-supported",
            "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchInclude": includes(kind),
            "searchRevInclude": revincludes(kind),
            "searchParam": [{k: v for k, v in {"name": p.name, "definition": p.definition or None, "type": p.type,
                                               "documentation": p.documentation}.items() if v}
                            for p in kind.search_params.values()],
        }
        resources.append(entry)
    return {
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
            "documentation": (f"FHIR R4 (4.0.1), JSON only. Search: _count (default {DEFAULT_COUNT}, at most "
                              f"{MAX_COUNT}) with paging links (_offset); Prefer: handling=strict refuses unknown "
                              "parameters, lenient (default) ignores them. Versioned types answer ETag and honour "
                              "If-Match (412 when stale). No batch/transaction, delete or patch."),
            "resource": resources,
        }],
    }
