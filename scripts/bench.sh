#!/usr/bin/env bash
# make bench: the project against the seed's own commands (psql, pg_dump, pg_restore), on the same data, in one
# run, on the embedded sandbox (VDP_SANDBOX_DIR / VDP_SANDBOX_PORT_BASE move it, as for make sandbox-up). Not part of
# make test. Writes benchmarks/results/<date>-<users>.md and .json (committed: the README quotes them; the runs' logs in
# benchmarks/results/logs/ are not) and prints the tables.
#   scripts/bench.sh [USERS] [bench.py options]      e.g. scripts/bench.sh 100000 --reuse
# USERS defaults to 1,000,000 (about an hour on 2 cores); 100000 is the quick one (about 15 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
USERS="${1:-1000000}"
shift || true
BOX="${VDP_SANDBOX_DIR:-$PWD/.sandbox}"
BASE="${VDP_SANDBOX_PORT_BASE:-15430}"
for secret in postgres_password s3_access_key s3_secret_key app_admin_token; do
  [[ -r "$BOX/secrets/$secret" ]] || { echo "no sandbox at $BOX (missing secrets/$secret): run make sandbox-up first" >&2; exit 2; }
done
# Credentials travel in the environment of the benchmark's processes only, never on a command line.
PGPASSWORD="$(head -1 "$BOX/secrets/postgres_password")"
AWS_ACCESS_KEY_ID="$(head -1 "$BOX/secrets/s3_access_key")"
AWS_SECRET_ACCESS_KEY="$(head -1 "$BOX/secrets/s3_secret_key")"
export PGPASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
exec .venv/bin/python benchmarks/bench.py --users "$USERS" --port-base "$BASE" --sandbox-dir "$BOX" "$@"
