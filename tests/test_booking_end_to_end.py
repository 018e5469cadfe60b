"""Booking end to end (issue 7, "an order without a time gets the next free slot that fits"): the whole engine with a
room from the resources data folder and a sender whose orders carry no time. An ORM over MLLP is booked into the
room's next free slot; the modality sees the step in its worklist (DCMTK findscu) at the room's AE title and the
booked time; the room's day (JSON API) shows the booking; the next order gets the slot after it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import urllib.request
from pathlib import Path
from zoneinfo import ZoneInfo

from interfaces.mllp.client import MLLPClient
from interfaces.runtime import Engine
from tests.dicom.conftest import findscu

REPO_MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"
PROFILE = """name: booker
description: a sender whose orders leave the time to the department (no TQ1, no ORC-7)
extends: default
senders:
  - BOOKER^HOSP
step:
  scheduled_start: {from: [TQ1-7, ORC-7.4], as: datetime, otherwise: null}
"""
ROOMS = """resources:
  - name: CT-BOOK
    ae_title: CT_BOOK
    station_name: CTBOOK
    modalities: [CT]
    opening_hours: {mon: [["00:00", "24:00"]], tue: [["00:00", "24:00"]], wed: [["00:00", "24:00"]],
                    thu: [["00:00", "24:00"]], fri: [["00:00", "24:00"]], sat: [["00:00", "24:00"]],
                    sun: [["00:00", "24:00"]]}
    default_minutes: 15
    slot_minutes: {CTCH: 25}
"""
ZONE = "Europe/Berlin"


def _order(n: int) -> bytes:
    return (f"MSH|^~\\&|BOOKER|HOSP|RIS|RAD|20261203120000||ORM^O01|BOOK-{n}|P|2.3.1\r"
            f"PID|||BOOK-PAT-{n}^^^HOSP||BOOKER^BEA||19800101|F\r"
            f"ORC|NW|BOOK-PL-{n}^HIS\r"
            f"OBR|1|BOOK-PL-{n}^HIS||CTCH^CT chest^L||||||||||||||BOOK-ACC-{n}|BOOK-RP-{n}|BOOK-SPS-{n}||||CT\r"
            ).encode("ascii")


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_an_order_without_a_time_is_booked_and_offered_in_the_rooms_worklist(settings, tmp_path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shutil.copy(REPO_MAPPINGS / "default.yaml", mappings / "default.yaml")
    (mappings / "booker.yaml").write_text(PROFILE)
    (mappings / "resources").mkdir()
    (mappings / "resources" / "rooms.yaml").write_text(ROOMS)
    engine = Engine(dataclasses.replace(settings, mappings_dir=str(mappings), site_timezone=ZONE,
                                        scheduler_enabled=False))
    engine.start()
    try:
        before = dt.datetime.now(ZoneInfo(ZONE)).replace(tzinfo=None, second=0, microsecond=0)
        with MLLPClient("127.0.0.1", engine.mllp.port, timeout=10) as client:
            assert b"MSA|AA|BOOK-1" in client.send(_order(1))
            assert b"MSA|AA|BOOK-2" in client.send(_order(2))
        base = f"http://127.0.0.1:{engine.http_port}"
        first = _json(f"{base}/api/orders?accession=BOOK-ACC-1")["orders"][0]["procedures"][0]
        second = _json(f"{base}/api/orders?accession=BOOK-ACC-2")["orders"][0]["procedures"][0]
        start1 = dt.datetime.fromisoformat(first["steps"][0]["scheduled_start"])
        start2 = dt.datetime.fromisoformat(second["steps"][0]["scheduled_start"])
        assert before <= start1 <= before + dt.timedelta(minutes=2)            # the next free slot: now
        assert start2 == start1 + dt.timedelta(minutes=25)                       # CTCH takes 25 minutes on CT-BOOK
        assert (first["state"], [h["to"] for h in first["history"]]) == ("SCHEDULED", ["ORDERED", "SCHEDULED"])
        assert first["steps"][0]["station_aets"] == ["CT_BOOK"] and first["steps"][0]["station_name"] == "CTBOOK"

        sps = "ScheduledProcedureStepSequence[0]"
        result, items = findscu(engine.dicom.port, tmp_path / "rsp", f"{sps}.ScheduledStationAETitle=CT_BOOK",
                                f"{sps}.ScheduledProcedureStepStartDate", f"{sps}.ScheduledProcedureStepStartTime",
                                "AccessionNumber", called=settings.dicom_aet)
        assert result.returncode == 0, result.stderr
        offered = sorted((str(i.AccessionNumber), i.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate,
                          i.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime[:4]) for i in items)
        assert offered == [("BOOK-ACC-1", f"{start1:%Y%m%d}", f"{start1:%H%M}"),
                           ("BOOK-ACC-2", f"{start2:%Y%m%d}", f"{start2:%H%M}")]

        day = _json(f"{base}/api/resources/CT-BOOK/day?date={start1.date().isoformat()}")
        assert [(b["order"]["accession_number"], b["start"], b["minutes"]) for b in day["bookings"]
                if b["start"][:10] == start1.date().isoformat()][:1] == [("BOOK-ACC-1", start1.isoformat(), 25.0)]
    finally:
        engine.stop()
