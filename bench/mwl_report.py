#!/usr/bin/env python3
"""Summarise one bench/mwl_cfind.sh run: the engine ("ris") next to the peers of the same peers.sh run.

Reads the raw cfind-<scp>-N<n>.json files of the peers.sh run folder and the loader's load.jsonl, prints
Markdown (ratios engine/peer of the median latencies, per query, client and N; every answer count of the engine
that is neither the case-sensitive nor the case-insensitive expected count), and writes --json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

PEERS = ["wlmscpfs", "orthanc"]
TARGET = "ris"
SELECTIVE_MS = 25.0   # the target: a selective C-FIND under 25 ms at 50k items


def fmt(v, nd=1):
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.{nd}f}"


def ratio(a, b):
    return f"{a / b:.3f}" if a is not None and b else "-"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--peers-run", required=True)
    ap.add_argument("--peers-summary", default="")
    ap.add_argument("--json")
    a = ap.parse_args()
    with open(os.path.join(a.run, "env.json")) as f:
        env = json.load(f)
    penv = {}
    if os.path.exists(os.path.join(a.peers_run, "env.json")):
        with open(os.path.join(a.peers_run, "env.json")) as f:
            penv = json.load(f)
    cells = {}
    for p in glob.glob(os.path.join(a.peers_run, "cfind-*.json")):
        with open(p) as f:
            c = json.load(f)
        cells[(c["scp"], c["n"])] = c
    loads = []
    if os.path.exists(os.path.join(a.run, "load.jsonl")):
        with open(os.path.join(a.run, "load.jsonl")) as f:
            loads = [json.loads(x) for x in f if x.strip()]

    ns = sorted({n for _, n in cells})
    L = [f"# MWL C-FIND: the engine next to wlmscpfs and Orthanc, run {env['run_id']} ({env['date']})\n"]
    L.append(f"Machine: {env['cpus']} vCPU, shared with other tenants (load average at start {env['loadavg']}); "
             f"engine data on {env['fs']}; DCMTK {penv.get('dcmtk', '?')}, Orthanc {penv.get('orthanc', '?')}, "
             f"pynetdicom {penv.get('pynetdicom', '?')}; TCP_NODELAY={penv.get('tcp_nodelay', '?')}; "
             f"REPS={env['reps']}, CELL_BUDGET_S={env['cell_budget_s']}. One association per query; latency = "
             "findscu process wall time, or pynetdicom associate + C-FIND + release (\"find\" = the C-FIND part).\n")
    L.append(f"Engine: {env['engine']}. peers.sh summary: {a.peers_summary or a.peers_run}.\n")
    if loads:
        L.append("## Loading the engine (HL7 OMI^O23 over MLLP, every ACK AA)\n")
        L.append("| N | new items | msg/s | p50 ms/message | connections | verified |")
        L.append("|---|---|---|---|---|---|")
        for ld in loads:
            v = ld.get("verify") or {}
            how = f"{v.get('how')}: {v.get('count', 'ok')} in {v.get('s', '?')} s" if v else "AA count only"
            L.append(f"| {ld['n']} | {ld['new']} | {ld['msg_s']} | {ld['p50_ms']} | {ld['connections']} | "
                     f"{'FAILED' if ld.get('failed') else how} |")
        L.append("")

    wrong = []
    out_rows = []
    for n in ns:
        t = cells.get((TARGET, n))
        peers = [p for p in PEERS if (p, n) in cells]
        L.append(f"## N = {n}\n")
        hdr = ["query", "client", "exp / ci", f"{TARGET} n"] + [f"{p} n" for p in peers] + \
              [f"{TARGET} ms median / p95"] + [f"{p} ms" for p in peers] + [f"{TARGET}/{p}" for p in peers]
        L.append("| " + " | ".join(hdr) + " |")
        L.append("|" + "---|" * len(hdr))
        clients = list((t or cells[(peers[0], n)])["clients"].keys()) if (t or peers) else []
        for cl in clients:
            qrows = (t or cells[(peers[0], n)])["clients"][cl]
            for qi, q in enumerate(qrows):
                tr = t["clients"][cl][qi] if t and cl in t["clients"] else None
                prs = [cells[(p, n)]["clients"].get(cl, [None] * (qi + 1))[qi] for p in peers]

                def cnt(r):
                    if r is None:
                        return "-"
                    s = "/".join(str(x) for x in r["counts"]) or "-"
                    return s + (" !" if any(x not in (r["exp"], r["exp_ci"]) for x in r["counts"]) else "")
                if tr and any(x not in (tr["exp"], tr["exp_ci"]) for x in tr["counts"]):
                    wrong.append({"n": n, "client": cl, "query": tr["id"], "label": tr["label"], "keys": tr["keys"],
                                  "expected": [tr["exp"], tr["exp_ci"]], "got": tr["counts"], "statuses": tr["statuses"]})
                tms = tr["median_ms"] if tr else None
                if tr and cl == "pynetdicom" and tr.get("find_median_ms") is not None:
                    tcell = f"{fmt(tms)} / {fmt(tr['p95_ms'])} (find {fmt(tr['find_median_ms'])})"
                else:
                    tcell = f"{fmt(tms)} / {fmt(tr['p95_ms'])}" if tr else "-"
                row = [f"{q['id']} {q['label']}", cl, f"{q['exp']} / {q['exp_ci']}", cnt(tr)] + [cnt(r) for r in prs] + \
                      [tcell] + [fmt(r["median_ms"]) if r else "-" for r in prs] + \
                      [ratio(tms, r["median_ms"] if r else None) for r in prs]
                L.append("| " + " | ".join(row) + " |")
                out_rows.append({"n": n, "query": q["id"], "client": cl, "ris_median_ms": tms,
                                 "ris_find_median_ms": tr.get("find_median_ms") if tr else None,
                                 **{f"{p}_median_ms": (r["median_ms"] if r else None) for p, r in zip(peers, prs)}})
        busy = ", ".join(f"{s} {cells[(s, n)]['machine_busy_pct']}% busy / {cells[(s, n)].get('foreign_cores', '?')} "
                         f"cores of other tenants" for s in [TARGET] + peers if (s, n) in cells)
        L.append(f"\nCPU during the cells: {busy}.\n")

    # The target: a selective query under 25 ms at 50k items (q2 exact PatientID; q1 modality + today).
    nmax = ns[-1] if ns else None
    t = cells.get((TARGET, nmax)) if nmax else None
    if t:
        L.append(f"## Target: a selective C-FIND under {SELECTIVE_MS:.0f} ms at {nmax} items\n")
        for cl, rows in t["clients"].items():
            for r in rows:
                if r["id"] not in ("q1", "q2"):
                    continue
                part = f"{fmt(r['median_ms'])} ms end to end"
                if r.get("find_median_ms") is not None:
                    part += f", C-FIND part {fmt(r['find_median_ms'])} ms"
                met = (r.get("find_median_ms") if r.get("find_median_ms") is not None else r["median_ms"]) < SELECTIVE_MS
                L.append(f"- {r['id']} ({r['label']}, {r['counts']} matches), {cl}: {part} -> "
                         f"{'met' if met else 'NOT met'}"
                         f"{'' if cl == 'pynetdicom' else ' (findscu includes process start and association)'}")
        L.append("")

    probes = {s: cells[(s, n)] for (s, n) in cells if cells[(s, n)].get("probes")}
    if TARGET in probes:
        tp = probes[TARGET]
        L.append(f"## Matching-rule probes (N = {tp['n']})\n")
        scps = [s for s in [TARGET] + PEERS if s in probes]
        hdr = ["probe", "exp / ci"] + [f"{s} {cl}" for s in scps for cl in probes[s]["clients"]]
        L.append("| " + " | ".join(hdr) + " |")
        L.append("|" + "---|" * len(hdr))
        for pid, p in tp["probes"].items():
            row = [f"{pid} {p['label']}", f"{p['exp']} / {p['exp_ci']}"]
            for s in scps:
                pr = probes[s]["probes"].get(pid, {})
                for cl in probes[s]["clients"]:
                    v = pr.get(cl, {})
                    c, st = v.get("count"), v.get("status", "")
                    cell = "-" if c is None else str(c)
                    if c is not None and c not in (p["exp"], p["exp_ci"]):
                        cell += " !"
                        if s == TARGET:
                            wrong.append({"n": tp["n"], "client": cl, "query": pid, "label": p["label"], "keys": p["keys"],
                                          "expected": [p["exp"], p["exp_ci"]], "got": [c], "statuses": [st]})
                    if st and st != "Success":
                        cell += f" ({st})"
                    row.append(cell)
            L.append("| " + " | ".join(row) + " |")
        L.append("")

    L.append(f"## Answers of the engine that match neither expected count ({len(wrong)})\n")
    if not wrong:
        L.append("None.\n")
    for w in wrong:
        L.append(f"- N={w['n']} {w['query']} ({w['label']}) keys {json.dumps(w['keys'], ensure_ascii=False)}, "
                 f"{w['client']}: expected {w['expected'][0]} (PN case-sensitive) or {w['expected'][1]} "
                 f"(case-insensitive), got {w['got']} {w['statuses']}")
    L.append("")
    if a.peers_summary and os.path.exists(a.peers_summary):   # C-STORE (RUN_CSTORE=1): peers.sh's own table
        with open(a.peers_summary) as f:
            text = f.read()
        if "## C-STORE" in text:
            L.append("## C-STORE" + text.split("## C-STORE", 1)[1].split("\n## ", 1)[0])
    prof = os.path.join(a.run, "profile-summary.md")
    if os.path.exists(prof):
        with open(prof) as f:
            L.append(f.read())
    print("\n".join(L))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": env, "loads": loads, "rows": out_rows, "wrong": wrong}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
