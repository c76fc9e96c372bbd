-- 20250103_organizational_model_indexes.sql — indexes on existing (big) tables, built online,
-- and the deferred validation of the profiles -> organizations foreign key.
--
-- vdp:no-transaction
-- CREATE INDEX CONCURRENTLY cannot run inside a transaction block, so vdp_schema_migrations runs
-- this file one statement at a time (autocommit) and records it in the ledger only when every
-- statement succeeded. Every statement is therefore re-runnable (IF NOT EXISTS). A concurrent
-- build that fails (lock timeout, cancel, crash) leaves an INVALID index behind, which
-- IF NOT EXISTS would silently keep: the module detects an invalid index of the same name,
-- drops it (DROP INDEX CONCURRENTLY) and builds it again, within its bounded retries.
-- Revert: 20250103_organizational_model_indexes.revert.sql.
-- For runs by hand; the module's lock_timeout option replaces it.
SET lock_timeout = '5s';
-- Building an index over every profile legitimately takes minutes at 1M rows: the bound is
-- generous, the lock wait above is what keeps the application unblocked.
SET statement_timeout = '30min';

-- profiles by organization (member lists, capacity counts).
CREATE INDEX CONCURRENTLY IF NOT EXISTS profiles_organization_id_idx
ON public.profiles (organization_id);

-- profiles by role ("all coaches of an organization": roles @> '{coach}').
CREATE INDEX CONCURRENTLY IF NOT EXISTS profiles_roles_idx
ON public.profiles USING gin (roles);

-- Validate the foreign key added NOT VALID by ..._schema.sql: scans profiles holding only
-- SHARE UPDATE EXCLUSIVE (reads and writes continue). Re-running it on a valid key is a no-op,
-- so it is re-runnable although it has no IF EXISTS form.
-- squawk-ignore prefer-robust-stmts
ALTER TABLE public.profiles VALIDATE CONSTRAINT profiles_organization_id_fkey;
