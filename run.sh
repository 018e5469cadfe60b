#!/usr/bin/env bash
# Set up (idempotent) and run the engine on its embedded default: SQLite and files under ./data.
# MLLP 2575, DICOM 11112 (AE title RIS), HTTP 8080, all on 127.0.0.1; see `ris settings` for RIS_* overrides.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-venv.sh requirements.txt
exec .venv/bin/ris serve "$@"
