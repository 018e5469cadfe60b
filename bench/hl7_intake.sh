#!/usr/bin/env bash
# bench/hl7_intake.sh - HL7 v2 ORM intake over MLLP, durable before the ACK: the engine next to two peers
# measured in the same run (docs/performance.md explains the numbers).
#
#   bench/hl7_intake.sh                                   # SQLite engine + peers, 1 and 16 connections, ~4 min
#   BENCH_PG_URL=postgresql+psycopg://postgres@127.0.0.1:5432/ris_bench bench/hl7_intake.sh  # + engine on PostgreSQL
#     (a database of its own: psql -h 127.0.0.1 -U postgres -c 'create database ris_bench'; never a shared one)
#   PROFILE=1 bench/hl7_intake.sh                         # + a py-spy sample of the engine under 16 connections
#
# Targets (each on a fresh server, the same load, the same load generator):
#   canned       ../shared/bench/hl7/bench.sh server --mode canned: the ceiling of a Python asyncio MLLP receiver
#   sqlite-full  bench.sh server --mode sqlite --synchronous FULL: raw INSERT + COMMIT (one fsync) before each ACK
#   ris-sqlite   the engine (python -m interfaces serve) on a fresh data folder, SQLite WAL synchronous=FULL
#   ris-pg       the engine on PostgreSQL (only with BENCH_PG_URL; its schema public is DROPped and re-created
#                first, and the run refuses to do so while other sessions use that database)
# Load: ../shared/bench/hl7/bench.sh load (mllp_load.py): request/response, messages of one patient on one
# connection, EVERY ACK verified (AA + MSA-2); a cell with any NAK/mismatch/timeout is reported as failed, with
# samples. N per cell is calibrated by a short probe so that each cell takes about CELL_S seconds.
#
# Environment (all optional):
#   CONNS="1 16"  CELL_S=15  WARMUP=200  NMIN=500  NMAX=200000
#   MIX="orm_nw=4,a08=2,orm_ca=1,a04=2"   RIS mix: new orders, patient updates/registrations, cancels; MIX=orders
#                                         is the shared generator's order mix (also XO, SC and OMI^O23). Either way
#                                         the run also sends 200 messages of the 'orders' mix to the SQLite engine
#                                         and reports its answers (a conformance check, not timed).
#   TARGETS="canned sqlite-full ris-sqlite ris-pg"  (ris-pg runs only with BENCH_PG_URL)
#   BENCH_PG_URL=postgresql+psycopg://user@127.0.0.1:5432/db   PORT_BASE=26510 (uses PORT_BASE..+9)
#   PROFILE=0|1  PROFILE_S=20 (py-spy record of ris-sqlite at the last CONNS value; py-spy in $BENCH_HOME/venv-pyspy)
#   ENGINE_SRC=<frozen copy of the engine's code> (default: this repository)  ALLOW_TMPFS=0
#   BENCH_HOME=${XDG_CACHE_HOME:-$HOME/.cache}/ris-bench : run folder work/ris-hl7/<run-id>/ (engine data, logs,
#   raw JSON); summary results/ris-hl7-intake-<run-id>.md (+ .json, + ris-hl7-intake-latest.md)
set -euo pipefail
BENCH_TAG=hl7_intake
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS=${CONNS:-"1 16"}
CELL_S=${CELL_S:-15}
WARMUP=${WARMUP:-200}
NMIN=${NMIN:-500}
NMAX=${NMAX:-200000}
MIX=${MIX:-"orm_nw=4,a08=2,orm_ca=1,a04=2"}
TARGETS=${TARGETS:-"canned sqlite-full ris-sqlite ris-pg"}
PORT_BASE=${PORT_BASE:-26510}
PROFILE=${PROFILE:-0}
PROFILE_S=${PROFILE_S:-20}
H="$SHARED_BENCH/hl7/bench.sh"
[ -x "$H" ] || die "shared HL7 harness not found at $H (set SHARED_BENCH)"
[ -x "$ENGINE_PY" ] || die "no engine venv at $ENGINE_PY (scripts/setup-venv.sh)"

RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
RUN="$BENCH_HOME/work/ris-hl7/$RUN_ID"
mkdir -p "$RUN" "$BENCH_HOME/results"
FS=$(fs_type "$RUN")
case "$FS" in tmpfs|ramfs) [ "${ALLOW_TMPFS:-0}" = 1 ] || die "$RUN is on $FS: fsync costs nothing there (set BENCH_HOME elsewhere, or ALLOW_TMPFS=1)";; esac
trap cleanup_all EXIT
trap 'exit 130' INT TERM
CELLS="$RUN/cells.jsonl"
: > "$CELLS"
{
  echo "{\"run_id\": \"$RUN_ID\", \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"fs\": \"$FS\","
  echo " \"fs_device\": \"$(df -P "$RUN" | awk 'NR==2 {print $1}')\", \"run_dir\": \"$RUN\","
  echo " \"cpus\": $(nproc), \"kernel\": \"$(uname -r)\", \"mix\": \"$MIX\", \"cell_s\": $CELL_S, \"warmup\": $WARMUP,"
  echo " \"engine\": \"$(engine_src_id)\", \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
} > "$RUN/env.json"
log "run $RUN_ID: $RUN on $FS; mix $MIX; connections $CONNS; ~${CELL_S}s per cell"
log "$(engine_src_id)"
"$H" python -c 'import hl7apy' 2>/dev/null || true   # builds the harness venv on first use

SERVER_PID=""
start_peer() { # mode port extra...: a shared-harness baseline server; waits for READY
  local mode=$1 port=$2; shift 2
  port_free "$port" || die "port $port is in use"
  "$H" server --mode "$mode" --port "$port" "$@" > "$RUN/server-$mode-$port.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  local i
  for i in $(seq 1 300); do grep -q READY "$RUN/server-$mode-$port.log" 2>/dev/null && break; sleep 0.1; done
  grep -q READY "$RUN/server-$mode-$port.log" || die "$mode server did not print READY (see $RUN/server-$mode-$port.log)"
  wait_listening "$SERVER_PID" "$RUN/server-$mode-$port.log" 10 "$port"
  log "peer $mode started (pid $SERVER_PID) on 127.0.0.1:$port"
}

jget() { "$ENGINE_PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }

calibrate() { # port conns prefix -> prints N for ~CELL_S seconds
  local port=$1 c=$2 pfx=$3 n=300 k rate wall
  for k in 1 2 3; do
    "$H" load --port "$port" -c "$c" -n "$n" --mix "$MIX" --control-prefix "${pfx}${k}_" --timeout 30 \
      --max-seconds 120 --quiet --json "$RUN/probe.json" >/dev/null 2>&1 || true
    wall=$(jget "$RUN/probe.json" "d['wall_s']")
    rate=$(jget "$RUN/probe.json" "d['throughput_msgs_s'] or 0")
    if awk -v w="$wall" 'BEGIN { exit !(w >= 1.5) }' || [ "$n" -ge 20000 ]; then break; fi
    n=$((n * 8))
  done
  awk -v r="$rate" -v s="$CELL_S" -v lo="$NMIN" -v hi="$NMAX" 'BEGIN { n = int(r * s); if (n < lo) n = lo; if (n > hi) n = hi; print n }'
}

run_cell() { # target port pid conns prefix
  local target=$1 port=$2 pid=$3 c=$4 pfx=$5 n out rc cpu0 cpu1 t0 t1
  n=$(calibrate "$port" "$c" "P${pfx}${c}")
  out="$RUN/load-$target-c$c.json"
  log "$target c=$c: N=$n (+$WARMUP warm-up)"
  local pg0='null' pg1='null'
  [ "$target" = ris-pg ] && pg0=$(pg_counters "$BENCH_PG_URL" 2>/dev/null || echo null)
  cpu0=$(cpu_ticks "$pid"); m0=$(machine_busy_ticks); t0=$(date +%s.%N)
  set +e
  "$H" load --port "$port" -c "$c" -n "$n" --warmup "$WARMUP" --mix "$MIX" --control-prefix "${pfx}${c}_" \
    --timeout 30 --max-seconds 600 --label "$target-c$c" --json "$out" > "$RUN/load-$target-c$c.txt" 2>&1
  rc=$?
  set -e
  cpu1=$(cpu_ticks "$pid"); m1=$(machine_busy_ticks); t1=$(date +%s.%N)
  [ "$target" = ris-pg ] && pg1=$(pg_counters "$BENCH_PG_URL" 2>/dev/null || echo null)
  sed 's/^/    /' "$RUN/load-$target-c$c.txt" | head -12 >&2
  echo "{\"target\": \"$target\", \"conns\": $c, \"json\": \"$out\", \"rc\": $rc, \"server_pid\": $pid," \
       "\"cpu_s\": $(awk -v a="$cpu0" -v b="$cpu1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", (b - a) / hz }')," \
       "\"machine_busy_s\": $(awk -v a="$m0" -v b="$m1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", (b - a) / hz }'),"\
       "\"cmd_wall_s\": $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'), \"msgs_total\": $((n + WARMUP)), \"pg_before\": $pg0, \"pg_after\": $pg1}" >> "$CELLS"
}

run_target() { # target port pid prefix
  local c
  for c in $CONNS; do run_cell "$1" "$2" "$3" "$c" "$4"; done
}

profile_engine() { # port pid: py-spy record while a load at the last CONNS value runs
  local port=$1 pid=$2 c n spy=$PYSPY
  c=$(echo "$CONNS" | awk '{print $NF}')
  ensure_pyspy || return 0
  n=$(jget "$RUN/load-ris-sqlite-c$c.json" "int(d['throughput_msgs_s'] * ($PROFILE_S + 20))")
  log "profile: py-spy record ${PROFILE_S}s of pid $pid under c=$c (N=$n)"
  "$H" load --port "$port" -c "$c" -n "$n" --mix "$MIX" --control-prefix "Y${c}_" --timeout 30 --max-seconds 300 \
    --quiet --json "$RUN/load-profile.json" >/dev/null 2>&1 &
  local lp=$!
  sleep 3
  "$spy" record -p "$pid" -d "$PROFILE_S" -r 50 --format raw -o "$RUN/profile-ris-sqlite.collapsed" >"$RUN/py-spy.log" 2>&1 \
    || log "py-spy failed (see $RUN/py-spy.log)"
  "$spy" record -p "$pid" -d 10 -r 50 --gil --format raw -o "$RUN/profile-ris-sqlite-gil.collapsed" \
    >>"$RUN/py-spy.log" 2>&1 || log "py-spy --gil failed (see $RUN/py-spy.log)"
  "$spy" dump -p "$pid" > "$RUN/py-spy-dump.txt" 2>&1 || true
  wait "$lp" || true
  if [ -s "$RUN/profile-ris-sqlite.collapsed" ]; then
    { echo "## Profile of ris-sqlite under $c connections (py-spy, ${PROFILE_S} s wall-clock samples, then 10 s GIL-holder samples)"
      echo
      "$ENGINE_PY" "$REPO/bench/profile_summary.py" --top 15 "$RUN/profile-ris-sqlite.collapsed"
      if [ -s "$RUN/profile-ris-sqlite-gil.collapsed" ]; then
        "$ENGINE_PY" "$REPO/bench/profile_summary.py" --top 15 "$RUN/profile-ris-sqlite-gil.collapsed" \
          --title "CPU: what the thread holding the GIL runs (py-spy --gil samples" | sed 's/^### /#### /'
      fi
    } > "$RUN/profile-summary.md"
    log "profile summary: $RUN/profile-summary.md (raw stacks: $RUN/profile-*.collapsed, open them in speedscope)"
  fi
}

P=$PORT_BASE
for target in $TARGETS; do
  case "$target" in
    canned)
      start_peer canned "$P"; run_target canned "$P" "$SERVER_PID" K; stop_pid "$SERVER_PID" ;;
    sqlite-full)
      start_peer sqlite "$((P + 1))" --synchronous FULL --db "$RUN/sqlite-full.db"
      run_target sqlite-full "$((P + 1))" "$SERVER_PID" F; stop_pid "$SERVER_PID" ;;
    ris-sqlite)
      start_engine "$RUN/engine-sqlite" "$RUN/engine-sqlite.log" "$((P + 2))" "$((P + 3))" "$((P + 4))"
      log "engine data folder $RUN/engine-sqlite on $(fs_type "$RUN/engine-sqlite")"
      # Short --control-prefix everywhere: the generator derives accession numbers (OBR-18) from MSH-10, and its
      # default prefix makes 18 characters, which the engine rightly rejects (AE: DICOM SH holds 16).
      # Conformance: the generator's 'orders' mix (NW, XO, CA, SC, OMI NW) must be all AA/CA.
      "$H" load --port "$((P + 2))" -c 1 -n 200 --mix orders --control-prefix C1_ --timeout 30 --max-seconds 120 \
        --json "$RUN/conformance-orders-mix.json" > "$RUN/conformance-orders-mix.txt" 2>&1 || true
      run_target ris-sqlite "$((P + 2))" "$ENGINE_PID" S
      [ "$PROFILE" = 1 ] && profile_engine "$((P + 2))" "$ENGINE_PID"
      stop_pid "$ENGINE_PID" ;;
    ris-pg)
      if [ -z "${BENCH_PG_URL:-}" ]; then log "ris-pg skipped (no BENCH_PG_URL)"; continue; fi
      pg_reset "$BENCH_PG_URL" >&2 || { log "ris-pg skipped: could not empty the database"; continue; }
      start_engine "$RUN/engine-pg" "$RUN/engine-pg.log" "$((P + 5))" "$((P + 6))" "$((P + 7))" "$BENCH_PG_URL"
      run_target ris-pg "$((P + 5))" "$ENGINE_PID" G
      stop_pid "$ENGINE_PID" ;;
    *) die "unknown target $target" ;;
  esac
done

MD="$BENCH_HOME/results/ris-hl7-intake-$RUN_ID.md"
"$ENGINE_PY" "$REPO/bench/intake_report.py" "$RUN" --json "$BENCH_HOME/results/ris-hl7-intake-$RUN_ID.json" > "$MD"
cp "$MD" "$BENCH_HOME/results/ris-hl7-intake-latest.md"
cat "$MD"
log "done in $(( $(date +%s) - T_START )) s; raw: $RUN"
log "summary: $MD"
