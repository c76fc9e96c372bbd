# The two commands a new user needs:
#   make demo   - set up everything, start the local sandbox, load the legacy platform, run migrate.yml
#   make test   - set up everything, run linters, pytest (real PostgreSQL + S3) and Molecule
# Every target installs what it needs first (scripts/bootstrap.sh is idempotent and quick when done).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
USERS ?= 10000
SHAPE ?= supabase

.PHONY: help bootstrap demo test lint pytest molecule sandbox-up sandbox-down sandbox-status sandbox-reset \
        fixture migrate bench clean

help:
	@echo "make demo      - sandbox up, load $(USERS) legacy users ($(SHAPE) shape), run migrate.yml end to end"
	@echo "make test      - linters + pytest (real PostgreSQL and S3) + Molecule; non-zero on any failure"
	@echo "make sandbox-up | sandbox-down | sandbox-status | sandbox-reset"
	@echo "make bench     - benchmarks against raw psql / pg_dump in the same run (USERS=1000000 for the full size)"

bootstrap:
	@bash scripts/bootstrap.sh

sandbox-up: bootstrap
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_action=up

sandbox-down: bootstrap
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_action=down

sandbox-status: bootstrap
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_action=status

sandbox-reset: bootstrap
	$(BIN)/ansible-playbook playbooks/sandbox.yml -e sandbox_action=reset

fixture: sandbox-up
	$(BIN)/ansible-playbook playbooks/fixture.yml -e legacy_fixture_users=$(USERS) -e legacy_fixture_shape=$(SHAPE)

migrate: bootstrap
	$(BIN)/ansible-playbook migrate.yml

demo: fixture
	@start=$$(date +%s); \
	$(BIN)/ansible-playbook migrate.yml; \
	echo; echo "demo finished in $$(( $$(date +%s) - start ))s; run record: $$(ls -td artifacts/runs/*/ | head -1)run.md"

lint: bootstrap
	bash scripts/lint.sh

pytest: bootstrap
	$(BIN)/pytest

molecule: bootstrap
	$(BIN)/molecule test --all

test: bootstrap
	bash scripts/test.sh

bench: sandbox-up
	bash scripts/bench.sh $(USERS)

clean: sandbox-down
	rm -rf .sandbox artifacts
