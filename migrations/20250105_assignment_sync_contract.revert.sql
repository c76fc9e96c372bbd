-- 20250105_assignment_sync_contract.revert.sql — undo the contract: put the sync's three triggers back (the
-- functions of 20250103_assignment_sync_expand.sql were kept by the contract), for an app rolled back to the
-- release that still writes sponsor_practitioner_relationships. The relationships written while the sync was off
-- are not replayed: run validation, which names any pair whose assignment is missing or stale.
--
-- Run by vdp_schema_migrations (state=reverted) in ONE transaction with the ledger update; the ledger reverts
-- newest first, so this runs before the expand version's revert. Does nothing when the sync's function is gone
-- (the expand version already reverted). Safe to run twice.
BEGIN;
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '1min';

DO $expand$
BEGIN
  IF to_regprocedure('vdp_runbook.sync_relationship_statement()') IS NOT NULL THEN
    DROP TRIGGER IF EXISTS vdp_sync_assignments_insert ON public.sponsor_practitioner_relationships;
    CREATE TRIGGER vdp_sync_assignments_insert
    AFTER INSERT ON public.sponsor_practitioner_relationships
    REFERENCING NEW TABLE AS vdp_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION vdp_runbook.sync_relationship_statement();
    DROP TRIGGER IF EXISTS vdp_sync_assignments_update ON public.sponsor_practitioner_relationships;
    CREATE TRIGGER vdp_sync_assignments_update
    AFTER UPDATE ON public.sponsor_practitioner_relationships
    REFERENCING OLD TABLE AS vdp_old_rows NEW TABLE AS vdp_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION vdp_runbook.sync_relationship_statement();
    DROP TRIGGER IF EXISTS vdp_sync_assignments_delete ON public.sponsor_practitioner_relationships;
    CREATE TRIGGER vdp_sync_assignments_delete
    AFTER DELETE ON public.sponsor_practitioner_relationships
    REFERENCING OLD TABLE AS vdp_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION vdp_runbook.sync_relationship_statement();
  END IF;
END
$expand$;

COMMIT;
