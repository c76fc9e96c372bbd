-- 20250105_assignment_sync_contract.sql — the CONTRACT step of the online migration: remove the sync that
-- 20250103_assignment_sync_expand.sql (the expand step) installed, once the new app is deployed and no old app
-- writes sponsor_practitioner_relationships any more.
--
-- Applied by vdp_schema_migrations in ONE transaction with its ledger row, AFTER the new app is deployed,
-- validated and watched: by migrate.yml after the monitor gate (tag contract), or alone by
-- playbooks/contract.yml when the operator keeps old clients writing for a while. Forward-only: a second run finds
-- it in the ledger and does nothing (the expand version stays recorded, so the schema phase never re-installs the
-- sync). Like the expand step's, its name is outside the organizational model's versions
-- (20250103_organizational_model_*), so preflight calls a migration "applied" whether or not the contract has run.
--
-- Only the three sync triggers go: the function stays (inert) so the revert can put the triggers back, and the
-- journal trigger stays (validations after the contract still attribute the application's relationship writes).
-- Revert: 20250105_assignment_sync_contract.revert.sql (expand again: an app rolled back to the old release
-- writes relationships again). By hand: psql -v ON_ERROR_STOP=1 -f <file>.
BEGIN;
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '1min';

DROP TRIGGER IF EXISTS vdp_sync_assignments_insert ON public.sponsor_practitioner_relationships;
DROP TRIGGER IF EXISTS vdp_sync_assignments_update ON public.sponsor_practitioner_relationships;
DROP TRIGGER IF EXISTS vdp_sync_assignments_delete ON public.sponsor_practitioner_relationships;

COMMIT;
