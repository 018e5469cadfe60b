#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Installs DCMTK (Debian package dcmtk), dicom3tools (dciodvfy) and
# Chromium (chromium, chromium-driver: the browser tests) when it can.
# RIS_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test runs it on PostgreSQL.
# Extra arguments go to pytest (e.g. ./test.sh -k worklist).
set -euo pipefail
cd "$(dirname "$0")"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
if [ ! -x /usr/bin/findscu ] || [ ! -x /usr/bin/storescu ] || [ ! -x /usr/bin/dump2dcm ]; then
  echo "test: installing DCMTK (apt-get install dcmtk)" >&2
  { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk >/dev/null; } \
    || echo "test: could not install DCMTK; install it with 'apt-get install dcmtk' (DCMTK tests will fail)" >&2
fi
if [ ! -x /usr/bin/dciodvfy ]; then
  echo "test: installing dicom3tools (dciodvfy checks the coerced instances)" >&2
  { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null; } \
    || echo "test: could not install dicom3tools; 'apt-get install dicom3tools' (two coercion tests will be skipped)" >&2
fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "test: installing Chromium for the browser tests (apt-get install chromium chromium-driver)" >&2
  { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
    || echo "test: could not install Chromium; the browser tests (tests/web/test_browser.py) will be skipped" >&2
fi
scripts/setup-venv.sh requirements-dev.txt
export TCP_NODELAY=1   # Debian's DCMTK keeps Nagle on unless this is set
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
