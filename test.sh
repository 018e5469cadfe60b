#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Installs what the tests talk to when it can: DCMTK (dcmtk),
# iproute2 (ss), dicom3tools (dciodvfy), Chromium (chromium, chromium-driver: the browser tests).
# RIS_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test runs it on PostgreSQL.
# Extra arguments go to pytest (e.g. ./test.sh -k worklist).
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
# need "WHAT FOR" "WITHOUT IT" PACKAGE... -- installs the Debian packages when one of their programs is missing
need() {
  local why=$1 without=$2; shift 2
  echo "test: installing $* ($why)" >&2
  { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; } \
    || echo "test: could not install $*; install it with 'apt-get install $*' ($without)" >&2
}
[ -x /usr/bin/findscu ] && [ -x /usr/bin/storescu ] && [ -x /usr/bin/dump2dcm ] \
  || need "the DICOM tests talk to the engine with DCMTK" "the DCMTK tests will fail" dcmtk
command -v ss >/dev/null || need "ss shows the listeners' backlog" "the backlog test will fail" iproute2
[ -x /usr/bin/dciodvfy ] || need "dciodvfy checks the coerced instances" "two coercion tests will be skipped" dicom3tools
[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] \
  || need "the browser tests" "the browser tests will be skipped" chromium chromium-driver
scripts/setup-venv.sh requirements-dev.txt
export TCP_NODELAY=1   # Debian's DCMTK keeps Nagle on unless this is set
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
