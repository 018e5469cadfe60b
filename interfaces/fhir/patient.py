"""Patient (FHIR R4 patient.html) <-> the core's patient registry (IHE RAD-1/RAD-12 over FHIR).

The RIS keys a patient by identifier (DICOM Patient ID + Issuer of Patient ID), as ADT does: the
identifier kept is the one typed MR (v2-0203), else use=official/usual, else the first with a
value; its ``system`` is the issuer. The name kept is the official one (else the first that is not
old/nickname/maiden), as DICOM PN family^given^middle^prefix^suffix, with names marked ideographic or
phonetic (iso21090-EN-representation) as its other component groups (interfaces.fhir.datatypes.person_name,
the one translation of person names); a name given only as text is kept whole as the family name. Gender: male M, female F, other O, unknown empty (PS3.3 C.7.1.1).
Links of type 'seealso'/'refer' are not merges (only ADT A40 or $merge merge); they are not kept.

Logical id = the database key. Create never merges into an existing patient: a second POST with
the same identifier is a 409 (use PUT, or If-None-Exist). Update (PUT) replaces the values; a
different identifier renames the patient as ADT A47 does (refused if another patient holds it).
"""

from __future__ import annotations

import functools

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.commands import ChangePatientId, PatientData, PatientRef
from app.errors import Conflict, InvalidInput, UnknownCode
from app.models import Patient
from app.services.patients import change_patient_id, delete_patient, find_patient, register_patient, survivor_of
from interfaces.fhir.datatypes import (GENDER_TO_SEX, SEX_TO_GENDER, V2_0203, Context, chosen_name, human_names,
                                       identifier_type, name_text, person_name)
from interfaces.fhir.kinds import Kind, Operation
from interfaces.fhir.merge import DEFINITION as MERGE_DEFINITION, run_merge
from interfaces.fhir.search import SearchParam, date_clause, string_clause, token


def patient_data(resource, ctx: Context) -> PatientData:
    """The domain values of an R4B Patient; records where each came from in ``ctx``."""
    chosen = None
    idents = [(i, ident) for i, ident in enumerate(resource.identifier or []) if ident.value]
    for rule in (lambda x: identifier_type(x) == "MR", lambda x: x.use in ("official", "usual"), lambda x: True):
        chosen = next(((i, x) for i, x in idents if rule(x)), None)
        if chosen:
            break
    if chosen is None:
        ctx.origin("patient.id", "Patient.identifier")
        raise InvalidInput("Patient.identifier with a value is required: the RIS keys patients by identifier "
                           "(DICOM Patient ID)", location="patient.id", missing=True)
    index, ident = chosen
    ctx.origin("patient.id", f"Patient.identifier[{index}].value")
    ctx.origin("patient.issuer", f"Patient.identifier[{index}].system")
    picked = chosen_name(resource.name or [])
    ctx.origin("patient.name", f"Patient.name[{picked[0]}]" if picked is not None else "Patient.name")
    name = person_name(resource.name or [], "patient.name")
    gender = resource.gender or ""
    ctx.origin("patient.sex", "Patient.gender")
    if gender and gender not in GENDER_TO_SEX:
        raise UnknownCode(f"gender {gender!r} is not in the value set administrative-gender "
                          "(male, female, other, unknown)", location="patient.sex")
    birth = resource.birthDate
    ctx.origin("patient.birth_date", "Patient.birthDate")
    if isinstance(birth, str):
        raise InvalidInput(f"birthDate {birth!r} is partial; the RIS needs a full date (DICOM DA)",
                           location="patient.birth_date")
    return PatientData(patient_id=ident.value.strip(), issuer=(ident.system or "").strip(), name=name,
                       birth_date=birth, birth_date_given=True, sex=GENDER_TO_SEX.get(gender, ""))


def patient_reference(patient: Patient) -> dict:
    ref = {"reference": f"Patient/{patient.id}"}
    if patient.name:
        ref["display"] = name_text(patient.name)
    return ref


class PatientKind(Kind):
    name = "Patient"
    model = Patient
    interactions = ("read", "vread", "update", "patch", "delete", "create", "search-type", "history-instance")
    versioned = True
    documentation = ("Patients keyed by identifier (DICOM Patient ID / Issuer); shared with HL7 ADT. Create with "
                     "an identifier that exists is refused (409); update with another identifier renames (as A47). "
                     "Delete removes a record registered in error; refused (409) while it has orders, visits, "
                     "appointments, archived studies or a merge history. $merge merges as ADT A40 does.")

    def own_operations(self) -> list[Operation]:
        return [Operation("merge", MERGE_DEFINITION, "Merge the source patient into the target (the ADT A40 merge "
                          "and its guards): source-patient(-identifier), target-patient(-identifier), result-patient, "
                          "preview", functools.partial(run_merge, render=self.render))]

    def delete(self, session: Session, patient: Patient, ctx: Context) -> None:
        """A patient record registered in error (app.services.patients.delete_patient has the guards)."""
        ctx.origin("patient.id", "Patient")
        delete_patient(session, patient)

    def own_params(self) -> list[SearchParam]:
        def identifier(value, _m, _ctx):
            system, code = token(value)
            clause = Patient.patient_id == code if code is not None else Patient.patient_id.isnot(None)
            return clause & (Patient.issuer == system) if system is not None else clause

        def gender(value, _m, _ctx):
            return Patient.sex == GENDER_TO_SEX.get(token(value)[1] or "", "?")

        return [
            SearchParam("identifier", "token", "A patient identifier (system = issuer, code = Patient ID)", identifier,
                        definition="http://hl7.org/fhir/SearchParameter/Patient-identifier"),
            SearchParam("name", "string", "Any part of the name (starts with; :exact, :contains); sorts by the "
                        "family name", lambda v, m, _c: string_clause(Patient.name, v, m), ("exact", "contains"),
                        "http://hl7.org/fhir/SearchParameter/Patient-name", sort=Patient.name),
            SearchParam("family", "string", "The family name (starts with; :exact)",
                        lambda v, m, _c: _family(v, m), ("exact",),
                        "http://hl7.org/fhir/SearchParameter/individual-family", sort=Patient.name),
            SearchParam("birthdate", "date", "Date of birth (prefixes eq, ne, gt, lt, ge, le)",
                        lambda v, _m, _c: date_clause(Patient.birth_date, v, utc=True),
                        definition="http://hl7.org/fhir/SearchParameter/individual-birthdate", sort=Patient.birth_date),
            SearchParam("gender", "token", "male, female, other, unknown", gender,
                        definition="http://hl7.org/fhir/SearchParameter/individual-gender"),
        ]

    def render(self, patient: Patient, ctx: Context) -> dict:
        ident = {"use": "usual", "type": {"coding": [{"system": V2_0203, "code": "MR"}]}, "value": patient.patient_id}
        if patient.issuer:
            ident["system"] = patient.issuer
        resource = {"resourceType": "Patient", "id": str(patient.id), "meta": self.meta(patient),
                    "identifier": [ident], "active": patient.merged_into_fk is None}
        names = human_names(patient.name)
        if names:
            resource["name"] = names
        if patient.sex:
            resource["gender"] = SEX_TO_GENDER.get(patient.sex, "unknown")
        if patient.birth_date:
            resource["birthDate"] = patient.birth_date.isoformat()
        links = []
        if patient.merged_into_fk is not None:
            links.append({"other": {"reference": f"Patient/{patient.merged_into_fk}"}, "type": "replaced-by"})
        if ctx.session is not None:   # the records merged into this one (ADT A40, $merge)
            links += [{"other": {"reference": f"Patient/{key}"}, "type": "replaces"} for key in ctx.session.scalars(
                select(Patient.id).where(Patient.merged_into_fk == patient.id).order_by(Patient.id))]
        if links:
            resource["link"] = links
        return resource

    def create(self, session: Session, resource, ctx: Context) -> Patient:
        data = patient_data(resource, ctx)
        existing = find_patient(session, data.patient_id, data.issuer)
        if existing is not None:
            raise Conflict(f"a patient with identifier {data.patient_id!r} (system {data.issuer or '(none)'!r}) "
                           f"already exists as Patient/{existing.id}; update it with PUT, or create conditionally "
                           "with If-None-Exist", location="patient.id")
        return register_patient(session, data)[0]

    def update(self, session: Session, patient: Patient, resource, ctx: Context) -> Patient:
        if patient.merged_into_fk is not None:
            raise Conflict(f"Patient/{patient.id} was merged into Patient/{survivor_of(patient).id}; update that one",
                           location="patient.id")
        data = patient_data(resource, ctx)
        if (data.patient_id, data.issuer) != (patient.patient_id, patient.issuer):
            return change_patient_id(session, ChangePatientId(data, PatientRef(patient.patient_id, patient.issuer)))
        return register_patient(session, data)[0]


def _family(value: str, modifier: str):
    """The family name is the first PN component: starts-with on the stored name (a value holds no '^')."""
    needle = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("^", "")
    if modifier == "exact":
        return (Patient.name == value) | Patient.name.like(needle + "^%", escape="\\")
    return func.lower(Patient.name).like(needle.lower() + "%", escape="\\")
