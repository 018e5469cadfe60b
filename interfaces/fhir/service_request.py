"""ServiceRequest (FHIR R4 servicerequest.html) <-> the core's orders (IHE RAD-2/RAD-3 over FHIR).

A ServiceRequest is an order: create builds the same :class:`app.commands.PlaceOrder` an ORM^O01
NW builds (mappings.hl7v2), so the order, its requested procedure and its scheduled step are made
by the same service and appear in the DICOM worklist exactly as an HL7 order does.

From the resource:

- ``identifier`` typed ACSN (v2-0203) -> accession number (none: the engine assigns one, IHE RAD
  TF-2 4.4.4.1.2, and returns it typed ACSN); PLAC -> placer order number (system = issuer); FILL ->
  filler order number; an untyped identifier is the placer's when no PLAC is given; system
  ``urn:dicom:uid`` -> Study Instance UID ('urn:oid:' stripped);
- ``code`` -> procedure code (system mapped to the HL7 coding scheme: LN, SCT, DCM...) and text;
- modality, first found: a DICOM modality coding (system DCM) in ``code``, ``category`` or
  ``orderDetail``; the mapping profile's table ``procedures`` (code -> column ``modality``); a DICOM
  modality abbreviation written as a word in the code's text or display ("Chest CT"). None: 422, not
  an imaging order (never a worklist item without modality);
- ``occurrenceDateTime`` (or ``occurrencePeriod.start``) -> scheduled start in site time (an
  offset is converted; none = the time of the request, as the HL7 profile's 'otherwise: received');
- ``subject`` -> an existing Patient: ``Patient/<id>``, a contained Patient ``#id`` (registered from
  its identifier), or a logical reference by ``subject.identifier``; anything else is a 422;
- ``priority`` routine/urgent/asap/stat -> R/U/A/S; ``requester.display``; ``reasonCode`` text.

Status: create accepts active (and on-hold, which places then holds). Update: revoked or
entered-in-error cancels (CancelOrder, as ORC CA), on-hold holds, active releases a held order
and changes the order in place (UpdateOrder, as ORC XO); completed is the modality's to report
(MPPS), not the placer's: 422.
"""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.commands import (CancelOrder, Cause, HoldOrder, OrderData, OrderRef, PatientData, PlaceOrder, ProcedureData,
                          StepData, UpdateOrder)
from app.errors import Conflict
from app.models import Order, OrderStatus, Patient, ProcedureStep, RequestedProcedure
from app.services.dispatch import apply_command
from app.services.patients import find_patient
from app.vocabulary import MODALITIES
from interfaces.fhir.datatypes import (DCM, DICOM_UID, Context, identifier_type, numeric_id, reference_id,
                                       scheme_of, site_instant, strip_oid, system_of, to_site_naive, typed_identifier,
                                       utc_instant)
from interfaces.fhir.errors import FhirError
from interfaces.fhir.kinds import Kind
from interfaces.fhir.patient import patient_data, patient_reference
from interfaces.fhir.search import SearchParam, date_clause, reference_param, token

STATUS = {OrderStatus.SCHEDULED: "active", OrderStatus.HELD: "on-hold", OrderStatus.IN_PROGRESS: "active",
          OrderStatus.COMPLETED: "completed", OrderStatus.CANCELLED: "revoked", OrderStatus.DISCONTINUED: "revoked"}
PRIORITY = {"routine": "R", "urgent": "U", "asap": "A", "stat": "S"}
PRIORITY_BACK = {v: k for k, v in PRIORITY.items()}
_MODALITY_WORD = re.compile(r"\b(CT|MR|MRI|US|CR|DX|MG|NM|PT|PET|XA|RF|IO|PX|ES|OCT)\b")
_WORD_TO_MODALITY = {"MRI": "MR", "PET": "PT"}
CAUSE = Cause("fhir", reference="ServiceRequest", sender="FHIR")


def _modality(resource, ctx: Context) -> str:
    """The modality of the order (see the module docstring for the order of the rules)."""
    concepts = [("ServiceRequest.code", resource.code)]
    concepts += [(f"ServiceRequest.category[{i}]", c) for i, c in enumerate(resource.category or [])]
    concepts += [(f"ServiceRequest.orderDetail[{i}]", c) for i, c in enumerate(resource.orderDetail or [])]
    for where, concept in concepts:
        for coding in (concept.coding or []) if concept else []:
            if coding.system == DCM and coding.code in MODALITIES:
                ctx.origin("step.modality", where)
                return coding.code
    ctx.origin("step.modality", "ServiceRequest.code")
    table = ctx.tables.get("procedures", {})
    codings = (resource.code.coding or []) if resource.code else []
    for coding in codings:
        row = table.get(coding.code or "")
        if isinstance(row, dict) and row.get("modality") in MODALITIES:
            return row["modality"]
    texts = [resource.code.text] if resource.code and resource.code.text else []
    texts += [c.display for c in codings if c.display]
    for text in texts:
        match = _MODALITY_WORD.search(text)
        if match:
            return _WORD_TO_MODALITY.get(match.group(1), match.group(1))
    return ""


def _subject(session: Session, resource, ctx: Context) -> PatientData:
    subject = resource.subject
    ctx.origin("patient.id", "ServiceRequest.subject")
    if subject.reference and subject.reference.startswith("#"):
        found = [(i, c) for i, c in enumerate(resource.contained or []) if c.id == subject.reference[1:]]
        if not found or found[0][1].get_resource_type() != "Patient":
            raise FhirError(422, "invalid", f"ServiceRequest.subject {subject.reference!r} names no contained Patient",
                            ("ServiceRequest.subject",))
        index, target = found[0]
        inner = Context(ctx.site_tz, ctx.uid_root)
        try:
            return patient_data(target, inner)
        finally:  # errors about the patient point into the contained resource (references.html 3.1.2.2)
            for key, expression in inner.locations.items():
                ctx.locations[key] = f"ServiceRequest.contained[{index}]" + expression[len("Patient"):]
    if subject.reference:
        rid = reference_id(subject.reference, "Patient", ctx.base_url)
        patient = session.get(Patient, numeric_id(rid)) if rid and numeric_id(rid) is not None else None
        if patient is None:
            what = "is not a Patient reference" if rid is None else "does not exist on this server"
            raise FhirError(422, "invalid", f"ServiceRequest.subject {subject.reference!r} {what}; the subject of an "
                            "imaging order must be a Patient created here (Patient/<id>)", ("ServiceRequest.subject",))
        return PatientData(patient_id=patient.patient_id, issuer=patient.issuer)
    if subject.identifier is not None and subject.identifier.value:
        patient = find_patient(session, subject.identifier.value, subject.identifier.system or "")
        if patient is None:
            raise FhirError(422, "invalid", f"no Patient has identifier {subject.identifier.value!r} "
                            f"(system {subject.identifier.system or '(none)'!r})",
                            ("ServiceRequest.subject.identifier",))
        return PatientData(patient_id=patient.patient_id, issuer=patient.issuer)
    raise FhirError(422, "required", "ServiceRequest.subject needs a reference or an identifier of a Patient",
                    ("ServiceRequest.subject",))


def order_command(session: Session, resource, ctx: Context, ref: OrderRef | None = None):
    """(PatientData, OrderData) of a ServiceRequest: the values of an ORM NW/XO."""
    accession = placer = placer_issuer = filler = study_uid = ""
    untyped = None
    for i, ident in enumerate(resource.identifier or []):
        kind, value = identifier_type(ident), (ident.value or "").strip()
        if not value:
            continue
        if kind == "ACSN":
            accession = value
            ctx.origin("order.accession_number", f"ServiceRequest.identifier[{i}]")
        elif kind == "PLAC":
            placer, placer_issuer = value, (ident.system or "")
            ctx.origin("order.placer_order_number", f"ServiceRequest.identifier[{i}]")
        elif kind == "FILL":
            filler = value
            ctx.origin("order.filler_order_number", f"ServiceRequest.identifier[{i}]")
        elif ident.system == DICOM_UID:
            study_uid = strip_oid(value)
            ctx.origin("procedure.study_instance_uid", f"ServiceRequest.identifier[{i}]")
        elif not kind and untyped is None:
            untyped = (i, value, ident.system or "")
    if untyped and not placer:
        placer, placer_issuer = untyped[1], untyped[2]
        ctx.origin("order.placer_order_number", f"ServiceRequest.identifier[{untyped[0]}]")
    patient = _subject(session, resource, ctx)
    codings = (resource.code.coding or []) if resource.code else []
    coding = codings[0] if codings else None
    text = (resource.code.text if resource.code else "") or (coding.display if coding else "") or ""
    for key in ("procedure.code_value", "procedure.code_scheme", "procedure.description"):
        ctx.origin(key, "ServiceRequest.code")
    occurrence = resource.occurrenceDateTime or (resource.occurrencePeriod.start if resource.occurrencePeriod else None)
    ctx.origin("step.scheduled_start", "ServiceRequest.occurrenceDateTime")
    start = (to_site_naive(occurrence, ctx.site_tz) if occurrence is not None
             else dt.datetime.now(ctx.site_tz).replace(tzinfo=None, microsecond=0))
    priority = PRIORITY.get(resource.priority or "", "")
    reason = "; ".join(c.text or ", ".join(x.display or x.code or "" for x in c.coding or [])
                       for c in resource.reasonCode or [])
    step = StepData(sps_id="", modality=_modality(resource, ctx), scheduled_start=start, description=text)
    procedure = ProcedureData(requested_procedure_id="", study_instance_uid=study_uid,
                              code_value=coding.code or "" if coding else "",
                              code_scheme=scheme_of(coding.system) if coding else "",
                              code_meaning=(coding.display or text) if coding else text, description=text,
                              priority=priority, steps=(step,))
    ref = ref or OrderRef(placer_order_number=placer, placer_issuer=placer_issuer, filler_order_number=filler,
                          accession_number=accession)
    requester = resource.requester.display if resource.requester and resource.requester.display else ""
    order = OrderData(ref=ref, accession_number=accession, priority=priority, requesting_physician=requester or "",
                      reason=reason, procedures=(procedure,))
    return patient, order


class ServiceRequestKind(Kind):
    name = "ServiceRequest"
    model = Order
    interactions = ("read", "vread", "update", "create", "search-type", "history-instance")
    versioned = True
    documentation = ("Imaging orders (the same orders as HL7 ORM/OMI/OMG): create schedules the requested procedure "
                     "and its step in the DICOM worklist; status revoked cancels, on-hold holds.")

    def query(self):
        return select(Order).options(
            selectinload(Order.patient),
            selectinload(Order.procedures).selectinload(RequestedProcedure.steps).selectinload(ProcedureStep.stations))

    def own_params(self) -> list[SearchParam]:
        def status(value, _m, _ctx):
            wanted = [s for s, code in STATUS.items() if code == token(value)[1]]
            return Order.status.in_(wanted)

        def identifier(value, modifier, _ctx):
            if modifier == "of-type":
                _type_system, type_code, code = (value.split("|", 2) + ["", ""])[:3]
                column = {"ACSN": Order.accession_number, "PLAC": Order.placer_order_number,
                          "FILL": Order.filler_order_number}.get(type_code)
                if column is None or not code:
                    raise FhirError(400, "value", "identifier:of-type takes type-system|ACSN, PLAC or FILL|value",
                                    ("identifier",))
                return column == code
            system, code = token(value)
            if system == DICOM_UID:
                return Order.procedures.any(RequestedProcedure.study_instance_uid == strip_oid(code or ""))
            if system:
                return (Order.placer_order_number == code) & (Order.placer_issuer == system)
            placer = Order.placer_order_number == code
            if system == "":  # '|code': identifiers without a system
                placer = placer & (Order.placer_issuer == "")
            return (Order.accession_number == code) | (Order.filler_order_number == code) | placer

        def code(value, _m, _ctx):
            system, value_ = token(value)
            clause = RequestedProcedure.code_value == value_
            if system:
                clause = clause & (RequestedProcedure.code_scheme == scheme_of(system))
            return Order.procedures.any(clause)

        def occurrence(value, _m, ctx):
            return Order.procedures.any(RequestedProcedure.steps.any(
                date_clause(ProcedureStep.scheduled_start, value, utc=False, site_tz=ctx.site_tz)))

        return [
            reference_param("patient", "Patient", Order.patient_fk, "The patient (Patient/<id>)",
                            "http://hl7.org/fhir/SearchParameter/clinical-patient"),
            reference_param("subject", "Patient", Order.patient_fk, "The patient (Patient/<id>)",
                            "http://hl7.org/fhir/SearchParameter/ServiceRequest-subject"),
            SearchParam("status", "token", "active, on-hold, completed, revoked", status,
                        definition="http://hl7.org/fhir/SearchParameter/ServiceRequest-status"),
            SearchParam("identifier", "token", "Accession number (no system), placer number (system|value), "
                        "filler number, or Study Instance UID (urn:dicom:uid|urn:oid:...); :of-type with "
                        "v2-0203 ACSN, PLAC or FILL", identifier, ("of-type",),
                        "http://hl7.org/fhir/SearchParameter/ServiceRequest-identifier"),
            SearchParam("code", "token", "Procedure code (system|code)", code,
                        definition="http://hl7.org/fhir/SearchParameter/clinical-code"),
            SearchParam("occurrence", "date", "Scheduled start of a step (site time unless an offset is given)",
                        occurrence, definition="http://hl7.org/fhir/SearchParameter/ServiceRequest-occurrence"),
        ]

    def render(self, order: Order, ctx: Context) -> dict:
        idents = [typed_identifier("ACSN", order.accession_number)]
        if order.placer_order_number:
            idents.append(typed_identifier("PLAC", order.placer_order_number, order.placer_issuer))
        if order.filler_order_number:
            idents.append(typed_identifier("FILL", order.filler_order_number))
        resource = {"resourceType": "ServiceRequest", "id": str(order.id), "meta": self.meta(order),
                    "identifier": idents, "status": STATUS[order.status], "intent": "order",
                    "subject": patient_reference(order.patient), "authoredOn": utc_instant(order.created_at)}
        if order.priority in PRIORITY_BACK:
            resource["priority"] = PRIORITY_BACK[order.priority]
        proc = order.procedures[0] if order.procedures else None
        if proc is not None:
            idents.append({"system": DICOM_UID, "value": f"urn:oid:{proc.study_instance_uid}"})
            code: dict = {}
            if proc.code_value:
                coding = {"code": proc.code_value}
                if proc.code_scheme:
                    coding["system"] = system_of(proc.code_scheme)
                if proc.code_meaning:
                    coding["display"] = proc.code_meaning
                code["coding"] = [coding]
            if proc.description or proc.code_meaning:
                code["text"] = proc.description or proc.code_meaning
            if code:
                resource["code"] = code
            steps = [s for p in order.procedures for s in p.steps]
            if steps:
                resource["orderDetail"] = [{"coding": [{"system": DCM, "code": m}]}
                                           for m in dict.fromkeys(s.modality for s in steps)]
                resource["occurrenceDateTime"] = site_instant(min(s.scheduled_start for s in steps), ctx.site_tz)
        if order.requesting_physician:
            resource["requester"] = {"display": order.requesting_physician.replace("^", " ").strip()}
        if order.reason:
            resource["reasonCode"] = [{"text": order.reason}]
        return resource

    def create(self, session: Session, resource, ctx: Context) -> Order:
        if resource.status not in ("active", "on-hold"):
            raise FhirError(422, "business-rule", f"a new imaging order must have status active or on-hold, not "
                            f"{resource.status!r}", ("ServiceRequest.status",))
        patient, order = order_command(session, resource, ctx)
        created = apply_command(session, PlaceOrder(patient, order), CAUSE, uid_root=ctx.uid_root,
                                accession_prefix=ctx.accession_prefix)
        if resource.status == "on-hold":
            apply_command(session, HoldOrder(OrderRef(accession_number=created.accession_number)), CAUSE,
                          uid_root=ctx.uid_root)
        return created

    def update(self, session: Session, order: Order, resource, ctx: Context) -> Order:
        ref = OrderRef(placer_order_number=order.placer_order_number, placer_issuer=order.placer_issuer,
                       filler_order_number=order.filler_order_number, accession_number=order.accession_number)
        status = resource.status
        if status in ("revoked", "entered-in-error"):
            if order.status in (OrderStatus.CANCELLED, OrderStatus.DISCONTINUED):
                return order
            return apply_command(session, CancelOrder(ref, reason="revoked over FHIR"), CAUSE, uid_root=ctx.uid_root)
        if status not in ("active", "on-hold"):
            raise FhirError(422, "business-rule", f"status {status!r} cannot be set by the placer (completed is "
                            "reported by the modality, MPPS); use active, on-hold or revoked",
                            ("ServiceRequest.status",))
        patient, data = order_command(session, resource, ctx, ref)
        for given, stored, what in ((data.accession_number, order.accession_number, "accession number (ACSN)"),
                                    (_given_placer(resource), order.placer_order_number, "placer identifier")):
            if given and given != stored:
                raise Conflict(f"the {what} of an order cannot change ({stored!r} -> {given!r}); revoke it and "
                               "create a new ServiceRequest", location="order.accession_number"
                               if "ACSN" in what else "order.placer_order_number")
        if status == "active" and order.status is OrderStatus.HELD:
            apply_command(session, HoldOrder(ref, release=True), CAUSE, uid_root=ctx.uid_root)
        order = apply_command(session, UpdateOrder(patient, data), CAUSE, uid_root=ctx.uid_root)
        if status == "on-hold" and order.status is not OrderStatus.HELD:
            order = apply_command(session, HoldOrder(ref), CAUSE, uid_root=ctx.uid_root)
        return order


def _given_placer(resource) -> str:
    for ident in resource.identifier or []:
        if identifier_type(ident) == "PLAC" and ident.value:
            return ident.value.strip()
    return ""

