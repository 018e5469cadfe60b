"""Search across types: _sort, date parameters of Task and ImagingStudy, _include/_revinclude between Patient and
ImagingStudy (FHIR R4 search.html 3.1.1.5.14, 3.1.1.5.6, 3.1.1.5.4)."""

from __future__ import annotations

import pytest

from app.commands import InstanceData
from app.db import unit_of_work
from app.services.archive import index_instance
from tests.fhir.conftest import ACSN, fixture, matches, outcome


def order(fhir, patient: dict, accession: str, when: str) -> dict:
    body = fixture("servicerequest_mr_knee.json", patient=patient["id"])
    body["identifier"] = [{"type": {"coding": [ACSN]}, "value": accession}]
    body["occurrenceDateTime"] = when
    return fhir.create(body)


def study(session_factory, uid: str, patient_id: str, date: str, time: str, accession: str = "") -> None:
    with unit_of_work(session_factory) as session:
        index_instance(session, InstanceData(
            study_instance_uid=uid, series_instance_uid=uid + ".1", sop_instance_uid=uid + ".1.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", path="/nowhere", size=0, patient_id=patient_id,
            accession_number=accession, modality="CT", study_date=date, study_time=time))


@pytest.fixture
def three(fhir, patient):
    """Orders at 09:00, 07:00 and 08:00 of one day (created in that order)."""
    return [order(fhir, patient, f"SORT{n}", f"2026-12-07T0{h}:00:00+01:00") for n, h in ((1, 9), (2, 7), (3, 8))]


def ids(fhir, query: str, **kw) -> list[str]:
    return [r["id"] for r in matches(fhir.search(query, **kw))]


def test_sort_by_date_and_common_parameters(fhir, three):
    first, second, third = (r["id"] for r in three)
    assert ids(fhir, "/fhir/ServiceRequest?_sort=occurrence") == [second, third, first]
    assert ids(fhir, "/fhir/ServiceRequest?_sort=-occurrence") == [first, third, second]
    assert ids(fhir, "/fhir/ServiceRequest?_sort=-_id") == [third, second, first]
    assert ids(fhir, "/fhir/Task?_sort=-period") == ids(fhir, "/fhir/Task?_sort=period")[::-1]
    paged = fhir.search("/fhir/ServiceRequest?_sort=occurrence&_count=2")
    assert [r["id"] for r in matches(paged)] == [second, third]
    following = next(link["url"] for link in paged["link"] if link["relation"] == "next")
    assert "_sort=occurrence" in following
    assert [r["id"] for r in matches(fhir.search(following.replace("http://localhost", "")))] == [first]


def test_an_unknown_sort_is_refused_strictly_and_reported_leniently(fhir, three):
    strict = fhir.get("/fhir/ServiceRequest?_sort=priority", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert "cannot sort by 'priority'" in outcome(strict)["diagnostics"] and "occurrence" in outcome(strict)["diagnostics"]
    lenient = fhir.search("/fhir/ServiceRequest?_sort=priority")
    assert [e["search"]["mode"] for e in lenient["entry"]] == ["match", "match", "match", "outcome"]


def test_task_date_search_by_period(fhir, three):
    tasks = {t["executionPeriod"]["start"]: t["id"] for t in matches(fhir.search("/fhir/Task"))}
    seven = tasks["2026-12-07T07:00:00+01:00"]
    assert ids(fhir, "/fhir/Task?period=2026-12-07T07:00") == [seven]
    assert ids(fhir, "/fhir/Task?period=lt2026-12-07T07:30:00%2B01:00") == [seven]
    assert len(ids(fhir, "/fhir/Task?period=2026-12-07")) == 3 and ids(fhir, "/fhir/Task?period=2026-12-08") == []
    assert len(ids(fhir, "/fhir/Task?authored-on=ge2020-01-01&modified=ge2020-01-01")) == 3


def test_imaging_study_date_search_by_started(fhir, session_factory):
    study(session_factory, "1.2.826.0.1.3680043.10.1356.71.1", "P1", "20261207", "093000.25")
    study(session_factory, "1.2.826.0.1.3680043.10.1356.71.2", "P1", "20261207", "1415")
    study(session_factory, "1.2.826.0.1.3680043.10.1356.71.3", "P1", "20261208", "")
    morning, afternoon, next_day = (r["id"] for r in matches(fhir.search("/fhir/ImagingStudy?_sort=_id")))
    assert ids(fhir, "/fhir/ImagingStudy?started=2026-12-07") == [morning, afternoon]
    assert ids(fhir, "/fhir/ImagingStudy?started=2026-12-07T09:30") == [morning]
    assert ids(fhir, "/fhir/ImagingStudy?started=ge2026-12-07T12:00") == [afternoon, next_day]
    assert ids(fhir, "/fhir/ImagingStudy?started=lt2026-12-07T13:16:00Z") == [morning, afternoon]  # 14:16 CET
    assert ids(fhir, "/fhir/ImagingStudy?started=lt2026-12-07T13:15:00Z") == [morning]
    assert ids(fhir, "/fhir/ImagingStudy?started=gt2026-12-07") == [next_day]
    assert ids(fhir, "/fhir/ImagingStudy?_sort=-started") == [next_day, afternoon, morning]


def test_patient_and_imaging_study_include_each_other(fhir, patient, session_factory):
    mine = patient["identifier"][0]["value"]
    study(session_factory, "1.2.826.0.1.3680043.10.1356.72.1", mine, "20261207", "0900")
    study(session_factory, "1.2.826.0.1.3680043.10.1356.72.2", "SOMEONE-ELSE", "20261207", "0900")
    bundle = fhir.search(f"/fhir/Patient?_id={patient['id']}&_revinclude=ImagingStudy:patient")
    found = [(e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle["entry"]]
    assert found == [("match", "Patient"), ("include", "ImagingStudy")]
    assert bundle["entry"][1]["resource"]["identifier"][0]["value"] == "urn:oid:1.2.826.0.1.3680043.10.1356.72.1"
    bundle = fhir.search("/fhir/ImagingStudy?_include=ImagingStudy:patient")
    found = [(e["search"]["mode"], e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]]
    assert [f[:2] for f in found] == [("match", "ImagingStudy"), ("match", "ImagingStudy"), ("include", "Patient")]
    assert found[2][2] == patient["id"]
    assert ids(fhir, f"/fhir/ImagingStudy?patient=Patient/{patient['id']}") == [bundle["entry"][0]["resource"]["id"]]
