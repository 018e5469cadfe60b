"""ImagingStudy (FHIR R4 imagingstudy.html) from the archive index, read and search only.

A study is what the archive received (C-STORE), not what a client posts: identifiers are the Study
Instance UID (system ``urn:dicom:uid``, value ``urn:oid:<uid>``) and the accession number typed ACSN
(R4 carries the accession in ImagingStudy.identifier); ``basedOn`` is the order it was linked to
(app.services.archive: by accession, then Study Instance UID). ``subject`` is the registered patient
with the study's Patient ID, else a logical reference by identifier (unmatched studies are shown,
never dropped).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import or_, select
from sqlalchemy.orm import selectinload

from app.models import Patient, Series, Study
from interfaces.fhir.datatypes import DCM, DICOM_UID, Context, site_instant, strip_oid, typed_identifier
from interfaces.fhir.kinds import Kind
from interfaces.fhir.patient import patient_reference
from interfaces.fhir.search import SearchParam, reference_key, reference_param, token


def _started(study: Study, ctx: Context) -> str | None:
    try:
        day = dt.datetime.strptime(study.study_date, "%Y%m%d")
    except ValueError:
        return None
    digits = study.study_time.split(".")[0]
    try:
        if len(digits) >= 2:
            day = day.replace(hour=int(digits[:2]), minute=int(digits[2:4] or 0), second=int(digits[4:6] or 0))
    except ValueError:
        pass
    return site_instant(day, ctx.site_tz)


def _patient_of(session, study: Study) -> Patient | None:
    """The registered patient of the study: same Patient ID (and issuer when the study has one; DICOM
    files rarely carry Issuer of Patient ID), only when exactly one patient fits."""
    if not study.patient_id:
        return None
    q = select(Patient).where(Patient.patient_id == study.patient_id)
    if study.issuer:
        q = q.where(Patient.issuer == study.issuer)
    found = session.scalars(q.limit(2)).all()
    return found[0] if len(found) == 1 else None


class ImagingStudyKind(Kind):
    name = "ImagingStudy"
    model = Study
    documentation = "Studies in the archive (read-only: studies arrive by DICOM C-STORE), linked to their orders."

    def query(self):
        return select(Study).options(selectinload(Study.series).selectinload(Series.instances))

    def own_params(self) -> list[SearchParam]:
        def patient(value, _m, ctx):
            keys = select(Patient.patient_id).where(Patient.id == reference_key(value, "Patient", ctx))
            return Study.patient_id.in_(keys.scalar_subquery())

        def identifier(value, _m, _ctx):
            system, code = token(value)
            if system == DICOM_UID:
                return Study.study_instance_uid == strip_oid(code or "")
            return or_(Study.accession_number == code, Study.study_instance_uid == strip_oid(code or ""))

        return [
            SearchParam("patient", "reference", "The patient (Patient/<id>), by Patient ID", patient,
                        definition="http://hl7.org/fhir/SearchParameter/clinical-patient"),
            SearchParam("identifier", "token", "Accession number or Study Instance UID (urn:dicom:uid|urn:oid:...)",
                        identifier, definition="http://hl7.org/fhir/SearchParameter/clinical-identifier"),
            reference_param("basedon", "ServiceRequest", Study.order_fk, "The order the study was linked to "
                            "(ServiceRequest/<id>)", "http://hl7.org/fhir/SearchParameter/ImagingStudy-basedon"),
        ]

    def render(self, study: Study, ctx: Context) -> dict:
        idents = [{"system": DICOM_UID, "value": f"urn:oid:{study.study_instance_uid}"}]
        if study.accession_number:
            idents.append(typed_identifier("ACSN", study.accession_number))
        patient = _patient_of(ctx.session, study) if ctx.session is not None else None
        if patient is not None:
            subject = patient_reference(patient)
        else:
            subject = {"identifier": {"value": study.patient_id or "unknown"}}
            if study.patient_name:
                subject["display"] = study.patient_name.replace("^", " ").strip()
        modalities = list(dict.fromkeys(s.modality for s in study.series if s.modality))
        resource = {"resourceType": "ImagingStudy", "id": str(study.id), "meta": self.meta(study),
                    "identifier": idents, "status": "available", "subject": subject,
                    "numberOfSeries": len(study.series),
                    "numberOfInstances": sum(len(s.instances) for s in study.series)}
        if modalities:
            resource["modality"] = [{"system": DCM, "code": m} for m in modalities]
        if study.order_fk is not None:
            resource["basedOn"] = [{"reference": f"ServiceRequest/{study.order_fk}"}]
        started = _started(study, ctx)
        if started:
            resource["started"] = started
        if study.description:
            resource["description"] = study.description
        series = []
        for s in study.series:
            item = {"uid": s.series_instance_uid, "modality": {"system": DCM, "code": s.modality or "OT"},
                    "numberOfInstances": len(s.instances)}
            if s.series_number.isdigit():
                item["number"] = int(s.series_number)
            if s.description:
                item["description"] = s.description
            item["instance"] = [{"uid": i.sop_instance_uid, "sopClass": {"system": "urn:ietf:rfc:3986",
                                                                         "code": f"urn:oid:{i.sop_class_uid}"},
                                 **({"number": int(i.instance_number)} if i.instance_number.isdigit() else {})}
                                for i in s.instances]
            series.append(item)
        if series:
            resource["series"] = series
        return resource
