"""Fixtures of the web pages: the application of the composition root, one user per role, sign-in
through the real login form (with its CSRF token), and images filed in the archive as C-STORE files them."""

from __future__ import annotations

import dataclasses
import re

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from app.db import unit_of_work
from app.models import Role
from app.services import auth
from app.services.archive import index_instance
from app.storage import ArchiveStore
from interfaces.dicom.storage import instance_data
from interfaces.hl7.intake import HL7Intake
from interfaces.runtime import build_wsgi_app
from mappings.profile import ProfileSet

PASSWORD = "a long enough password"
USERS = {role: f"{role.value}-user" for role in Role}


def order_message(control_id: str = "WEB-1", accession: str = "WEB-ACC", name: str = "WEBTEST^WILMA",
                  patient_id: str = "WEB-PAT", start: str = "20261204083000", modality: str = "CT") -> bytes:
    return (
        f"MSH|^~\\&|HIS|HOSP|RIS|RAD|20261203120000||ORM^O01|{control_id}|P|2.3.1\r"
        f"PID|||{patient_id}^^^HOSP||{name}||19700101|F\r"
        f"ORC|NW|{accession}-PL^HIS|||||^^^{start}\r"
        f"OBR|1|{accession}-PL^HIS||CTCH^CT chest^L||||||||||||||{accession}|{accession}-RP|{accession}-SPS"
        f"||||{modality}\r"
    ).encode("utf-8")


@pytest.fixture
def web_settings(settings):
    return settings


@pytest.fixture
def app(web_settings, session_factory, read_factory):
    app = build_wsgi_app(web_settings, session_factory, read_factory)
    app.testing = True
    return app


@pytest.fixture
def users(session_factory):
    with unit_of_work(session_factory) as db:
        for role, name in USERS.items():
            auth.add_user(db, name, PASSWORD, role)
    return USERS


@pytest.fixture
def intake(web_settings, session_factory):
    return HL7Intake(web_settings, session_factory, ProfileSet(web_settings.mappings_path).get("default"))


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def sign_in(client, username: str, password: str = PASSWORD):
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token})


@pytest.fixture
def client_as(app, users):
    """A test client signed in as the user of ``role``."""

    def make(role: Role):
        client = app.test_client()
        response = sign_in(client, users[role])
        assert response.status_code == 302, response.text
        return client

    return make


def file_image(settings, session_factory, *, name: str = "CT_small.dcm", accession: str = "", patient_id: str = "",
               study_uid: str | None = None) -> pydicom.Dataset:
    """Write a test image of pydicom's into the archive and index it, as the C-STORE handler does."""
    ds = pydicom.dcmread(get_testdata_file(name))
    if accession:
        ds.AccessionNumber = accession
    if patient_id:
        ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    store = ArchiveStore(settings.archive_path)
    relative = store.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    path = store.absolute(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    data = dataclasses.replace(instance_data(ds), path=relative, size=path.stat().st_size)
    with unit_of_work(session_factory) as db:
        index_instance(db, data)
    return ds
