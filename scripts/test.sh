#!/usr/bin/env bash
# The whole test suite: linters, pytest on real PostgreSQL + SeaweedFS S3, Molecule scenarios.
# Installs what it needs (scripts/bootstrap.sh) and starts/stops the servers it uses itself.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"
status=0
start=$(date +%s)

bash scripts/lint.sh || status=1

printf '\n== pytest\n'
# Three workers (pytest-xdist, a file per worker at a time, each with its own sandbox 40 ports apart): most of a test's
# time is waiting on ansible-playbook, PostgreSQL and the servers, so 3 beat 2 on 2 cores. VDP_TEST_SELECT picks the
# tier: "not extended" (default; tests/extended.txt lists what it leaves out), "extended", or "" for everything.
select="${VDP_TEST_SELECT-not extended}"
.venv/bin/pytest -q -n "${VDP_TEST_WORKERS:-3}" --dist loadfile ${select:+-m "$select"} || status=1

printf '\n== molecule\n'
if [ -d molecule ] && compgen -G "molecule/*/molecule.yml" >/dev/null; then
  molecule test --all || status=1
fi

printf '\n== test suite finished in %ss: %s\n' "$(( $(date +%s) - start ))" "$([ $status -eq 0 ] && echo PASSED || echo FAILED)"
exit $status
