"""Subscriptions (FHIR R4 subscription.html, with the Subscriptions R5 Backport IG for R4), rest-hook channel.

**The resource.** A client creates a Subscription with ``channel.type`` rest-hook and an http(s) ``endpoint``; it is
active at once (no handshake is sent). Two ways to say what it watches, both kept as sent:

- Backport: ``criteria`` = one of the topics below (canonical), the filter in the extension
  ``backport-filter-criteria`` on ``criteria`` (``ServiceRequest?patient=Patient/5``: a search on the topic's
  resource type, with the search parameters this server offers for it), the content in ``backport-payload-content``
  on ``channel.payload`` (empty, id-only, full-resource; default id-only);
- R4: ``criteria`` = a search (``Task?status=in-progress``): the topic of that type; ``channel.payload`` given:
  full-resource, absent: empty.

Topics (urn:ris-engine:subscription-topic:...): ``servicerequest-status`` - a ServiceRequest is created or its
status changes; ``task-status`` - a Task (scheduled procedure step) is created or its status changes (MPPS, hold,
cancel); ``imagingstudy-available`` - a study arrives in the archive (its first instance, C-STORE). A notification
is sent when the resource, after the change, matches the filter.

**Notifications** are outbox rows (destination ``subscription/<id>``, app.services.outbox) written in the
transaction of the change, whoever made it (HL7, DICOM, FHIR): :func:`watch` follows the units of work of a session
factory (a change rolled back, also one job of a group commit or a savepoint, notifies nothing). The outbox
dispatcher delivers them in order with retries (interfaces.outbound.http: transient vs permanent errors); each is a
Bundle of type history: first a Parameters SubscriptionStatus (backport profile
backport-subscription-status-r4: subscription, topic, status, type event-notification,
events-since-subscription-start, notification-event with event-number, timestamp, focus), then the focus (id-only:
its URL; full-resource: the resource as read when the notification is first sent). A notification that cannot be
delivered at all (a permanent error, or out of retries) sets the subscription's status to error with the reason.
After ``end`` nothing is sent. Status off stops it; delete removes it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from zoneinfo import ZoneInfo

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, attributes

from app.commands import Cause
from app.db import unit_of_work
from app.rows import WATCH_WRITES, WRITES
from app.models import (Order, OutboxMessage, OutboxStatus, ProcedureStep, RequestedProcedure, Study,
                        Subscription, SubscriptionStatus, utcnow)
from app.services import outbox
from interfaces.fhir.datatypes import Context, utc_instant
from interfaces.fhir.errors import FhirError
from interfaces.fhir.kinds import Kind
from interfaces.fhir.search import SearchParam, parse, token

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER = BACKPORT + "backport-filter-criteria"
CONTENT = BACKPORT + "backport-payload-content"
STATUS_PROFILE = BACKPORT + "backport-subscription-status-r4"
TOPIC_BASE = "urn:ris-engine:subscription-topic:"
TOPICS = {"servicerequest-status": "ServiceRequest", "task-status": "Task", "imagingstudy-available": "ImagingStudy"}
TYPE_TOPIC = {t: TOPIC_BASE + name for name, t in TOPICS.items()}
CONTENTS = ("empty", "id-only", "full-resource")
FHIR_JSON = "application/fhir+json"
KIND = "fhir.subscription-notification"
PREFIX = "subscription/"
_EVENTS = "ris.fhir.subscription-events"
_MARKS = "ris.fhir.subscription-marks"


def destination(sub_id: int) -> str:
    return f"{PREFIX}{sub_id}"


# The resource --------------------------------------------------------------------------------------
def _extension(element, url: str):
    for ext in (element.extension or []) if element is not None else []:
        if ext.url == url:
            return ext
    return None


def _kinds():
    from interfaces.fhir.registry import KINDS   # noqa: PLC0415 (the registry imports this module)
    return KINDS


def _read(resource, ctx: Context) -> dict:
    """The columns of a Subscription resource; 422 for what this server cannot deliver."""
    channel = resource.channel
    if channel.type != "rest-hook":
        raise FhirError(422, "not-supported", f"Subscription.channel.type {channel.type!r} is not supported: only "
                        "rest-hook", ("Subscription.channel.type",))
    if not channel.endpoint or not channel.endpoint.startswith(("http://", "https://")):
        raise FhirError(422, "required", "a rest-hook needs Subscription.channel.endpoint, an http or https URL",
                        ("Subscription.channel.endpoint",))
    for i, line in enumerate(channel.header or []):
        name, sep, _value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            raise FhirError(422, "invalid", f"Subscription.channel.header[{i}] {line!r} is not 'Name: value'",
                            (f"Subscription.channel.header[{i}]",))
    criteria = (resource.criteria or "").strip()
    content_ext = _extension(channel.payload__ext, CONTENT)
    if criteria.startswith(TOPIC_BASE):   # backport: a topic, a filter in an extension
        name = criteria[len(TOPIC_BASE):]
        if name not in TOPICS:
            raise FhirError(422, "not-supported", f"Subscription.criteria: no topic {criteria!r} here (topics: "
                            f"{', '.join(TOPIC_BASE + t for t in TOPICS)})", ("Subscription.criteria",))
        topic = TOPICS[name]
        filt = _extension(resource.criteria__ext, FILTER)
        query = (filt.valueString or "").strip() if filt is not None else ""
        if query and not query.startswith(f"{topic}?"):
            raise FhirError(422, "invalid", f"the filter {query!r} must be a search on {topic} ({topic}?...) for "
                            f"the topic {criteria}", ("Subscription.criteria",))
        query = query[len(topic) + 1:] if query else ""
        content = content_ext.valueCode if content_ext is not None else "id-only"
    else:   # R4: criteria is a search
        topic, _, query = criteria.partition("?")
        if topic not in TYPE_TOPIC:
            raise FhirError(422, "not-supported", f"Subscription.criteria {criteria!r}: notifications are sent for "
                            f"{', '.join(TYPE_TOPIC)} (a search on one of them, or a topic {TOPIC_BASE}...)",
                            ("Subscription.criteria",))
        content = content_ext.valueCode if content_ext is not None else ("full-resource" if channel.payload else
                                                                         "empty")
    if content not in CONTENTS:
        raise FhirError(422, "invalid", f"payload content {content!r}: one of {', '.join(CONTENTS)}",
                        ("Subscription.channel.payload",))
    if channel.payload and channel.payload not in (FHIR_JSON, "application/json"):
        raise FhirError(422, "not-supported", f"Subscription.channel.payload {channel.payload!r}: notifications are "
                        f"{FHIR_JSON}", ("Subscription.channel.payload",))
    kind = _kinds()[topic]
    from urllib.parse import parse_qsl   # noqa: PLC0415
    try:
        parse(kind.search_params, parse_qsl(query, keep_blank_values=True), ctx, strict=True)
    except FhirError as exc:
        raise FhirError(422, "invalid", f"Subscription.criteria filter {query!r}: {exc.diagnostics}",
                        ("Subscription.criteria",)) from None
    status = {"requested": SubscriptionStatus.ACTIVE, "active": SubscriptionStatus.ACTIVE,
              "off": SubscriptionStatus.OFF, "error": SubscriptionStatus.ERROR}.get(resource.status)
    if status is None:
        raise FhirError(422, "invalid", f"Subscription.status {resource.status!r}", ("Subscription.status",))
    end = resource.end.astimezone(dt.timezone.utc).replace(tzinfo=None) if resource.end else None
    return {"status": status, "topic": topic, "criteria": "\n".join([criteria, query]) , "endpoint": channel.endpoint,
            "headers": list(channel.header or []), "payload": channel.payload or "", "content": content,
            "reason": resource.reason or "", "end_at": end, "base_url": ctx.base_url}


class SubscriptionKind(Kind):
    name = "Subscription"
    model = Subscription
    interactions = ("read", "update", "delete", "create", "search-type")
    documentation = ("rest-hook notifications (R4, and the Subscriptions Backport IG) on ServiceRequest and Task status "
                     "changes and on ImagingStudy arrival, sent from the outbox with retries; active at once (no "
                     "handshake); status off stops one.")

    @property
    def capability_extensions(self) -> list[dict]:
        return [{"url": BACKPORT + "capabilitystatement-subscriptiontopic-canonical", "valueCanonical": t}
                for t in TYPE_TOPIC.values()]

    def own_params(self) -> list[SearchParam]:
        def status(value, _m, _ctx):
            code = token(value)[1]
            return Subscription.status == (SubscriptionStatus(code) if code in {s.value for s in SubscriptionStatus}
                                           else None)

        return [
            SearchParam("status", "token", "requested, active, error, off", status,
                        definition="http://hl7.org/fhir/SearchParameter/Subscription-status"),
            SearchParam("url", "uri", "The channel endpoint", lambda v, _m, _c: Subscription.endpoint == v,
                        definition="http://hl7.org/fhir/SearchParameter/Subscription-url"),
            SearchParam("type", "token", "The channel type (rest-hook)",
                        lambda v, _m, _c: Subscription.id.isnot(None) if token(v)[1] == "rest-hook"
                        else Subscription.id.is_(None),
                        definition="http://hl7.org/fhir/SearchParameter/Subscription-type"),
        ]

    def render(self, sub: Subscription, ctx: Context) -> dict:
        criteria, _, query = sub.criteria.partition("\n")
        channel: dict = {"type": "rest-hook", "endpoint": sub.endpoint}
        if sub.payload:
            channel["payload"] = sub.payload
        if criteria.startswith(TOPIC_BASE):
            channel["payload"] = sub.payload or FHIR_JSON
            channel["_payload"] = {"extension": [{"url": CONTENT, "valueCode": sub.content}]}
        if sub.headers:
            channel["header"] = list(sub.headers)
        resource = {"resourceType": "Subscription", "id": str(sub.id), "meta": self.meta(sub),
                    "status": sub.status.value, "reason": sub.reason or "(none given)", "criteria": criteria,
                    "channel": channel}
        if criteria.startswith(TOPIC_BASE) and query:
            resource["_criteria"] = {"extension": [{"url": FILTER, "valueString": f"{sub.topic}?{query}"}]}
        if sub.end_at is not None:
            resource["end"] = utc_instant(sub.end_at)
        if sub.error:
            resource["error"] = sub.error
        return resource

    def create(self, session: Session, resource, ctx: Context) -> Subscription:
        sub = Subscription(**_read(resource, ctx), events=0, error="")
        session.add(sub)
        session.flush()
        return sub

    def update(self, session: Session, sub: Subscription, resource, ctx: Context) -> Subscription:
        values = _read(resource, ctx)
        values["base_url"] = sub.base_url or values["base_url"]
        for key, value in values.items():
            setattr(sub, key, value)
        if sub.status is SubscriptionStatus.ACTIVE:
            sub.error = ""
        session.flush()
        return sub

    def delete(self, session: Session, sub: Subscription, ctx: Context) -> None:
        session.delete(sub)
        session.flush()


# Events: what changed in a unit of work ------------------------------------------------------------
def _task_code(status) -> str:
    from interfaces.fhir.task import STATUS   # noqa: PLC0415
    return STATUS.get(status, "")


def _before(obj, name: str):
    """The value of ``obj.name`` before this flush changed it (its current value when unchanged)."""
    history = attributes.get_history(obj, name)
    return history.deleted[0] if history.deleted else getattr(obj, name)


_TABLES = {RequestedProcedure: "requested_procedures", ProcedureStep: "procedure_steps", Study: "studies",
           Order: "orders"}
_WATCHED = {"requested_procedures": "state", "procedure_steps": "status", "orders": "status", "studies": None}


def _note(events: dict, table: str, key, before: dict | None) -> None:
    """Row ``key`` of ``table`` was created (``before`` None) or changed; the first value seen of each column is
    its value before the unit of work (a row created in it stays created)."""
    if key is None or table not in _WATCHED:
        return
    if (table, key) not in events:
        events[(table, key)] = None if before is None else dict(before)
    elif events[(table, key)] is not None and before is not None:
        for column, value in before.items():
            events[(table, key)].setdefault(column, value)


def _fold_writes(session: Session) -> dict:
    """The unit of work's events, with the Core writes made since the last call (app.rows.written) added in the
    order they happened."""
    events = session.info.setdefault(_EVENTS, {})
    for table, key, before in session.info.pop(WRITES, ()):
        _note(events, table, key, before)
    return events


def _after_flush(session: Session, _context) -> None:
    """Note every requested procedure, step and order that is new or may have changed status, and every new study,
    with its status before the unit of work, for :func:`_before_commit`; Core writes (app.rows) are noted too."""
    events = _fold_writes(session)
    for obj in session.new:
        if type(obj) in _TABLES:
            _note(events, _TABLES[type(obj)], obj.id, None)
    for obj in session.dirty:
        table = _TABLES.get(type(obj))
        column = _WATCHED.get(table)
        if column is not None:
            _note(events, table, obj.id, {column: _before(obj, column)})


def _mark(session: Session, transaction) -> None:
    if transaction.nested:
        events = _fold_writes(session)
        session.info.setdefault(_MARKS, {})[transaction] = {k: (dict(v) if v else v) for k, v in events.items()}


def _rolled_back(session: Session, previous) -> None:
    """A rolled-back savepoint (a failed job of a group commit) notifies nothing of what it changed; a rolled-back
    transaction nothing at all."""
    marks = session.info.get(_MARKS, {})
    session.info.pop(WRITES, None)    # written after the mark (folded there) or in the transaction: gone with it
    if previous.nested and previous in marks:
        session.info[_EVENTS] = marks.pop(previous)
    elif not previous.nested:
        session.info.pop(_EVENTS, None)
        session.info.pop(_MARKS, None)


def _changes(session: Session, events: dict) -> list[tuple[str, object, str | None]]:
    """(resource type, object, its status before the unit of work or None when created) of each event."""
    from interfaces.fhir.service_request import status_code   # noqa: PLC0415
    out = []
    procedures = {key for table, key in events if table == "requested_procedures"}
    for (table, key) in events:
        if table == "orders":
            procedures.update(session.scalars(select(RequestedProcedure.id).where(RequestedProcedure.order_fk == key)))
    for key in sorted(procedures):
        proc = session.get(RequestedProcedure, key)
        if proc is None or proc.order is None:
            continue
        mine = events.get(("requested_procedures", key), {})
        if mine is None:
            out.append(("ServiceRequest", proc, None))
            continue
        order_before = (events.get(("orders", proc.order_fk)) or {}).get("status", proc.order.status)
        out.append(("ServiceRequest", proc, status_code(order_before, mine.get("state", proc.state))))
    for (table, key), before in sorted(events.items(), key=lambda e: e[0]):
        if table == "procedure_steps":
            step = session.get(ProcedureStep, key)
            if step is not None:
                out.append(("Task", step, None if before is None else _task_code(before.get("status", step.status))))
        elif table == "studies" and before is None:
            study = session.get(Study, key)
            if study is not None:
                out.append(("ImagingStudy", study, None))
    return out


def _current(kind_name: str, obj) -> str:
    if kind_name == "ServiceRequest":
        from interfaces.fhir.service_request import status_of   # noqa: PLC0415
        return status_of(obj)
    if kind_name == "Task":
        return _task_code(obj.status)
    return "available"


def _matches(session: Session, kind, sub: Subscription, key: int, ctx: Context) -> bool:
    from urllib.parse import parse_qsl   # noqa: PLC0415
    query = sub.criteria.partition("\n")[2]
    parsed = parse(kind.search_params, parse_qsl(query, keep_blank_values=True), ctx, strict=False)
    q = kind.joined(select(func.count()).select_from(kind.model)).where(kind.model.id == key, *parsed.clauses)
    return bool(session.scalar(q))


def _before_commit(session: Session, settings) -> None:
    """Write the notifications of this unit of work's changes as outbox rows, in its transaction."""
    if not session.info.get(_EVENTS) and not session.info.get(WRITES):
        return
    session.flush()   # the last changes are noted too
    _fold_writes(session)
    events = session.info.pop(_EVENTS, {})
    session.info.pop(_MARKS, None)
    now = utcnow()
    subs = session.scalars(select(Subscription).where(Subscription.status == SubscriptionStatus.ACTIVE,
                                                      Subscription.topic.in_(set(TOPICS.values())))
                           .order_by(Subscription.id)).all()
    subs = [s for s in subs if s.end_at is None or s.end_at > now]
    if not subs:
        return
    ctx = Context(site_tz=ZoneInfo(settings.site_timezone), uid_root=settings.uid_root, session=session)
    kinds = _kinds()
    for kind_name, obj, before in _changes(session, events):
        if kind_name != "ImagingStudy" and before == _current(kind_name, obj):
            continue
        for sub in (s for s in subs if s.topic == kind_name):
            if not _matches(session, kinds[kind_name], sub, obj.id, dataclasses.replace(ctx, base_url=sub.base_url)):
                continue
            sub.events = (sub.events or 0) + 1
            order = obj.order if isinstance(obj, RequestedProcedure) else (
                obj.procedure.order if isinstance(obj, ProcedureStep) else None)
            outbox.enqueue(session, KIND, {"subscription": sub.id, "topic": TYPE_TOPIC[kind_name],
                                           "focus": f"{kind_name}/{obj.id}", "event": sub.events,
                                           "created": before is None, "at": utc_instant(now)},
                           Cause("subscription", reference=f"{kind_name}/{obj.id}"), order=order,
                           destinations=[destination(sub.id)])


def watch(session_factory, settings) -> None:
    """Follow the units of work of ``session_factory`` to write subscription notifications (idempotent)."""
    if session_factory.kw.get("info", {}).get("ris.fhir.watched"):
        return
    info = dict(session_factory.kw.get("info") or {})
    info["ris.fhir.watched"] = True
    info[WATCH_WRITES] = frozenset(_WATCHED)   # app.rows notes its Core writes to these tables for us
    session_factory.configure(info=info)
    event.listen(session_factory, "after_flush", _after_flush)
    event.listen(session_factory, "after_transaction_create", _mark)
    event.listen(session_factory, "after_soft_rollback", _rolled_back)
    event.listen(session_factory, "before_commit", lambda session: _before_commit(session, settings))


# Delivery --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    """Where one subscription's notifications go (for the composition root's HTTP channel)."""

    name: str
    endpoint: str
    headers: tuple[str, ...]
    content_type: str = FHIR_JSON


def targets(session_factory) -> list[Target]:
    """The subscriptions with notifications waiting in the outbox (active or not: what is queued goes out)."""
    with unit_of_work(session_factory) as session:
        names = set(session.scalars(select(OutboxMessage.destination).where(
            OutboxMessage.destination.like(PREFIX + "%"), OutboxMessage.status.notin_(outbox.FINAL)).distinct()))
        ids = [int(n[len(PREFIX):]) for n in names if n[len(PREFIX):].isdigit()]
        subs = session.scalars(select(Subscription).where(Subscription.id.in_(ids))).all() if ids else []
        return [Target(destination(s.id), s.endpoint, tuple(s.headers or ())) for s in subs
                if s.endpoint.startswith(("http://", "https://"))]


def renderer(read_factory, settings):
    """``render(kind, payload, message_id) -> bytes`` of a notification Bundle (see the module docstring)."""
    def render(kind: str, payload: dict, message_id: str) -> bytes:
        """A failure here dead-letters the row (the dispatcher's rule for rendering errors)."""
        if kind != KIND:
            raise ValueError(f"a subscription channel carries {KIND}, not {kind}")
        with unit_of_work(read_factory) as session:
            sub = session.get(Subscription, payload["subscription"])
            if sub is None:
                raise ValueError(f"Subscription/{payload['subscription']} was deleted")
            base = sub.base_url.rstrip("/")
            type_name, _, key = payload["focus"].partition("/")
            status = {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": [
                {"name": "subscription", "valueReference": {"reference": f"{base}/Subscription/{sub.id}"}},
                {"name": "topic", "valueCanonical": payload["topic"]},
                {"name": "status", "valueCode": sub.status.value},
                {"name": "type", "valueCode": "event-notification"},
                {"name": "events-since-subscription-start", "valueString": str(sub.events)},
                {"name": "notification-event", "part": [
                    {"name": "event-number", "valueString": str(payload["event"])},
                    {"name": "timestamp", "valueInstant": payload["at"]},
                    {"name": "focus", "valueReference": {"reference": f"{base}/{payload['focus']}"}}]}]}
            entries = [{"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, message_id)}", "resource": status,
                        "request": {"method": "GET", "url": f"{base}/Subscription/{sub.id}/$status"},
                        "response": {"status": "200"}}]
            if sub.content != "empty":
                created = payload.get("created")
                focus = {"fullUrl": f"{base}/{payload['focus']}",
                         "request": {"method": "POST" if created else "PUT",
                                     "url": type_name if created else payload["focus"]},
                         "response": {"status": "201" if created else "200"}}
                if sub.content == "full-resource":
                    kind_ = _kinds()[type_name]
                    row = kind_.load(session, int(key))
                    if row is not None:
                        ctx = Context(site_tz=ZoneInfo(settings.site_timezone), uid_root=settings.uid_root,
                                      base_url=base, session=session)
                        focus["resource"] = kind_.render(row, ctx)
                entries.append(focus)
            bundle = {"resourceType": "Bundle", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, message_id)),
                      "type": "history", "timestamp": utc_instant(utcnow()), "entry": entries}
            return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return render


def delivery_failed(session_factory) -> None:
    """Subscriptions whose notification went to the dead letter: status error, with the reason (subscription.html:
    'error: the server encountered an error processing the subscription'). Run after each delivery round."""
    with unit_of_work(session_factory) as session:
        dead = session.execute(select(OutboxMessage.destination, OutboxMessage.last_error, OutboxMessage.updated_at)
                               .where(OutboxMessage.destination.like(PREFIX + "%"),
                                      OutboxMessage.status == OutboxStatus.DEAD).order_by(OutboxMessage.id)).all()
        latest = {int(name[len(PREFIX):]): (error, at) for name, error, at in dead if name[len(PREFIX):].isdigit()}
        for sub in session.scalars(select(Subscription).where(Subscription.id.in_(list(latest)),
                                                              Subscription.status == SubscriptionStatus.ACTIVE)):
            error, at = latest[sub.id]
            if at >= sub.updated_at:   # not one the client saw before it set the subscription active again
                sub.status, sub.error = SubscriptionStatus.ERROR, f"a notification could not be delivered: {error}"
