"""FHIR R4 search (search.html): parameter types, prefixes and modifiers, paging, searchset Bundles.

Supported, per search.html:

- 3.1.1.4 repeated parameters AND, comma-separated values OR; ``Prefer: handling=strict`` makes an
  unknown parameter or modifier a 400, ``handling=lenient`` (the default) ignores it, leaves it out
  of the ``self`` link and reports it in an OperationOutcome entry (search.mode = outcome);
- 3.1.1.5.6 date: precisions year to seconds, prefixes eq, ne, gt, lt, ge, le (sa, eb, ap: 400);
- 3.1.1.5.9 token: ``code``, ``system|code``, ``|code``, ``system|``;
- 3.1.1.5.10 reference: ``Type/id``, ``id``, an absolute URL under our base;
- 3.1.1.5.8 string: starts-with, case-insensitive; ``:exact`` and ``:contains``;
- 3.1.1.5.4 ``_include`` / ``_revinclude`` along reference parameters on a key (search.mode include);
- 3.1.1.5.14 ``_sort`` by the parameters that declare a sort expression (``-`` descending), then by id;
- 3.1.1.6 ``_count`` (page size, at most :data:`MAX_COUNT`) and paging links self/first/previous/next
  built with ``_offset``; ``_id`` and ``_lastUpdated`` on every resource type (3.1.1.3).

A resource type declares its parameters as :class:`SearchParam` values; the same declarations
feed the CapabilityStatement (interfaces.fhir.capability), so the two cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlencode

from sqlalchemy import and_, false, func, literal, not_, or_

from interfaces import inputs
from interfaces.fhir.datatypes import date_range, numeric_id, reference_id
from interfaces.fhir.errors import FhirError, issue

DEFAULT_COUNT = 20
MAX_COUNT = 500
RESULT_PARAMS = ("_count", "_offset", "_format", "_pretty", "_include", "_revinclude", "_sort")
SORT_PARAMS = ("_id", "_lastUpdated")   # every type sorts by these; each type adds its date parameters
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")


@dataclass(frozen=True)
class SearchParam:
    """One search parameter: its FHIR name and type, what it matches (documentation, also shown in
    the CapabilityStatement), its modifiers and ``build(value, modifier, ctx) -> SQL clause`` for one
    value (comma-separated alternatives are ORed by the caller)."""

    name: str
    type: str
    documentation: str
    build: Callable
    modifiers: tuple[str, ...] = ()
    definition: str = ""
    target: str = ""        # reference parameters on a key column: the type referred to, for _include/_revinclude
    column: object = None   # ... and that key column (or an SQL expression giving the key)
    keys: Callable | None = None   # ids -> clause "refers to one of these" (_revinclude); default column IN ids
    sort: object = None     # the SQL expression _sort orders by (None: the parameter cannot sort)


@dataclass
class ParsedSearch:
    clauses: list
    used: list[tuple[str, str]]
    ignored: list[str]
    count: int
    offset: int
    includes: list[str] = field(default_factory=list)
    revincludes: list[str] = field(default_factory=list)
    sort: list = field(default_factory=list)   # (SQL expression, descending)


def parse(params: dict[str, SearchParam], args: list[tuple[str, str]], ctx, *, strict: bool,
          includes=(), revincludes=()) -> ParsedSearch:
    """The query string of a search against ``params``: SQL clauses, the parameters used, the ones ignored.
    ``includes``/``revincludes``: the _include/_revinclude values offered (search.html 3.1.1.5.4)."""
    clauses, used, ignored, sort = [], [], [], []
    count, offset = DEFAULT_COUNT, 0
    wanted: dict[str, list[str]] = {"_include": [], "_revinclude": []}
    for key, value in args:
        name, _, modifier = key.partition(":")
        if name in wanted:
            offered = includes if name == "_include" else revincludes
            if value in offered:
                wanted[name].append(value)
                used.append((key, value))
                continue
            problem = f"{name}={value} is not supported (supported: {', '.join(offered) or 'none'})"
            if strict:
                raise FhirError(400, "not-supported", problem + "; sent with Prefer: handling=strict", (name,))
            ignored.append(problem)
            continue
        if name == "_sort":
            problems = _sort(params, value, sort)
            for problem in problems:
                if strict:
                    raise FhirError(400, "not-supported", problem + "; sent with Prefer: handling=strict", ("_sort",))
                ignored.append(problem)
            if len(problems) < len([v for v in value.split(",") if v.strip()]):
                used.append((key, value))
            continue
        if name == "_count":
            count = _whole(key, value, 0, MAX_COUNT)
            continue
        if name == "_offset":
            offset = _whole(key, value, 0, 10**9)
            continue
        if name in RESULT_PARAMS:
            continue
        param = params.get(name)
        problem = None
        if param is None:
            problem = f"unknown search parameter {name!r} (supported: {', '.join(sorted(params))})"
        elif modifier and modifier not in param.modifiers:
            problem = f"search parameter {name!r} does not support the modifier :{modifier}"
        if problem:
            if strict:
                raise FhirError(400, "not-supported", problem + "; sent with Prefer: handling=strict",
                                (f"{name}",))
            ignored.append(problem)
            continue
        if value == "":
            continue  # search.html 3.1.1.4: an empty value is ignored
        alternatives = [param.build(v, modifier, ctx) for v in _split(value)]
        clauses.append(alternatives[0] if len(alternatives) == 1 else or_(*alternatives))
        used.append((key, value))
    return ParsedSearch(clauses, used, ignored, count, offset, wanted["_include"], wanted["_revinclude"], sort)


def _sort(params: dict[str, SearchParam], value: str, into: list) -> list[str]:
    """search.html 3.1.1.5.14: ``_sort=a,-b`` (a ascending, then b descending); the problems with it."""
    problems = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        descending, name = item.startswith("-"), item.lstrip("-")
        param = params.get(name)
        if param is None or param.sort is None:
            sortable = ", ".join(sorted(p.name for p in params.values() if p.sort is not None))
            problems.append(f"_sort={item}: cannot sort by {name!r} (sortable: {sortable})")
            continue
        into.append((param.sort, descending))
    return problems


def _split(value: str) -> list[str]:
    """Comma-separated alternatives; '\\,' is a literal comma (search.html 3.1.1.4.2 escaping)."""
    parts, current, escaped = [], "", False
    for ch in value:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _whole(key: str, value: str, low: int, high: int) -> int:
    if not inputs.is_whole_number(value, low=low, high=high):
        raise FhirError(400, "value", f"{key}={value!r} must be a whole number from {low} to {high}", (key,))
    return int(value)


# Parameter builders --------------------------------------------------------------------------
def token(value: str) -> tuple[str | None, str | None]:
    """(system, code): None = any; '' system = no system (search.html 3.1.1.5.9)."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, (code or None)
    return None, value


def id_param(column) -> SearchParam:
    def build(value, _modifier, _ctx):
        number = numeric_id(value)
        return column == number if number is not None else false()  # not one of our ids: no match
    return SearchParam("_id", "token", "Logical id of the resource", build,
                       definition="http://hl7.org/fhir/SearchParameter/Resource-id", sort=column)


def reference_key(value: str, resource_type: str, ctx) -> int:
    """The database key a reference search value names (search.html 3.1.1.5.10: 'Type/id', 'id' or an
    absolute URL under our base); -1, which matches nothing, for anything else."""
    number = numeric_id(reference_id(value, resource_type, ctx.base_url) or value)
    return number if number is not None else -1


def reference_param(name: str, resource_type: str, column, documentation: str, definition: str,
                    keys: Callable | None = None) -> SearchParam:
    """A reference parameter matched on the foreign key ``column`` (ids here are database keys; ``column``
    may be an SQL expression giving the key, with ``keys(ids)`` an indexed clause for it); it can be
    followed by _include and _revinclude."""
    def build(value, _modifier, ctx):
        key = reference_key(value, resource_type, ctx)
        return keys([key]) if keys is not None else column == key
    return SearchParam(name, "reference", documentation, build, definition=definition, target=resource_type,
                       column=column, keys=keys)


def date_bounds(value: str, *, utc: bool, site_tz=None) -> tuple[str, dt.datetime, dt.datetime]:
    """(prefix, start, end) of a date search value (search.html 3.1.1.5.6): [start, end) as naive datetimes in
    UTC (``utc``) or site time; a value without an offset is taken in that zone."""
    prefix = value[:2] if value[:2] in DATE_PREFIXES + ("sa", "eb", "ap") else "eq"
    text = value[2:] if value[:2] == prefix else value
    if prefix in ("sa", "eb", "ap"):
        raise FhirError(400, "not-supported", f"date prefix {prefix!r} is not supported (use eq, ne, gt, lt, ge, le)")
    start, end, zoned = date_range(text)
    if zoned:
        target = dt.timezone.utc if utc else site_tz
        start = start.astimezone(target).replace(tzinfo=None)
        end = end.astimezone(target).replace(tzinfo=None)
    return prefix, start, end


def compare(expr, prefix: str, start, end):
    """The clause of a date prefix on ``expr`` for the range [start, end) (values comparable with ``expr``)."""
    return {"eq": and_(expr >= start, expr < end), "ne": not_(and_(expr >= start, expr < end)),
            "gt": expr >= end, "ge": expr >= start, "lt": expr < start, "le": expr < end}[prefix]


def date_clause(column, value: str, *, utc: bool, site_tz=None):
    """A date search on a naive datetime/date ``column`` (UTC when ``utc``, else site time)."""
    prefix, start, end = date_bounds(value, utc=utc, site_tz=site_tz)
    if column.type.python_type is dt.date:
        start, end = start.date(), end.date() if end.time() == dt.time.min else end.date() + dt.timedelta(days=1)
    return compare(column, prefix, start, end)


def last_updated_param(column) -> SearchParam:
    return SearchParam("_lastUpdated", "date", "When the resource last changed (meta.lastUpdated, UTC)",
                       lambda v, _m, _c: date_clause(column, v, utc=True),
                       definition="http://hl7.org/fhir/SearchParameter/Resource-lastUpdated", sort=column)


def string_clause(column, value: str, modifier: str):
    """search.html 3.1.1.5.8 on a DICOM PN (family^given^middle^prefix^suffix): any name part starts
    with the value, case-insensitive; ':exact' a whole part, case-sensitive; ':contains' anywhere."""
    def escaped(text: str) -> str:
        return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

    words = literal(" ") + func.replace(column, "^", " ") + literal(" ")
    if modifier == "exact":
        return words.like(f"% {escaped(value)} %", escape="\\")
    if modifier == "contains":
        return func.lower(column).like(f"%{escaped(value.lower())}%", escape="\\")
    return func.lower(words).like(f"% {escaped(value.lower())}%", escape="\\")


# Bundles -------------------------------------------------------------------------------------
def page_links(url: str, used: list[tuple[str, str]], count: int, offset: int, total: int) -> list[dict]:
    def link(relation: str, at: int) -> dict:
        query = list(used) + [("_count", str(count))] + ([("_offset", str(at))] if at else [])
        return {"relation": relation, "url": f"{url}?{urlencode(query)}"}

    links = [link("self", offset), link("first", 0)]
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    if count and offset + count < total:
        links.append(link("next", offset + count))
    return links


def searchset(url: str, parsed: ParsedSearch, total: int, resources: list[dict], base: str,
              included: list[dict] = ()) -> dict:
    entries = [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": mode}}
               for mode, group in (("match", resources), ("include", included)) for r in group]
    if parsed.ignored:
        entries.append({"resource": {"resourceType": "OperationOutcome",
                                     "issue": [issue("not-supported", text, severity="warning")
                                               for text in parsed.ignored]},
                        "search": {"mode": "outcome"}})
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": total,
              "link": page_links(url, parsed.used, parsed.count, parsed.offset, total)}
    if entries:   # FHIR JSON has no empty arrays (json.html 2.6.2.x): no match, no entry element
        bundle["entry"] = entries
    return bundle
