-- 20250103_organizational_model_schema.revert.sql — undo ..._schema.sql (and with it the data
-- step's columns and rows), keeping a copy of the organizational data first (the seed's
-- "extended rollback": preserve, then revert).
--
-- Run by vdp_schema_migrations (state=reverted) in ONE transaction with the ledger update, after
-- ..._indexes.revert.sql. Legacy tables and columns are untouched: only what the migration added
-- is dropped, so the sponsor-practitioner model works exactly as before.
-- squawk-ignore-file ban-drop-column, ban-drop-table, ban-drop-function, ban-drop-constraint
-- (dropping what the forward migration added IS the revert; the data is copied to vdp_runbook
-- first, and the application has been rolled back to the version that does not use it).
BEGIN;
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '10min';

CREATE SCHEMA IF NOT EXISTS vdp_runbook;

-- Preserve the organizational data (replaces the copy of any earlier revert).
-- Each copy gets its primary key (a table without one is what Supabase's advisor flags). The tables are
-- the runbook's own, in its own schema, and new here: nothing else can be waiting on them.
DROP TABLE IF EXISTS vdp_runbook.reverted_organizations;
CREATE TABLE vdp_runbook.reverted_organizations AS SELECT * FROM public.organizations;
ALTER TABLE vdp_runbook.reverted_organizations ADD PRIMARY KEY (id);
DROP TABLE IF EXISTS vdp_runbook.reverted_practitioner_assignments;
CREATE TABLE vdp_runbook.reverted_practitioner_assignments AS SELECT * FROM public.practitioner_assignments;
ALTER TABLE vdp_runbook.reverted_practitioner_assignments ADD PRIMARY KEY (id);
DROP TABLE IF EXISTS vdp_runbook.reverted_profile_membership;
CREATE TABLE vdp_runbook.reverted_profile_membership AS
SELECT id, organization_id, roles, is_active, last_activity FROM public.profiles
WHERE organization_id IS NOT NULL OR roles IS NOT NULL;
ALTER TABLE vdp_runbook.reverted_profile_membership ADD PRIMARY KEY (id);

DROP TRIGGER IF EXISTS profiles_vdp_membership_defaults ON public.profiles;
DROP FUNCTION IF EXISTS public.vdp_profiles_membership_defaults();
DROP TABLE IF EXISTS public.practitioner_assignments;
ALTER TABLE public.profiles DROP CONSTRAINT IF EXISTS profiles_organization_id_fkey;
-- organizations before the profile columns: its read policy refers to profiles.organization_id.
DROP TABLE IF EXISTS public.organizations;
ALTER TABLE public.profiles DROP COLUMN IF EXISTS last_activity;
ALTER TABLE public.profiles DROP COLUMN IF EXISTS is_active;
ALTER TABLE public.profiles DROP COLUMN IF EXISTS roles;
ALTER TABLE public.profiles DROP COLUMN IF EXISTS organization_id;

COMMIT;
