# One source for each fact the runbook states in more than one place: the names of the migration's
# versions and objects, the default organization, the migration's feature flags, and the defaults
# of the knobs an operator turns (batch size, capacity policy). Modules take their argument-spec
# defaults from here; the roles' defaults, the argument specs and the README are checked against it
# by tests/unit/test_one_source.py, so a change here that is not made there fails the suite.
"""Names and defaults shared by the modules, the roles and the README (checked by a test)."""

from __future__ import annotations

RUNBOOK_SCHEMA = "vdp_runbook"
APPLICATION_NAME_PREFIX = "vdp-runbook"

MIGRATION_NAME = "20250103_organizational_model"
SCHEMA_VERSION = f"{MIGRATION_NAME}_schema"
DATA_VERSION = f"{MIGRATION_NAME}_data"
INDEXES_VERSION = f"{MIGRATION_NAME}_indexes"
BASELINE_KEY = "organizational_model"

# The default organization every legacy user joins (the seed's). The schema file's sign-up trigger
# names the same slug (tests/unit/test_one_source.py checks it).
DEFAULT_ORG_SLUG = "individual-users"
DEFAULT_ORG_MAX_USERS = 1000

# The feature flags the migration creates (disabled), the deploy turns on and a rollback turns off.
FEATURE_FLAGS: tuple[str, ...] = ("organizational_model", "multi_role_support")

# Columns the schema migration adds to profiles: never part of the legacy content.
ADDED_PROFILE_COLUMNS: tuple[str, ...] = ("organization_id", "roles", "is_active", "last_activity")
# Tables the migration creates.
TARGET_TABLES: tuple[str, ...] = ("public.organizations", "public.practitioner_assignments")

# Knobs.
BATCH_SIZE = 20000
CAPACITY_POLICIES: tuple[str, ...] = ("raise", "fail", "report")
CAPACITY_POLICY = "raise"
# With policy raise: room on top of the members, so the first sign-ups after the migration still fit.
CAPACITY_HEADROOM_PERCENT = 10
