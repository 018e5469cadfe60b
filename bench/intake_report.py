#!/usr/bin/env python3
"""Summarise one bench/hl7_intake.sh run folder as Markdown (stdout) and JSON (--json FILE).

Throughput is the load generator's ACKed msg/s over its measured window; latency is send -> ACK.
Server CPU is utime+stime of the server process over the whole load command (warm-up included) divided by
the messages it received, so "cores" = CPU ms/msg x msg/s is an estimate. "others" is the CPU the rest of the
machine used during the cell (every process but the server and the load generator): on a shared 2-core box,
distrust cells where it is high. Ratios compare cells of the same run at the same connection count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ORDER = ["canned", "sqlite-full", "ris-sqlite", "ris-pg"]


def load(run: str) -> tuple[dict, list[dict]]:
    with open(os.path.join(run, "env.json")) as f:
        env = json.load(f)
    cells = []
    with open(os.path.join(run, "cells.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            c = json.loads(line)
            try:
                with open(c["json"]) as g:
                    c["res"] = json.load(g)
            except (OSError, ValueError):
                c["res"] = None
            cells.append(c)
    return env, cells


def row(c: dict) -> dict:
    r = c["res"] or {}
    lat = r.get("latency_us") or {}
    rate = r.get("throughput_msgs_s") or 0.0
    cpu_ms = 1000.0 * c["cpu_s"] / c["msgs_total"] if c["msgs_total"] else None
    wall = r.get("wall_s") or 0.0
    client_cores = (r.get("client_cpu_pct") or 0.0) / 100.0
    # others: machine busy over the command minus the server and the client (client CPU known for the
    # measured window only: scaled to the command's wall time, an approximation)
    others = None
    if c.get("cmd_wall_s"):
        others = max(0.0, (c.get("machine_busy_s", 0.0) - c["cpu_s"]) / c["cmd_wall_s"] - client_cores * wall / c["cmd_wall_s"])
    return {
        "target": c["target"], "conns": c["conns"], "n": r.get("messages"), "warmup": r.get("warmup"),
        "msg_s": rate, "p50_ms": (lat.get("p50") or 0) / 1000, "p95_ms": (lat.get("p95") or 0) / 1000,
        "p99_ms": (lat.get("p99") or 0) / 1000, "max_ms": (lat.get("max") or 0) / 1000,
        "ok": r.get("ok"), "failures": r.get("failures"), "nak": r.get("nak"), "nak_codes": r.get("nak_codes"),
        "samples": r.get("samples"), "rc": c["rc"], "server_cpu_ms_per_msg": cpu_ms,
        "server_cores": (cpu_ms * rate / 1000.0) if cpu_ms is not None else None,
        "client_cpu_pct": r.get("client_cpu_pct"), "others_cores": others, "wall_s": wall,
        "avg_msg_bytes": r.get("avg_msg_bytes"),
        "pg_per_msg": ({k: round((c["pg_after"][k] - c["pg_before"][k]) / c["msgs_total"], 2) for k in c["pg_after"]}
                       if c.get("pg_before") and c.get("pg_after") and c["msgs_total"] else None),
    }


def f(v, nd=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--json")
    a = ap.parse_args()
    env, cells = load(a.run)
    rows = [row(c) for c in cells]
    rows.sort(key=lambda r: (r["conns"], ORDER.index(r["target"]) if r["target"] in ORDER else 99))
    by = {(r["target"], r["conns"]): r for r in rows}
    for r in rows:
        for peer in ("canned", "sqlite-full"):
            p = by.get((peer, r["conns"]))
            r[f"vs_{peer}"] = (r["msg_s"] / p["msg_s"]) if p and p["msg_s"] else None

    L = [f"# HL7 ORM intake, durable before ACK: run {env['run_id']} ({env['date']})\n"]
    L.append(f"Machine: {env['cpus']} vCPU (shared with other tenants), kernel {env['kernel']}, load average at "
             f"start {env['loadavg']}. Data on {env['fs']} ({env['fs_device']}). Mix `{env['mix']}` "
             f"(shared generator, HL7 2.5.1, UTF-8), {env['warmup']} warm-up messages per cell, request/response, "
             f"messages of one patient on one connection, every ACK checked.\n")
    L.append(f"Engine: {env['engine']}.\n")
    L.append("| target | conns | N | msg/s | p50 ms | p95 ms | p99 ms | max ms | ok / failures | server CPU ms/msg "
             "| server cores | client CPU % | others (cores) | engine/canned | engine/sqlite-full |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        is_engine = r["target"].startswith("ris")
        L.append("| " + " | ".join([
            r["target"], str(r["conns"]), f(r["n"]), f(r["msg_s"]), f(r["p50_ms"], 2), f(r["p95_ms"], 2),
            f(r["p99_ms"], 2), f(r["max_ms"], 1), f"{f(r['ok'])} / {f(r['failures'])}",
            f(r["server_cpu_ms_per_msg"], 2), f(r["server_cores"], 2), f(r["client_cpu_pct"], 0),
            f(r["others_cores"], 2),
            f(r["vs_canned"], 4) if is_engine else "", f(r["vs_sqlite-full"], 3) if is_engine else "",
        ]) + " |")
    L.append("")
    for r in rows:
        if r.get("pg_per_msg"):
            pm = r["pg_per_msg"]
            L.append(f"{r['target']} c={r['conns']}, PostgreSQL work per message (pg_stat_database over the measured "
                     f"load command, warm-up included, the engine's scheduled jobs too): {pm['xact_commit']} commits, "
                     f"{pm['xact_rollback']} rollbacks, {pm['tup_inserted']} rows inserted, {pm['tup_updated']} updated, "
                     f"{pm['tup_deleted']} deleted, {pm['tup_fetched']} fetched, {pm['tup_returned']} returned.\n")
    bad = [r for r in rows if r["failures"] or r["rc"] != 0]
    for r in bad:
        L.append(f"**{r['target']} c={r['conns']}: {r['failures']} failures** (NAK {r['nak']} {r['nak_codes']}, "
                 f"exit {r['rc']}). Samples:\n")
        for kind, ss in (r["samples"] or {}).items():
            for s in ss[:3]:
                L.append(f"    {kind}: {s}")
        L.append("")
    confs = {}
    for name, what in (("conformance-orders-mix", "the generator's 'orders' mix (ORM NW/XO/CA/SC + OMI NW), "
                        "200 messages, 1 connection"),):
        path = os.path.join(a.run, name + ".json")
        if not os.path.exists(path):
            continue
        with open(path) as g:
            conf = json.load(g)
        confs[name] = {k: conf.get(k) for k in ("ok", "nak", "nak_codes", "failures", "samples")}
        L.append(f"Engine answers to {what}: ok {conf['ok']}, NAK {conf['nak']} {conf.get('nak_codes') or ''}, "
                 f"failures {conf['failures']}.")
        for s in (conf.get("samples") or {}).get("nak", [])[:2]:
            L.append(f"\n    {s}")
        L.append("")
    prof = os.path.join(a.run, "profile-summary.md")
    if os.path.exists(prof):
        with open(prof) as g:
            L.append(g.read())
    print("\n".join(L))
    if a.json:
        with open(a.json, "w") as g:
            json.dump({"env": env, "rows": rows, "conformance": confs}, g, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
