#!/usr/bin/env bash
# One-time (and re-runnable) set-up of everything the demo and the tests need on a fresh machine:
#   - PostgreSQL 15 server binaries (Debian package postgresql-15) when missing,
#   - Debian's prometheus and prometheus-node-exporter, and chromium (headless, for the run.html tests),
#   - a project virtualenv (.venv) with the pinned Python packages (Ansible + bundled collections,
#     psycopg, boto3, linters, Molecule, SeaweedFS's `weed` for the S3 sandbox).
# Idempotent: a second run checks and installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN="${VDP_PG_BIN:-/usr/lib/postgresql/15/bin}"
PYTHON="${PYTHON:-python3}"
VENV=".venv"
STAMP="$VENV/.requirements.sha256"

log() { printf '[bootstrap] %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*  (install it yourself, or run as root)"; exit 1; fi
}

if [ ! -x "$PG_BIN/initdb" ] || ! command -v psql >/dev/null; then
  log "PostgreSQL 15 server binaries not found in $PG_BIN: installing postgresql-15 from Debian"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
  # Debian's package starts its own cluster on 5432; the sandbox uses its own clusters, so stop it.
  as_root service postgresql stop >/dev/null 2>&1 || true
fi
# Prometheus 2.42 and node_exporter from Debian, for the sandbox's monitoring and the monitor gate's tests.
if ! command -v prometheus >/dev/null || ! command -v prometheus-node-exporter >/dev/null; then
  log "prometheus / prometheus-node-exporter not found: installing them from Debian"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-node-exporter >/dev/null
  # Debian's packages start system services (ports 9090/9100); the sandbox runs its own on its ports.
  for svc in prometheus prometheus-node-exporter; do
    as_root service "$svc" stop >/dev/null 2>&1 || true
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      as_root systemctl disable "$svc" >/dev/null 2>&1 || true
    else
      as_root update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
fi
# Headless Chromium from Debian renders run.html in the report tests (DOM text + screenshot); DejaVu gives the
# screenshot real glyphs. --no-install-recommends keeps it to the browser (no desktop services).
if ! command -v chromium >/dev/null || [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  log "chromium / fonts-dejavu-core not found: installing them from Debian"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
fi
if ! id postgres >/dev/null 2>&1; then
  log "system user 'postgres' missing (initdb refuses root): creating it"
  as_root useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  log "installing pinned Python packages into $VENV (a few minutes the first time)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$STAMP"
fi
log "ready: $("$VENV/bin/ansible" --version | sed -n 1p), PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}'), $("$VENV/bin/weed" version 2>/dev/null | awk '{print $3}' | head -1 | sed 's/^/SeaweedFS /')"
