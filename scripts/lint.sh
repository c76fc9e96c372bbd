#!/usr/bin/env bash
# Every static check the project holds itself to; exits non-zero if any fails (all are run).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
status=0
step() { printf '\n== %s\n' "$1"; shift; "$@" || { echo "FAILED: $*"; status=1; }; }

step "ruff" "$BIN/ruff" check library module_utils doc_fragments tests fixtures scripts benchmarks
step "yamllint" "$BIN/yamllint" -s .
step "ansible-lint (production profile)" "$BIN/ansible-lint" --profile production -q
step "ansible-doc renders every module" bash -c '
  for m in library/*.py; do n=$(basename "$m" .py); .venv/bin/ansible-doc -M library -t module "$n" >/dev/null || { echo "ansible-doc failed: $n"; exit 1; }; done'
if compgen -G "migrations/*.sql" >/dev/null; then
  step "squawk (migrations)" "$BIN/squawk" migrations/*.sql
fi
exit $status
