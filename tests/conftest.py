"""Shared fixtures: a fresh database per test (SQLite by default, PostgreSQL when
RIS_TEST_DATABASE_URL is set, as CI does), settings on a temporary data folder, sessions."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from app.db import make_engine, make_session_factory, upgrade
from config.settings import load_settings


@pytest.fixture
def db_url(tmp_path):
    url = os.environ.get("RIS_TEST_DATABASE_URL", "")
    if not url:
        return f"sqlite:///{tmp_path / 'ris.db'}"
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine):
    return make_session_factory(engine)


@pytest.fixture
def read_factory(engine):
    return make_session_factory(engine, read_only=True)


@pytest.fixture
def settings(tmp_path, db_url):
    return load_settings(env={}, data_dir=tmp_path, database_url=db_url, host="127.0.0.1",
                         mllp_port=0, dicom_port=0, http_port=0, site_timezone="Europe/Berlin")


@pytest.fixture(params=["group-commit", "own-transaction"])
def intake(request, settings, session_factory):
    """The HL7 intake with the default profile, in both ways a message is committed: in a group with the
    messages of other connections (the engine's default), or in a transaction of its own."""
    from app.group_commit import GroupCommitter
    from interfaces.hl7.intake import HL7Intake
    from mappings.profile import ProfileSet

    committer = GroupCommitter(session_factory).start() if request.param == "group-commit" else None
    yield HL7Intake(settings, session_factory, ProfileSet(settings.mappings_path).get("default"), committer)
    if committer is not None:
        committer.stop()
