"""Patient ``$merge`` (the FHIR Patient merge operation: R5 patient-operation-merge, OperationDefinition
http://hl7.org/fhir/OperationDefinition/Patient-merge, offered here on R4 resources), on the same merge as ADT A40.

``POST [base]/Patient/$merge`` with a Parameters resource:

- ``source-patient`` (Reference) and/or ``source-patient-identifier`` (Identifier, repeatable): the record merged
  away; ``target-patient`` / ``target-patient-identifier``: the record that survives. Every reference and
  identifier given for one side must name the same Patient here (422 otherwise);
- ``result-patient`` (Patient, optional): the target as it should read after the merge; its identifier must be
  the target's (the RIS keys a patient by one identifier; a rename is an update, as ADT A47), its name, gender
  and birth date are written to the target;
- ``preview`` (boolean, optional): answer what the merge would give and change nothing.

The merge itself is app.services.patients.merge_patient, the service ADT A40 uses, with its guards: a record
merged into itself is refused (422), a merge against the direction of an earlier one is refused (409), repeating a
merge changes nothing. Here also (as the operation requires): the target must be active (not merged away, 422).
Orders, visits and archived studies move to the target; the source reads active false with link replaced-by the
target, the target link replaces the source; later messages naming the source land on the target.

Answer (200): Parameters with ``input`` (the Parameters sent), ``outcome`` (OperationOutcome) and ``result`` (the
target Patient after the merge).
"""

from __future__ import annotations

from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from app.commands import MergePatient, PatientData, PatientRef
from app.models import Patient
from app.services.patients import find_patient, merge_patient, register_patient
from interfaces.fhir.datatypes import Context, numeric_id, reference_id
from interfaces.fhir.errors import FhirError, issue, operation_outcome

DEFINITION = "http://hl7.org/fhir/OperationDefinition/Patient-merge"
NAMES = ("source-patient", "source-patient-identifier", "target-patient", "target-patient-identifier",
         "result-patient", "preview")


def _side(session: Session, params: dict, side: str, ctx: Context) -> Patient:
    """The Patient one side (``source`` / ``target``) of the merge names."""
    found: list[tuple[str, Patient | None]] = []
    for ref in params.get(f"{side}-patient", []):
        value = ref.valueReference.reference if ref.valueReference is not None else None
        rid = reference_id(value or "", "Patient", ctx.base_url)
        number = numeric_id(rid) if rid else None
        found.append((f"{side}-patient {value!r}", session.get(Patient, number) if number is not None else None))
    for ident in params.get(f"{side}-patient-identifier", []):
        value = ident.valueIdentifier
        text = f"{value.system or '(no system)'}|{value.value}" if value is not None else "(empty)"
        patient = find_patient(session, value.value.strip(), (value.system or "").strip()) if value and value.value else None
        found.append((f"{side}-patient-identifier {text}", patient))
    if not found:
        raise FhirError(400, "required", f"$merge needs {side}-patient or {side}-patient-identifier",
                        (f"Parameters.parameter[{side}-patient]",))
    missing = [what for what, patient in found if patient is None]
    if missing:
        raise FhirError(422, "not-found", f"{', '.join(missing)} names no Patient on this server",
                        (f"Parameters.parameter[{side}-patient]",))
    patients = {patient.id: patient for _, patient in found}
    if len(patients) > 1:
        raise FhirError(422, "invalid", f"the {side} is named by {', '.join(w for w, _ in found)}, which are different "
                        f"Patients (Patient/{', Patient/'.join(str(i) for i in patients)})",
                        (f"Parameters.parameter[{side}-patient]",))
    return next(iter(patients.values()))


def run_merge(session: Session, ctx: Context, parameters, _instance, *, render) -> tuple[int, dict, Patient]:
    params: dict[str, list] = {}
    for p in parameters.parameter or []:
        if p.name not in NAMES:
            raise FhirError(400, "not-supported", f"$merge has no parameter {p.name!r} (parameters: "
                            f"{', '.join(NAMES)})", ("Parameters.parameter",))
        params.setdefault(p.name, []).append(p)
    source, target = _side(session, params, "source", ctx), _side(session, params, "target", ctx)
    if target.merged_into_fk is not None:
        raise FhirError(422, "business-rule", f"the target Patient/{target.id} was merged into "
                        f"Patient/{target.merged_into_fk} itself; merge into that one",
                        ("Parameters.parameter[target-patient]",))
    preview = any(p.valueBoolean for p in params.get("preview", []))
    result = params.get("result-patient", [])
    result_data = None
    if result:
        from interfaces.fhir.patient import patient_data   # noqa: PLC0415 (patient imports this module)
        result_data = patient_data(result[0].resource, Context(ctx.site_tz, ctx.uid_root))
        if (result_data.patient_id, result_data.issuer) != (target.patient_id, target.issuer):
            raise FhirError(422, "business-rule", f"result-patient has identifier {result_data.patient_id!r}, not the "
                            f"target's {target.patient_id!r}: the RIS keeps one identifier per patient; rename it "
                            "with an update (as ADT A47)", ("Parameters.parameter[result-patient]",))
    already = source.merged_into_fk == target.id
    savepoint = session.begin_nested() if preview else None
    ctx.origin("merge.prior_id", "Parameters.parameter[source-patient]")
    ctx.origin("patient.id", "Parameters.parameter[target-patient]")
    survivor = merge_patient(session, MergePatient(survivor=PatientData(patient_id=target.patient_id,
                                                                        issuer=target.issuer),
                                                   merged=PatientRef(source.patient_id, source.issuer)))
    if result_data is not None:
        survivor, _ = register_patient(session, result_data)
    if not already:
        flag_modified(survivor, "patient_id")   # the target changed: it now replaces the source (a new version)
    session.flush()
    rendered = render(survivor, ctx)
    if savepoint is not None:
        savepoint.rollback()
        session.expire_all()
    if preview:
        text = f"preview: Patient/{source.id} would be merged into Patient/{target.id}; nothing was changed"
    elif already:
        text = f"Patient/{source.id} was merged into Patient/{target.id} already; nothing changed"
    else:
        text = f"Patient/{source.id} merged into Patient/{target.id}"
    answer = {"resourceType": "Parameters", "parameter": [
        {"name": "input", "resource": parameters.model_dump(mode="json", by_alias=True, exclude_none=True)},
        {"name": "outcome", "resource": operation_outcome([issue("informational", text, severity="information")])},
        {"name": "result", "resource": rendered}]}
    return 200, answer, (None if preview else survivor)

