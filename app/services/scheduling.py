"""Scheduling of rooms and modalities: resources, bookings, the next free slot, conflicts.

The engine is the Department System Scheduler of IHE RAD TF-1 Scheduled Workflow: it turns an order into
Scheduled Procedure Steps with a time and a station (IHE RAD TF-2 4.4 RAD-4 "Procedure Scheduled"; the
station's AE title and name become the step's Scheduled Station AE Title (0040,0001) and Scheduled Station
Name (0040,0010), DICOM PS3.4 K.6.1). A :class:`app.models.Resource` is one room or modality: its AE title and
station name, the modalities it performs, its opening hours per weekday and a slot length per procedure code.
A booking is an :class:`app.models.Appointment` of one resource for one step, from ``start`` to ``end``.

Rules:

- a booking lies inside one opening interval of its resource's weekday and overlaps no other BOOKED booking of
  that resource; otherwise :class:`app.errors.Conflict` names the clashing booking (or the opening hours);
- the resource row is locked (SELECT ... FOR UPDATE) before the clash check, so two engines sharing one
  PostgreSQL cannot book the same slot twice (SQLite serialises writers anyway);
- a step without a time gets the earliest free slot, from now on, of an active resource that performs its
  modality (ties: by resource name); with no such resource the step's time is missing (InvalidInput, as before);
- cancelling a booking sends its procedure back to ORDERED (app.services.lifecycle) and its step to UNSCHEDULED
  (no longer offered in the worklist) until it is booked again; rescheduling moves step and booking together.

Times are naive site-local datetimes (see app.models). "Now" is taken in the zone configured with
:func:`configure` (UTC when none is).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.commands import Cause
from app.errors import Conflict, InvalidInput, NotFound
from app.models import (Appointment, AppointmentStatus, Order, ProcedureState, ProcedureStep, RequestedProcedure,
                        Resource, StepStation, StepStatus)
from app.services import lifecycle
from app.validation import clip, identifier
from app.vocabulary import MODALITIES

ZONE_KEY = "ris.site_timezone"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HORIZON_DAYS = 60
BOOKABLE_STEPS = (StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.READY, StepStatus.UNSCHEDULED)
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")


def configure(session_factory: sessionmaker, zone: str) -> None:
    """Let the sessions of ``session_factory`` know the site's zone (for "now" in site-local time)."""
    info = dict(session_factory.kw.get("info") or {})
    info[ZONE_KEY] = zone
    session_factory.configure(info=info)


def site_zone(session: Session) -> ZoneInfo:
    """The site's zone as configured for the session's factory (UTC when none is)."""
    return ZoneInfo(session.info.get(ZONE_KEY) or "UTC")


def local_now(session: Session) -> dt.datetime:
    """Now on the site's clock, to the minute (naive, as the core's clinical times are)."""
    return dt.datetime.now(site_zone(session)).replace(tzinfo=None, second=0, microsecond=0)


# Resources -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResourceData:
    """A resource as configured (mappings/resources/*.yaml or the JSON API)."""

    name: str
    ae_title: str = ""
    station_name: str = ""
    modalities: tuple[str, ...] = ()
    opening_hours: dict = field(default_factory=dict)     # "mon" -> [["08:00", "12:00"], ...]
    default_minutes: int = 15
    slot_minutes: dict = field(default_factory=dict)      # procedure code -> minutes
    active: bool = True


def _minutes(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 24 * 60:
        raise InvalidInput(f"{where}: {value!r} is not a whole number of minutes from 1 to 1440", location=where)
    return value


def _clock(value: str) -> dt.time:
    return dt.time.max if value == "24:00" else dt.time.fromisoformat(value)


def validate_resource(data: ResourceData) -> None:
    """Refuse a resource definition that cannot be used; the error names the key at fault."""
    if not data.name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", data.name):
        raise InvalidInput(f"resource name {data.name!r} must be 1-64 letters, digits, '_', '.' or '-'",
                           location="resource.name")
    identifier(data.ae_title, 16, "resource.ae_title")
    identifier(data.station_name, 16, "resource.station_name")
    if not data.modalities:
        raise InvalidInput(f"resource {data.name}: no modality", location="resource.modalities", missing=True)
    for modality in data.modalities:
        if modality not in MODALITIES:
            raise InvalidInput(f"resource {data.name}: {modality!r} is not a DICOM modality (PS3.3 C.7.3.1.1.1)",
                               location="resource.modalities")
    for day, intervals in data.opening_hours.items():
        where = f"resource.opening_hours.{day}"
        if day not in WEEKDAYS:
            raise InvalidInput(f"resource {data.name}: {day!r} is not one of {', '.join(WEEKDAYS)}", location=where)
        if not isinstance(intervals, (list, tuple)):
            raise InvalidInput(f"resource {data.name}: {day} must be a list of [from, to] times", location=where)
        for interval in intervals:
            if (not isinstance(interval, (list, tuple)) or len(interval) != 2
                    or not all(isinstance(t, str) and _HHMM.match(t) for t in interval)
                    or _clock(interval[0]) >= _clock(interval[1])):
                raise InvalidInput(f"resource {data.name}: {day} interval {interval!r} is not [\"HH:MM\", \"HH:MM\"] "
                                   "with from before to", location=where)
    _minutes(data.default_minutes, "resource.default_minutes")
    for code, minutes in data.slot_minutes.items():
        _minutes(minutes, f"resource.slot_minutes.{code}")


def save_resource(session: Session, data: ResourceData) -> Resource:
    """Create the resource, or replace the definition of the one with the same name."""
    validate_resource(data)
    resource = session.scalars(select(Resource).where(Resource.name == data.name)).first()
    if resource is None:
        resource = Resource(name=data.name)
        session.add(resource)
    resource.ae_title, resource.station_name = data.ae_title, data.station_name
    resource.modalities = list(dict.fromkeys(data.modalities))
    resource.opening_hours = {day: [list(i) for i in data.opening_hours[day]]
                              for day in WEEKDAYS if day in data.opening_hours}
    resource.default_minutes = data.default_minutes
    resource.slot_minutes = {str(k): int(v) for k, v in data.slot_minutes.items()}
    resource.active = data.active
    session.flush()
    return resource


def find_resource(session: Session, name: str) -> Resource:
    resource = session.scalars(select(Resource).where(Resource.name == name)).first()
    if resource is None:
        raise NotFound(f"no resource {name!r}", location="resource")
    return resource


def slot_length(resource: Resource, code: str) -> dt.timedelta:
    """The time a procedure ``code`` takes on ``resource``: its own slot length, else the resource's default."""
    return dt.timedelta(minutes=int(resource.slot_minutes.get(code) or resource.default_minutes))


def opening_intervals(resource: Resource, day: dt.date) -> list[tuple[dt.datetime, dt.datetime]]:
    intervals = resource.opening_hours.get(WEEKDAYS[day.weekday()], [])
    result = []
    for begin, end in intervals:
        stop = (dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) if end == "24:00"
                else dt.datetime.combine(day, _clock(end)))
        result.append((dt.datetime.combine(day, _clock(begin)), stop))
    return sorted(result)


def _hours_text(resource: Resource, day: dt.date) -> str:
    intervals = resource.opening_hours.get(WEEKDAYS[day.weekday()], [])
    return ", ".join(f"{a}-{b}" for a, b in intervals) or "closed"


def bookings(session: Session, resource: Resource, start: dt.datetime, end: dt.datetime) -> list[Appointment]:
    """The BOOKED bookings of ``resource`` overlapping [start, end), by start - the stored ones and those of this
    unit of work not written yet (the steps of one order are booked before any of them is flushed)."""
    stored = list(session.scalars(
        select(Appointment).where(Appointment.resource_fk == resource.id, Appointment.status == AppointmentStatus.BOOKED,
                                  Appointment.start < end, Appointment.end > start)
        .order_by(Appointment.start, Appointment.id)))
    pending = [a for a in session.new if isinstance(a, Appointment) and a.booked_resource is resource
               and a.status is AppointmentStatus.BOOKED and a.start < end and a.end > start]
    return sorted(stored + pending, key=lambda a: a.start)


def _describe(appointment: Appointment) -> str:
    accession = appointment.order.accession_number if appointment.order is not None else ""
    what = f" (order {accession})" if accession else ""
    return (f"booking {appointment.id}{what} on {appointment.resource} from {appointment.start:%Y-%m-%d %H:%M} "
            f"to {appointment.end:%H:%M}")


def check_free(session: Session, resource: Resource, start: dt.datetime, end: dt.datetime, *,
               ignore: Appointment | None = None) -> None:
    """Conflict unless [start, end) lies in one opening interval of ``resource`` and clashes with no booking."""
    if not any(a <= start and end <= b for a, b in opening_intervals(resource, start.date())):
        raise Conflict(f"resource {resource.name} is not open from {start:%Y-%m-%d %H:%M} to {end:%H:%M} "
                       f"(open {WEEKDAYS[start.weekday()]} {_hours_text(resource, start.date())})",
                       location="appointment.start")
    for other in bookings(session, resource, start, end):
        if other is not ignore:
            raise Conflict(f"resource {resource.name} is taken from {start:%Y-%m-%d %H:%M} to {end:%H:%M}: "
                           f"{_describe(other)}", location="appointment.start")


def _lock(session: Session, resource: Resource) -> None:
    session.execute(select(Resource.id).where(Resource.id == resource.id).with_for_update())


def _candidates(session: Session, modality: str) -> list[Resource]:
    active = session.scalars(select(Resource).where(Resource.active.is_(True)).order_by(Resource.name))
    return [r for r in active if modality in (r.modalities or [])]


def _first_gap(session: Session, resource: Resource, code: str, after: dt.datetime,
               horizon_days: int) -> tuple[dt.datetime, dt.datetime] | None:
    length = slot_length(resource, code)
    for offset in range(horizon_days + 1):
        day = after.date() + dt.timedelta(days=offset)
        for begin, stop in opening_intervals(resource, day):
            t = max(begin, after)
            for other in bookings(session, resource, t, stop):
                if t + length <= other.start:
                    break
                t = max(t, other.end)
            if t + length <= stop:
                return t, t + length
    return None


def next_free_slot(session: Session, modality: str, code: str, *, after: dt.datetime | None = None,
                   horizon_days: int = HORIZON_DAYS) -> tuple[Resource, dt.datetime, dt.datetime]:
    """The earliest free slot (resource, start, end) for ``modality`` and procedure ``code`` from ``after`` on."""
    after = after or local_now(session)
    resources = _candidates(session, modality)
    if not resources:
        raise InvalidInput(f"scheduled start time missing, and no resource performs modality {modality!r} to "
                           "book one", location="step.scheduled_start", missing=True)
    best = None
    for resource in resources:
        gap = _first_gap(session, resource, code, after, horizon_days)
        if gap is not None and (best is None or gap[0] < best[1]):
            best = (resource, *gap)
    if best is None:
        names = ", ".join(r.name for r in resources)
        raise Conflict(f"no free slot for {modality} {code} within {horizon_days} days on {names}",
                       location="step.scheduled_start")
    return best


# Bookings --------------------------------------------------------------------------------------
def _code(step: ProcedureStep) -> str:
    return step.procedure.code_value if step.procedure is not None else ""


def _place_step(session: Session, step: ProcedureStep, resource: Resource, start: dt.datetime, cause: Cause) -> None:
    step.scheduled_start = start
    if resource.station_name:
        step.station_name = resource.station_name
    if resource.ae_title and step.station_aets != [resource.ae_title]:
        step.stations.clear()
        step.stations.append(StepStation(ae_title=resource.ae_title))
    if step.status is StepStatus.UNSCHEDULED:
        lifecycle.set_step_status(session, step, StepStatus.SCHEDULED, cause)


def settle(session: Session, proc: RequestedProcedure | None, cause: Cause) -> bool:
    """ORDERED -> SCHEDULED once every step of ``proc`` has a time and is not waiting for a slot (IHE RAD TF-2 4.4
    RAD-4 "Procedure Scheduled"). The one owner of this transition: order placement, booking and rebooking all
    call it; it does nothing for a procedure in any other state, so calling it again is harmless. True when it
    moved the procedure."""
    if proc is None or proc.state is not ProcedureState.ORDERED or not proc.transitions:
        return False
    if all(s.scheduled_start is not None and s.status is not StepStatus.UNSCHEDULED for s in proc.steps):
        lifecycle.transition(session, proc, ProcedureState.SCHEDULED, cause)
        return True
    return False


def book(session: Session, step: ProcedureStep, resource: Resource, start: dt.datetime, cause: Cause, *,
         minutes: int | None = None) -> Appointment:
    """Book ``resource`` for ``step`` from ``start``; Conflict naming the clashing booking or the hours."""
    with session.no_autoflush:
        if step.modality not in (resource.modalities or []):
            raise InvalidInput(f"resource {resource.name} does not perform {step.modality} "
                               f"({', '.join(resource.modalities)})", location="resource")
        if step.status not in BOOKABLE_STEPS and step.scheduled_start is not None:
            raise Conflict(f"step {step.sps_id} is {step.status.value}; it can no longer be booked",
                           location="step.status")
        if step.id is not None and _booking_of(session, step) is not None:
            raise Conflict(f"step {step.sps_id} is already booked ({_describe(_booking_of(session, step))}); "
                           "reschedule that booking", location="step.sps_id")
        length = dt.timedelta(minutes=minutes) if minutes else slot_length(resource, _code(step))
        _lock(session, resource)
        check_free(session, resource, start, start + length)
        order = step.procedure.order if step.procedure is not None else None
        appointment = Appointment(
            order=order, patient_fk=order.patient.id if order is not None and order.patient is not None else None,
            placer_order_number=order.placer_order_number if order is not None else "",
            start=start, end=start + length, duration_minutes=length.total_seconds() / 60,
            resource=resource.name, location=clip(resource.station_name, 128), booked_resource=resource, step=step,
            status=AppointmentStatus.BOOKED)
        _place_step(session, step, resource, start, cause)
    session.add(appointment)
    settle(session, step.procedure, cause)
    order = step.procedure.order if step.procedure is not None else None
    if order is None or all(s.scheduled_start is not None for p in order.procedures for s in p.steps):
        session.flush()   # else another step of the order still waits for its slot: written with it
    return appointment


def book_next_free(session: Session, step: ProcedureStep, cause: Cause, *, after: dt.datetime | None = None,
                   resource: Resource | None = None) -> Appointment:
    """Book the earliest free slot that fits the step (its modality, its procedure code's slot length), on
    ``resource`` when given, else on any active resource that performs the modality."""
    with session.no_autoflush:
        if resource is None:
            resource, start, _ = next_free_slot(session, step.modality, _code(step), after=after)
        else:
            gap = _first_gap(session, resource, _code(step), after or local_now(session), HORIZON_DAYS)
            if gap is None:
                raise Conflict(f"no free slot for {step.modality} {_code(step)} within {HORIZON_DAYS} days on "
                               f"{resource.name}", location="appointment.start")
            start = gap[0]
    return book(session, step, resource, start, cause)


def find_step(session: Session, *, step_id: int | None = None, sps_id: str = "",
              accession: str = "") -> ProcedureStep:
    """A step by its id, or by its SPS ID (with the order's accession number when several orders use it)."""
    if step_id is not None:
        step = session.get(ProcedureStep, step_id)
        if step is None:
            raise NotFound(f"no procedure step {step_id}", location="step_id")
        return step
    if not sps_id:
        raise InvalidInput("name the step: step_id, or sps_id (and accession)", location="step_id", missing=True)
    q = select(ProcedureStep).where(ProcedureStep.sps_id == sps_id)
    if accession:
        q = q.join(ProcedureStep.procedure).join(RequestedProcedure.order).where(Order.accession_number == accession)
    found = session.scalars(q.order_by(ProcedureStep.id).limit(2)).all()
    if not found:
        raise NotFound(f"no procedure step {sps_id}" + (f" of accession {accession}" if accession else ""),
                       location="sps_id")
    if len(found) > 1:
        raise Conflict(f"several orders have a step {sps_id}; give the accession too", location="accession")
    return found[0]


# Appointments from the HIS (SIU S12-S15, FHIR Appointment) -------------------------------------------------------
def resource_named(session: Session, text: str) -> Resource | None:
    """Our active resource a sender names (its name, station name or AE title), or None."""
    text = (text or "").strip()
    if not text:
        return None
    return session.scalars(select(Resource).where(
        Resource.active.is_(True), or_(Resource.name == text, Resource.station_name == text,
                                       Resource.ae_title == text)).order_by(Resource.id)).first()


def apply_appointment(session: Session, appointment: Appointment, event: str, cause: Cause) -> ProcedureStep | None:
    """What an appointment the HIS made (HL7 v2.5.1 ch. 10: S12 book, S13/S14 modify, S15 cancel; FHIR R4
    Appointment) does to the order it is for: it times the order's first open step (one appointment, one Scheduled
    Procedure Step).

    - book/modify with a start: when the appointment names one of our resources (AIS-3.2 / AIL-3, Appointment
      participants), it becomes that resource's booking of the step - Conflict (naming the clashing booking or the
      opening hours) when the slot is not free; else, when the step is booked on a resource of ours, that booking
      moves to the new time, with the same checks; else the step only takes the time. The step is SCHEDULED and an
      ORDERED procedure is scheduled (:func:`settle`).
    - cancel: the step the appointment timed waits for a new slot: UNSCHEDULED, its procedure ORDERED again.

    Returns the step changed, or None (no order of ours, nothing open, no time)."""
    order = appointment.order
    if order is None:
        return None
    if event == "cancel":
        step = appointment.step
        if step is None or step.status not in BOOKABLE_STEPS:
            return None
        proc = step.procedure
        if proc.state in (ProcedureState.SCHEDULED, ProcedureState.ARRIVED):
            lifecycle.check(proc, ProcedureState.ORDERED, action="cancel its appointment")
        lifecycle.set_step_status(session, step, StepStatus.UNSCHEDULED, cause)
        if proc.state in (ProcedureState.SCHEDULED, ProcedureState.ARRIVED):
            lifecycle.transition(session, proc, ProcedureState.ORDERED, cause,
                                 note=f"appointment {appointment.filler_appointment_id or appointment.id} cancelled")
        session.flush()
        return step
    if appointment.start is None or appointment.status is not AppointmentStatus.BOOKED:
        return None
    steps = [s for p in order.procedures for s in p.steps if s.status in BOOKABLE_STEPS]
    if not steps:
        return None
    step, start = steps[0], appointment.start
    resource = resource_named(session, appointment.resource) or resource_named(session, appointment.location)
    existing = _booking_of(session, step) if step.id is not None else None
    if resource is not None:
        if step.modality not in (resource.modalities or []):
            raise InvalidInput(f"resource {resource.name} does not perform {step.modality} "
                               f"({', '.join(resource.modalities)})", location="appointment.resource")
        length = (dt.timedelta(minutes=appointment.duration_minutes) if appointment.duration_minutes
                  else slot_length(resource, _code(step)))
        _lock(session, resource)
        with session.no_autoflush:
            check_free(session, resource, start, start + length, ignore=existing or appointment)
            if existing is not None and existing is not appointment:
                existing.status = AppointmentStatus.CANCELLED        # replaced by the HIS's appointment
            appointment.booked_resource, appointment.end = resource, start + length
            appointment.duration_minutes = length.total_seconds() / 60
            appointment.step = step
            _place_step(session, step, resource, start, cause)
    elif existing is not None and existing is not appointment:
        reschedule(session, existing.id, start, cause)
        appointment.step = step
    else:
        step.scheduled_start = start
        if step.status is StepStatus.UNSCHEDULED:
            lifecycle.set_step_status(session, step, StepStatus.SCHEDULED, cause)
        appointment.step = step
    session.flush()
    settle(session, step.procedure, cause)
    session.flush()
    return step


def room_day(session: Session, resource: Resource, day: dt.date) -> dict:
    """A resource's day as plain data: its opening intervals, its bookings (with step, order and patient) and the
    free intervals between them (site-local times)."""
    intervals = opening_intervals(resource, day)
    start = dt.datetime.combine(day, dt.time())
    booked = bookings(session, resource, start, start + dt.timedelta(days=1))
    free = []
    for begin, stop in intervals:
        t = begin
        for other in booked:
            if other.end <= t or other.start >= stop:
                continue
            if other.start > t:
                free.append((t, other.start))
            t = max(t, other.end)
        if t < stop:
            free.append((t, stop))
    return {
        "resource": resource_view(resource), "date": day.isoformat(),
        "open": [[a.isoformat(), b.isoformat()] for a, b in intervals],
        "bookings": [booking_view(a) for a in booked],
        "free": [[a.isoformat(), b.isoformat()] for a, b in free],
    }


def resource_view(resource: Resource) -> dict:
    return {"name": resource.name, "ae_title": resource.ae_title, "station_name": resource.station_name,
            "modalities": list(resource.modalities or []), "opening_hours": resource.opening_hours,
            "default_minutes": resource.default_minutes, "slot_minutes": resource.slot_minutes,
            "active": resource.active}


def booking_view(appointment: Appointment) -> dict:
    step = appointment.step
    proc = step.procedure if step is not None else None
    order = appointment.order
    patient = order.patient if order is not None else None
    return {
        "id": appointment.id, "resource": appointment.resource, "status": appointment.status.value,
        "start": appointment.start.isoformat() if appointment.start else None,
        "end": appointment.end.isoformat() if appointment.end else None,
        "minutes": appointment.duration_minutes,
        "step": ({"id": step.id, "sps_id": step.sps_id, "modality": step.modality, "status": step.status.value}
                 if step is not None else None),
        "procedure": ({"id": proc.id, "requested_procedure_id": proc.requested_procedure_id,
                       "state": proc.state.value, "description": proc.description or proc.code_meaning}
                      if proc is not None else None),
        "order": ({"id": order.id, "accession_number": order.accession_number} if order is not None else None),
        "patient": ({"patient_id": patient.patient_id, "name": patient.name} if patient is not None else None),
        "placer_appointment_id": appointment.placer_appointment_id,
        "filler_appointment_id": appointment.filler_appointment_id,
    }


def _booking_of(session: Session, step: ProcedureStep) -> Appointment | None:
    """The step's booking of one of our resources (an SIU appointment that only timed the step is none)."""
    return session.scalars(select(Appointment).where(
        Appointment.step_fk == step.id, Appointment.resource_fk.is_not(None),
        Appointment.status == AppointmentStatus.BOOKED)).first()


def _booked(session: Session, appointment_id: int) -> Appointment:
    appointment = session.get(Appointment, appointment_id)
    if appointment is None or appointment.resource_fk is None:
        raise NotFound(f"no booking {appointment_id}", location="appointment_id")
    if appointment.status is not AppointmentStatus.BOOKED:
        raise Conflict(f"booking {appointment_id} is {appointment.status.value}", location="appointment.status")
    return appointment


def reschedule(session: Session, appointment_id: int, start: dt.datetime, cause: Cause, *,
               resource_name: str = "") -> Appointment:
    """Move a booking (and its step) to ``start``, on another resource when ``resource_name`` is given."""
    appointment = _booked(session, appointment_id)
    step = appointment.step
    if step is not None and step.status not in BOOKABLE_STEPS:
        raise Conflict(f"step {step.sps_id} is {step.status.value}; its booking can no longer move",
                       location="step.status")
    resource = find_resource(session, resource_name) if resource_name else appointment.booked_resource
    if step is not None and step.modality not in (resource.modalities or []):
        raise InvalidInput(f"resource {resource.name} does not perform {step.modality}", location="resource")
    length = appointment.end - appointment.start
    if resource.id != appointment.resource_fk and step is not None:
        length = slot_length(resource, _code(step))
    _lock(session, resource)
    check_free(session, resource, start, start + length, ignore=appointment)
    appointment.start, appointment.end = start, start + length
    appointment.booked_resource, appointment.resource = resource, resource.name
    appointment.duration_minutes = length.total_seconds() / 60
    if step is not None:
        _place_step(session, step, resource, start, cause)
    session.flush()
    return appointment


def cancel_booking(session: Session, appointment_id: int, cause: Cause) -> Appointment:
    """Cancel a booking: the slot is free, the step UNSCHEDULED, the procedure ORDERED again."""
    appointment = _booked(session, appointment_id)
    step = appointment.step
    proc = step.procedure if step is not None else None
    if step is not None and step.status not in BOOKABLE_STEPS:
        raise Conflict(f"step {step.sps_id} is {step.status.value}; its booking can no longer be cancelled",
                       location="step.status")
    if proc is not None and proc.state is not ProcedureState.ORDERED:
        lifecycle.check(proc, ProcedureState.ORDERED, action="cancel its booking")
    appointment.status = AppointmentStatus.CANCELLED
    if step is not None:
        lifecycle.set_step_status(session, step, StepStatus.UNSCHEDULED, cause)
    if proc is not None and proc.state is not ProcedureState.ORDERED:
        lifecycle.transition(session, proc, ProcedureState.ORDERED, cause, note=f"booking {appointment.id} cancelled")
    session.flush()
    return appointment


def release_bookings(session: Session, order: Order, *, steps=None,
                     status: AppointmentStatus = AppointmentStatus.CANCELLED) -> int:
    """Free the slots of an order that was cancelled or discontinued (its procedures are closed by the caller), or of
    ``steps`` only (a no-show: ``status`` NOSHOW)."""
    chosen = steps if steps is not None else [s for p in order.procedures for s in p.steps]
    step_ids = [s.id for s in chosen if s.id is not None]
    if not step_ids:
        return 0
    rows = session.scalars(select(Appointment).where(Appointment.step_fk.in_(step_ids),
                                                     Appointment.status == AppointmentStatus.BOOKED)).all()
    for appointment in rows:
        appointment.status = status
    return len(rows)
