"""ImagingStudy (FHIR R4 imagingstudy.html) from the archive index, read and search only.

A study is what the archive received (C-STORE), not what a client posts: identifiers are the Study
Instance UID (system ``urn:dicom:uid``, value ``urn:oid:<uid>``) and the accession number typed ACSN
(R4 carries the accession in ImagingStudy.identifier); ``basedOn`` is the requested procedure
(ServiceRequest) of the order it was linked to (app.services.archive: by accession, then Study Instance
UID): the one with its Study Instance UID, else the order's first. ``subject`` is the registered patient
with the study's Patient ID, else a logical reference by identifier (unmatched studies are shown,
never dropped).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import selectinload

from app.models import Order, Patient, RequestedProcedure, Series, Study
from interfaces.fhir.datatypes import DCM, DICOM_UID, Context, name_text, site_instant, strip_oid, typed_identifier
from interfaces.fhir.kinds import Kind
from interfaces.fhir.patient import patient_reference
from interfaces.fhir.search import SearchParam, compare, date_bounds, reference_param, token
from interfaces.fhir.service_request import first_procedure_key, procedure_for_study


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


# SQL: the key of the study's registered patient (_patient_of) and of the requested procedure it fulfils
# (interfaces.fhir.service_request.procedure_for_study), for search, _include and _revinclude.
PATIENT_KEY = (select(case((func.count(Patient.id) == 1, func.min(Patient.id))))
               .where(Patient.patient_id == Study.patient_id, or_(Study.issuer == "", Patient.issuer == Study.issuer))
               .correlate_except(Patient).scalar_subquery())
STARTED_KEY = Study.study_date + func.substr(Study.study_time + "000000", 1, 6)   # YYYYMMDDHHMMSS
PROCEDURE_KEY = func.coalesce(
    select(func.min(RequestedProcedure.id)).where(RequestedProcedure.order_fk == Study.order_fk,
                                                  RequestedProcedure.study_instance_uid == Study.study_instance_uid)
    .correlate_except(RequestedProcedure).scalar_subquery(),
    first_procedure_key(Study.order_fk))


class ImagingStudyKind(Kind):
    name = "ImagingStudy"
    model = Study
    documentation = "Studies in the archive (read-only: studies arrive by DICOM C-STORE), linked to their orders."

    def query(self):
        return select(Study).options(selectinload(Study.series).selectinload(Series.instances),
                                     selectinload(Study.order).selectinload(Order.procedures))

    def own_params(self) -> list[SearchParam]:
        def identifier(value, _m, _ctx):
            system, code = token(value)
            if system == DICOM_UID:
                return Study.study_instance_uid == strip_oid(code or "")
            return or_(Study.accession_number == code, Study.study_instance_uid == strip_oid(code or ""))

        def started(value, _m, ctx):
            """Study Date (DA YYYYMMDD) and Time (TM HHMMSS.FFFFFF, any precision) compared as one text key, with
            the day range first so the (study_date, study_time) index narrows it (PS3.5 6.2 DA, TM)."""
            prefix, start, end = date_bounds(value, utc=False, site_tz=ctx.site_tz)
            low, high = start.strftime("%Y%m%d%H%M%S"), end.strftime("%Y%m%d%H%M%S")
            day = {"eq": and_(Study.study_date >= low[:8], Study.study_date <= high[:8]),
                   "ge": Study.study_date >= low[:8], "gt": Study.study_date >= high[:8],
                   "le": Study.study_date <= high[:8], "lt": Study.study_date <= low[:8]}.get(prefix)
            clause = and_(Study.study_date != "", compare(STARTED_KEY, prefix, low, high))
            return and_(day, clause) if day is not None else clause

        def patients(ids):   # the index on Patient ID first, then the exact rule of _patient_of
            return and_(Study.patient_id.in_(select(Patient.patient_id).where(Patient.id.in_(ids))),
                        PATIENT_KEY.in_(ids))

        def orders(ids):
            return and_(Study.order_fk.in_(select(RequestedProcedure.order_fk).where(RequestedProcedure.id.in_(ids))),
                        PROCEDURE_KEY.in_(ids))

        return [
            reference_param("patient", "Patient", PATIENT_KEY, "The patient (Patient/<id>): the one registered "
                            "patient with the study's Patient ID (and issuer, when the study has one)",
                            "http://hl7.org/fhir/SearchParameter/clinical-patient", keys=patients),
            SearchParam("identifier", "token", "Accession number or Study Instance UID (urn:dicom:uid|urn:oid:...)",
                        identifier, definition="http://hl7.org/fhir/SearchParameter/clinical-identifier"),
            SearchParam("started", "date", "When the study started (DICOM Study Date and Time, site time unless "
                        "an offset is given)", started, definition="http://hl7.org/fhir/SearchParameter/"
                        "ImagingStudy-started", sort=STARTED_KEY),
            reference_param("basedon", "ServiceRequest", PROCEDURE_KEY, "The requested procedure the study was "
                            "linked to (ServiceRequest/<id>)", "http://hl7.org/fhir/SearchParameter/ImagingStudy-basedon",
                            keys=orders),
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
                subject["display"] = name_text(study.patient_name)
        modalities = list(dict.fromkeys(s.modality for s in study.series if s.modality))
        resource = {"resourceType": "ImagingStudy", "id": str(study.id), "meta": self.meta(study),
                    "identifier": idents, "status": "available", "subject": subject,
                    "numberOfSeries": len(study.series),
                    "numberOfInstances": sum(len(s.instances) for s in study.series)}
        if modalities:
            resource["modality"] = [{"system": DCM, "code": m} for m in modalities]
        proc = procedure_for_study(study.order, study.study_instance_uid)
        if proc is not None:
            resource["basedOn"] = [{"reference": f"ServiceRequest/{proc.id}"}]
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
