"""DiagnosticReport over FHIR R4: the reports received by ORU^R01 and those written in the engine (app.models.Report),
read and searched by based-on, patient/subject, status, code and date."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.models import Order, Report, ReportState
from tests.fhir.conftest import matches, outcome
from tests.fhir.test_service_request import ORM
from tests.test_intake import hl7, seg

ORU = hl7(
    "MSH|^~\\&|RIS2|HOSP|RIS|RAD|20261208120000||ORU^R01|ORU-1|P|2.5.1",
    "PID|||SRPAT^^^HOSP||HLSEVEN^HANNA||19700101|F",
    seg("OBR", {1: "1", 2: "HL7-PL^HIS", 4: "24877-3^MR Knee^LN", 7: "20261207091500", 18: "HL7ACC", 25: "F"}),
    "OBX|1|TX|59776-5^Findings^LN||Meniscus tear, medial.||||||F",
    "OBX|2|TX|19005-8^Impression^LN||Grade 2 tear.||||||F",
)


def text_of(report: dict) -> str:
    return base64.b64decode(report["presentedForm"][0]["data"]).decode("utf-8")


@pytest.fixture
def reported(fhir, intake):
    """An HL7 order and its ORU report: (ServiceRequest, DiagnosticReport)."""
    assert b"MSA|AA" in intake.handle(ORM)
    assert b"MSA|AA" in intake.handle(ORU)
    [sr] = matches(fhir.search("/fhir/ServiceRequest?identifier=HL7ACC"))
    [report] = matches(fhir.search(f"/fhir/DiagnosticReport?based-on=ServiceRequest/{sr['id']}"))
    return sr, report


def test_a_report_received_by_oru_is_a_diagnostic_report(fhir, reported):
    sr, report = reported
    assert report["status"] == "final" and report["subject"] == {"reference": sr["subject"]["reference"]}
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    assert report["code"]["coding"] == [{"code": "24877-3", "system": "http://loinc.org", "display": "MR Knee"}]
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["effectiveDateTime"] == "2026-12-07T09:15:00+01:00"
    assert text_of(report) == "Meniscus tear, medial.\nGrade 2 tear."
    assert fhir.get(f"/fhir/DiagnosticReport/{report['id']}").json == report
    refused = fhir.post("/fhir/DiagnosticReport", {"resourceType": "DiagnosticReport", "status": "final",
                                                   "code": {"text": "x"}})
    assert refused.status_code == 405 and "create" in outcome(refused)["diagnostics"]


def test_search_by_patient_status_code_and_date(fhir, reported):
    sr, report = reported
    me = [report["id"]]

    def ids(query):
        return [r["id"] for r in matches(fhir.search(f"/fhir/DiagnosticReport?{query}"))]

    assert ids(f"patient={sr['subject']['reference']}") == me == ids(f"subject={sr['subject']['reference']}")
    assert ids("status=final") == me and ids("status=preliminary") == []
    assert ids("code=http://loinc.org|24877-3") == me and ids("code=http://loinc.org|0000-0") == []
    assert ids("date=2026-12-07") == me and ids("date=lt2026-12-07T09:00:00%2B01:00") == []
    assert ids("based-on=ServiceRequest/999999") == [] and ids("patient=Patient/999999") == []
    assert ids("issued=ge2020-01-01&_sort=-date") == me
    both = fhir.search(f"/fhir/ServiceRequest?_id={sr['id']}&_revinclude=DiagnosticReport:based-on")
    assert [(e["search"]["mode"], e["resource"]["resourceType"]) for e in both["entry"]] == [
        ("match", "ServiceRequest"), ("include", "DiagnosticReport")]
    included = fhir.search(f"/fhir/DiagnosticReport?_id={report['id']}&_include=DiagnosticReport:based-on"
                           "&_include=DiagnosticReport:patient")
    assert sorted(e["resource"]["resourceType"] for e in included["entry"]) == [
        "DiagnosticReport", "Patient", "ServiceRequest"]


def test_reports_written_in_the_engine_by_state(fhir, reported, session_factory):
    sr, _ = reported
    with unit_of_work(session_factory) as session:
        order = session.scalars(select(Order).where(Order.accession_number == "HL7ACC")).one()
        proc = order.procedures[0]
        now = dt.datetime(2026, 12, 8, 10, 0)

        def written(state, kind="report", text="text", parent=None):
            report = Report(order=order, procedure=proc, accession_number=order.accession_number, state=state,
                            kind=kind, text=text, author="rad1", signed_by="" if state is ReportState.DRAFT
                            else "Dr Rad", signed_at=None if state is ReportState.DRAFT else now, parent=parent)
            session.add(report)
            session.flush()
            return report.id

        draft = written(ReportState.DRAFT, text="unsigned words")
        replaced = written(ReportState.AMENDED, text="first")
        amendment = written(ReportState.FINAL, "amendment", "second", parent=session.get(Report, replaced))
        addendum = written(ReportState.FINAL, "addendum", "more", parent=session.get(Report, amendment))
        prelim = written(ReportState.PRELIMINARY, text="prelim")
    shown = {r["id"]: r for r in matches(fhir.search(f"/fhir/DiagnosticReport?based-on=ServiceRequest/{sr['id']}"
                                                     "&_count=50"))}
    assert {k: shown[str(v)]["status"] for k, v in (("draft", draft), ("replaced", replaced),
                                                   ("amendment", amendment), ("addendum", addendum),
                                                   ("prelim", prelim))} == {
        "draft": "registered", "replaced": "entered-in-error", "amendment": "corrected", "addendum": "appended",
        "prelim": "preliminary"}
    assert "presentedForm" not in shown[str(draft)]   # a draft's text is not released
    assert text_of(shown[str(amendment)]) == "second"
    assert shown[str(amendment)]["resultsInterpreter"] == [{"display": "Dr Rad"}]
    assert shown[str(amendment)]["issued"] == "2026-12-08T10:00:00.000Z"
    for status, wanted in (("registered", draft), ("corrected", amendment), ("appended", addendum),
                           ("entered-in-error", replaced)):
        found = [r["id"] for r in matches(fhir.search(f"/fhir/DiagnosticReport?status={status}"))]
        assert found == [str(wanted)], status


def test_a_report_for_an_unknown_order_is_kept_and_shown(fhir, intake):
    assert b"MSA|AA" in intake.handle(ORU)
    [report] = matches(fhir.search("/fhir/DiagnosticReport"))
    assert report["basedOn"] == [{"type": "ServiceRequest", "display": "an order not known here", "identifier": {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
        "value": "HL7ACC"}}]
    assert "subject" not in report and report["code"]["coding"][0]["code"] == "18748-4"
    assert [r["id"] for r in matches(fhir.search("/fhir/DiagnosticReport?code=http://loinc.org|18748-4"))] == \
        [report["id"]]
