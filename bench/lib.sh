# bench/lib.sh - shell helpers shared by bench/hl7_intake.sh and bench/mwl_cfind.sh (sourced, not run).
#
# Everything started here listens on 127.0.0.1 only (checked), is stopped by its PID, and every wait is bounded.
# Nothing is written inside the repository: runs go under BENCH_HOME (default ${XDG_CACHE_HOME:-$HOME/.cache}/ris-bench).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$(cd "$REPO/../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}
ENGINE_PY=${ENGINE_PY:-$REPO/.venv/bin/python}
# The engine's code: the repository itself by default. ENGINE_SRC=<folder with app/ interfaces/ mappings/ config/>
# runs a frozen copy instead (python -m puts the working directory first on sys.path), e.g. a snapshot taken while
# other people are editing the working tree.
ENGINE_SRC=${ENGINE_SRC:-$REPO}

if [ -z "${BENCH_HOME:-}" ]; then
  if [ -n "${XDG_CACHE_HOME:-}" ]; then BENCH_HOME="$XDG_CACHE_HOME/ris-bench"
  elif [ -n "${HOME:-}" ]; then BENCH_HOME="$HOME/.cache/ris-bench"
  else echo "set BENCH_HOME (or HOME) to a writable folder" >&2; exit 1; fi
fi
mkdir -p "$BENCH_HOME/results"
BENCH_HOME=$(cd "$BENCH_HOME" && pwd)
export BENCH_HOME
export PYTHONDONTWRITEBYTECODE=1

T_START=$(date +%s)
log() { printf '[%s %4ss] %s\n' "${BENCH_TAG:-bench}" "$(( $(date +%s) - T_START ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=()
stop_pid() { # pid: TERM, wait <= 20 s, then KILL; only ever our own children
  local pid=$1 i
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "pid $pid ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
cleanup_all() { local p; for p in "${PIDS[@]+"${PIDS[@]}"}"; do stop_pid "$p"; done; }

port_free() { [ -z "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }

wait_listening() { # pid logfile timeout_s port...: every port listened on by pid, and only on loopback
  local pid=$1 logf=$2 tmo=$3; shift 3
  local i p ok a bad=0
  for i in $(seq 1 $((tmo * 10))); do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$logf" >&2; die "pid $pid exited during start-up (log: $logf)"; }
    ok=1
    for p in "$@"; do [ -n "$(ss -ltnpH "sport = :$p" 2>/dev/null | grep "pid=$pid,")" ] || ok=0; done
    [ $ok = 1 ] && break
    sleep 0.1
  done
  [ $ok = 1 ] || { stop_pid "$pid"; die "pid $pid did not listen on $* within $tmo s (log: $logf)"; }
  while read -r a; do
    [ -z "$a" ] && continue
    case "$a" in 127.*|\[::1\]*) ;; *) bad=1; log "pid $pid listens on $a (not loopback)";; esac
  done < <(ss -ltnpH 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) { print $4 }')
  [ $bad = 0 ] || { stop_pid "$pid"; die "pid $pid bound a non-loopback address; refusing to continue"; }
}

cpu_ticks() { # utime+stime (clock ticks) of pid, 0 if gone
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

fs_type() { df -PT "$1" 2>/dev/null | awk 'NR == 2 { print $2 }' || echo unknown; }

PYSPY="$BENCH_HOME/venv-pyspy/bin/py-spy"
ensure_pyspy() { # py-spy in its own venv under BENCH_HOME (never in the engine's venv); fails if it cannot install
  [ -x "$PYSPY" ] && return 0
  log "installing py-spy into $BENCH_HOME/venv-pyspy"
  "${BENCH_PYTHON:-python3}" -m venv "$BENCH_HOME/venv-pyspy" && "$BENCH_HOME/venv-pyspy/bin/pip" install -q py-spy \
    || { log "py-spy install failed: no profile"; return 1; }
}

ENGINE_PID=""
start_engine() { # datadir logfile mllp dicom http [database-url]: starts the engine, sets ENGINE_PID
  local data=$1 logf=$2 mllp=$3 dicom=$4 http=$5 url=${6:-} p
  for p in "$mllp" "$dicom" "$http"; do port_free "$p" || die "port $p is in use"; done
  mkdir -p "$data"
  ( cd "$ENGINE_SRC" && exec env RIS_DATA_DIR="$data" RIS_HOST=127.0.0.1 RIS_MLLP_PORT="$mllp" \
      RIS_DICOM_PORT="$dicom" RIS_DICOM_AET="${RIS_AET:-RIS}" RIS_HTTP_PORT="$http" RIS_DATABASE_URL="$url" \
      RIS_SITE_TIMEZONE=UTC RIS_LOG_LEVEL="${ENGINE_LOG_LEVEL:-WARNING}" "$ENGINE_PY" -m interfaces serve 9>&- ) \
      >"$logf" 2>&1 &
  ENGINE_PID=$!
  PIDS+=("$ENGINE_PID")
  wait_listening "$ENGINE_PID" "$logf" 120 "$mllp" "$dicom" "$http"
  log "engine started (pid $ENGINE_PID, code $ENGINE_SRC) MLLP $mllp DICOM $dicom HTTP $http, db ${url:-sqlite in $data}"
}

engine_src_id() { # what code the engine runs: git commit + dirty marker + content digest of the .py/.yaml files
  local commit dirty digest
  commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "?")
  dirty=$(git -C "$REPO" status --porcelain -- app interfaces mappings config 2>/dev/null | wc -l)
  digest=$(cd "$ENGINE_SRC" && find app interfaces mappings config -name '*.py' -o -name '*.yaml' | LC_ALL=C sort \
           | xargs sha256sum | sha256sum | cut -c1-12)
  echo "repo HEAD $commit ($dirty changed/untracked paths in the working tree); engine code $ENGINE_SRC, digest $digest"
}

pg_reset() { # url: empty the public schema of THAT database only (refuses when other sessions use it)
  "$ENGINE_PY" - "$1" <<'EOF'
import sys, time
import psycopg
url = sys.argv[1]
for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://"):
    if url.startswith(prefix):
        url = "postgresql://" + url[len(prefix):]
with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
    host = conn.info.host
    if not (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
        sys.exit(f"pg_reset: {host} is not a local server")
    db = conn.execute("select current_database()").fetchone()[0]
    for _ in range(30):   # <= 30 s for others (e.g. a test run) to leave the database
        others = conn.execute("select count(*) from pg_stat_activity where datname = current_database() "
                              "and pid <> pg_backend_pid()").fetchone()[0]
        if not others:
            break
        time.sleep(1)
    else:
        sys.exit(f"pg_reset: {others} other sessions use database {db!r}; not emptying it")
    conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
    conn.execute("CREATE SCHEMA public")
    print(f"pg_reset: emptied schema public of database {db!r} on {host}")
EOF
}

machine_busy_ticks() { # CPU ticks spent by everything on the machine (all cores), idle and iowait excluded
  awk 'NR == 1 { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}

pg_counters() { # url: JSON of this database's cumulative counters (pg_stat_database), after the stats flush
  "$ENGINE_PY" - "$1" <<'EOF2'
import json, sys, time
import psycopg
url = sys.argv[1]
for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://"):
    if url.startswith(prefix):
        url = "postgresql://" + url[len(prefix):]
time.sleep(1.2)   # backends report their statistics at most once a second (PostgreSQL 15)
with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
    conn.execute("select pg_stat_clear_snapshot()")
    cols = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "tup_returned", "tup_fetched")
    row = conn.execute(f"select {', '.join(cols)} from pg_stat_database where datname = current_database()").fetchone()
    print(json.dumps(dict(zip(cols, row))))
EOF2
}
