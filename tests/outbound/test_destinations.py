"""Outbound destinations from settings (config/outbound.py), RIS_ environment overrides, and routing."""

from __future__ import annotations

import dataclasses

import pytest

from app.db import unit_of_work
from app.services import outbox
from config.outbound import Destination
from config.settings import SettingsError, load_settings
from interfaces.outbound.dispatcher import build_dispatcher, route_destinations


def test_destinations_from_the_environment():
    settings = load_settings(env={"RIS_OUTBOUND_DESTINATIONS": "his=10.0.0.5:2575;message=OMG^O19;application=HISAPP,"
                                  "lab=[::1]:2600;enabled=false;facility=LAB;kinds=order.status+report",
                                  "RIS_OUTBOUND_ORDER_MESSAGE": "ORM^O01"})
    assert settings.destinations == (
        Destination("his", "10.0.0.5", 2575, message="OMG^O19", application="HISAPP"),
        Destination("lab", "::1", 2600, enabled=False, facility="LAB", kinds=("order.status", "report")),
    )


def test_his_mllp_shorthand_and_default_message():
    settings = load_settings(env={"RIS_HIS_MLLP": "his.example:2575", "RIS_OUTBOUND_ORDER_MESSAGE": "OMG^O19"})
    assert settings.destinations == (Destination("his", "his.example", 2575, message="OMG^O19"),)
    assert load_settings(env={}).destinations == ()


@pytest.mark.parametrize("spec, error", [
    ("his", "not name=host:port"),
    ("his=host", "not host:port"),
    ("his=host:70000", "not host:port"),
    ("his=host:1;colour=red", "unknown option"),
    ("his=host:1;enabled=maybe", "not true or false"),
    ("his=host:1;message=ORU^R01", "message='ORU^R01'"),
    ("his=host:1,his=host:2", "more than once"),
])
def test_unusable_destinations_are_settings_errors_naming_the_variable(spec, error):
    with pytest.raises(SettingsError, match="RIS_OUTBOUND_DESTINATIONS") as info:
        load_settings(env={"RIS_OUTBOUND_DESTINATIONS": spec}).destinations
    assert error in str(info.value)


def test_disabled_destinations_get_no_rows_and_no_channel(session_factory, settings):
    configured = dataclasses.replace(settings, outbound_destinations=("his=127.0.0.1:1", "old=127.0.0.1:2;enabled=no"))
    route_destinations(configured, session_factory)
    with unit_of_work(session_factory) as session:
        assert outbox.destinations_for(session, outbox.ORDER_STATUS) == ("his",)
    dispatcher = build_dispatcher(configured, session_factory)
    assert [c.name for c in dispatcher.channels] == ["his"]
    assert build_dispatcher(settings, session_factory) is None
