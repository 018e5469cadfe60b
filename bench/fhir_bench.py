#!/usr/bin/env python3
"""FHIR R4 create and search at scale (issue 6): the running engine over HTTP on 127.0.0.1, at N orders.

    .venv/bin/python bench/fhir_bench.py [--orders 100000] [--patients 10000] [--samples 300]
                                         [--database-url postgresql+psycopg://...] [--json FILE]

1. A fresh database (SQLite under $BENCH_HOME, default ~/.cache/ris-bench/work/ris-fhir/<run>/, or the given
   PostgreSQL database: its schema ``public`` is emptied) is loaded with N synthetic orders of P patients (one
   requested procedure and one scheduled step each), straight into the tables (the load is not measured), then
   ANALYZE.
2. The engine starts in a process of its own (``interfaces.runtime.Engine``: MLLP, DICOM and HTTP listeners, no
   scheduler), and one keep-alive HTTP connection measures each kind of request ``--samples`` times in a row,
   one at a time, every answer checked, with the engine process's CPU time per request (/proc; less disturbed
   than wall time on a shared machine):

   - ``create``: POST ServiceRequest (a new order of an existing patient; 201 required) - target p50 < 15 ms;
   - ``search-patient``: GET ServiceRequest?patient=Patient/<id> (that patient's orders; 200 and the right total
     required) - target p50 < 30 ms;
   - ``read``: GET ServiceRequest/<id>; ``search-accession``: GET ServiceRequest?identifier=<accession>.

   Peers in the same run, on the same engine and data: ``hl7-orm`` (an ORM^O01 NW over one MLLP connection:
   the same order through the HL7 intake, AA required), ``api-orders`` (GET /api/orders?patient_id=: the JSON
   API's read of the same orders) and ``health`` (GET /health: the HTTP stack's floor).

Prints a Markdown table (p50/p95/p99/max ms, requests/s) with the ratios FHIR/peer and whether the targets are
met. Loopback only; it stops what it started; nothing is written into the repository. Tests never assert these
timings (DESIGN.md 6).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.dont_write_bytecode = True

from sqlalchemy import insert, text  # noqa: E402

from app.db import make_engine, refresh_statistics, upgrade  # noqa: E402
from app.models import (Order, OrderStatus, Patient, ProcedureState, ProcedureStep, RequestedProcedure,  # noqa: E402
                        StepStation, StepStatus)
from config.settings import load_settings  # noqa: E402
from interfaces.mllp.client import MLLPClient  # noqa: E402
from interfaces.runtime import Engine  # noqa: E402

ISSUER = "urn:oid:1.2.826.0.1.3680043.10.1356.97"
TARGETS = {"create": 15.0, "search-patient": 30.0}
ACSN = {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}


def load(url: str, orders: int, patients: int, batch: int = 5000) -> None:
    """N orders of P patients straight into the tables, as the services would write them."""
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    start = dt.datetime(2026, 12, 7, 7, 0)
    with engine.begin() as conn:
        for first in range(0, patients, batch):
            conn.execute(insert(Patient), [
                {"id": i + 1, "patient_id": f"FB{i:07d}", "issuer": ISSUER, "name": f"BENCH^PATIENT{i}",
                 "sex": "FM"[i % 2], "birth_date": dt.date(1950 + i % 50, 1 + i % 12, 1 + i % 28), "version": 1,
                 "created_at": now, "updated_at": now} for i in range(first, min(first + batch, patients))])
        for first in range(0, orders, batch):
            rows = range(first, min(first + batch, orders))
            conn.execute(insert(Order), [
                {"id": n + 1, "patient_fk": n % patients + 1, "placer_order_number": f"FBPL{n:08d}",
                 "placer_issuer": "BENCH", "filler_order_number": "", "accession_number": f"FBA{n:09d}",
                 "status": OrderStatus.SCHEDULED, "priority": "R", "referring_physician": "", "sender": "BENCH",
                 "requesting_physician": "ORDER^OLGA", "reason": "", "version": 1, "created_at": now,
                 "updated_at": now} for n in rows])
            conn.execute(insert(RequestedProcedure), [
                {"id": n + 1, "order_fk": n + 1, "requested_procedure_id": f"FBA{n:09d}",
                 "study_instance_uid": f"1.2.826.0.1.3680043.10.1356.96.{n + 1}", "code_value": "24627-2",
                 "code_scheme": "LN", "code_meaning": "CT Chest", "description": "CT chest", "priority": "R",
                 "state": ProcedureState.SCHEDULED} for n in rows])
            conn.execute(insert(ProcedureStep), [
                {"id": n + 1, "procedure_fk": n + 1, "sps_id": f"FBA{n:09d}", "modality": "CT",
                 "station_name": "", "scheduled_start": start + dt.timedelta(minutes=n % 100000),
                 "description": "CT chest", "performing_physician": "", "status": StepStatus.SCHEDULED,
                 "updated_at": now} for n in rows])
            conn.execute(insert(StepStation), [{"step_fk": n + 1, "ae_title": "CT_ROOM1"} for n in rows])
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:   # keys were given explicitly: move the sequences past them
            for table in ("patients", "orders", "requested_procedures", "procedure_steps"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
            conn.execute(text("ANALYZE"))
    refresh_statistics(engine)
    engine.dispose()


class Http:
    """One keep-alive HTTP/1.1 connection to the engine; every call returns (status, body, ms)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None, float]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/fhir+json"} if data else {}
        started = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        ms = (time.perf_counter() - started) * 1000
        return response.status, (json.loads(raw) if raw else None), ms


def summary(name: str, times: list[float]) -> dict:
    times = sorted(times)

    def pct(p: float) -> float:
        return times[min(len(times) - 1, int(round(p / 100 * (len(times) - 1))))]

    return {"name": name, "n": len(times), "p50": statistics.median(times), "p95": pct(95), "p99": pct(99),
            "max": times[-1], "per_s": 1000 * len(times) / sum(times)}


def cpu_ms(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc), in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def measure(port: int, mllp_port: int, pid: int, patients: int, orders: int, samples: int,
            seed: int) -> dict[str, dict]:
    """Each kind of request ``samples`` times in a row (a phase), with the engine process's CPU per request."""
    rng = random.Random(seed)
    client = Http(port)
    order_count = {p: orders // patients + (1 if p < orders % patients else 0) for p in range(1, patients + 1)}
    for _ in range(20):   # warm-up, not counted
        client.call("GET", f"/fhir/ServiceRequest?patient=Patient/{rng.randint(1, patients)}")
    mllp = MLLPClient("127.0.0.1", mllp_port, timeout=30)
    mllp.connect()

    def create(i: int) -> float:
        who = rng.randint(1, patients)
        body = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "identifier": [{"type": {"coding": [ACSN]}, "value": f"FBN{i:08d}"}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]},
                "orderDetail": [{"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]}],
                "subject": {"reference": f"Patient/{who}"}, "occurrenceDateTime": "2026-12-20T09:00:00+01:00"}
        status, created, ms = client.call("POST", "/fhir/ServiceRequest", body)
        assert status == 201 and created["status"] == "active", (status, created)
        order_count[who] += 1
        return ms

    def search_patient(_i: int) -> float:
        who = rng.randint(1, patients)
        status, bundle, ms = client.call("GET", f"/fhir/ServiceRequest?patient=Patient/{who}")
        assert status == 200 and bundle["total"] == order_count[who], (status, bundle and bundle["total"])
        return ms

    def read(_i: int) -> float:
        key = rng.randint(1, orders)
        status, resource, ms = client.call("GET", f"/fhir/ServiceRequest/{key}")
        assert status == 200 and resource["id"] == str(key), status
        return ms

    def search_accession(_i: int) -> float:
        key = rng.randint(1, orders)
        status, bundle, ms = client.call("GET", f"/fhir/ServiceRequest?identifier=FBA{key - 1:09d}")
        assert status == 200 and bundle["total"] == 1, status
        return ms

    def hl7_orm(i: int) -> float:
        who = rng.randint(1, patients)
        orm = ("MSH|^~\\&|BENCH|HOSP|RIS|RAD|20261203120000||ORM^O01|FB-{i}|P|2.5.1\r"
               "PID|||FB{pid:07d}^^^{issuer}||BENCH^PATIENT||19700101|F\r"
               "ORC|NW|FBHL{i:08d}^BENCH|||||^^^20261220090000\r"
               "OBR|1|FBHL{i:08d}^BENCH||24627-2^CT Chest^LN||||||||||||||FBH{i:08d}|||||CT\r").format(
            i=i, pid=who - 1, issuer=ISSUER)
        started = time.perf_counter()
        ack = mllp.send(orm.encode("ascii"))
        ms = (time.perf_counter() - started) * 1000
        assert b"MSA|AA" in ack, ack
        order_count[who] += 1
        return ms

    def api_orders(_i: int) -> float:
        who = rng.randint(1, patients)
        status, answer, ms = client.call("GET", f"/api/orders?patient_id=FB{who - 1:07d}")
        assert status == 200 and answer["orders"], status
        return ms

    def health(_i: int) -> float:
        status, _, ms = client.call("GET", "/health")
        assert status == 200
        return ms

    phases = {"create": create, "search-patient": search_patient, "read": read, "search-accession": search_accession,
              "hl7-orm": hl7_orm, "api-orders": api_orders, "health": health}
    stats = {}
    try:
        for name, run in phases.items():
            before = cpu_ms(pid)
            times = [run(i) for i in range(samples)]
            stats[name] = summary(name, times) | {"cpu_ms": (cpu_ms(pid) - before) / samples}
    finally:
        mllp.close()
    return stats


def report(stats: dict[str, dict], args, database: str) -> str:
    peers = {"create": "hl7-orm", "search-patient": "api-orders", "read": "health", "search-accession": "health"}
    lines = [f"FHIR benchmark: {args.orders:,} orders of {args.patients:,} patients, {args.samples} samples each, "
             f"database {database}", "",
             "| request | n | p50 ms | p95 ms | p99 ms | max ms | req/s | engine CPU ms/req | p50 / peer's p50 | "
             "target |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in stats.items():
        peer = peers.get(name)
        ratio = f"{s['p50'] / stats[peer]['p50']:.2f} x {peer}" if peer else ""
        target = TARGETS.get(name)
        verdict = (f"p50 < {target:g} ms: {'met' if s['p50'] < target else 'MISSED'}" if target else "")
        lines.append(f"| {name} | {s['n']} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} | {s['max']:.1f} | "
                     f"{s['per_s']:.0f} | {s['cpu_ms']:.1f} | {ratio} | {verdict} |")
    load1, load5, _ = os.getloadavg()
    lines += ["", f"load average during the run: {load1:.1f} (1 min), {load5:.1f} (5 min) on {os.cpu_count()} CPUs"]
    return "\n".join(lines)


def serve(folder: str, url: str) -> int:
    """The engine in a process of its own (so its CPU time is its own): prints its ports, runs until stdin closes."""
    settings = load_settings(env={}, data_dir=Path(folder), database_url=url, host="127.0.0.1", mllp_port=0,
                             dicom_port=0, http_port=0, site_timezone="Europe/Berlin")
    engine = Engine(dataclasses.replace(settings, scheduler_enabled=False))
    engine.start()
    try:
        print(json.dumps({"http": engine.http_port, "mllp": engine.mllp.port}), flush=True)
        sys.stdin.read()
    finally:
        engine.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", default="")
    parser.add_argument("--serve", nargs=2, metavar=("FOLDER", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(*args.serve)
    home = Path(os.environ.get("BENCH_HOME", Path.home() / ".cache" / "ris-bench")) / "work" / "ris-fhir"
    home.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-"), dir=home))
    url = args.database_url or f"sqlite:///{folder / 'ris.db'}"
    database = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    started = time.perf_counter()
    load(url, args.orders, args.patients)
    print(f"loaded {args.orders:,} orders in {time.perf_counter() - started:.1f} s into {folder}", file=sys.stderr)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(folder), url], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(server.stdout.readline() or "{}")
        if not ports:
            raise SystemExit("the engine did not start (see its log above)")
        stats = measure(ports["http"], ports["mllp"], server.pid, args.patients, args.orders, args.samples, args.seed)
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    text_ = report(stats, args, database)
    print(text_)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "database": database, "stats": stats}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
