#!/usr/bin/env bash
# bench/mwl_cfind.sh - Modality Worklist C-FIND latency of the engine at N = 1k / 10k / 50k items, next to
# DCMTK wlmscpfs and Orthanc (+ ModalityWorklists plugin) measured in the same run by ../shared/bench/peers.sh.
#
#   NS=1000 REPS=3 CELL_BUDGET_S=20 bench/mwl_cfind.sh          # smoke, ~2 min
#   bench/mwl_cfind.sh                                           # NS="1000 10000 50000", ~30 min on 2 vCPU (loading
#                                                                # 50k orders through HL7 and the peers' 50k cells)
#   RUN_CSTORE=1 STORE_FILES=200 bench/mwl_cfind.sh              # + C-STORE: engine next to storescp and Orthanc
#   PROFILE=1 bench/mwl_cfind.sh                                 # + py-spy sample of exact-PatientID queries at max N
#
# The engine runs on a fresh SQLite data folder under BENCH_HOME (RIS_SITE_TIMEZONE=UTC: the generated
# times mean UTC wall-clock). peers.sh loads it through TARGET_LOAD_CMD = bench/load_worklist.py, which sends the
# manifest's new items as HL7 OMI^O23 over MLLP, checks every ACK is AA and counts the engine's worklist with a
# universal C-FIND. peers.sh then runs the same query files (q1..q5 + probes) against every SCP with DCMTK
# findscu and a pynetdicom client and checks every answer count; bench/mwl_report.py puts the engine next to the
# peers (ratios) and lists every wrong answer of the engine.
#
# Environment (all optional; the peers.sh knobs pass through):
#   NS="1000 10000 50000"  REPS=10  CELL_BUDGET_S=40  MIN_REPS=3  RUN_PEERS=1  RUN_NAGLE=0
#   RUN_CSTORE=0|1 (1: also C-STORE of STORE_FILES=500 CT images to the engine, storescp and Orthanc; one run)
#   PROBES_N=1000  CLIENTS=findscu,pynetdicom  TARGET_LOAD_TIMEOUT=1800
#   LOAD_CONNS=8 (MLLP connections of the loader)  LOAD_VERIFY=count|spot|none   PORT_BASE=26520 (uses +0..+2)
#   PROFILE=0|1  PROFILE_S=15   ENGINE_SRC=<frozen copy of the engine's code> (default: this repository)
#   BENCH_HOME=${XDG_CACHE_HOME:-$HOME/.cache}/ris-bench : run folder work/ris-mwl/<run-id>/; summary
#   results/ris-mwl-cfind-<run-id>.md (+ .json, + ris-mwl-cfind-latest.md); peers.sh's own summary in results/dicom/
set -euo pipefail
BENCH_TAG=mwl_cfind
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export NS=${NS:-"1000 10000 50000"}
export REPS=${REPS:-10}
export CELL_BUDGET_S=${CELL_BUDGET_S:-40}
export RUN_NAGLE=${RUN_NAGLE:-0}
export RUN_CSTORE=${RUN_CSTORE:-0}
export TARGET_LOAD_TIMEOUT=${TARGET_LOAD_TIMEOUT:-1800}
LOAD_CONNS=${LOAD_CONNS:-8}
LOAD_VERIFY=${LOAD_VERIFY:-count}
PORT_BASE=${PORT_BASE:-26520}
PROFILE=${PROFILE:-0}
PROFILE_S=${PROFILE_S:-15}
AET=${RIS_AET:-RIS}
PEERS="$SHARED_BENCH/peers.sh"
[ -x "$PEERS" ] || die "peers.sh not found at $PEERS (set SHARED_BENCH)"
[ -x "$ENGINE_PY" ] || die "no engine venv at $ENGINE_PY (scripts/setup-venv.sh)"

RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
RUN="$BENCH_HOME/work/ris-mwl/$RUN_ID"
mkdir -p "$RUN"
trap cleanup_all EXIT
trap 'exit 130' INT TERM
MLLP=$PORT_BASE; DICOM=$((PORT_BASE + 1)); HTTP=$((PORT_BASE + 2))
start_engine "$RUN/engine" "$RUN/engine.log" "$MLLP" "$DICOM" "$HTTP"
log "engine data folder $RUN/engine on $(fs_type "$RUN/engine"); $(engine_src_id)"
{
  echo "{\"run_id\": \"$RUN_ID\", \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"engine\": \"$(engine_src_id)\","
  echo " \"fs\": \"$(fs_type "$RUN/engine")\", \"cpus\": $(nproc), \"ns\": \"$NS\", \"reps\": $REPS,"
  echo " \"cell_budget_s\": $CELL_BUDGET_S, \"load_conns\": $LOAD_CONNS, \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}"
} > "$RUN/env.json"

LOADER="'$ENGINE_PY' '$REPO/bench/load_worklist.py' --port $MLLP --dicom-port $DICOM --aet $AET -c $LOAD_CONNS"
LOADER="$LOADER --state '$RUN/loaded.json' --token $RUN_ID-$ENGINE_PID --verify $LOAD_VERIFY --stats '$RUN/load.jsonl'"
log "peers.sh with TARGET_MWL=127.0.0.1:$DICOM:$AET, NS=\"$NS\" REPS=$REPS CELL_BUDGET_S=$CELL_BUDGET_S"
set +e
STORE=""
# C-STORE: the engine keeps what it received, so one run per engine (no archive reset between runs)
[ "$RUN_CSTORE" = 1 ] && { STORE="127.0.0.1:$DICOM:$AET"; export STORE_RUNS=1; }
TARGET_NAME=ris TARGET_MWL="127.0.0.1:$DICOM:$AET" TARGET_STORE="$STORE" TARGET_PID="$ENGINE_PID" \
  TARGET_LOAD_CMD="$LOADER" "$PEERS" > "$RUN/peers.out" 2> >(tee "$RUN/peers.err" | grep -E --line-buffered '^\[(peers|load_worklist)' >&2)
rc=$?
set -e
SUMMARY=$(tail -1 "$RUN/peers.out")
[ $rc = 0 ] && [ -f "$SUMMARY" ] || die "peers.sh failed (exit $rc); see $RUN/peers.err"
PEERS_RUN="${BENCH_WORK:-$BENCH_HOME/work/dicom}/results/$(basename "$SUMMARY" .md | sed 's/^peers-//')"

if [ "$PROFILE" = 1 ] && ensure_pyspy; then
  spy=$PYSPY
  NMAXQ=$(for n in $NS; do echo "$n"; done | sort -n | tail -1)
  MAN="${BENCH_WORK:-$BENCH_HOME/work/dicom}/wl/N$NMAXQ/manifest.json"
  if [ -f "$MAN" ]; then
    log "profile: exact-PatientID C-FIND loop at N=$NMAXQ for ${PROFILE_S}s under py-spy"
    "$ENGINE_PY" "$REPO/bench/cfind_loop.py" --port "$DICOM" --aet "$AET" --manifest "$MAN" --seconds "$((PROFILE_S + 4))" \
      > "$RUN/cfind-loop.txt" 2>&1 &
    lp=$!
    sleep 2
    "$spy" record -p "$ENGINE_PID" -d "$PROFILE_S" -r 100 --format raw -o "$RUN/profile-cfind.collapsed" > "$RUN/py-spy.log" 2>&1 || true
    wait "$lp" || true
    { echo "## Profile of the engine answering exact-PatientID C-FINDs at N=$NMAXQ (py-spy)"; echo
      cat "$RUN/cfind-loop.txt"; echo
      [ -s "$RUN/profile-cfind.collapsed" ] && "$ENGINE_PY" "$REPO/bench/profile_summary.py" --top 20 "$RUN/profile-cfind.collapsed"
    } > "$RUN/profile-summary.md" || true
    log "profile summary: $RUN/profile-summary.md"
  fi
fi
stop_pid "$ENGINE_PID"

MD="$BENCH_HOME/results/ris-mwl-cfind-$RUN_ID.md"
"$ENGINE_PY" "$REPO/bench/mwl_report.py" --run "$RUN" --peers-run "$PEERS_RUN" --peers-summary "$SUMMARY" \
  --json "$BENCH_HOME/results/ris-mwl-cfind-$RUN_ID.json" > "$MD"
cp "$MD" "$BENCH_HOME/results/ris-mwl-cfind-latest.md"
cat "$MD"
log "done in $(( $(date +%s) - T_START )) s; raw: $RUN and $PEERS_RUN"
log "summary: $MD (peers.sh's own: $SUMMARY)"
