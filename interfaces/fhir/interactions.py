"""The FHIR R4 interactions on one unit of work, independent of the HTTP request that asks for them.

The REST routes (interfaces.fhir.routes) and the batch/transaction processor (interfaces.fhir.bundle)
both call these, so an entry of a transaction behaves exactly like the same request sent alone
(http.html 3.1.0.11.2: "the same rules as for the individual interactions").

- :func:`create_resource`: create (http.html 3.1.0.8) with conditional create (3.1.0.8.1, If-None-Exist:
  no match creates, one match answers it with 200, several are 412);
- :func:`update_resource`: update (3.1.0.4) with If-Match (3.1.0.4.1 "Managing Resource Contention":
  412 when stale);
- :func:`conditional_update`: conditional update (3.1.0.4.3): no match creates, one match updates, several 412;
- :func:`patch_resource`: patch (3.1.0.6) with JSON Patch, then as an update;
- :func:`delete_resource`, :func:`conditional_delete`: delete (3.1.0.7, 3.1.0.7.1) with a kept record of it
  (410 Gone afterwards);
- versions kept for vread and _history (3.1.0.3): :func:`keep`, :func:`kept`.
"""

from __future__ import annotations

import datetime as dt
import json
from urllib.parse import parse_qsl

from fhir.resources import get_fhir_model_class as r5_model_class
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from sqlalchemy import select

from app.models import ResourceVersion
from interfaces.fhir import search as fhir_search
from interfaces.fhir.datatypes import Context, numeric_id, utc_instant
from interfaces.fhir.errors import FhirError, validation_error
from interfaces.fhir.patch import apply_patch
from interfaces.fhir.registry import KINDS, is_fhir_type


# Lookups -------------------------------------------------------------------------------------
def find_operation(kind, name: str, *, instance: bool):
    """The operation ``$name`` of ``kind`` at type or instance level (404 when it is not offered there)."""
    op = kind.operations.get(name)
    if op is None or (instance and not op.instance) or (not instance and not op.type_level):
        offered = ", ".join(f"${o.name}" for o in kind.operations.values()) or "none"
        level = "instance" if instance else "type"
        raise FhirError(404, "not-supported", f"operation ${name} is not offered on {kind.name} at {level} level "
                        f"(offered: {offered}; see /fhir/metadata)")
    return op


def find_kind(type_name: str, interaction: str | None):
    """The served type ``type_name`` if it offers ``interaction`` (404 unknown type, 405 interaction not offered;
    ``None``: any served type)."""
    kind = KINDS.get(type_name)
    if kind is None:
        served = ", ".join(KINDS)
        if is_fhir_type(type_name):
            raise FhirError(404, "not-supported", f"resource type {type_name} is not served by this server "
                            f"(served: {served}; see /fhir/metadata)")
        raise FhirError(404, "not-supported", f"{type_name!r} is not a FHIR R4 resource type (served: {served})")
    if interaction is not None and interaction not in kind.interactions:
        offered = ", ".join(kind.interactions)
        why = kind.refusals.get(interaction, "")
        raise FhirError(405, "not-supported", f"interaction {interaction} is not supported for {type_name} "
                        f"(supported: {offered})" + (f": {why}" if why else ""))
    return kind


def load(kind, session, rid: str):
    """The row of ``kind``/``rid``: 404 if it never existed, 410 Gone if it was deleted (http.html 3.1.0.7)."""
    number = numeric_id(rid)
    obj = kind.load(session, number) if number is not None else None
    if obj is None:
        gone = tombstone(session, kind, number) if number is not None else None
        if gone is not None:
            raise FhirError(410, "deleted", f"{kind.name}/{rid} was deleted at {gone['meta']['lastUpdated']} "
                            f"(version {gone['meta']['versionId']}); its earlier versions stay readable "
                            f"({kind.name}/{rid}/_history)", (f"{kind.name}.id",))
        raise FhirError(404, "not-found", f"{kind.name}/{rid} does not exist", (f"{kind.name}.id",))
    return obj


def version_headers(kind, obj, resource: dict) -> dict:
    headers = {"Last-Modified": resource["meta"]["lastUpdated"]}
    if kind.versioned:
        headers["ETag"] = f'W/"{kind.version(obj)}"'
    return headers


# Bodies --------------------------------------------------------------------------------------
def read_json(raw: bytes, what: str):
    """A request body as JSON (400 when empty, not UTF-8, malformed or not an object)."""
    if not raw.strip():
        raise FhirError(400, "required", f"the request body is empty; send {what}")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise FhirError(400, "structure", "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FhirError(400, "structure", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") \
            from None
    if not isinstance(data, dict):
        raise FhirError(400, "structure", f"the body must be a JSON object ({what}), not {type(data).__name__}")
    return data


def parse_resource(type_name: str, data: dict):
    """``data`` as a validated R4 (R4B model) resource of ``type_name``."""
    given = data.get("resourceType")
    if given != type_name:
        raise FhirError(400, "invalid", f"resourceType {given!r} does not match the URL ({type_name})",
                        (f"{type_name}.resourceType",) if given is None else ())
    check_contained(type_name, data)
    model = get_fhir_model_class(type_name)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(type_name, exc, r5_hint=is_r5(type_name, data)) from None


def _local_references(node) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value.startswith("#"):
                found.add(value)
            else:
                found |= _local_references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _local_references(item)
    return found


def check_contained(type_name: str, data: dict) -> None:
    """The R4 invariants on contained resources (resource.html#invs, references.html#contained): dom-2 a
    contained resource SHALL NOT contain nested resources; dom-3 it SHALL be referred to from elsewhere in
    the resource (or refer to the containing resource, '#'). 400 naming the contained resource."""
    contained = data.get("contained")
    if not isinstance(contained, list):
        return
    for i, item in enumerate(contained):
        if not isinstance(item, dict):
            continue
        where, name = f"{type_name}.contained[{i}]", f"{item.get('resourceType')}/{item.get('id')}"
        if item.get("contained"):
            raise FhirError(400, "invariant", f"{where} ({name}) contains resources itself: a contained resource "
                            "SHALL NOT contain nested resources (FHIR R4 invariant dom-2); contain them all in the "
                            f"{type_name} instead", (f"{where}.contained",))
        elsewhere = _local_references({k: v for k, v in data.items() if k != "contained"})
        for j, other in enumerate(contained):
            if j != i:
                elsewhere |= _local_references(other)
        if f"#{item.get('id')}" not in elsewhere and "#" not in _local_references(item):
            raise FhirError(400, "invariant", f"{where} ({name}) is not referred to from the {type_name} (no "
                            f"reference '#{item.get('id')}'): a contained resource SHALL be referenced from the "
                            "resource that contains it (FHIR R4 invariant dom-3)", (where,))


def is_r5(type_name: str, data: dict) -> bool:
    """Whether a body refused as R4 is valid R5 (fhir.resources' default package): say so."""
    try:
        r5_model_class(type_name).model_validate(data)
    except Exception:
        return False
    return True


# History -------------------------------------------------------------------------------------
def keep(session, kind, obj, resource: dict, *, new: bool = False) -> None:
    """Keep the rendered version (once) for vread (http.html 3.1.0.3); ``new``: a resource created in this unit
    of work (nothing of it is kept yet)."""
    if not kind.versioned:
        return
    exists = None if new else session.scalar(select(ResourceVersion.id).where(
        ResourceVersion.resource_type == kind.name, ResourceVersion.resource_id == obj.id,
        ResourceVersion.version == kind.version(obj)))
    if exists is None:
        session.add(ResourceVersion(resource_type=kind.name, resource_id=obj.id, version=kind.version(obj),
                                    content=resource))
        session.flush()


DELETED = "deleted"   # the key that marks a kept version as the record of a delete (never served as a resource)


def tombstone(session, kind, number: int) -> dict | None:
    """The record of the delete of ``kind``/``number`` (its last kept version), or None."""
    last = next(iter(kept(session, kind, number)), None)
    return last.content if last is not None and last.content.get(DELETED) else None


def kept(session, kind, number: int) -> list[ResourceVersion]:
    return list(session.scalars(select(ResourceVersion).where(
        ResourceVersion.resource_type == kind.name, ResourceVersion.resource_id == number)
        .order_by(ResourceVersion.version.desc())))


# Writes --------------------------------------------------------------------------------------
def _matches(session, ctx: Context, kind, condition: str, what: str) -> list:
    parsed = fhir_search.parse(kind.search_params, parse_qsl(condition.lstrip("?"), keep_blank_values=True),
                               ctx, strict=True)
    if not parsed.clauses:
        raise FhirError(412, "invalid", f"{what} {condition!r} has no search criteria; it would match every "
                        f"{kind.name}")
    total, rows = kind.search(session, parsed.clauses, 2, 0)
    if total > 1:
        raise FhirError(412, "duplicate", f"{what} {condition!r} matches {total} {kind.name} resources; the "
                        "condition must select at most one")
    return rows


def _written(session, ctx: Context, kind, obj, *, new: bool = False) -> tuple[object, dict]:
    """The written row as the answer renders it (after the flush: ids, versions and times are final), kept for
    vread. The row's objects are current: the services change them in the session (bulk UPDATEs expire what
    they touch)."""
    session.flush()
    rendered = kind.render(obj, ctx)
    keep(session, kind, obj, rendered, new=new)
    return obj, rendered


def create_resource(session, ctx: Context, kind, resource, condition: str = "") -> tuple[int, object, dict]:
    """(201, row, rendered) for a create; (200, the match, rendered) when ``condition`` (If-None-Exist) matches."""
    if condition:
        rows = _matches(session, ctx, kind, condition, "If-None-Exist")
        if rows:
            return 200, rows[0], kind.render(rows[0], ctx)
    obj = kind.create(session, resource, ctx)
    return (201, *_written(session, ctx, kind, obj, new=True))


def update_resource(session, ctx: Context, kind, rid: str, resource, if_match: str = "") -> tuple[int, object, dict]:
    """(200, row, rendered) for an update of ``kind``/``rid``; 412 when ``if_match`` is stale."""
    if not resource.id:
        raise FhirError(400, "required", f"an update needs {kind.name}.id equal to the id in the URL ({rid})",
                        (f"{kind.name}.id",))
    if resource.id != rid:
        raise FhirError(400, "invalid", f"{kind.name}.id {resource.id!r} does not match the id in the URL ({rid!r})",
                        (f"{kind.name}.id",))
    obj = load(kind, session, rid)
    check_if_match(kind, obj, rid, if_match)
    keep(session, kind, obj, kind.render(obj, ctx))  # the version being replaced stays readable
    obj = kind.update(session, obj, resource, ctx)
    return (200, *_written(session, ctx, kind, obj))


def check_if_match(kind, obj, rid: str, if_match: str) -> None:
    """If-Match (http.html 3.1.0.4.1 "Managing Resource Contention", RFC 9110 13.1.1): 412 unless it names the
    current version; on a type that is not versioned there is no ETag to match, so any If-Match but '*' is
    412 too (the update is not silently applied without the check the client asked for)."""
    if not if_match or if_match == "*":
        return
    if not kind.versioned:
        raise FhirError(412, "conflict", f"If-Match {if_match} cannot be checked: {kind.name} is not versioned here "
                        "(no ETag; CapabilityStatement versioning no-version); send the request without If-Match",
                        ("If-Match",))
    if if_match.removeprefix("W/").strip('"') != str(kind.version(obj)):
        raise FhirError(412, "conflict", f"If-Match {if_match} is stale: {kind.name}/{rid} is at version "
                        f"{kind.version(obj)}; read it again and reapply the change", ("If-Match",))


def patch_resource(session, ctx: Context, kind, rid: str, operations, if_match: str = "") -> tuple[int, object, dict]:
    """Patch (http.html 3.1.0.6): the JSON Patch applied to the resource as a read answers it, then updated with
    the same If-Match and rules as a PUT (interfaces.fhir.patch)."""
    obj = load(kind, session, rid)
    check_if_match(kind, obj, rid, if_match)
    patched = apply_patch(kind.render(obj, ctx), operations)
    return update_resource(session, ctx, kind, rid, parse_resource(kind.name, patched), if_match)


def delete_resource(session, ctx: Context, kind, rid: str, if_match: str = "") -> int:
    """Delete (http.html 3.1.0.7): 204 whether it existed or not (deleting what is not there, or is deleted
    already, changes nothing); the last version stays readable (vread, _history) and a record of the delete is
    kept, so a later read answers 410 Gone. What may be deleted, and what holds a resource, is the kind's rule."""
    number = numeric_id(rid)
    obj = kind.load(session, number) if number is not None else None
    if obj is None:
        return 204
    check_if_match(kind, obj, rid, if_match)
    keep(session, kind, obj, kind.render(obj, ctx))
    version, key = kind.version(obj) or 1, obj.id
    kind.delete(session, obj, ctx)
    now = utc_instant(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
    session.add(ResourceVersion(resource_type=kind.name, resource_id=key, version=version + 1,
                                content={"resourceType": kind.name, "id": str(key), DELETED: True,
                                         "meta": {"versionId": str(version + 1), "lastUpdated": now}}))
    session.flush()
    return 204


def conditional_delete(session, ctx: Context, kind, condition: str, if_match: str = "") -> tuple[int, str]:
    """Conditional delete ``DELETE [type]?[search]`` (http.html 3.1.0.7.1, conditionalDelete 'single'): no match
    changes nothing (204), one match is deleted, several are 412. (status, the id deleted or '')."""
    rows = _matches(session, ctx, kind, condition, "the conditional delete")
    if not rows:
        return 204, ""
    return delete_resource(session, ctx, kind, str(rows[0].id), if_match), str(rows[0].id)


def conditional_update(session, ctx: Context, kind, condition: str, data: dict,
                       if_match: str = "") -> tuple[int, object, dict]:
    """Conditional update ``PUT [type]?[search]`` (http.html 3.1.0.4.3): no match creates the resource (201),
    one match updates it (200; a given id must be its id), several are 412."""
    rows = _matches(session, ctx, kind, condition, "the conditional update")
    if not rows:
        if "create" not in kind.interactions:
            raise FhirError(405, "not-supported", f"no {kind.name} matches {condition!r} and {kind.name} cannot be "
                            "created here")
        return create_resource(session, ctx, kind, parse_resource(kind.name, {k: v for k, v in data.items()
                                                                              if k != "id"}))
    target = rows[0]
    if data.get("id") not in (None, str(target.id)):
        raise FhirError(400, "invalid", f"{kind.name}.id {data['id']!r} is not the id of the resource the condition "
                        f"selects ({target.id})", (f"{kind.name}.id",))
    return update_resource(session, ctx, kind, str(target.id), parse_resource(kind.name, dict(data, id=str(target.id))),
                           if_match)
