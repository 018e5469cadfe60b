"""Batch and transaction Bundles: ``POST [base]`` (FHIR R4 http.html 3.1.0.11 "Batch/Transaction").

Every entry is one interaction with the rules of the same request sent alone (interfaces.fhir.interactions):

- POST ``[type]`` create, with ``request.ifNoneExist`` (conditional create, 3.1.0.8.1);
- PUT ``[type]/[id]`` update, with ``request.ifMatch`` (412 when stale, 3.1.0.4.1); PUT ``[type]?[search]``
  conditional update (3.1.0.4.3: no match creates, one match updates it, several are 412);
- DELETE ``[type]/[id]`` and conditional DELETE ``[type]?[search]`` (3.1.0.7, 3.1.0.7.1);
- PATCH ``[type]/[id]`` with a Binary (contentType application/json-patch+json) holding a JSON Patch;
- GET ``[type]/[id]`` read and GET ``[type]?[search]`` search.

What is not offered (HEAD, operations ``$name``, an interaction the type does not have): a transaction naming
one is refused whole before anything is applied, with one issue per such entry (expression ``Bundle.entry[n]``).

Transaction (3.1.0.11.2): all entries in the caller's one unit of work - all or nothing. Writes are
processed before reads (the order DELETE, POST, PUT, GET of 3.1.0.11.2); among writes an entry runs
once every entry whose ``fullUrl`` it references has run, so a ServiceRequest may name the
``urn:uuid:`` of a Patient created in the same Bundle (3.1.0.11.3 "Resolving references in
Bundles"): the reference is replaced by ``Patient/<id>``. A conditional reference
(``Patient?identifier=sys|value``, 3.1.0.11.3) is resolved by a search that must find exactly one
(412 otherwise). When an entry fails, everything is rolled back and the OperationOutcome names it:
``Bundle.entry[n]`` in the diagnostics and expressions ``Bundle.entry[n].resource.<path>``.
The answer is a ``transaction-response`` Bundle, one entry per request entry in the same order,
with ``response.status``, ``location``, ``etag``, ``lastModified`` and, unless ``Prefer:
return=minimal``, the resource.

Batch (3.1.0.11.1): each entry is its own unit of work; a failure is that entry's ``response``
(its status and an OperationOutcome in ``response.outcome``); references between entries are not
resolved (a batch's entries must not depend on each other). The answer is a ``batch-response``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from interfaces.fhir import search as fhir_search
from interfaces.fhir.errors import FhirError, OutcomeError, issue, operation_outcome, translate
from interfaces.fhir.interactions import (conditional_delete, conditional_update, create_resource, delete_resource,
                                          find_kind, load, parse_resource, patch_resource, update_resource)
from interfaces.fhir.patch import MEDIA_TYPE as PATCH_MEDIA_TYPE
from interfaces.fhir.registry import KINDS, SYSTEM_INTERACTIONS

REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 412: "Precondition Failed",
           415: "Unsupported Media Type", 422: "Unprocessable Entity", 500: "Internal Server Error",
           503: "Service Unavailable"}
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_CONDITIONAL_REF = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")


@dataclass
class Entry:
    """One request of the Bundle: where it is (``index``), what it asks and what it references."""

    index: int
    method: str
    url: str
    full_url: str
    data: dict | None
    request: dict
    type_name: str = ""
    rid: str = ""
    query: str = ""
    refs: set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def status_line(code: int) -> str:
    return f"{code} {REASONS.get(code, '')}".strip()


# Reading the Bundle -------------------------------------------------------------------------------
def read_bundle(data: dict) -> tuple[str, list[Entry]]:
    """The Bundle's type (transaction or batch) and its entries; 400 for anything else."""
    if data.get("resourceType") != "Bundle":
        raise FhirError(400, "invalid", f"POST to the base URL takes a Bundle (batch or transaction), not "
                        f"{data.get('resourceType')!r}", ("Bundle.resourceType",))
    kind = data.get("type")
    if kind not in SYSTEM_INTERACTIONS:
        raise FhirError(400, "invalid", f"Bundle.type {kind!r}: only transaction and batch Bundles are processed here",
                        ("Bundle.type",))
    raw_entries = data.get("entry") or []
    if not isinstance(raw_entries, list):
        raise FhirError(400, "structure", "Bundle.entry must be a list", ("Bundle.entry",))
    entries = []
    for i, raw in enumerate(raw_entries):
        where = f"Bundle.entry[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
            raise FhirError(400, "required", f"{where} has no request (method and url)", (f"{where}.request",))
        request = raw["request"]
        method, url = str(request.get("method") or "").upper(), str(request.get("url") or "").strip()
        if not method or not url:
            raise FhirError(400, "required", f"{where}.request needs method and url", (f"{where}.request",))
        resource = raw.get("resource")
        if resource is not None and not isinstance(resource, dict):
            raise FhirError(400, "structure", f"{where}.resource must be a resource", (f"{where}.resource",))
        entry = Entry(i, method, url, str(raw.get("fullUrl") or ""), resource, request)
        path, _, entry.query = url.partition("?")
        parts = [p for p in urlsplit(path).path.split("/") if p]
        entry.type_name = parts[0] if parts else ""
        entry.rid = parts[1] if len(parts) > 1 else ""
        entry.refs = set(_references(resource)) if resource is not None else set()
        entries.append(entry)
    return kind, entries


def _references(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _interaction(entry: Entry) -> str:
    """The R4 restful-interaction an entry asks for; raises FhirError for what is not offered."""
    if "$" in entry.url.split("?", 1)[0]:
        raise FhirError(405, "not-supported", f"operation {entry.url!r} is not supported")
    segments = len([p for p in entry.url.split("?", 1)[0].split("/") if p])
    if entry.method == "POST" and segments == 1:
        interaction = "create"
    elif entry.method == "PUT" and segments in (1, 2):
        interaction = "update"
    elif entry.method == "GET" and segments == 2:
        interaction = "read"
    elif entry.method == "GET" and segments == 1:
        interaction = "search-type"
    elif entry.method == "PATCH" and segments == 2:
        interaction = "patch"
    elif entry.method == "DELETE" and segments in (1, 2) and (segments == 2 or entry.query):
        interaction = "delete"
    elif entry.method in ("DELETE", "PATCH"):
        find_kind(entry.type_name, entry.method.lower())   # 404 unknown type, 405 not offered
        raise FhirError(405, "not-supported", f"{entry.method} {entry.url!r} is not supported in a Bundle")
    else:
        raise FhirError(400, "not-supported", f"{entry.method} {entry.url!r} is not an interaction of a Bundle entry")
    find_kind(entry.type_name, interaction)
    if entry.method in ("POST", "PUT", "PATCH") and entry.data is None:
        raise FhirError(400, "required", f"{entry.method} {entry.url} needs a resource")
    if interaction == "patch" and (entry.data.get("resourceType") != "Binary"
                                   or entry.data.get("contentType") != PATCH_MEDIA_TYPE):
        raise FhirError(415, "not-supported", f"PATCH {entry.url} takes a Binary with contentType {PATCH_MEDIA_TYPE} "
                        "holding the JSON Patch (FHIRPath Patch Parameters are not supported)")
    return interaction


def check(entries: list[Entry]) -> None:
    """Refuse, before anything is applied, every entry asking for what is not offered (one issue each)."""
    problems = []
    for entry in entries:
        try:
            _interaction(entry)
        except FhirError as exc:
            problems.append((exc.status, issue(exc.code, f"{entry.where} ({entry.method} {entry.url}): "
                                                          f"{exc.diagnostics}; nothing was processed", (entry.where,))))
    if problems:
        raise OutcomeError(problems[0][0], operation_outcome([p[1] for p in problems]))


# Running entries ----------------------------------------------------------------------------------
def _rewrite(node, resolved: dict[str, str]):
    if isinstance(node, dict):
        return {k: (resolved.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, resolved))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, resolved) for v in node]
    return node


def _conditional_references(session, ctx, entry: Entry, resolved: dict[str, str]) -> None:
    """Resolve ``Type?search`` references (http.html 3.1.0.11.3): exactly one match, else 412."""
    for ref in entry.refs:
        match = _CONDITIONAL_REF.match(ref)
        if match is None or ref in resolved:
            continue
        kind = KINDS.get(match.group(1))
        if kind is None:
            raise FhirError(422, "invalid", f"conditional reference {ref!r} names a type not served here")
        parsed = fhir_search.parse(kind.search_params, parse_qsl(match.group(2), keep_blank_values=True), ctx,
                                   strict=True)
        total, rows = kind.search(session, parsed.clauses, 2, 0)
        if total != 1:
            raise FhirError(412, "not-found" if total == 0 else "multiple-matches",
                            f"conditional reference {ref!r} matches {total} {kind.name} resources; it must match "
                            "exactly one")
        resolved[ref] = f"{kind.name}/{rows[0].id}"


def run_entry(session, ctx, entry: Entry, resolved: dict[str, str], base: str, prefer: str) -> dict:
    """Apply one entry in ``session``; its response entry (http.html 3.1.0.11.4). Raises on failure."""
    interaction = _interaction(entry)
    kind = KINDS[entry.type_name]
    if interaction == "read":
        obj = load(kind, session, entry.rid)
        return _answer(kind, obj, kind.render(obj, ctx), 200, base, "representation")
    if interaction == "search-type":
        parsed = fhir_search.parse(kind.search_params, parse_qsl(entry.query, keep_blank_values=True), ctx,
                                   strict=False)
        total, rows = kind.search(session, parsed.clauses, parsed.count, parsed.offset, parsed.sort)
        found = fhir_search.searchset(f"{base}/{kind.name}", parsed, total, [kind.render(r, ctx) for r in rows], base)
        return {"resource": found, "response": {"status": status_line(200)}}
    if interaction == "delete":
        if_match = str(entry.request.get("ifMatch") or "").strip()
        if entry.rid:
            delete_resource(session, ctx, kind, entry.rid, if_match)
        else:
            conditional_delete(session, ctx, kind, entry.query, if_match)
        return {"response": {"status": status_line(204)}}
    if interaction == "patch":
        try:
            operations = json.loads(base64.b64decode(entry.data.get("data") or "", validate=True).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise FhirError(400, "structure", f"PATCH {entry.url}: Binary.data is not base64 JSON") from None
        status, obj, rendered = patch_resource(session, ctx, kind, entry.rid, operations,
                                               str(entry.request.get("ifMatch") or "").strip())
        return _answer(kind, obj, rendered, status, base, prefer)
    _conditional_references(session, ctx, entry, resolved)
    data = _rewrite(entry.data, resolved)
    if interaction == "create":
        resource = parse_resource(kind.name, {k: v for k, v in data.items() if k != "id"})
        status, obj, rendered = create_resource(session, ctx, kind, resource,
                                                str(entry.request.get("ifNoneExist") or "").strip())
    elif entry.rid:
        status, obj, rendered = update_resource(session, ctx, kind, entry.rid, parse_resource(kind.name, data),
                                                str(entry.request.get("ifMatch") or "").strip())
    else:
        status, obj, rendered = conditional_update(session, ctx, kind, entry.query, data,
                                                   str(entry.request.get("ifMatch") or "").strip())
    if entry.full_url:
        resolved[entry.full_url] = f"{kind.name}/{obj.id}"
    return _answer(kind, obj, rendered, status, base, prefer)


def _answer(kind, obj, rendered: dict, status: int, base: str, prefer: str) -> dict:
    response = {"status": status_line(status), "lastModified": rendered["meta"]["lastUpdated"]}
    if kind.versioned:
        response["etag"] = f'W/"{kind.version(obj)}"'
    if status == 201:
        response["location"] = f"{kind.name}/{obj.id}" + (f"/_history/{kind.version(obj)}" if kind.versioned else "")
    answer = {"fullUrl": f"{base}/{kind.name}/{obj.id}", "response": response}
    if prefer != "minimal":
        answer["resource"] = rendered
    return answer


def _failed(entry: Entry, exc: Exception, locations: dict) -> tuple[int, dict]:
    """The outcome of a failed entry, its expressions pointing into the Bundle."""
    status, outcome = translate(exc, locations)
    for item in outcome["issue"]:
        exprs = []
        for expr in item.get("expression", []):
            head, dot, rest = expr.partition(".")
            if head == entry.type_name:
                exprs.append(f"{entry.where}.resource" + (f".{rest}" if dot else ""))
            elif expr in ("If-Match", "If-None-Exist"):
                exprs.append(f"{entry.where}.request." + ("ifMatch" if expr == "If-Match" else "ifNoneExist"))
            else:
                exprs.append(expr)
        item["expression"] = exprs or [entry.where]
        item["diagnostics"] = f"{entry.where} ({entry.method} {entry.url}): {item['diagnostics']}"
    return status, outcome


def _write_order(entries: list[Entry]) -> list[Entry]:
    """Writes in the order of http.html 3.1.0.11.2, each after the entries whose fullUrl it references."""
    pending = sorted((e for e in entries if e.method != "GET"), key=lambda e: (ORDER.get(e.method, 9), e.index))
    full_urls = {e.full_url: e for e in entries if e.full_url}
    done: set[int] = set()
    ordered: list[Entry] = []
    while pending:
        ready = [e for e in pending if all(full_urls[r].index in done or full_urls[r] is e
                                           for r in e.refs if r in full_urls)]
        if not ready:
            names = ", ".join(e.where for e in pending)
            raise OutcomeError(400, operation_outcome([issue(
                "invalid", f"the references between {names} form a cycle; nothing was processed",
                tuple(e.where for e in pending))]))
        for entry in ready:
            ordered.append(entry)
            done.add(entry.index)
        pending = [e for e in pending if e.index not in done]
    return ordered


def transaction(session, make_context, entries: list[Entry], base: str, prefer: str) -> dict:
    """All entries in ``session`` (the caller's one unit of work); OutcomeError naming the entry that failed."""
    check(entries)
    unknown = [(e, r) for e in entries for r in e.refs
               if r.startswith("urn:") and r not in {x.full_url for x in entries}]
    if unknown:
        entry, ref = unknown[0]
        raise OutcomeError(400, operation_outcome([issue(
            "invalid", f"{entry.where}: reference {ref!r} names no entry of this Bundle (no fullUrl {ref}); nothing "
            "was processed", (f"{entry.where}.resource",))]))
    resolved: dict[str, str] = {}
    answers: dict[int, dict] = {}
    for entry in _write_order(entries) + [e for e in entries if e.method == "GET"]:
        ctx = make_context(session)
        try:
            answers[entry.index] = run_entry(session, ctx, entry, resolved, base, prefer)
        except Exception as exc:
            status, outcome = _failed(entry, exc, ctx.locations)
            if status >= 500:
                raise
            raise OutcomeError(status, outcome) from exc
    answer = {"resourceType": "Bundle", "type": "transaction-response"}
    if entries:
        answer["entry"] = [answers[e.index] for e in entries]
    return answer


def batch(unit_of_work, make_context, entries: list[Entry], base: str, prefer: str) -> dict:
    """Each entry in its own unit of work (``unit_of_work()`` gives one); failures are that entry's response."""
    answers = []
    for entry in entries:
        ctx = None
        try:
            with unit_of_work() as session:
                ctx = make_context(session)
                answers.append(run_entry(session, ctx, entry, {}, base, prefer))
        except Exception as exc:  # noqa: BLE001 - an entry's failure is its answer (http.html 3.1.0.11.1)
            status, outcome = _failed(entry, exc, ctx.locations if ctx is not None else {})
            answers.append({"response": {"status": status_line(status), "outcome": outcome}})
    return {"resourceType": "Bundle", "type": "batch-response", **({"entry": answers} if answers else {})}
