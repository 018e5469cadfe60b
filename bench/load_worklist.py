#!/usr/bin/env python3
"""Load the MWL benchmark's worklist items into a running engine through its real HL7 intake.

This is the ``TARGET_LOAD_CMD`` of ``../shared/bench/peers.sh`` (see bench/mwl_cfind.sh, which wires it):

    load_worklist.py [options] N <folder of N .wl files> <manifest.json>

peers.sh calls it once per N (1k, then 10k, then 50k); each item set is a prefix of the next. The loader
remembers in ``--state`` how many items of the manifest the engine already holds (the state is tied to one
engine instance by ``--token``) and sends only the new ones, as HL7 v2.5.1 OMI^O23 NW messages over MLLP,
on ``--connections`` parallel connections (all items of one patient on one connection, in manifest order).
Every ACK must be AA with MSA-2 = our MSH-10, else the loader exits 1 with the first answers that were not.
It returns once the engine holds exactly those N items: every AA means the order was committed before the
ACK, and ``--verify count`` (the default) then counts the engine's worklist with one universal DICOM C-FIND
(pynetdicom, AccessionNumber as the only return key); ``--verify spot`` only checks the first and the last
item by AccessionNumber (cheaper at 50k); ``none`` trusts the AA count.

Field mapping (mappings/default.yaml, the engine's default profile, says which fields it reads):

  PID-3  PatientID^^^SYNTH-HOSP (IssuerOfPatientID in PID-3.4)   PID-5 PatientName (DICOM PN family^given
  PID-7  PatientBirthDate   PID-8 PatientSex                     is HL7 XPN family^given as well)
  PV1-8  ReferringPhysicianName (XCN ^family^given)             ORC-12 RequestingPhysician (XCN)
  ORC-2 / OBR-2 placer order number PLC<idx>^BENCH               ORC-7.4, TQ1-7, OBR-27.4 scheduled start
  TQ1-9  priority (ROUTINE R, HIGH A, STAT S, LOW R)             (date+time, no offset: RIS_SITE_TIMEZONE
  OBR-4  ProcedureCode^RequestedProcedureDescription^99SYNRIS     must be the zone the manifest's times mean)
  OBR-18 / IPC-1 AccessionNumber   OBR-19 / IPC-2 RequestedProcedureID   OBR-20 / IPC-4 SPS ID
  OBR-24 / IPC-5 Modality          IPC-3 / ZDS-1 StudyInstanceUID        IPC-7 ScheduledStationName
  IPC-9  ScheduledStationAETitle (the profile reads station AE titles from IPC-9 only)

Names are sent as ISO 8859-1 bytes with MSH-18 ``8859/1``. Everything goes to loopback addresses only.
Run it with the engine's venv (it uses the engine's MLLP client, and pynetdicom for --verify).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.dont_write_bytecode = True

from interfaces.mllp.client import MLLPClient, MLLPError  # noqa: E402

CODEC, MSH18 = "iso-8859-1", "8859/1"
PRIORITY = {"ROUTINE": "R", "HIGH": "A", "STAT": "S", "LOW": "R"}
ISSUER = "SYNTH-HOSP"
SENDER = ("BENCHLOAD", "SYNTH-HOSP")


def esc(text: str) -> str:
    """HL7 v2 escaping for the default delimiters |^~\\& (escape character first)."""
    return (str(text).replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))


def pn_to_xpn(pn: str) -> str:
    """DICOM PN family^given^middle^prefix^suffix -> HL7 XPN family^given^middle^suffix^prefix."""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (esc(p) for p in parts)
    return "^".join((family, given, middle, suffix, prefix)).rstrip("^")


def pn_to_xcn(pn: str) -> str:
    """DICOM PN -> HL7 XCN with an empty ID: ^family^given^middle^suffix^prefix."""
    return "^" + pn_to_xpn(pn)


def build_message(it: dict, control_id: str, msh18: str, now: str) -> str:
    start = it["ScheduledProcedureStepStartDate"] + it["ScheduledProcedureStepStartTime"][:6]
    placer = f"PLC{it['AccessionNumber'][3:]}^BENCH"
    code = f"{esc(it['ProcedureCode'])}^{esc(it['RequestedProcedureDescription'])}^99SYNRIS"
    modality = it["Modality"]
    aet = it["ScheduledStationAETitle"]
    prio = PRIORITY.get(it.get("RequestedProcedurePriority", ""), "R")
    msh = ["MSH", "^~\\&", SENDER[0], SENDER[1], "RIS", "RADIOLOGY", now, "", "OMI^O23^OMI_O23",
           control_id, "P", "2.5.1", "", "", "", "", "", msh18]
    pid = ["PID", "1", "", f"{esc(it['PatientID'])}^^^{ISSUER}", "", pn_to_xpn(it["PatientName"]), "",
           it.get("PatientBirthDate", ""), it.get("PatientSex", "")]
    pv1 = ["PV1", "1", "O", "RAD^WAIT^^SYNTH-HOSP", "", "", "", "", pn_to_xcn(it.get("ReferringPhysicianName", ""))]
    orc = ["ORC", "NW", placer, "", "", "SC", "", f"^^^{start}^^{prio}", "", now, "", "",
           pn_to_xcn(it.get("RequestingPhysician", ""))]
    tq1 = ["TQ1", "1", "", "", "", "", "", start, "", prio]
    obr = ["OBR", "1", placer, "", code] + [""] * 13 + [
        esc(it["AccessionNumber"]), esc(it["RequestedProcedureID"]), esc(it["ScheduledProcedureStepID"]),
        "", "", "", modality, "", "", f"^^^{start}^^{prio}"]
    ipc = ["IPC", esc(it["AccessionNumber"]), esc(it["RequestedProcedureID"]), it["StudyInstanceUID"],
           esc(it["ScheduledProcedureStepID"]), f"{modality}^{modality}^DCM", code,
           esc(aet.replace("0", "-", 1)), "RADIOLOGY", esc(aet)]
    zds = ["ZDS", f"{it['StudyInstanceUID']}^RIS^Application^DICOM"]
    segs = [msh, pid, pv1, orc, tq1, obr, ipc, zds]
    return "\r".join("|".join(s) for s in segs) + "\r"


def parse_ack(reply: bytes) -> tuple[str, str]:
    for seg in reply.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"MSA"):
            f = seg.decode("latin-1").split(seg[3:4].decode("latin-1"))
            return (f[1] if len(f) > 1 else ""), (f[2] if len(f) > 2 else "")
    return "", ""


class Loader:
    def __init__(self, a, items: list[dict], first: int):
        self.a = a
        self.items = items
        self.first = first
        self.lock = threading.Lock()
        self.ok = 0
        self.bad: list[str] = []
        self.errors: list[str] = []
        self.lat: list[float] = []
        self.stop = threading.Event()

    def worker(self, queue: list[tuple[int, dict]]) -> None:
        client = None
        try:
            client = MLLPClient(self.a.host, self.a.port, timeout=self.a.timeout)
            now = dt.datetime.now().strftime("%Y%m%d%H%M%S")
            for idx, it in queue:
                if self.stop.is_set():
                    return
                cid = f"BL{idx:07d}"
                payload = build_message(it, cid, MSH18, now).encode(CODEC)
                t0 = time.perf_counter()
                reply = client.send(payload)
                dt_s = time.perf_counter() - t0
                code, echoed = parse_ack(reply)
                with self.lock:
                    self.lat.append(dt_s)
                    if code == "AA" and echoed == cid:
                        self.ok += 1
                    else:
                        if len(self.bad) < 5:
                            self.bad.append(f"item {idx} ({it['AccessionNumber']}): "
                                            + reply.decode(CODEC, "replace").replace("\r", "\\r "))
                        if len(self.bad) >= 5:
                            self.stop.set()
                            return
        except (MLLPError, OSError) as exc:
            with self.lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.stop.set()
        finally:
            if client is not None:
                client.close()

    def run(self) -> float:
        queues: list[list[tuple[int, dict]]] = [[] for _ in range(self.a.connections)]
        for k, it in enumerate(self.items):
            queues[zlib.crc32(it["PatientID"].encode()) % self.a.connections].append((self.first + k, it))
        threads = [threading.Thread(target=self.worker, args=(q,), daemon=True) for q in queues if q]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.a.max_seconds
        last = time.monotonic()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.5)
            if time.monotonic() > deadline:
                self.stop.set()
                self.errors.append(f"stopped after --max-seconds {self.a.max_seconds}")
                for t in threads:
                    t.join(self.a.timeout + 1)
                break
            if time.monotonic() - last >= 15:
                last = time.monotonic()
                el = time.perf_counter() - t0
                print(f"[load_worklist] {self.ok}/{len(self.items)} AA in {el:.0f} s "
                      f"({self.ok / el:.0f} msg/s)", file=sys.stderr, flush=True)
        return time.perf_counter() - t0


def cfind_count(a, **keys) -> int:
    """Number of worklist items of the engine that match ``keys`` (one C-FIND, one association)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    ae = AE(ae_title="RISBENCHLOAD")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = a.timeout * 20
    assoc = ae.associate(a.host, a.dicom_port, ae_title=a.aet)
    if not assoc.is_established:
        raise SystemExit(f"load_worklist: cannot associate with {a.aet}@{a.host}:{a.dicom_port}")
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    n, final = 0, None
    try:
        for status, _ in assoc.send_c_find(ds, ModalityWorklistInformationFind):
            if status is None:
                raise SystemExit("load_worklist: C-FIND got no answer (timeout or abort)")
            if status.Status in (0xFF00, 0xFF01):
                n += 1
            else:
                final = status.Status
    finally:
        assoc.release()
    if final != 0x0000:
        raise SystemExit(f"load_worklist: C-FIND {keys} ended with status 0x{final or 0:04X}")
    return n


def main(argv=None) -> int:
    env = os.environ
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", type=int, help="number of items the engine must hold afterwards")
    ap.add_argument("wldir", help="folder of the N .wl files (not read: the manifest has every value)")
    ap.add_argument("manifest", help="manifest.json of peers.sh / gen_mwl.py")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(env.get("RIS_MLLP_PORT", 2575)), help="engine MLLP port")
    ap.add_argument("--dicom-port", type=int, default=int(env.get("RIS_DICOM_PORT", 11112)))
    ap.add_argument("--aet", default=env.get("RIS_DICOM_AET", "RIS"), help="engine AE title (for --verify)")
    ap.add_argument("-c", "--connections", type=int, default=8)
    ap.add_argument("--state", required=True, help="JSON file remembering how many items this engine holds")
    ap.add_argument("--token", required=True, help="identity of the engine instance (a new engine = a new token)")
    ap.add_argument("--verify", choices=["count", "spot", "none"], default="count")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per message exchange")
    ap.add_argument("--max-seconds", type=float, default=1500.0, help="cap on the whole load")
    ap.add_argument("--stats", help="append a JSON line with this load's numbers to this file")
    a = ap.parse_args(argv)
    if not a.host.startswith("127.") and a.host != "localhost":
        ap.error("loopback targets only")

    with open(a.manifest, encoding="utf-8") as f:
        items = json.load(f)["items"]
    if len(items) < a.n:
        ap.error(f"manifest has {len(items)} items, fewer than N={a.n}")
    state = {}
    if os.path.exists(a.state):
        with open(a.state) as f:
            state = json.load(f)
    loaded = state.get("loaded", 0) if state.get("token") == a.token else 0
    if loaded and state.get("first_accessions") != [it["AccessionNumber"] for it in items[:3]]:
        raise SystemExit("load_worklist: the manifest is not an extension of the loaded item set")
    if loaded > a.n:
        raise SystemExit(f"load_worklist: the engine already holds {loaded} items, more than N={a.n} "
                         "(item sets must grow; start a fresh engine)")
    todo = items[loaded:a.n]
    print(f"[load_worklist] engine holds {loaded}; sending {len(todo)} OMI^O23 over {a.connections} "
          f"connections to {a.host}:{a.port}", file=sys.stderr, flush=True)
    loader = Loader(a, todo, loaded)
    wall = loader.run() if todo else 0.0
    rate = loader.ok / wall if wall else 0.0
    lat = sorted(loader.lat)
    p50 = lat[len(lat) // 2] * 1000 if lat else 0.0
    print(f"[load_worklist] {loader.ok}/{len(todo)} AA in {wall:.1f} s = {rate:.1f} msg/s "
          f"(p50 {p50:.1f} ms per message, {a.connections} connections)", file=sys.stderr, flush=True)
    for s in loader.bad:
        print(f"[load_worklist] NOT AA: {s}", file=sys.stderr)
    for s in loader.errors[:5]:
        print(f"[load_worklist] error: {s}", file=sys.stderr)
    stats = {"n": a.n, "new": len(todo), "aa": loader.ok, "wall_s": round(wall, 2), "msg_s": round(rate, 1),
             "p50_ms": round(p50, 2), "connections": a.connections, "failed": loader.ok != len(todo)}
    try:
        if stats["failed"]:
            return 1
        t0 = time.perf_counter()
        if a.verify == "count":
            held = cfind_count(a, AccessionNumber="")  # universal: AccessionNumber as the only return key
            stats["verify"] = {"how": "universal C-FIND", "count": held, "s": round(time.perf_counter() - t0, 1)}
            print(f"[load_worklist] universal C-FIND: the engine lists {held} items (expected {a.n}) "
                  f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            if held != a.n:
                stats["failed"] = True
                raise SystemExit(f"load_worklist: the engine lists {held} worklist items, expected {a.n}")
        elif a.verify == "spot":
            checks = [(items[0]["AccessionNumber"], 1), (items[a.n - 1]["AccessionNumber"], 1)]
            if a.n < len(items):
                checks.append((items[a.n]["AccessionNumber"], 0))
            for acc, want in checks:
                got = cfind_count(a, AccessionNumber=acc)
                if got != want:
                    stats["failed"] = True
                    raise SystemExit(f"load_worklist: AccessionNumber {acc}: {got} items, expected {want}")
            stats["verify"] = {"how": "spot C-FIND by AccessionNumber", "checks": len(checks)}
        # Only a complete, verified load counts (a failed one is resent by the next call).
        tmp = a.state + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"token": a.token, "loaded": a.n,
                       "first_accessions": [it["AccessionNumber"] for it in items[:3]]}, f)
        os.replace(tmp, a.state)
        return 0
    finally:
        if a.stats:
            with open(a.stats, "a") as f:
                f.write(json.dumps(stats) + "\n")

if __name__ == "__main__":
    sys.exit(main())
