"""DiagnosticReport (FHIR R4 diagnosticreport.html) = a report of the core (app.models.Report), read and search.

Reports arrive by HL7 ORU^R01 (HL7 v2.5.1 7.4.1; app.services.reports) or are written and signed in the engine;
both are served, one DiagnosticReport per report (app.queries.reports has the read rules):

- ``basedOn`` the ServiceRequest of its requested procedure (the one it names, else the one of its order with its
  Study Instance UID, else the order's first); a report for an order unknown here names the order by identifier
  (accession typed ACSN, else placer number typed PLAC) - kept, never dropped;
- ``subject`` the order's Patient; ``imagingStudy`` the archived study with its Study Instance UID;
- ``category`` Radiology (v2-0074 RAD); ``code`` the procedure's code, else LOINC 18748-4 "Diagnostic imaging study";
- ``status``: a received report from its result status (OBR-25, HL7 table 0123, as the HL7 v2-to-FHIR mapping
  gives: O/I registered, S/A/R partial, P preliminary, C corrected, F final, X cancelled; other unknown). A report
  written here: DRAFT registered (its text is not released: no presentedForm), PRELIMINARY preliminary, FINAL
  final, a signed addendum appended, a signed amendment corrected (it went to the HIS as correction C); a report
  replaced by an amendment is entered-in-error (R4 report-status: "withdrawn following a previous final
  release"; R4 has no "superseded"), so that only its replacement reads as current;
- ``effectiveDateTime`` when observed (OBR-7, site time), ``issued`` when signed or received (UTC);
- ``resultsInterpreter`` the signer (display); ``presentedForm`` the report text (text/plain, UTF-8).
"""

from __future__ import annotations

import base64

from sqlalchemy import false, or_, select
from sqlalchemy.orm import selectinload

from app.models import Order, Report, ReportState, RequestedProcedure, Study
from app.queries.reports import PATIENT_KEY, PROCEDURE_KEY, patient_key, procedure_of, released
from interfaces.fhir.datatypes import Context, scheme_of, site_instant, system_of, typed_identifier, utc_instant
from interfaces.fhir.kinds import Kind
from interfaces.fhir.search import SearchParam, date_clause, reference_param, token

ORU_STATUS = {"O": "registered", "I": "registered", "S": "partial", "A": "partial", "R": "partial",
              "P": "preliminary", "C": "corrected", "F": "final", "X": "cancelled"}
RADIOLOGY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                         "display": "Radiology"}]}
IMAGING_REPORT = {"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}


def status_of(report: Report) -> str:
    if report.state is None:
        return ORU_STATUS.get((report.status or "").strip().upper()[:1], "unknown")
    if report.state is ReportState.DRAFT:
        return "registered"
    if report.state is ReportState.PRELIMINARY:
        return "preliminary"
    if report.state is ReportState.AMENDED:
        return "entered-in-error"
    return {"addendum": "appended", "amendment": "corrected"}.get(report.kind, "final")


def _statuses(code: str) -> list:
    """The clause of one status code (the reverse of :func:`status_of`)."""
    oru = [k for k, v in ORU_STATUS.items() if v == code]
    clauses = [Report.state.is_(None) & Report.status.in_(oru)] if oru else []
    if code == "unknown":
        clauses.append(Report.state.is_(None) & Report.status.notin_(list(ORU_STATUS)))
    engine = {"registered": [Report.state == ReportState.DRAFT],
              "preliminary": [Report.state == ReportState.PRELIMINARY],
              "entered-in-error": [Report.state == ReportState.AMENDED],
              "final": [(Report.state == ReportState.FINAL) & Report.kind.notin_(("addendum", "amendment"))],
              "appended": [(Report.state == ReportState.FINAL) & (Report.kind == "addendum")],
              "corrected": [(Report.state == ReportState.FINAL) & (Report.kind == "amendment")]}
    clauses += engine.get(code, [])
    return clauses


class DiagnosticReportKind(Kind):
    name = "DiagnosticReport"
    model = Report
    documentation = ("Reports for the orders (received by HL7 ORU^R01 or written here), read-only; a draft's text is "
                     "not released.")

    def query(self):
        return select(Report).options(
            selectinload(Report.order).selectinload(Order.procedures),
            selectinload(Report.procedure).selectinload(RequestedProcedure.order))

    def updated(self, report):
        return report.updated_at or report.created_at

    def updated_column(self):
        return Report.created_at

    def own_params(self) -> list[SearchParam]:
        def status(value, _m, _ctx):
            clauses = _statuses(token(value)[1] or "")
            return or_(*clauses) if clauses else false()

        def code(value, _m, _ctx):
            system, value_ = token(value)
            clause = RequestedProcedure.code_value == value_
            if system:
                clause = clause & (RequestedProcedure.code_scheme == scheme_of(system))
            procedures = select(RequestedProcedure.id).where(clause)
            by_procedure = PROCEDURE_KEY.in_(procedures)
            if value_ == IMAGING_REPORT["code"] and system in (None, IMAGING_REPORT["system"]):
                return or_(by_procedure, PROCEDURE_KEY.is_(None))
            return by_procedure

        def based_on(ids):
            orders = select(RequestedProcedure.order_fk).where(RequestedProcedure.id.in_(ids))
            return or_(Report.procedure_fk.in_(ids), Report.order_fk.in_(orders)) & PROCEDURE_KEY.in_(ids)

        def patients(ids):
            return or_(Report.order_fk.in_(select(Order.id).where(Order.patient_fk.in_(ids))),
                       Report.procedure_fk.in_(select(RequestedProcedure.id).join(Order).where(
                           Order.patient_fk.in_(ids))))

        return [
            reference_param("based-on", "ServiceRequest", PROCEDURE_KEY, "The requested procedure "
                            "(ServiceRequest/<id>)", "http://hl7.org/fhir/SearchParameter/DiagnosticReport-based-on",
                            keys=based_on),
            reference_param("patient", "Patient", PATIENT_KEY, "The patient of the order (Patient/<id>)",
                            "http://hl7.org/fhir/SearchParameter/clinical-patient", keys=patients),
            reference_param("subject", "Patient", PATIENT_KEY, "The patient of the order (Patient/<id>)",
                            "http://hl7.org/fhir/SearchParameter/DiagnosticReport-subject", keys=patients),
            SearchParam("status", "token", "registered, partial, preliminary, final, appended, corrected, cancelled, "
                        "entered-in-error, unknown", status,
                        definition="http://hl7.org/fhir/SearchParameter/DiagnosticReport-status"),
            SearchParam("code", "token", "The procedure's code (system|code); LOINC 18748-4 also finds reports "
                        "without a known procedure", code,
                        definition="http://hl7.org/fhir/SearchParameter/clinical-code"),
            SearchParam("date", "date", "When observed (effectiveDateTime, site time unless an offset is given)",
                        lambda v, _m, ctx: date_clause(Report.observed_at, v, utc=False, site_tz=ctx.site_tz),
                        definition="http://hl7.org/fhir/SearchParameter/clinical-date", sort=Report.observed_at),
            SearchParam("issued", "date", "When signed or received (UTC unless an offset is given)",
                        lambda v, _m, _c: date_clause(Report.created_at, v, utc=True),
                        definition="http://hl7.org/fhir/SearchParameter/DiagnosticReport-issued",
                        sort=Report.created_at),
        ]

    def render(self, report: Report, ctx: Context) -> dict:
        resource = {"resourceType": "DiagnosticReport", "id": str(report.id), "meta": self.meta(report),
                    "status": status_of(report), "category": [RADIOLOGY]}
        proc = procedure_of(report)
        if proc is not None:
            resource["basedOn"] = [{"reference": f"ServiceRequest/{proc.id}"}]
        elif report.accession_number or report.placer_order_number:
            ident = (typed_identifier("ACSN", report.accession_number) if report.accession_number
                     else typed_identifier("PLAC", report.placer_order_number))
            resource["basedOn"] = [{"type": "ServiceRequest", "identifier": ident,
                                    "display": "an order not known here"}]
        code: dict = {"coding": [dict(IMAGING_REPORT)]}
        if proc is not None and proc.code_value:
            coding = {"code": proc.code_value}
            if proc.code_scheme:
                coding["system"] = system_of(proc.code_scheme)
            if proc.code_meaning:
                coding["display"] = proc.code_meaning
            code = {"coding": [coding]}
        if proc is not None and (proc.description or proc.code_meaning):
            code["text"] = proc.description or proc.code_meaning
        resource["code"] = code
        patient = patient_key(report)
        if patient is not None:
            resource["subject"] = {"reference": f"Patient/{patient}"}
        if report.observed_at is not None:
            resource["effectiveDateTime"] = site_instant(report.observed_at, ctx.site_tz)
        resource["issued"] = utc_instant(report.signed_at or report.created_at)
        if report.signed_by or report.author:
            resource["resultsInterpreter"] = [{"display": report.signed_by or report.author}]
        uid = report.study_instance_uid or (proc.study_instance_uid if proc is not None else "")
        study = (ctx.session.scalar(select(Study.id).where(Study.study_instance_uid == uid))
                 if uid and ctx.session is not None else None)
        if study is not None:
            resource["imagingStudy"] = [{"reference": f"ImagingStudy/{study}"}]
        if report.text and released(report):
            resource["presentedForm"] = [{"contentType": "text/plain; charset=utf-8",
                                          "data": base64.b64encode(report.text.encode("utf-8")).decode("ascii")}]
        return resource
