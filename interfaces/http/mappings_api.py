"""JSON endpoints of the analyst's mapping tools that need more than the profiles: what a modality will see, and
what a change of profiles would change. Neither commits anything.

- ``GET /api/mappings/worklist?calling_aet=CT1&date=20261204&modality=CT&station_aet=&accession=&patient_id=``:
  the live worklist as the DICOM worklist SCP answers modality ``calling_aet`` (interfaces.mapping_tools
  .worklist_preview). ``date``: a DICOM date or range (or ISO 2026-12-04, 2026-12-04/2026-12-10); absent: today;
  empty: every date. Answer: ``{calling_aet, called_aet, query, identifier, status: {code, meaning, error?},
  count, items: [{keyword: value, ...}]}``.
- ``POST /api/mappings/compare`` with ``{"new": {"files": {"northwind.yaml": "name: northwind\\n..."}},
  "old": {"files": {...}}, "messages": {"from_id": 1, "to_id": 50, "status": "ERROR", "message_type": "ORM^O01",
  "sender": "NORTHWIND^NORTH", "since": "2026-12-01T00:00:00", "until": ..., "limit": 100}}``: the stored messages
  through the live profiles with candidate files written over them (each side; absent: the live folder as it is;
  a file null: left out), and what differs per message (interfaces.mapping_tools.compare_profiles). Candidate
  profiles that do not load: 422 with ``problems`` (file, line, key, problem).

The services are passed in by the composition root (interfaces.runtime): ``preview_worklist`` and
``compare_mappings``.
"""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, current_app, jsonify, request

from app.errors import InvalidInput, Unsupported
from interfaces.http.problems import problem
from mappings.profile import ProfilesRefused

mappings_api = Blueprint("mappings_api", __name__)

_FILTER_KEYS = {"from_id", "to_id", "status", "message_type", "sender", "since", "until", "limit"}


def _service(name: str):
    service = current_app.extensions["ris.services"].get(name)
    if service is None:
        raise Unsupported(f"{name.replace('_', ' ')} is not available in this process", location="path")
    return service


@mappings_api.get("/api/mappings/worklist")
def preview_worklist():
    """What modality ``calling_aet`` would receive from the worklist now (nothing is kept)."""
    args = request.args
    if not args.get("calling_aet", "").strip():
        raise InvalidInput("give calling_aet: the AE title of the modality whose worklist to show",
                           location="calling_aet")
    report = _service("preview_worklist")(
        calling_aet=args["calling_aet"], date=args.get("date"), modality=args.get("modality", ""),
        station_aet=args.get("station_aet", ""), accession=args.get("accession", ""),
        patient_id=args.get("patient_id", ""))
    return jsonify(report)


def _time(value, name: str):
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput(f"{name} {value!r} is not an ISO 8601 date and time", location=f"messages.{name}") from None


def _whole(value, name: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be a whole number", location=f"messages.{name}")
    return value


def _files(side: dict | None, name: str) -> dict | None:
    if side is None:
        return None
    if not isinstance(side, dict) or set(side) - {"files"} or not isinstance(side.get("files", {}), dict):
        raise InvalidInput(f'{name} is {{"files": {{"NAME.yaml": "YAML text or null"}}}}', location=name)
    return side.get("files") or None


@mappings_api.post("/api/mappings/compare")
def compare_mappings():
    """The same stored messages through two sets of profiles: what would differ (nothing is kept)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or set(body) - {"old", "new", "messages"}:
        raise InvalidInput('the body is a JSON object: {"new": {"files": {...}}, "old": {...}, "messages": {...}}',
                           location="body")
    criteria = body.get("messages") or {}
    if not isinstance(criteria, dict) or set(criteria) - _FILTER_KEYS:
        raise InvalidInput(f"messages selects stored messages by {', '.join(sorted(_FILTER_KEYS))}",
                           location="messages")
    for key in ("status", "message_type", "sender"):
        if not isinstance(criteria.get(key, ""), str):
            raise InvalidInput(f"{key} must be a text", location=f"messages.{key}")
    selection = dict(from_id=_whole(criteria.get("from_id"), "from_id"), to_id=_whole(criteria.get("to_id"), "to_id"),
                     status=criteria.get("status", ""), message_type=criteria.get("message_type", ""),
                     sender=criteria.get("sender", ""), since=_time(criteria.get("since"), "since"),
                     until=_time(criteria.get("until"), "until"), limit=_whole(criteria.get("limit", 100), "limit"))
    try:
        report = _service("compare_mappings")(selection, old_files=_files(body.get("old"), "old"),
                                              new_files=_files(body.get("new"), "new"))
    except ProfilesRefused as exc:
        return problem(422, "ProfileError", exc.message, location=exc.side,
                       problems=[p.as_dict() for p in exc.problems])
    return jsonify(report)
