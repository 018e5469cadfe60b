"""FHIR R4 REST blueprint at /fhir (FHIR R4 http.html, RESTful API).

Interactions (http.html 3.1.0): read ``GET [type]/[id]``, vread ``GET [type]/[id]/_history/[vid]``,
history-instance ``GET [type]/[id]/_history``, update ``PUT [type]/[id]`` (If-Match, 3.1.0.4.1
"Managing Resource Contention"), create ``POST [type]`` (If-None-Exist, 3.1.0.8.1 "Conditional
create"), search-type ``GET [type]?...`` and ``POST [type]/_search`` (search.html), capabilities
``GET metadata``. Which type offers which interaction is read from interfaces.fhir.registry; the
CapabilityStatement is generated from the same registry.

Versioned types (Patient, ServiceRequest) carry ``meta.versionId`` and an ETag ``W/"<version>"``;
the version counts every change of the record, whoever made it (HL7 or FHIR). Versions written
over FHIR are kept (app.models.ResourceVersion) for vread; a version made by HL7 v2 in between is
kept from the moment a FHIR client changes the record after it.

Errors are translated once, here (interfaces.fhir.errors): every 4xx/5xx is an OperationOutcome.
"""

from __future__ import annotations

import json
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from app.db import unit_of_work
from interfaces.fhir import bundle, inbound
from interfaces.fhir import search as fhir_search
from interfaces.fhir.capability import capability_statement
from interfaces.fhir.datatypes import Context, numeric_id
from interfaces.fhir.errors import FhirError, issue, operation_outcome, translate
from interfaces.fhir.interactions import (DELETED, conditional_delete, conditional_update, create_resource,
                                          delete_resource, find_kind as _kind, find_operation, kept as _kept,
                                          load as _load, parse_resource, patch_resource, read_json, tombstone,
                                          update_resource, version_headers as _version_headers)
from interfaces.fhir.patch import MEDIA_TYPE as PATCH_MEDIA_TYPE, read_patch
from interfaces.fhir.registry import included, includes, revincludes

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
fhir = Blueprint("fhir", __name__, url_prefix="/fhir")


# Responses -----------------------------------------------------------------------------------
def _respond(body: dict | None, status: int = 200, headers: dict | None = None) -> Response:
    text = "" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(text, status=status, mimetype=FHIR_JSON, headers=headers or {})


def _outcome(status: int, outcome: dict) -> Response:
    return _respond(outcome, status)


def _base() -> str:
    return request.url_root.rstrip("/") + "/fhir"


def _context(session) -> Context:
    """What a translation needs, with the engine's one mapping profile set (passed in by the composition
    root, interfaces.runtime.build_wsgi_app, as the HL7 intake's): a file that no longer loads is refused
    there and the last good version of its profile stays active, so one bad file never fails FHIR."""
    settings = current_app.config["RIS_SETTINGS"]
    profiles = current_app.extensions["ris.services"]["mapping_profiles"]
    profile = profiles.get(settings.mapping_profile)
    ctx = Context(site_tz=ZoneInfo(settings.site_timezone), uid_root=settings.uid_root, base_url=_base(),
                  accession_prefix=profile.accession_prefix, tables=profile.tables, session=session,
                  profile_name=profile.name)
    g.fhir_locations = ctx.locations
    return ctx


# Bodies --------------------------------------------------------------------------------------
def _check_media_type() -> None:
    """http.html 3.1.0.1.8 / #version-parameter: JSON only; fhirVersion, when given, must be 4.0."""
    mimetype = request.mimetype or ""
    if mimetype and mimetype not in JSON_TYPES:
        raise FhirError(415, "not-supported", f"Content-Type {mimetype!r} is not supported; send application/fhir+json")
    version = request.mimetype_params.get("fhirVersion") or request.mimetype_params.get("fhirversion")
    if version and not version.startswith("4.0"):
        raise FhirError(415, "not-supported", f"fhirVersion={version} is not served here: this endpoint is FHIR R4 "
                        "(fhirVersion=4.0)")
    accept = request.headers.get("Accept", "")
    if "fhirVersion=" in accept and "fhirVersion=4.0" not in accept:
        raise FhirError(406, "not-supported", f"Accept {accept!r} asks for another FHIR version; this endpoint is "
                        "FHIR R4 (fhirVersion=4.0)")


def _parse_body(type_name: str):
    """The request body as a validated R4 (R4B model) resource of ``type_name``."""
    _check_media_type()
    return parse_resource(type_name, read_json(request.get_data(), f"a {type_name} resource"))


def _prefer(name: str) -> str:
    for part in request.headers.get("Prefer", "").split(";"):
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key.strip() == name:
                return value.strip().strip('"')
    return ""


# Raw input kept (interfaces.fhir.inbound) -----------------------------------------------------
@fhir.before_request
def _note_write() -> None:
    """Note every write request as received (searches by POST are reads); it is stored with its change."""
    g.fhir_write = None
    if request.method not in inbound.WRITE_METHODS or request.path.endswith("/_search"):
        return
    g.fhir_write = inbound.Write(method=request.method, path=request.path,
                                 query=request.query_string.decode("latin-1"), body=request.get_data(),
                                 peer=request.remote_addr or "", request_id=request.headers.get("X-Request-Id", ""),
                                 parts=tuple(p for p in request.path.split("/")[2:] if p))


@fhir.after_request
def _record_answer(response: Response) -> Response:
    """A write that was not stored with a change (refused, failed, or answered outside a unit of work): store it
    with its answer now."""
    write = getattr(g, "fhir_write", None)
    if write is not None and not getattr(g, "fhir_answered", False):
        try:
            inbound.answered(current_app.extensions["ris.sessions"], write, response.status_code, response.get_data())
        except Exception:  # noqa: BLE001 - the answer stands
            current_app.logger.exception("could not store the FHIR request %s %s", write.method, write.path)
    return response


def _applied(session, response: Response, obj=None, reference: str = "") -> Response:
    """Store the request of an applied write in the unit of work of its change."""
    inbound.applied(session, getattr(g, "fhir_write", None), response.status_code, response.get_data(),
                    reference=reference, written=obj)
    g.fhir_answered = True
    return response


# Interactions --------------------------------------------------------------------------------
@fhir.get("/metadata")
def metadata():
    return _respond(capability_statement(current_app.config["RIS_SETTINGS"]))


@fhir.route("", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
@fhir.route("/", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])   # "[base]/", as clients often write it
def system_level():
    """POST of a batch or transaction Bundle (http.html 3.1.0.11, interfaces.fhir.bundle); whole-system
    search and history are not offered."""
    if request.method != "POST":
        raise FhirError(405, "not-supported", f"{request.method} on the base URL (whole-system search or history) "
                        "is not supported; POST a batch or transaction Bundle. See /fhir/metadata")
    _check_media_type()
    bundle_type, entries = bundle.read_bundle(read_json(request.get_data(), "a batch or transaction Bundle"))
    factory = current_app.extensions["ris.sessions"]
    if bundle_type == "batch":
        return _respond(bundle.batch(lambda: unit_of_work(factory), _context, entries, _base(), _prefer("return")))
    with unit_of_work(factory) as session:
        answer = bundle.transaction(session, _context, entries, _base(), _prefer("return"))
        return _applied(session, _respond(answer))


@fhir.route("/<type_name>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def type_level(type_name: str):
    if type_name == "metadata":  # GET is the capabilities route above
        raise FhirError(405, "not-supported", f"{request.method} /fhir/metadata is not supported; use GET")
    if request.method == "GET":
        return _search(type_name, list(request.args.items(multi=True)))
    if request.method == "POST":
        return _create(type_name)
    kind = _kind(type_name, "update" if request.method == "PUT" else request.method.lower())
    if request.method == "DELETE":
        return _conditional_delete(kind)
    if request.method != "PUT":
        raise FhirError(405, "not-supported", f"{request.method} {type_name} (conditional {request.method.lower()}) "
                        "is not supported")
    return _conditional_update(kind)


@fhir.post("/<type_name>/_search")
def search_post(type_name: str):
    args = list(request.args.items(multi=True))
    if request.mimetype == "application/x-www-form-urlencoded":
        args += list(request.form.items(multi=True))
    return _search(type_name, args)


@fhir.route("/<type_name>/<rid>", methods=["GET", "PUT", "DELETE", "PATCH", "POST"])
def instance_level(type_name: str, rid: str):
    if rid == "_history":   # history-type (http.html 3.1.0.5)
        _kind(type_name, "history-type")
    if request.method == "GET":
        return _read(type_name, rid)
    if request.method == "PUT":
        return _update(type_name, rid)
    if request.method == "PATCH":
        return _patch(type_name, rid)
    if request.method == "DELETE":
        return _delete(type_name, rid)
    if rid.startswith("$"):   # POST [type]/$operation
        return _operation(type_name, rid[1:], None)
    raise FhirError(405, "not-supported", f"POST {request.path}: POST creates at {_base()}/{type_name} (no id) or "
                    f"runs an operation ({type_name}/$name); see /fhir/metadata")


@fhir.route("/<type_name>/<rid>/<name>", methods=["POST"])
def instance_operation(type_name: str, rid: str, name: str):
    """``POST [type]/[id]/$operation`` (operations.html)."""
    if not name.startswith("$"):
        raise FhirError(404, "not-found", f"no FHIR endpoint at {request.path} (POST); see /fhir/metadata")
    return _operation(type_name, name[1:], rid)


@fhir.get("/<type_name>/<rid>/_history")
def history(type_name: str, rid: str):
    """history-instance (http.html 3.1.0.5): a Bundle of type history, newest first; every entry has the
    request that made the version and its response (R4 Bundle invariants bdl-3, bdl-4): version 1 a create
    (POST [type], 201), later ones an update (PUT [type]/[id], 200), each with its ETag and time."""
    kind = _kind(type_name, "history-instance")
    with unit_of_work(current_app.extensions["ris.read_sessions"]) as session:
        ctx = _context(session)
        number = numeric_id(rid)
        if number is not None and tombstone(session, kind, number) is not None:   # deleted: what was kept
            versions = [v.content for v in _kept(session, kind, number)]
        else:
            obj = _load(kind, session, rid)
            versions = [kind.render(obj, ctx)] + [v.content for v in _kept(session, kind, obj.id)
                                                  if v.version != kind.version(obj)]
    entries = []
    for resource in versions:
        version = resource["meta"]["versionId"]
        created, deleted = version == "1", bool(resource.get(DELETED))
        method = "DELETE" if deleted else "POST" if created else "PUT"
        entry = {"fullUrl": f"{_base()}/{type_name}/{rid}",
                 "request": {"method": method, "url": type_name if method == "POST" else f"{type_name}/{rid}"},
                 "response": {"status": "204 No Content" if deleted else "201 Created" if created else "200 OK",
                              "etag": f'W/"{version}"', "lastModified": resource["meta"]["lastUpdated"]}}
        if not deleted:
            entry["resource"] = resource
        entries.append(entry)
    return _respond({"resourceType": "Bundle", "type": "history", "total": len(entries), "entry": entries})


@fhir.get("/<type_name>/<rid>/_history/<vid>")
def vread(type_name: str, rid: str, vid: str):
    """vread (http.html 3.1.0.3); the versions of a deleted resource stay readable, its deletion is 410."""
    kind = _kind(type_name, "vread")
    with unit_of_work(current_app.extensions["ris.read_sessions"]) as session:
        ctx = _context(session)
        number = numeric_id(rid)
        if number is not None and tombstone(session, kind, number) is not None:
            kept = next((v.content for v in _kept(session, kind, number) if str(v.version) == vid), None)
            if kept is None:
                raise FhirError(404, "not-found", f"version {vid} of {type_name}/{rid} is not available")
            if kept.get(DELETED):
                raise FhirError(410, "deleted", f"version {vid} of {type_name}/{rid} is its deletion (at "
                                f"{kept['meta']['lastUpdated']})")
            return _respond(kept, headers={"ETag": f'W/"{vid}"', "Last-Modified": kept["meta"]["lastUpdated"]})
        obj = _load(kind, session, rid)
        if vid == str(kind.version(obj)):
            resource = kind.render(obj, ctx)
        else:
            kept = next((v.content for v in _kept(session, kind, obj.id) if str(v.version) == vid), None)
            if kept is None:
                known = numeric_id(vid) is not None and 0 < numeric_id(vid) < kind.version(obj)
                why = ("it was not kept (changed by HL7 v2 and replaced before any FHIR write)" if known
                       else f"the current version is {kind.version(obj)}")
                raise FhirError(404, "not-found", f"version {vid} of {type_name}/{rid} is not available: {why}")
            resource = kept
    return _respond(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"',
                                       "Last-Modified": resource["meta"]["lastUpdated"]})


def _read(type_name: str, rid: str):
    kind = _kind(type_name, "read")
    with unit_of_work(current_app.extensions["ris.read_sessions"]) as session:
        obj = _load(kind, session, rid)
        resource = kind.render(obj, _context(session))
    return _respond(resource, headers=_version_headers(kind, obj, resource))


def _search(type_name: str, args: list[tuple[str, str]]):
    kind = _kind(type_name, "search-type")
    strict = _prefer("handling") == "strict"
    with unit_of_work(current_app.extensions["ris.read_sessions"]) as session:
        ctx = _context(session)
        parsed = fhir_search.parse(kind.search_params, args, ctx, strict=strict, includes=includes(kind),
                                   revincludes=revincludes(kind))
        total, rows = kind.search(session, parsed.clauses, parsed.count, parsed.offset, parsed.sort)
        resources = [kind.render(row, ctx) for row in rows]
        extra = [other.render(row, ctx) for other, row in
                 included(session, kind, rows, parsed.includes, parsed.revincludes)]
    return _respond(fhir_search.searchset(f"{_base()}/{type_name}", parsed, total, resources, _base(), extra))


def _written(kind, obj, resource: dict, status: int):
    headers = _version_headers(kind, obj, resource)
    if status == 201:
        suffix = f"/_history/{kind.version(obj)}" if kind.versioned else ""
        headers["Location"] = f"{_base()}/{kind.name}/{obj.id}{suffix}"
    wanted = _prefer("return")
    if wanted == "minimal":
        return _respond(None, status, headers)
    if wanted == "OperationOutcome":
        return _respond(operation_outcome([issue("informational", f"{kind.name}/{obj.id} written",
                                                 severity="information")]), status, headers)
    return _respond(resource, status, headers)


def _create(type_name: str):
    kind = _kind(type_name, "create")
    resource = _parse_body(type_name)
    condition = request.headers.get("If-None-Exist", "").strip()
    with unit_of_work(current_app.extensions["ris.sessions"]) as session:
        status, obj, rendered = create_resource(session, _context(session), kind, resource, condition)
        return _applied(session, _written(kind, obj, rendered, status), obj, f"{type_name}/{obj.id}")


def _update(type_name: str, rid: str):
    kind = _kind(type_name, "update")
    resource = _parse_body(type_name)
    with unit_of_work(current_app.extensions["ris.sessions"]) as session:
        status, obj, rendered = update_resource(session, _context(session), kind, rid, resource,
                                                request.headers.get("If-Match", "").strip())
        return _applied(session, _written(kind, obj, rendered, status), obj, f"{type_name}/{obj.id}")


def _patch(type_name: str, rid: str):
    """``PATCH [type]/[id]`` with a JSON Patch (http.html 3.1.0.6, interfaces.fhir.patch)."""
    kind = _kind(type_name, "patch")
    if (request.mimetype or "") != PATCH_MEDIA_TYPE:
        raise FhirError(415, "not-supported", f"PATCH takes a JSON Patch (Content-Type {PATCH_MEDIA_TYPE}), not "
                        f"{request.mimetype or '(none)'!r}; FHIRPath Patch and XML Patch are not supported")
    operations = read_patch(request.get_data())
    with unit_of_work(current_app.extensions["ris.sessions"]) as session:
        status, obj, rendered = patch_resource(session, _context(session), kind, rid, operations,
                                               request.headers.get("If-Match", "").strip())
        return _applied(session, _written(kind, obj, rendered, status), obj, f"{type_name}/{obj.id}")


def _delete(type_name: str, rid: str):
    """``DELETE [type]/[id]`` (http.html 3.1.0.7): 204, whether it existed or not."""
    kind = _kind(type_name, "delete")
    with unit_of_work(current_app.extensions["ris.sessions"]) as session:
        status = delete_resource(session, _context(session), kind, rid, request.headers.get("If-Match", "").strip())
        return _applied(session, _respond(None, status), None, f"{type_name}/{rid}")


def _conditional_delete(kind):
    """``DELETE [type]?[search]`` (http.html 3.1.0.7.1): no match or one match deleted (204); several 412."""
    condition = request.query_string.decode("utf-8")
    if not condition:
        raise FhirError(400, "required", f"DELETE {kind.name} needs search criteria (conditional delete) or an id "
                        f"(DELETE {kind.name}/[id])")
    with unit_of_work(current_app.extensions["ris.sessions"]) as session:
        status, rid = conditional_delete(session, _context(session), kind, condition,
                                         request.headers.get("If-Match", "").strip())
        return _applied(session, _respond(None, status), None, f"{kind.name}/{rid}" if rid else "")


def _operation(type_name: str, name: str, rid: str | None):
    """``POST [type]/$name`` or ``[type]/[id]/$name`` with a Parameters resource (operations.html 3.1.0.10)."""
    kind = _kind(type_name, None)
    op = find_operation(kind, name, instance=rid is not None)
    _check_media_type()
    parameters = parse_resource("Parameters", read_json(request.get_data(), "a Parameters resource"))
    with unit_of_work(current_app.extensions["ris.sessions"]) as session:
        ctx = _context(session)
        instance = _load(kind, session, rid) if rid is not None else None
        status, answer, written = op.run(session, ctx, parameters, instance)
        return _applied(session, _respond(answer, status), written,
                        f"{type_name}/{written.id}" if written is not None else "")


def _conditional_update(kind):
    """``PUT [type]?[search]`` (http.html 3.1.0.4.3, interfaces.fhir.interactions.conditional_update)."""
    condition = request.query_string.decode("utf-8")
    if not condition:
        raise FhirError(400, "required", f"PUT {kind.name} needs search criteria (conditional update) or an id "
                        f"(PUT {kind.name}/[id])")
    _check_media_type()
    data = read_json(request.get_data(), f"a {kind.name} resource")
    with unit_of_work(current_app.extensions["ris.sessions"]) as session:
        status, obj, rendered = conditional_update(session, _context(session), kind, condition, data,
                                                   request.headers.get("If-Match", "").strip())
        return _applied(session, _written(kind, obj, rendered, status), obj, f"{kind.name}/{obj.id}")


# Errors: one translation for the blueprint -----------------------------------------------------
@fhir.errorhandler(Exception)
def _error(exc: Exception):
    g.fhir_answered = False   # a commit that failed took the stored request with it: store it with this answer
    if isinstance(exc, HTTPException):
        return _http_outcome(exc)
    status, outcome = translate(exc, getattr(g, "fhir_locations", None))
    if status >= 500:
        current_app.logger.exception("FHIR %s %s failed", request.method, request.path)
    return _outcome(status, outcome)


@fhir.record_once
def _register_outcomes(state) -> None:
    state.app.extensions.setdefault("ris.error_renderers", {})["/fhir"] = _http_outcome


def _http_outcome(exc: HTTPException):
    """HTTP errors raised before a FHIR view runs (no route matched, method not allowed)."""
    code = {404: "not-found", 405: "not-supported"}.get(exc.code or 500, "processing")
    text = exc.description or exc.name
    if exc.code == 404:
        text = f"no FHIR endpoint at {request.path} ({request.method}); see /fhir/metadata"
    elif exc.code == 405:
        text = f"{request.method} is not supported at {request.path}; see /fhir/metadata"
    return _outcome(exc.code or 500, operation_outcome([issue(code, text)]))
