# The two commands a new user needs:
#   make demo   - set up everything, start the local sandbox, load the legacy platform, run migrate.yml
#   make test   - set up everything, run linters, pytest (real PostgreSQL + S3) and Molecule
# Every target installs what it needs first (scripts/bootstrap.sh is idempotent and quick when done).
# Targets that run a playbook take INVENTORY (default: the embedded sandbox) and ARGS (extra ansible-playbook
# arguments), e.g.  make preflight INVENTORY=inventories/prod ARGS="--ask-vault-pass"

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
USERS ?= 10000
SHAPE ?= supabase
INVENTORY ?= inventories/local/hosts.yml
RUN ?=
STRATEGY ?= flags
ARGS ?=
CHAOS_ARGS ?=
PLAY := $(BIN)/ansible-playbook -i $(INVENTORY) $(ARGS)
# pytest as make test runs it (scripts/test.sh): three workers, a test file per worker at a time.
PYTEST := $(BIN)/pytest -q -n 3 --dist loadfile

.PHONY: help bootstrap demo test test-extended test-all lint pytest molecule sandbox-up sandbox-down sandbox-status sandbox-reset \
        fixture preflight migrate dry-run status stop rollback report bench chaos clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'
	@echo "  (USERS=$(USERS) SHAPE=$(SHAPE) for demo/fixture/bench; INVENTORY=$(INVENTORY) ARGS='...' for playbooks;"
	@echo "   RUN=<run id> STRATEGY=$(STRATEGY) for rollback)"

bootstrap: ## Install what the demo and the tests need (idempotent)
	@bash scripts/bootstrap.sh

sandbox-up: bootstrap ## Start the embedded sandbox (PostgreSQL x2, S3, the stand-in app, Prometheus, mail sink)
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_action=up

sandbox-down: bootstrap ## Stop exactly the sandbox's processes
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_action=down

sandbox-status: bootstrap ## Say what of the sandbox runs
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_action=status

sandbox-reset: bootstrap ## Stop the sandbox, wipe its data (keeps its secrets), start it again
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_action=reset

fixture: sandbox-up ## Load the legacy platform (USERS, SHAPE) into the sandbox; reloads it when they differ
	$(BIN)/ansible-playbook playbooks/fixture.yml -e legacy_fixture_users=$(USERS) -e legacy_fixture_shape=$(SHAPE) \
	  -e legacy_fixture_reload_when_different=true

preflight: bootstrap ## Read-only checks and go/no-go against INVENTORY (changes nothing)
	$(PLAY) playbooks/preflight.yml

dry-run: bootstrap ## migrate.yml --check against INVENTORY: what would happen (writes nothing)
	$(PLAY) migrate.yml --check

migrate: bootstrap ## The whole migration against INVENTORY
	$(PLAY) migrate.yml

status: bootstrap ## Where a running or interrupted migration stands (INVENTORY)
	$(PLAY) playbooks/status.yml

stop: bootstrap ## Ask the running migration to stop cleanly between batches (INVENTORY)
	$(PLAY) playbooks/stop.yml

rollback: bootstrap ## Roll run RUN back with STRATEGY=flags|extended|full (full also needs CONFIRM='I understand this overwrites production')
	@test -n "$(RUN)" || { echo "make rollback needs RUN=<the migration's run id> (ls artifacts/runs/)"; exit 2; }
	$(PLAY) playbooks/rollback.yml -e vdp_run_id=$(RUN) -e rollback_strategy=$(STRATEGY) \
	  $(if $(CONFIRM),-e 'rollback_confirm="$(CONFIRM)"')

demo: fixture ## Sandbox + legacy platform + migrate.yml end to end, then the run record's path (run.html last)
	@start=$$(date +%s); rc=0; \
	$(BIN)/ansible-playbook migrate.yml || rc=$$?; \
	record=$$(ls -td artifacts/runs/*/ | head -1); \
	echo; echo "migrate.yml took $$(( $$(date +%s) - start )) s (the sandbox and fixture steps before it are not counted)"; \
	echo "summary: $${record}run.md (and run.json, each phase's <phase>.json)"; \
	echo "run record: $$(realpath $${record})/run.html"; \
	exit $$rc

lint: bootstrap ## ruff, yamllint, ansible-lint (production), ansible-doc, squawk
	bash scripts/lint.sh

pytest: bootstrap ## make test's pytest part alone (real PostgreSQL, S3, Prometheus, SMTP; extended tests left out)
	$(PYTEST) -m "not extended"

molecule: bootstrap ## The Molecule scenario alone (converge + idempotence)
	$(BIN)/molecule test --all

test: bootstrap ## Everything CI runs: lint + pytest + Molecule; non-zero on any failure
	bash scripts/test.sh

test-extended: bootstrap ## The long tests make test leaves out (tests/extended.txt; about 30 min on 2 cores)
	$(PYTEST) -m extended

test-all: bootstrap ## make test with the extended tests too
	VDP_TEST_SELECT= bash scripts/test.sh

bench: BENCH_USERS = $(if $(filter command line,$(origin USERS)),$(USERS),1000000)
bench: sandbox-up ## Project vs the seed's psql / pg_dump / pg_restore, same data, one run: benchmarks/results/ (1M users; USERS=100000 quick)
	bash scripts/bench.sh $(BENCH_USERS) $(BENCH_ARGS)

chaos: bootstrap ## Chaos suite: faults across migrate.yml, re-runs vs an uninterrupted run; table in benchmarks/results/ (CHAOS_ARGS='--seed N')
	$(BIN)/python scripts/chaos.py $(CHAOS_ARGS)

clean: sandbox-down ## Stop the sandbox and delete it and the run records
	rm -rf .sandbox artifacts
