-- 20250103_organizational_model_indexes.revert.sql — drop the indexes of ..._indexes.sql.
--
-- vdp:no-transaction
-- DROP INDEX CONCURRENTLY cannot run in a transaction block: one statement at a time.
-- The foreign key's validation needs no revert (the schema revert drops the key itself).
SET lock_timeout = '5s';
SET statement_timeout = '10min';

DROP INDEX CONCURRENTLY IF EXISTS public.profiles_roles_idx;
DROP INDEX CONCURRENTLY IF EXISTS public.profiles_organization_id_idx;
