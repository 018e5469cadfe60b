#!/usr/bin/env python3
"""Send the same selective MWL C-FIND (exact PatientID of the patient with the most items, like peers.sh's q2)
to the engine again and again for --seconds, one association per query, and print the latency: the load under
which bench/mwl_cfind.sh takes its py-spy sample. Bounded by time and by --max-queries; loopback only."""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--aet", default="RIS")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--max-queries", type=int, default=5000)
    a = ap.parse_args()
    if not a.host.startswith("127.") and a.host != "localhost":
        ap.error("loopback targets only")
    with open(a.manifest) as f:
        items = json.load(f)["items"]
    cnt = collections.Counter(it["PatientID"] for it in items)
    pid, expected = max(cnt.items(), key=lambda kv: (kv[1], -int(kv[0][3:])))
    ae = AE(ae_title="RISBENCHLOOP")
    ae.add_requested_context(ModalityWorklistInformationFind)
    total, find = [], []
    deadline = time.monotonic() + a.seconds
    while time.monotonic() < deadline and len(total) < a.max_queries:
        ds = Dataset()
        for k in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID"):
            setattr(ds, k, "")
        ds.PatientID = pid
        sps = Dataset()
        for k in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                  "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID"):
            setattr(sps, k, "")
        ds.ScheduledProcedureStepSequence = [sps]
        t0 = time.perf_counter()
        assoc = ae.associate(a.host, a.port, ae_title=a.aet)
        if not assoc.is_established:
            print("association failed", file=sys.stderr)
            return 1
        t1 = time.perf_counter()
        n = 0
        for status, _ in assoc.send_c_find(ds, ModalityWorklistInformationFind):
            if status is not None and status.Status in (0xFF00, 0xFF01):
                n += 1
        t2 = time.perf_counter()
        assoc.release()
        t3 = time.perf_counter()
        if n != expected:
            print(f"wrong count for PatientID {pid}: {n}, expected {expected}", file=sys.stderr)
            return 1
        total.append((t3 - t0) * 1000)
        find.append((t2 - t1) * 1000)
    print(f"{len(total)} queries PatientID={pid} ({expected} matches) in {a.seconds:.0f} s: associate+find+release "
          f"median {statistics.median(total):.1f} ms, C-FIND part median {statistics.median(find):.1f} ms "
          f"(p95 {sorted(find)[int(0.95 * (len(find) - 1))]:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
