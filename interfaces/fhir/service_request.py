"""ServiceRequest (FHIR R4 servicerequest.html) = one requested procedure of an order (IHE RAD-2/RAD-3 over FHIR).

**Shape.** The core's order is DICOM's Imaging Service Request (one accession number, PS3.3 C.4.11)
holding Requested Procedures (one Study Instance UID and one procedure code each, C.4.11/C.4.12), each
carried out in Scheduled Procedure Steps. An R4 ServiceRequest requests one procedure (``code`` 0..1;
servicerequest.html scope: "If a workflow requires requesting multiple procedures simultaneously, this is
done using multiple instances of this resource"), and the HL7 FHIR Imaging ServiceRequest IG
(imaging-service-request-ig 0.1.0, "DICOM MWL Requested Procedure Mapping to ServiceRequest") gives each
Requested Procedure a ServiceRequest of its own, with each Scheduled Procedure Step a Task ``basedOn`` it.
So here one ServiceRequest is one requested procedure: logical id = the procedure's key; the order's
identifiers (ACSN, PLAC, FILL) on each; ``requisition`` (R4: the composite request id shared by requests
made together) = the accession number, the same for every procedure of one order; the Requested
Procedure ID and the Study Instance UID (``urn:dicom:uid``) are its own identifiers. The IG's parent
Imaging Service Request resource is not served separately (``requisition`` names it). An order with one
procedure (every order created here, nearly every ORM) is exactly one ServiceRequest.

**Create** builds the :class:`app.commands.PlaceOrder` an ORM^O01 NW builds (mappings.hl7v2): the order,
its procedure and step are made by the same service and appear in the DICOM worklist as an HL7 order does.
From the resource:

- ``identifier`` typed ACSN (v2-0203) -> accession (none: the engine assigns one, IHE RAD TF-2 4.4.4.1.2);
  PLAC -> placer order number (system = issuer); FILL -> filler order number; an untyped one is the
  placer's when no PLAC is given; system ``urn:dicom:uid`` -> Study Instance UID ('urn:oid:' stripped);
  type text "Requested Procedure ID" -> the requested procedure id; any other identifier is kept as sent;
- ``code`` -> procedure code (system mapped to the HL7 coding scheme: LN, SCT, DCM...), display, text;
- modality, first found: DICOM modality codings (system DCM) in ``orderDetail``, then ``code``, then
  ``category``; the mapping profile's table ``procedures`` (code -> column ``modality``); a DICOM modality
  abbreviation written as a word in the code's text or display ("Chest CT"; MRI and PET as MR and PT).
  None: 422 naming what is missing and how an analyst maps the code (never a worklist item without a
  modality, never a guessed one: LOINC's "XR" is CR or DX, the site decides in its table);
- ``occurrenceDateTime`` (or ``occurrencePeriod.start``) -> scheduled start in site time (none: the time
  of the request, as the HL7 profile's 'otherwise: received');
- ``subject`` -> an existing Patient (``Patient/<id>``), a contained Patient ``#id`` (registered from its
  identifier), or a logical reference by ``subject.identifier``; anything else is a 422;
- ``priority`` routine/urgent/asap/stat -> R/U/A/S;
- ``requester`` -> requesting physician: a local reference ``#id`` to a contained Practitioner (or Patient,
  RelatedPerson: its name; PractitionerRole, Organization: their display/name) through the one person-name
  translation (interfaces.fhir.datatypes.person_name), else its display;
- ``reasonCode`` texts and ``reasonReference`` (a contained Condition/Observation/...: its code text; else
  the reference's display) -> the reason, joined with '; '.

**Contained resources and other elements** (BUG-30). Contained resources are resolved locally (references.html
3.1.2.5: never looked up on the server) and kept: every element of the resource the core has no field for
(``contained``, ``note``, ``bodySite``, ``supportingInfo``, ``extension``..., and the client's own form of a
mapped element, e.g. ``requester: {reference: '#req'}``) is stored with the procedure as sent and returned on
read. A kept form of a mapped element is shown only while it still means the order's current value (HL7 may
change the order later): otherwise the engine's rendering of that value is shown. Only contained resources
something refers to are returned (R4 dom-3); nested containment is refused (dom-2, interfaces.fhir.interactions).
A contained Patient named as subject is registered as a Patient and referenced as ``Patient/<id>``.

**Read** renders the requester as a contained Practitioner with the exact HumanName of the stored person name
(PS3.5 PN <-> HumanName), ``orderDetail`` the steps' modalities, ``occurrenceDateTime`` the earliest step.

**Update** (PUT) changes only what the client changed: each value is read from the resource sent and from the
resource the client would have read (the current rendering); where the two agree the stored value stays,
exactly. So what the resource cannot carry (referring physician, station AE titles, station name, SPS ids,
performing physician, step descriptions, other procedures of the order) is never lost, and a read -> PUT of an
unchanged resource changes nothing (no new version), for orders from HL7 and FHIR alike. A changed time moves
the procedure's steps by the same amount; a changed modality applies to its open steps. Status: revoked or
entered-in-error cancels the order (CancelOrder, as ORC CA; refused while other procedures of the order are
still open), on-hold holds it, active releases a held order; completed is the modality's to report (MPPS), not
the placer's: 422. Accession, placer number, Study Instance UID and Requested Procedure ID cannot change (409).

Status shown: on-hold while the order is held, else from the procedure's state (app.services.lifecycle):
ordered/scheduled/arrived/in progress active, completed/preliminary/final completed, cancelled/discontinued
revoked.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import re

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError
from sqlalchemy import and_, func, or_, select, union
from sqlalchemy.orm import Session, contains_eager, selectinload

from app.commands import (CancelOrder, Cause, HoldOrder, OrderData, OrderRef, PatientData, PlaceOrder, ProcedureData,
                          StepData, UpdateOrder)
from app.errors import Conflict, InvalidInput
from app.models import Order, OrderStatus, Patient, ProcedureState, ProcedureStep, RequestedProcedure
from app.services import lifecycle
from app.services.dispatch import apply_command
from app.services.patients import find_patient
from app.vocabulary import MODALITIES
from interfaces.fhir.datatypes import (DCM, DICOM_UID, Context, human_names, identifier_type, name_text,
                                       numeric_id, person_name, reference_id, scheme_of, site_instant, strip_oid,
                                       system_of, to_site_naive, typed_identifier, utc_instant)
from interfaces.fhir.errors import FhirError
from interfaces.fhir.kinds import Kind
from interfaces.fhir.patient import patient_data, patient_reference
from interfaces.fhir.search import SearchParam, date_clause, reference_param, token

PRIORITY = {"routine": "R", "urgent": "U", "asap": "A", "stat": "S"}
PRIORITY_BACK = {v: k for k, v in PRIORITY.items()}
ACTIVE_STATES = (ProcedureState.ORDERED, ProcedureState.SCHEDULED, ProcedureState.ARRIVED, ProcedureState.IN_PROGRESS)
COMPLETED_STATES = tuple(lifecycle.PERFORMED)
REVOKED_STATES = (ProcedureState.CANCELLED, ProcedureState.DISCONTINUED)
RP_ID_TEXT = "Requested Procedure ID"
IMAGING = {"coding": [{"system": "http://snomed.info/sct", "code": "363679005", "display": "Imaging"}]}
_MODALITY_WORD = re.compile(r"\b(CT|MR|MRI|US|CR|DX|MG|NM|PT|PET|XA|RF|IO|PX|ES|OCT)\b")
_WORD_TO_MODALITY = {"MRI": "MR", "PET": "PT"}
CAUSE = Cause("fhir", reference="ServiceRequest", sender="FHIR")
# Elements the engine always renders itself; everything else the client sent may be kept as sent.
ENGINE_OWNED = ("resourceType", "id", "meta", "text", "identifier", "requisition", "status", "subject")
# Mapped elements whose kept form is shown while it still means the current value (see the docstring).
GROUPS = {"code": ("code",), "priority": ("priority",),
          "occurrence": ("occurrenceDateTime", "occurrencePeriod", "occurrenceTiming"),
          "requester": ("requester",), "reason": ("reasonCode", "reasonReference"), "modalities": ("orderDetail",)}


def status_code(order_status: OrderStatus, state: ProcedureState) -> str:
    """ServiceRequest.status of a procedure in ``state`` of an order in ``order_status``."""
    if order_status is OrderStatus.HELD:
        return "on-hold"
    if state in COMPLETED_STATES:
        return "completed"
    if state in REVOKED_STATES:
        return "revoked"
    return "active"


def status_of(proc: RequestedProcedure) -> str:
    return status_code(proc.order.status, proc.state)


def first_procedure_key(order_fk):
    """SQL: the key of the first requested procedure of the order ``order_fk`` (a column): the ServiceRequest
    a record linked only to the order is shown based on."""
    return (select(func.min(RequestedProcedure.id)).where(RequestedProcedure.order_fk == order_fk)
            .correlate_except(RequestedProcedure).scalar_subquery())


def procedure_for_study(order: Order | None, study_uid: str) -> RequestedProcedure | None:
    """The requested procedure a study of ``order`` fulfils: the one with its Study Instance UID, else the first."""
    if order is None or not order.procedures:
        return None
    return next((p for p in order.procedures if p.study_instance_uid == study_uid), order.procedures[0])


# Reading a resource ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Identifiers:
    accession: str = ""
    placer: str = ""
    placer_issuer: str = ""
    filler: str = ""
    study_uid: str = ""
    rp_id: str = ""
    others: list = dataclasses.field(default_factory=list)   # (index, identifier) the core has no field for


def _identifiers(resource, ctx: Context) -> Identifiers:
    found = Identifiers()
    untyped = None
    for i, ident in enumerate(resource.identifier or []):
        kind, value = identifier_type(ident), (ident.value or "").strip()
        text = (ident.type.text or "").strip().lower() if ident.type is not None else ""
        where = f"ServiceRequest.identifier[{i}]"
        if not value:
            found.others.append((i, ident))
        elif kind == "ACSN" and not found.accession:
            found.accession = value
            ctx.origin("order.accession_number", where)
        elif kind == "PLAC" and not found.placer:
            found.placer, found.placer_issuer = value, (ident.system or "")
            ctx.origin("order.placer_order_number", where)
        elif kind == "FILL" and not found.filler:
            found.filler = value
            ctx.origin("order.filler_order_number", where)
        elif ident.system == DICOM_UID and not found.study_uid:
            found.study_uid = strip_oid(value)
            ctx.origin("procedure.study_instance_uid", where)
        elif text == RP_ID_TEXT.lower() and not found.rp_id:
            found.rp_id = value
            ctx.origin("procedure.requested_procedure_id", where)
        elif not kind and not text and untyped is None:
            untyped = (i, ident)
        else:
            found.others.append((i, ident))
    if untyped is not None:
        if found.placer:
            found.others.append(untyped)
        else:
            found.placer, found.placer_issuer = (untyped[1].value or "").strip(), (untyped[1].system or "")
            ctx.origin("order.placer_order_number", f"ServiceRequest.identifier[{untyped[0]}]")
    found.others.sort(key=lambda pair: pair[0])
    return found


def _local(resource, reference: str, where: str):
    """The contained resource a local reference ``#id`` names (references.html 3.1.2.5), or a 422."""
    target = next((c for c in resource.contained or [] if c.id == reference[1:]), None)
    if target is None:
        raise FhirError(422, "invalid", f"{where} {reference!r} names no contained resource (contained ids: "
                        f"{', '.join(c.id or '?' for c in resource.contained or []) or 'none'})", (where,))
    return target


def _concept_text(concept) -> str:
    if concept is None:
        return ""
    return (concept.text or ", ".join(c.display or c.code or "" for c in concept.coding or [])).strip()


def _requester(resource, ctx: Context) -> str:
    """The requesting physician as a DICOM PN (or the display text when only a display is given)."""
    ref = resource.requester
    ctx.origin("order.requesting_physician", "ServiceRequest.requester")
    if ref is None:
        return ""
    if ref.reference and ref.reference.startswith("#"):
        target = _local(resource, ref.reference, "ServiceRequest.requester")
        kind = target.get_resource_type()
        if kind in ("Practitioner", "Patient", "RelatedPerson") and target.name:
            return person_name(target.name, "order.requesting_physician")
        if kind == "PractitionerRole" and target.practitioner is not None and target.practitioner.display:
            return target.practitioner.display.strip()
        if kind == "Organization" and target.name:
            return target.name.strip()
        if not ref.display:
            raise FhirError(422, "invalid", f"ServiceRequest.requester {ref.reference!r} is a contained {kind} "
                            "without a name: the requesting physician cannot be read from it",
                            ("ServiceRequest.requester",))
    return (ref.display or "").strip()


def _reason(resource, ctx: Context) -> str:
    ctx.origin("order.reason", "ServiceRequest.reasonCode")
    texts = [_concept_text(c) for c in resource.reasonCode or []]
    for i, ref in enumerate(resource.reasonReference or []):
        where = f"ServiceRequest.reasonReference[{i}]"
        if ref.reference and ref.reference.startswith("#"):
            target = _local(resource, ref.reference, where)
            concept = getattr(target, "code", None)
            text = _concept_text(concept) if concept is not None and not isinstance(concept, str) else ""
            text = text or (getattr(target, "description", None) or "") or (ref.display or "")
        else:
            text = ref.display or ""
        texts.append(text.strip())
    return "; ".join(dict.fromkeys(t for t in texts if t))


def _code(resource) -> tuple[str, str, str, str]:
    """(code value, coding scheme, code meaning, description) of ``code``."""
    codings = (resource.code.coding or []) if resource.code else []
    coding = codings[0] if codings else None
    text = ((resource.code.text if resource.code else "") or (coding.display if coding else "") or "").strip()
    if coding is None:
        return "", "", text, text
    return coding.code or "", scheme_of(coding.system), (coding.display or text).strip(), text


def _modalities(resource, ctx: Context) -> tuple[str, ...]:
    """The modalities of the procedure (see the module docstring for the order of the rules); () if none."""
    ctx.origin("step.modality", "ServiceRequest.code")
    for name in ("orderDetail", "code", "category"):
        value = getattr(resource, name)
        concepts = value if isinstance(value, list) else ([value] if value is not None else [])
        found = [c.code for concept in concepts for c in concept.coding or [] if c.system == DCM and c.code in MODALITIES]
        if found:
            ctx.locations["step.modality"] = f"ServiceRequest.{name}"
            return tuple(dict.fromkeys(found))
    codings = (resource.code.coding or []) if resource.code else []
    for coding in codings:
        row = ctx.tables.get("procedures", {}).get(coding.code or "")
        if isinstance(row, dict) and row.get("modality") in MODALITIES:
            return (row["modality"],)
    texts = [resource.code.text] if resource.code and resource.code.text else []
    for text in texts + [c.display for c in codings if c.display]:
        match = _MODALITY_WORD.search(text)
        if match:
            return (_WORD_TO_MODALITY.get(match.group(1), match.group(1)),)
    return ()


def _no_modality(resource, ctx: Context) -> FhirError:
    codings = (resource.code.coding or []) if resource.code else []
    named = ", ".join(f"{c.system or '(no system)'}|{c.code}" + (f" {c.display!r}" if c.display else "")
                      for c in codings) or repr(_code(resource)[3] or "(no code)")
    return FhirError(422, "required", f"modality missing: not an imaging order the worklist can offer. The procedure "
                     f"{named} gives no DICOM modality: send a coding with system {DCM} (e.g. CT, MR, DX) in "
                     f"ServiceRequest.orderDetail, or map the code in table 'procedures' (column 'modality') of the "
                     f"mapping profile {ctx.profile_name!r}", (ctx.locations.get("step.modality", "ServiceRequest.code"),))


def _occurrence(resource, ctx: Context) -> dt.datetime | None:
    ctx.origin("step.scheduled_start", "ServiceRequest.occurrenceDateTime")
    value = resource.occurrenceDateTime or (resource.occurrencePeriod.start if resource.occurrencePeriod else None)
    return to_site_naive(value, ctx.site_tz) if value is not None else None


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


def values(resource, ctx: Context) -> dict:
    """The order's values a ServiceRequest states, by group (GROUPS): compared between the resource sent and the
    resource read, they tell what an update changes."""
    return {"code": _code(resource), "priority": PRIORITY.get(resource.priority or "", ""),
            "occurrence": _occurrence(resource, ctx), "requester": _requester(resource, ctx),
            "reason": _reason(resource, ctx), "modalities": _modalities(resource, ctx)}


def _model(doc: dict):
    """A ServiceRequest this module rendered, as the R4B model its values are read from."""
    return get_fhir_model_class("ServiceRequest").model_validate(doc)


def _quiet(ctx: Context) -> Context:
    """``ctx`` for reading a resource the client did not send (its origins must not point the client there)."""
    return dataclasses.replace(ctx, locations={})


# The order as commands ------------------------------------------------------------------------------
def snapshot(order: Order) -> tuple[PatientData, OrderData]:
    """The order as it is stored, as the values of an UpdateOrder: sent unchanged, it changes nothing. Step
    times are None (= keep)."""
    procedures = tuple(ProcedureData(
        requested_procedure_id=p.requested_procedure_id, study_instance_uid=p.study_instance_uid,
        code_value=p.code_value, code_scheme=p.code_scheme, code_meaning=p.code_meaning, description=p.description,
        priority=p.priority,
        steps=tuple(StepData(sps_id=s.sps_id, modality=s.modality, scheduled_start=None,
                             station_aets=tuple(s.station_aets), station_name=s.station_name,
                             description=s.description, performing_physician=s.performing_physician)
                    for s in p.steps)) for p in order.procedures)
    ref = OrderRef(placer_order_number=order.placer_order_number, placer_issuer=order.placer_issuer,
                   filler_order_number=order.filler_order_number, accession_number=order.accession_number)
    data = OrderData(ref=ref, accession_number=order.accession_number, priority=order.priority,
                     referring_physician=order.referring_physician, requesting_physician=order.requesting_physician,
                     reason=order.reason, procedures=procedures)
    return PatientData(patient_id=order.patient.patient_id, issuer=order.patient.issuer), data


def _changed_procedure(proc: RequestedProcedure, data: ProcedureData, new: dict, old: dict, changed: set,
                       starts: list[dt.datetime]) -> ProcedureData:
    steps = list(data.steps)
    if "code" in changed:
        value, scheme, meaning, text = new["code"]
        old_text = proc.description
        data = dataclasses.replace(data, code_value=value, code_scheme=scheme, code_meaning=meaning, description=text)
        steps = [dataclasses.replace(s, description=text) if s.description == old_text else s for s in steps]
    if "priority" in changed:
        data = dataclasses.replace(data, priority=new["priority"])
    if "modalities" in changed:
        wanted = new["modalities"]
        if len(wanted) == 1:
            steps = [dataclasses.replace(s, modality=wanted[0]) for s in steps]
        elif len(wanted) == len(steps):
            steps = [dataclasses.replace(s, modality=m) for s, m in zip(steps, wanted)]
        else:
            raise FhirError(422, "invalid", f"ServiceRequest.orderDetail names {len(wanted)} modalities "
                            f"({', '.join(wanted)}) for a procedure of {len(steps)} steps: give one modality for "
                            "all of them, or one per step", ("ServiceRequest.orderDetail",))
    if "occurrence" in changed and new["occurrence"] is not None and old["occurrence"] is not None:
        delta = new["occurrence"] - old["occurrence"]   # every step moves by the same amount
        steps = [dataclasses.replace(s, scheduled_start=start + delta) for s, start in zip(steps, starts)]
    return dataclasses.replace(data, steps=tuple(steps))


# Kept elements -------------------------------------------------------------------------------------
def _references(node) -> set[str]:
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                found.add(value)
            else:
                found |= _references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _references(item)
    return found


def referenced_only(resource: dict) -> dict:
    """``resource`` with only the contained resources something refers to (R4 dom-3)."""
    contained = resource.get("contained") or []
    if not contained:
        return resource
    outside = _references({k: v for k, v in resource.items() if k != "contained"})
    wanted: set[str] = set()
    frontier = {r[1:] for r in outside if r.startswith("#")}
    by_id = {c.get("id"): c for c in contained}
    while frontier:   # contained resources may refer to each other
        wanted |= frontier
        frontier = {r[1:] for i in frontier if i in by_id for r in _references(by_id[i]) if r.startswith("#")} - wanted
    kept = [c for c in contained if c.get("id") in wanted]
    resource = dict(resource)
    if kept:
        resource["contained"] = kept
    else:
        resource.pop("contained", None)
    return resource


def kept_elements(sent: dict, engine: dict, identifiers: Identifiers, subject_contained: str) -> dict | None:
    """What to keep of a resource the client sent: each element the engine's rendering (``engine``, in the same
    normal form as ``sent``) does not show as sent, the identifiers the core has no field for, the contained
    resources the engine does not render itself (and not a contained subject, which is now a Patient here)."""
    kept = {}
    for key, value in sent.items():
        if key in ENGINE_OWNED or key == "contained":
            continue
        if engine.get(key) != value:
            kept[key] = value
    contained = [c for c in sent.get("contained") or [] if c.get("id") != subject_contained
                 and c not in engine.get("contained", [])]
    if contained:
        kept["contained"] = contained
    others = [sent["identifier"][i] for i, _ in identifiers.others]
    if others:
        kept["identifier"] = others
    return kept or None


# The resource type ---------------------------------------------------------------------------------
class ServiceRequestKind(Kind):
    name = "ServiceRequest"
    model = RequestedProcedure
    interactions = ("read", "vread", "update", "patch", "create", "search-type", "history-instance")
    versioned = True
    refusals = {"delete": "an order is not deleted here (FHIR R4 http.html 3.1.0.7: deleting a record implies "
                          "nothing about the order it stands for); to cancel the order, update its status to revoked "
                          "(PUT or PATCH)"}
    documentation = ("Requested procedures of imaging orders (the same orders as HL7 ORM/OMI/OMG), one ServiceRequest "
                     "each; the procedures of one order share requisition (= accession number). Create schedules the "
                     "procedure and its step in the DICOM worklist; status revoked cancels, on-hold holds; update "
                     "changes only what the client changed. Contained resources and elements without a field in the "
                     "order are kept as sent.")

    def joined(self, stmt):
        return stmt.join(RequestedProcedure.order)

    def query(self):
        """The procedures with their order and patient (from the search's join) and their steps and stations: three
        queries for a page, whatever its size."""
        return (self.joined(select(RequestedProcedure))
                .options(contains_eager(RequestedProcedure.order).joinedload(Order.patient),
                         selectinload(RequestedProcedure.steps).selectinload(ProcedureStep.stations)))

    def version(self, proc) -> int:
        return proc.order.version

    def updated(self, proc):
        return proc.order.updated_at

    def updated_column(self):
        return Order.updated_at

    def own_params(self) -> list[SearchParam]:
        def status(value, _m, _ctx):
            code = token(value)[1]
            held = Order.status == OrderStatus.HELD
            if code == "on-hold":
                return held
            if code == "active":
                return and_(~held, RequestedProcedure.state.in_(ACTIVE_STATES))
            if code == "completed":
                return and_(~held, RequestedProcedure.state.in_(COMPLETED_STATES))
            if code == "revoked":
                return and_(~held, RequestedProcedure.state.in_(REVOKED_STATES))
            return RequestedProcedure.id.is_(None)   # a status no procedure has here: no match

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
                return RequestedProcedure.study_instance_uid == strip_oid(code or "")
            if system:
                return (Order.placer_order_number == code) & (Order.placer_issuer == system)
            placer = Order.placer_order_number == code
            if system == "":  # '|code': identifiers without a system
                placer = placer & (Order.placer_issuer == "")
            # one indexed lookup per identifier column (an OR across the joined tables would scan every order)
            by_order = (select(RequestedProcedure.id).join(RequestedProcedure.order)
                        .where(or_(Order.accession_number == code, Order.filler_order_number == code, placer)))
            by_procedure = select(RequestedProcedure.id).where(RequestedProcedure.requested_procedure_id == code)
            return RequestedProcedure.id.in_(union(by_order, by_procedure))

        def code(value, _m, _ctx):
            system, value_ = token(value)
            clause = RequestedProcedure.code_value == value_
            if system:
                clause = clause & (RequestedProcedure.code_scheme == scheme_of(system))
            return clause

        def occurrence(value, _m, ctx):
            return RequestedProcedure.steps.any(
                date_clause(ProcedureStep.scheduled_start, value, utc=False, site_tz=ctx.site_tz))

        return [
            reference_param("patient", "Patient", Order.patient_fk, "The patient (Patient/<id>)",
                            "http://hl7.org/fhir/SearchParameter/clinical-patient"),
            reference_param("subject", "Patient", Order.patient_fk, "The patient (Patient/<id>)",
                            "http://hl7.org/fhir/SearchParameter/ServiceRequest-subject"),
            SearchParam("status", "token", "active, on-hold, completed, revoked", status,
                        definition="http://hl7.org/fhir/SearchParameter/ServiceRequest-status"),
            SearchParam("identifier", "token", "Accession number, filler number or Requested Procedure ID (no system), "
                        "placer number (system|value), or Study Instance UID (urn:dicom:uid|urn:oid:...); :of-type "
                        "with v2-0203 ACSN, PLAC or FILL", identifier, ("of-type",),
                        "http://hl7.org/fhir/SearchParameter/ServiceRequest-identifier"),
            SearchParam("requisition", "token", "The order (accession number): every procedure of it",
                        lambda v, _m, _c: Order.accession_number == token(v)[1],
                        definition="http://hl7.org/fhir/SearchParameter/ServiceRequest-requisition"),
            SearchParam("code", "token", "Procedure code (system|code)", code,
                        definition="http://hl7.org/fhir/SearchParameter/clinical-code"),
            SearchParam("occurrence", "date", "Scheduled start of a step (site time unless an offset is given); "
                        "sorts by the earliest", occurrence,
                        definition="http://hl7.org/fhir/SearchParameter/ServiceRequest-occurrence",
                        sort=select(func.min(ProcedureStep.scheduled_start))
                        .where(ProcedureStep.procedure_fk == RequestedProcedure.id)
                        .correlate_except(ProcedureStep).scalar_subquery()),
            SearchParam("authored", "date", "When the order was received (authoredOn, UTC unless an offset is given)",
                        lambda v, _m, _c: date_clause(Order.created_at, v, utc=True),
                        definition="http://hl7.org/fhir/SearchParameter/ServiceRequest-authored", sort=Order.created_at),
        ]

    # Rendering ---------------------------------------------------------------------------------
    def _engine(self, proc: RequestedProcedure, ctx: Context, taken: set[str] = frozenset()) -> dict:
        """The resource from the core's values alone (``taken``: contained ids the kept elements use)."""
        order = proc.order
        idents = [typed_identifier("ACSN", order.accession_number)]
        if order.placer_order_number:
            idents.append(typed_identifier("PLAC", order.placer_order_number, order.placer_issuer))
        if order.filler_order_number:
            idents.append(typed_identifier("FILL", order.filler_order_number))
        idents.append({"type": {"text": RP_ID_TEXT}, "value": proc.requested_procedure_id})
        idents.append({"system": DICOM_UID, "value": f"urn:oid:{proc.study_instance_uid}"})
        resource = {"resourceType": "ServiceRequest", "id": str(proc.id), "meta": self.meta(proc),
                    "identifier": idents, "requisition": typed_identifier("ACSN", order.accession_number),
                    "status": status_of(proc), "intent": "order", "category": [copy.deepcopy(IMAGING)]}
        priority = order.priority or proc.priority
        if priority in PRIORITY_BACK:
            resource["priority"] = PRIORITY_BACK[priority]
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
        if proc.steps:
            resource["orderDetail"] = [{"coding": [{"system": DCM, "code": m}]}
                                       for m in dict.fromkeys(s.modality for s in proc.steps)]
        resource["subject"] = patient_reference(order.patient)
        if proc.steps:
            resource["occurrenceDateTime"] = site_instant(min(s.scheduled_start for s in proc.steps), ctx.site_tz)
        resource["authoredOn"] = utc_instant(order.created_at)
        if order.requesting_physician:
            rid = next(f"requester{n or ''}" for n in range(len(taken) + 1) if f"requester{n or ''}" not in taken)
            resource["contained"] = [{"resourceType": "Practitioner", "id": rid,
                                      "name": human_names(order.requesting_physician)}]
            resource["requester"] = {"reference": f"#{rid}", "display": name_text(order.requesting_physician)}
        if order.reason:
            resource["reasonCode"] = [{"text": order.reason}]
        return resource

    def render(self, proc: RequestedProcedure, ctx: Context) -> dict:
        kept = proc.fhir_elements or {}
        if not kept:
            return self._engine(proc, ctx)
        engine = self._engine(proc, ctx, {c.get("id") for c in kept.get("contained", [])})
        candidate = {k: v for k, v in engine.items() if not any(k in GROUPS[g] and any(e in kept for e in GROUPS[g])
                                                                 for g in GROUPS)}
        candidate.update({k: v for k, v in kept.items() if k not in ("identifier", "contained")})
        candidate["identifier"] = engine["identifier"] + list(kept.get("identifier", []))
        candidate["contained"] = list(kept.get("contained", [])) + engine.get("contained", [])
        if not candidate["contained"]:
            candidate.pop("contained")
        mapped = any(e in kept for elements in GROUPS.values() for e in elements)
        try:   # only kept forms of mapped elements need reading (two validations): notes, categories... do not
            quiet = _quiet(ctx)
            mine, theirs = ((values(_model(candidate), quiet), values(_model(engine), quiet)) if mapped
                            else ({}, {}))
        except (ValidationError, FhirError, InvalidInput):
            return self._engine(proc, ctx)   # kept elements that no longer read: the engine's values stand
        for group, elements in GROUPS.items():
            if any(e in kept for e in elements) and mine[group] != theirs[group]:
                for e in elements:   # the order changed since (HL7, MPPS): show its current value
                    candidate.pop(e, None)
                    if e in engine:
                        candidate[e] = engine[e]
        keys = list(engine)   # element order of the engine's rendering, then the kept ones
        result = {k: candidate[k] for k in keys if k in candidate}
        result.update({k: v for k, v in candidate.items() if k not in result})
        return referenced_only(result)

    # Writing -----------------------------------------------------------------------------------
    def create(self, session: Session, resource, ctx: Context) -> RequestedProcedure:
        if resource.status not in ("active", "on-hold"):
            raise FhirError(422, "business-rule", f"a new imaging order must have status active or on-hold, not "
                            f"{resource.status!r}", ("ServiceRequest.status",))
        ids = _identifiers(resource, ctx)
        patient = _subject(session, resource, ctx)
        new = values(resource, ctx)
        if not new["modalities"]:
            raise _no_modality(resource, ctx)
        value, scheme, meaning, text = new["code"]
        start = new["occurrence"] or dt.datetime.now(ctx.site_tz).replace(tzinfo=None, microsecond=0)
        steps = tuple(StepData(sps_id="", modality=m, scheduled_start=start, description=text)
                      for m in new["modalities"])   # one step per modality named
        procedure = ProcedureData(requested_procedure_id=ids.rp_id, study_instance_uid=ids.study_uid,
                                  code_value=value, code_scheme=scheme, code_meaning=meaning, description=text,
                                  priority=new["priority"], steps=steps)
        ref = OrderRef(placer_order_number=ids.placer, placer_issuer=ids.placer_issuer, filler_order_number=ids.filler,
                       accession_number=ids.accession)
        order = OrderData(ref=ref, accession_number=ids.accession, priority=new["priority"],
                          requesting_physician=new["requester"], reason=new["reason"], procedures=(procedure,))
        created = apply_command(session, PlaceOrder(patient, order), CAUSE, uid_root=ctx.uid_root,
                                accession_prefix=ctx.accession_prefix)
        if resource.status == "on-hold":
            apply_command(session, HoldOrder(OrderRef(accession_number=created.accession_number)), CAUSE,
                          uid_root=ctx.uid_root)
        proc = created.procedures[0]
        self._keep(session, proc, resource, ids, ctx)
        return proc

    def _keep(self, session: Session, proc: RequestedProcedure, resource, ids: Identifiers, ctx: Context) -> None:
        session.flush()
        sent = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
        subject = resource.subject.reference[1:] if (resource.subject.reference or "").startswith("#") else ""
        engine = _model(self._engine(proc, ctx)).model_dump(mode="json", by_alias=True, exclude_none=True)
        kept = kept_elements(sent, engine, ids, subject)
        if kept != proc.fhir_elements:
            proc.fhir_elements = kept

    def update(self, session: Session, proc: RequestedProcedure, resource, ctx: Context) -> RequestedProcedure:
        order = proc.order
        shown = _model(self.render(proc, ctx))
        ids = _identifiers(resource, ctx)
        for given, stored, what, where in (
                (ids.accession, order.accession_number, "accession number (ACSN)", "order.accession_number"),
                (ids.placer, order.placer_order_number, "placer identifier", "order.placer_order_number"),
                (ids.study_uid, proc.study_instance_uid, "Study Instance UID", "procedure.study_instance_uid"),
                (ids.rp_id, proc.requested_procedure_id, "Requested Procedure ID", "procedure.requested_procedure_id")):
            if given and given != stored:
                raise Conflict(f"the {what} of an order cannot change ({stored!r} -> {given!r}); revoke it and "
                               "create a new ServiceRequest", location=where)
        patient = _subject(session, resource, ctx)
        new, old = values(resource, ctx), values(shown, _quiet(ctx))
        changed = {group for group in new if new[group] != old[group]}
        if "modalities" in changed and not new["modalities"]:
            raise _no_modality(resource, ctx)
        stored_patient, data = snapshot(order)
        moved = (patient.patient_id, patient.issuer) != (stored_patient.patient_id, stored_patient.issuer)
        contained_subject = (resource.subject.reference or "").startswith("#")
        if not moved and not contained_subject:
            patient = stored_patient
        if ids.filler and not order.filler_order_number:
            data = dataclasses.replace(data, ref=dataclasses.replace(data.ref, filler_order_number=ids.filler))
            changed.add("filler")
        if "requester" in changed:
            data = dataclasses.replace(data, requesting_physician=new["requester"])
        if "reason" in changed:
            data = dataclasses.replace(data, reason=new["reason"])
        if "priority" in changed:
            data = dataclasses.replace(data, priority=new["priority"])
        index = order.procedures.index(proc)
        starts = [s.scheduled_start for s in proc.steps]
        procedures = list(data.procedures)
        procedures[index] = _changed_procedure(proc, procedures[index], new, old, changed, starts)
        data = dataclasses.replace(data, procedures=tuple(procedures))

        status, current = resource.status, status_of(proc)
        ref = data.ref
        if status != current:
            if status in ("revoked", "entered-in-error"):
                if current == "revoked":
                    return proc
                others = [p for p in order.procedures if p is not proc and p.state not in lifecycle.CLOSED
                          and p.state not in lifecycle.PERFORMED]
                if others:
                    raise FhirError(422, "business-rule", f"the order {order.accession_number} has "
                                    f"{len(others)} other open procedure(s) (ServiceRequest/"
                                    f"{', ServiceRequest/'.join(str(p.id) for p in others)}); revoking one procedure "
                                    "alone is not supported: cancel the order in the placer system (ORC CA)",
                                    ("ServiceRequest.status",))
                self._keep(session, proc, resource, ids, ctx)
                apply_command(session, CancelOrder(ref, reason="revoked over FHIR"), CAUSE, uid_root=ctx.uid_root)
                return proc
            if not (status == "on-hold" and current == "active") and not (status == "active" and current == "on-hold"):
                raise FhirError(422, "business-rule", f"status {status!r} cannot be set by the placer on a "
                                f"{current} order (completed is reported by the modality, MPPS); use active, "
                                "on-hold or revoked", ("ServiceRequest.status",))
        if status == "active" and current == "on-hold":
            apply_command(session, HoldOrder(ref, release=True), CAUSE, uid_root=ctx.uid_root)
        if changed or moved or contained_subject:
            apply_command(session, UpdateOrder(patient, data), CAUSE, uid_root=ctx.uid_root)
        if status == "on-hold" and current != "on-hold":
            apply_command(session, HoldOrder(ref), CAUSE, uid_root=ctx.uid_root)
        self._keep(session, proc, resource, ids, ctx)
        return proc
