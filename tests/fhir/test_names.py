"""Person names: DICOM PN (PS3.5 6.2, HL7 XPN/XCN mapped onto it) <-> FHIR R4 HumanName, exactly, by one pair
of functions (interfaces.fhir.datatypes.person_name / human_names) used for patients and practitioners."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.humanname import HumanName

from app.errors import InvalidInput
from interfaces.fhir.datatypes import REPRESENTATION, human_names, name_text, person_name
from tests.fhir.conftest import fixture, outcome, worklist


@pytest.mark.parametrize("pn", [
    "TESTER^ANNA^M", "Testperson^Johanna^Maria^Dr.", "MINT_TEST", "DOE^^^^Jr.", "DOE^Anna Maria^B C^Prof. Dr.^MD",
    "Yamada^Tarou=山田^太郎=やまだ^たろう", "=山田^太郎", "张无忌", "",
])
def test_pn_to_human_names_and_back_is_exact(pn):
    names = [HumanName.model_validate(n) for n in human_names(pn)]
    assert person_name(names) == pn


def test_human_names_parts_and_groups():
    abc, ide, syl = human_names("Yamada^Tarou=山田^太郎=やまだ^たろう")
    assert abc == {"use": "official", "text": "Tarou Yamada", "family": "Yamada", "given": ["Tarou"]}
    assert ide["extension"] == [{"url": REPRESENTATION, "valueCode": "IDE"}] and ide["family"] == "山田"
    assert syl["extension"] == [{"url": REPRESENTATION, "valueCode": "SYL"}] and syl["given"] == ["たろう"]
    [name] = human_names("Doe^John^Paul Peter^Dr.^Jr.")
    assert name == {"use": "official", "text": "Dr. John Paul Peter Doe Jr.", "family": "Doe",
                    "given": ["John", "Paul", "Peter"], "prefix": ["Dr."], "suffix": ["Jr."]}
    assert name_text("ORDER^OLGA") == "OLGA ORDER"


def test_the_chosen_name_is_the_alphabetic_group():
    names = [HumanName.model_validate(n) for n in (
        {"use": "nickname", "given": ["Jo"]},
        {"extension": [{"url": REPRESENTATION, "valueCode": "IDE"}], "use": "official", "family": "山田"},
        {"use": "official", "family": "Yamada", "given": ["Tarou"]})]
    assert person_name(names) == "Yamada^Tarou=山田"


@pytest.mark.parametrize("part", ["A^B", "A=B", "A\\B"])
def test_a_pn_delimiter_in_a_name_part_is_refused(part):
    with pytest.raises(InvalidInput) as refused:
        person_name([HumanName.model_validate({"family": part})], "patient.name")
    assert refused.value.location == "patient.name" and repr(part) in refused.value.message


def test_patient_names_use_the_same_translation(fhir, read_factory):
    body = fixture("patient_doe.json")
    body["name"].append({"extension": [{"url": REPRESENTATION, "valueCode": "IDE"}], "family": "試験",
                         "given": ["花子"]})
    created = fhir.create(body)
    assert created["name"] == human_names("Testperson^Johanna^Maria^Dr.=試験^花子")
    bad = fixture("patient_doe.json")
    bad["identifier"][1]["value"] = "OTHER-1"
    bad["name"][1]["family"] = "Test^person"
    response = fhir.post("/fhir/Patient", bad)
    assert response.status_code == 422 and outcome(response)["expression"] == ["Patient.name[1]"]
    order = fixture("servicerequest_mr_knee.json", patient=created["id"])
    fhir.create(order)
    [item] = worklist(read_factory, "FHIRACC77")
    assert item.patient_name == "Testperson^Johanna^Maria^Dr.=試験^花子"
