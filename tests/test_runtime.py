"""The composition root: a port that is taken stops the start with one clear line naming the setting."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys

import pytest

from interfaces.runtime import Engine, StartupError


@pytest.fixture
def taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("setting", ["mllp_port", "dicom_port", "http_port"])
def test_a_taken_port_names_its_setting_and_nothing_stays_open(settings, taken_port, setting):
    engine = Engine(dataclasses.replace(settings, scheduler_enabled=False, **{setting: taken_port}))
    with pytest.raises(StartupError) as caught:
        engine.start()
    assert f"RIS_{setting.upper()}" in str(caught.value) and str(taken_port) in str(caught.value)
    if setting != "mllp_port":  # the MLLP listener had started: it was stopped again, its port is free
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", engine.mllp.port))


def test_ris_serve_exits_2_with_one_line(tmp_path, taken_port):
    env = dict(os.environ, RIS_DATA_DIR=str(tmp_path), RIS_HOST="127.0.0.1", RIS_MLLP_PORT=str(taken_port),
               RIS_DICOM_PORT="0", RIS_HTTP_PORT="0", RIS_SCHEDULER_ENABLED="0")
    done = subprocess.run([sys.executable, "-m", "interfaces", "serve"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert f"ris serve: cannot listen for MLLP on 127.0.0.1:{taken_port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_statistics_job_makes_a_selective_worklist_query_use_the_patient_index(settings, engine, session_factory,
                                                                               read_factory):
    """Without planner statistics SQLite walks every scheduled step for one patient's worklist items
    (docs/performance.md); the scheduler's statistics job fixes the plan."""
    import datetime as dt

    from app.queries.worklist import Text, WorklistQuery, build_query
    from interfaces.scheduler.jobs import refresh_statistics

    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL keeps its statistics with autovacuum; the job does nothing there")
    now = dt.datetime(2026, 12, 3, 8)
    with engine.begin() as conn:  # 3,000 items, straight into the tables (the plan, not the services, is tested)
        for i in range(1, 3001):
            conn.exec_driver_sql("INSERT INTO patients (id, patient_id, issuer, name, sex, version, created_at, "
                                 "updated_at) VALUES (?, ?, '', 'N', 'F', 1, ?, ?)", (i, f"P{i}", now, now))
            conn.exec_driver_sql("INSERT INTO orders (id, patient_fk, placer_order_number, placer_issuer, "
                                 "filler_order_number, accession_number, status, priority, referring_physician, "
                                 "requesting_physician, reason, sender, version, created_at, updated_at) VALUES "
                                 "(?, ?, ?, '', '', ?, 'SCHEDULED', '', '', '', '', '', 1, ?, ?)",
                                 (i, i, f"PL{i}", f"A{i}", now, now))
            conn.exec_driver_sql("INSERT INTO requested_procedures (id, order_fk, requested_procedure_id, "
                                 "study_instance_uid, code_value, code_scheme, code_meaning, description, priority, state) "
                                 "VALUES (?, ?, ?, ?, '', '', '', '', '', 'SCHEDULED')", (i, i, f"RP{i}", f"1.2.{i}"))
            conn.exec_driver_sql("INSERT INTO procedure_steps (id, procedure_fk, sps_id, modality, station_name, "
                                 "scheduled_start, description, performing_physician, status, updated_at) VALUES "
                                 "(?, ?, ?, 'CT', '', ?, '', '', 'SCHEDULED', ?)",
                                 (i, i, f"S{i}", now + dt.timedelta(minutes=i), now))

    def plan() -> str:
        with read_factory() as session:
            sql = build_query(session, WorklistQuery(patient_id=Text("P77"))).compile(
                engine, compile_kwargs={"literal_binds": True})
            return " / ".join(r[-1] for r in session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))

    # (SQLite 3.40 without statistics: "SEARCH procedure_steps USING INDEX ix_steps_status_start", every step)
    refresh_statistics(session_factory)
    assert plan().startswith("SEARCH patients USING INDEX")
