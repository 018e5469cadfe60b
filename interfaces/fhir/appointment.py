"""Appointment (FHIR R4 appointment.html) <-> the core's appointments (the service SIU S12-S15 use).

Create and update build the :class:`app.commands.RecordAppointment` an SIU message builds
(app.services.appointments): book (S12) for a new appointment, modify (S14) for an update, cancel
(S15) for ``status`` cancelled, no-show (S26) for noshow. From the resource (R4 appointment.html
"Resource Content"):

- ``status`` proposed, pending and waitlist: kept as a request (PROPOSED) with no time - a
  proposed appointment never gives a scheduled time (R4 invariant app-3 lets it have no start);
  booked: BOOKED, ``start`` required; cancelled, entered-in-error: CANCELLED; noshow: NOSHOW.
  arrived, checked-in and fulfilled are the department's to report (MPPS): 422;
- ``identifier[0]`` -> placer appointment id (SCH-1); the engine, the filler, assigns the filler
  appointment id (SCH-2) ``RIS-APT-<id>``;
- ``start``/``end`` (instants, any offset) -> start in site time and duration in minutes
  (``minutesDuration`` when there is no end);
- ``participant.actor`` Patient/<id> -> the patient (must exist here, as for ServiceRequest);
  Practitioner actors and participants typed ATND/PPRF (v3-ParticipationType) -> the resource
  (their display names, as AIP-3); a Location actor -> location (AIL-3);
- ``basedOn`` ServiceRequest/<id> -> the order of that requested procedure (and its patient when no
  patient participant); shown as the requested procedure of the booked step, else the order's first.

Logical id = the database key; not versioned (no vread/If-Match): the row has no version.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from app.commands import AppointmentData, Cause, PatientData, RecordAppointment
from app.errors import Conflict
from sqlalchemy import and_, case, select

from app.models import Appointment, AppointmentStatus, Order, Patient, ProcedureStep, RequestedProcedure
from app.services.appointments import find_appointment
from app.services.dispatch import apply_command
from interfaces.fhir.datatypes import Context, numeric_id, reference_id, site_instant, to_site_naive
from interfaces.fhir.errors import FhirError
from interfaces.fhir.kinds import Kind
from interfaces.fhir.patient import patient_reference
from interfaces.fhir.search import SearchParam, date_clause, reference_param, token
from interfaces.fhir.service_request import first_procedure_key

STATUS_IN = {"proposed": AppointmentStatus.PROPOSED, "pending": AppointmentStatus.PROPOSED,
             "waitlist": AppointmentStatus.PROPOSED, "booked": AppointmentStatus.BOOKED,
             "cancelled": AppointmentStatus.CANCELLED, "entered-in-error": AppointmentStatus.CANCELLED,
             "noshow": AppointmentStatus.NOSHOW}
STATUS_OUT = {AppointmentStatus.PROPOSED: "proposed", AppointmentStatus.BOOKED: "booked",
              AppointmentStatus.CANCELLED: "cancelled", AppointmentStatus.NOSHOW: "noshow"}
EVENTS = {AppointmentStatus.CANCELLED: "cancel", AppointmentStatus.NOSHOW: "noshow"}
PERFORMER_TYPES = ("ATND", "PPRF", "SPRF", "attender")
CAUSE = Cause("fhir", reference="Appointment", sender="FHIR")
FILLER_PREFIX = "RIS-APT-"


def _participants(session: Session, resource, ctx: Context) -> tuple[Patient | None, str, str]:
    """(patient, performers' names, location) from ``participant``."""
    patient, performers, location = None, [], ""
    for i, part in enumerate(resource.participant or []):
        actor = part.actor
        ref = (actor.reference or "") if actor else ""
        types = [c.code for t in part.type or [] for c in t.coding or []]
        if ref.startswith("Patient/") or (ctx.base_url and ref.startswith(ctx.base_url + "/Patient/")):
            rid = reference_id(ref, "Patient", ctx.base_url)
            found = session.get(Patient, numeric_id(rid)) if rid and numeric_id(rid) is not None else None
            if found is None:
                raise FhirError(422, "invalid", f"Appointment.participant[{i}].actor {ref!r} does not exist on this "
                                "server; the patient of an appointment must be a Patient created here",
                                (f"Appointment.participant[{i}].actor",))
            patient = found
        elif ref.startswith("Location/") or "Location" in types:
            location = location or (actor.display if actor and actor.display else "")
        elif actor is not None and actor.display and (ref.startswith("Practitioner") or
                                                      any(t in PERFORMER_TYPES for t in types)):
            performers.append(actor.display)
    return patient, ", ".join(performers), location


def _order(session: Session, resource, ctx: Context) -> Order | None:
    """The order of the requested procedure (ServiceRequest) the appointment is based on."""
    for i, based in enumerate(resource.basedOn or []):
        rid = reference_id(based.reference or "", "ServiceRequest", ctx.base_url)
        proc = session.get(RequestedProcedure, numeric_id(rid)) if rid and numeric_id(rid) is not None else None
        if proc is None:
            raise FhirError(422, "invalid", f"Appointment.basedOn[{i}] {based.reference!r} is not a ServiceRequest "
                            "of this server", (f"Appointment.basedOn[{i}]",))
        return proc.order
    return None


# SQL: the requested procedure (ServiceRequest) an appointment is shown based on: its booked step's, else the
# first of its order (search, _include, _revinclude); :func:`_procedure_key` is the same for one row.
PROCEDURE_KEY = case((Appointment.step_fk.is_not(None),
                      select(ProcedureStep.procedure_fk).where(ProcedureStep.id == Appointment.step_fk)
                      .correlate_except(ProcedureStep).scalar_subquery()),
                     else_=first_procedure_key(Appointment.order_fk))


def _procedure_key(appt: Appointment) -> int | None:
    if appt.step is not None:
        return appt.step.procedure_fk
    if appt.order is not None and appt.order.procedures:
        return appt.order.procedures[0].id
    return None


def _times(resource, status: AppointmentStatus, ctx: Context) -> tuple[dt.datetime | None, float | None]:
    if status is AppointmentStatus.PROPOSED:
        return None, None   # a request: no fixed time, never a worklist time
    if resource.start is None:
        if status is AppointmentStatus.BOOKED:
            raise FhirError(422, "required", "a booked Appointment needs start (and end or minutesDuration)",
                            ("Appointment.start",))
        return None, None
    start = to_site_naive(resource.start, ctx.site_tz)
    if resource.end is not None:
        minutes = (to_site_naive(resource.end, ctx.site_tz) - start).total_seconds() / 60
        if minutes < 0:
            raise FhirError(422, "invalid", "Appointment.end is before Appointment.start", ("Appointment.end",))
    else:
        minutes = float(resource.minutesDuration) if resource.minutesDuration else None
    return start, minutes


class AppointmentKind(Kind):
    name = "Appointment"
    model = Appointment
    interactions = ("read", "update", "create", "search-type")
    documentation = ("Appointments for orders (the same as HL7 SIU S12-S15): proposed ones are kept as requests "
                     "without a time; booked ones need start; status cancelled cancels (as S15). basedOn links "
                     "the ServiceRequest.")

    def own_params(self) -> list[SearchParam]:
        def status(value, _m, _ctx):
            return Appointment.status.in_({STATUS_IN[c] for c in [token(value)[1]] if c in STATUS_IN} or {None})

        return [
            reference_param("patient", "Patient", Appointment.patient_fk, "The patient (Patient/<id>)",
                            "http://hl7.org/fhir/SearchParameter/Appointment-patient"),
            reference_param("based-on", "ServiceRequest", PROCEDURE_KEY, "The requested procedure "
                            "(ServiceRequest/<id>)", "http://hl7.org/fhir/SearchParameter/Appointment-based-on",
                            keys=lambda ids: and_(Appointment.order_fk.in_(
                                select(RequestedProcedure.order_fk).where(RequestedProcedure.id.in_(ids))),
                                PROCEDURE_KEY.in_(ids))),
            SearchParam("status", "token", "proposed (also pending, waitlist), booked, cancelled, noshow", status,
                        definition="http://hl7.org/fhir/SearchParameter/Appointment-status"),
            SearchParam("date", "date", "Start of the appointment (site time unless an offset is given)",
                        lambda v, _m, ctx: date_clause(Appointment.start, v, utc=False, site_tz=ctx.site_tz),
                        definition="http://hl7.org/fhir/SearchParameter/Appointment-date", sort=Appointment.start),
            SearchParam("identifier", "token", "The placer's appointment id (or the filler's, RIS-APT-<id>)",
                        lambda v, _m, _c: (Appointment.placer_appointment_id == token(v)[1]) |
                        (Appointment.filler_appointment_id == token(v)[1]),
                        definition="http://hl7.org/fhir/SearchParameter/Appointment-identifier"),
        ]

    def render(self, appt: Appointment, ctx: Context) -> dict:
        resource = {"resourceType": "Appointment", "id": str(appt.id), "meta": self.meta(appt),
                    "status": STATUS_OUT[appt.status]}
        idents = []
        if appt.placer_appointment_id:
            idents.append({"use": "usual", "value": appt.placer_appointment_id})
        if appt.filler_appointment_id:
            idents.append({"use": "secondary", "value": appt.filler_appointment_id})
        if idents:
            resource["identifier"] = idents
        procedure = _procedure_key(appt)
        if procedure is not None:
            resource["basedOn"] = [{"reference": f"ServiceRequest/{procedure}"}]
        if appt.start is not None:
            resource["start"] = site_instant(appt.start, ctx.site_tz)
            if appt.duration_minutes is not None:
                resource["end"] = site_instant(appt.start + dt.timedelta(minutes=appt.duration_minutes), ctx.site_tz)
                resource["minutesDuration"] = max(1, round(appt.duration_minutes))
        participants = []
        patient = ctx.session.get(Patient, appt.patient_fk) if appt.patient_fk is not None and ctx.session else None
        if patient is not None:
            participants.append({"actor": patient_reference(patient), "status": "accepted"})
        if appt.resource:
            participants.append({"type": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}]}],
                "actor": {"display": appt.resource}, "status": "accepted"})
        if appt.location:
            participants.append({"actor": {"display": appt.location}, "status": "accepted"})
        resource["participant"] = participants or [{"actor": {"display": "(not recorded)"}, "status": "needs-action"}]
        return resource

    def _record(self, session: Session, resource, ctx: Context, existing: Appointment | None) -> Appointment:
        if resource.status not in STATUS_IN:
            raise FhirError(422, "business-rule", f"Appointment.status {resource.status!r} is reported by the "
                            "department, not set by a client; use proposed, pending, waitlist, booked, cancelled or "
                            "noshow", ("Appointment.status",))
        status = STATUS_IN[resource.status]
        patient, performers, location = _participants(session, resource, ctx)
        order = _order(session, resource, ctx)
        if patient is None and order is not None:
            patient = order.patient
        start, minutes = _times(resource, status, ctx)
        placer = next((i.value.strip() for i in resource.identifier or [] if i.value and i.value.strip()), "")
        if existing is None and placer and find_appointment(session, placer, "") is not None:
            raise Conflict(f"an appointment with identifier {placer!r} exists already; update it with PUT",
                           location="appointment.placer_id")
        filler = existing.filler_appointment_id if existing is not None else ""
        if existing is not None:   # found again by its own ids (app.services.appointments.find_appointment)
            placer = existing.placer_appointment_id or placer
        data = AppointmentData(placer_appointment_id=placer, filler_appointment_id=filler,
                               placer_order_number=order.placer_order_number if order else "",
                               filler_order_number=order.filler_order_number if order else "",
                               start=start, duration_minutes=minutes, resource=performers, location=location)
        who = PatientData(patient_id=patient.patient_id, issuer=patient.issuer) if patient is not None else None
        # A new appointment is booked (S12) even when it arrives cancelled: it is then recorded with its status.
        event = EVENTS.get(status, "modify") if existing is not None else "book"
        appt = apply_command(session, RecordAppointment(who, data, event), CAUSE, uid_root=ctx.uid_root)
        appt.status = status
        if order is not None:
            appt.order = order
        if status is AppointmentStatus.PROPOSED:
            appt.start, appt.duration_minutes = None, None
        session.flush()
        if not appt.filler_appointment_id:
            appt.filler_appointment_id = f"{FILLER_PREFIX}{appt.id}"
            session.flush()
        return appt

    def create(self, session: Session, resource, ctx: Context) -> Appointment:
        return self._record(session, resource, ctx, None)

    def update(self, session: Session, appt: Appointment, resource, ctx: Context) -> Appointment:
        return self._record(session, resource, ctx, appt)
