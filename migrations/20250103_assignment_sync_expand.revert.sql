-- 20250103_assignment_sync_expand.revert.sql — undo 20250103_assignment_sync_expand.sql: the sync's
-- triggers (if the contract has not removed them already) and the journal's trigger, and their functions.
--
-- Run by vdp_schema_migrations (state=reverted) in ONE transaction with the ledger update. The ledger reverts
-- newest first, so this runs after the schema revert (this file was applied before the schema file); until then
-- the sync finds no practitioner_assignments and does nothing, so the old app's relationship writes never fail.
-- The journal's TABLE stays, with its rows: the rollback proves the legacy tables against the baseline after the
-- revert, and attributes the application's relationship writes with it (vdp_runbook is the runbook's own schema,
-- like the reverted_* copies). Safe to run twice (IF EXISTS).
-- squawk-ignore-file ban-drop-function
-- (dropping what the forward migration added IS the revert; no application code calls these functions.)
BEGIN;
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '1min';

DROP TRIGGER IF EXISTS vdp_sync_assignments_insert ON public.sponsor_practitioner_relationships;
DROP TRIGGER IF EXISTS vdp_sync_assignments_update ON public.sponsor_practitioner_relationships;
DROP TRIGGER IF EXISTS vdp_sync_assignments_delete ON public.sponsor_practitioner_relationships;
DROP TRIGGER IF EXISTS vdp_journal_relationship_writes ON public.sponsor_practitioner_relationships;
DROP FUNCTION IF EXISTS vdp_runbook.sync_relationship_statement();
DROP FUNCTION IF EXISTS vdp_runbook.sync_assignment_pairs(uuid [], uuid []);
DROP FUNCTION IF EXISTS vdp_runbook.journal_relationship_write();

COMMIT;
