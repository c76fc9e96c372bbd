#!/usr/bin/env bash
# Benchmarks (not tests): the data step vs the seed's raw SQL by psql, and backup/restore vs plain
# pg_dump / pg_restore, all on the demo sandbox in the same run. Prints ratios; figures land in
# benchmarks/results/ (git-ignored).   make bench USERS=1000000
set -euo pipefail
cd "$(dirname "$0")/.."
USERS="${1:-100000}"
BOX="${VDP_SANDBOX_DIR:-$PWD/.sandbox}"
BASE="${VDP_SANDBOX_PORT_BASE:-15430}"
mkdir -p benchmarks/results
# Credentials travel in the environment of the benchmark processes only, never on a command line.
PGPASSWORD="$(head -1 "$BOX/secrets/postgres_password")"
AWS_ACCESS_KEY_ID="$(head -1 "$BOX/secrets/s3_access_key")"
AWS_SECRET_ACCESS_KEY="$(head -1 "$BOX/secrets/s3_secret_key")"
export PGPASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY

echo "== data step vs the seed's SQL (10000 and $USERS users)"
.venv/bin/python benchmarks/bench_data_step.py --users 10000 "$USERS" --port $((BASE + 2)) \
  --json benchmarks/results/bench_data_step.json

echo "== backup and restore vs pg_dump / pg_restore ($USERS users)"
.venv/bin/python benchmarks/bench_backup.py --users "$USERS" --prod-port $((BASE + 2)) --staging-port $((BASE + 3)) \
  --s3-endpoint "http://127.0.0.1:$((BASE + 4))" --json benchmarks/results/bench_backup.json
