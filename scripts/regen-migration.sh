#!/usr/bin/env bash
# Pre-release only: regenerate the single initial Alembic revision from app/models.py.
# Run after changing the models; commit the regenerated file with the model change.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -f app/migrations/versions/0001_initial_schema.py
.venv/bin/python - "$tmp/empty.db" <<'PY'
import sys
from alembic import command
from app.db import alembic_config
cfg = alembic_config(f"sqlite:///{sys.argv[1]}")
command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001")
PY
sed -i -e '/### commands auto generated/d' -e '/### end Alembic commands/d' app/migrations/versions/0001_initial_schema.py
ls app/migrations/versions/
