-- 20250103_assignment_sync_expand.sql — the EXPAND step of the online migration (expand/contract, as
-- pgroll and the other online-migration tools do it): while the OLD app keeps writing
-- sponsor_practitioner_relationships (online mode, no scale-to-zero), every relationship it creates, ends,
-- re-activates or deletes is mirrored into practitioner_assignments with the data step's rules, until the new
-- app is deployed; 20250105_assignment_sync_contract.sql (the CONTRACT step, applied after the new app is
-- deployed, validated and watched) removes the mirror.
--
-- Two things, both on sponsor_practitioner_relationships, both SECURITY DEFINER functions in vdp_runbook (the
-- app's roles - anon/authenticated through PostgREST, service_role - may neither read nor write the runbook's
-- schema nor the new tables, and need not: a trigger runs its function whoever fires it):
--
-- 1. A journal of the relationship writes (vdp_runbook.relationship_writes): the legacy table has no updated_at,
--    so a relationship the app ENDS (active -> false) is otherwise a legacy row changed with nothing to show who
--    did it, and validation would call it the migration's change (a healthy migration rolled back). The journal
--    records who (application_name, session user) and when (the transaction's start, like updated_at);
--    validation (module_utils/vdp_baseline.py, vdp_invariants.py) attributes a journaled write to the
--    application unless a session of this runbook (application_name 'vdp-runbook...') made it. It stays after
--    the contract (later validations still need it); the revert keeps its rows (the rollback's proof reads them).
--
-- 2. The sync (three statement-level triggers: transition tables, so a bulk statement is one set-based call):
--    for each (sponsor, practitioner) pair a statement touched, the pair's assignment is set to what the data
--    step's rules give for the pair NOW - active with assigned_at = the earliest created_at of its active rows,
--    or, when none is active, inactive (ended). Self-relationships and pairs whose sponsor or practitioner has
--    no profile are never converted (as the data step: vdp_rules.VALID_PAIRS_SQL). Before the data step has
--    created the default organization the sync does nothing: the data step's pair snapshot, taken after that,
--    converts whatever the app wrote until then.
--    Why it is safe against the data step's snapshot (vdp_assignments.build_pairs reads the pairs once, then
--    inserts them in batches with ON CONFLICT DO NOTHING): the sync always WRITES the pair's row - an ended pair
--    gets an inactive row rather than no row - with INSERT ... ON CONFLICT DO UPDATE. If the sync commits first,
--    the data step's stale insert of that pair does nothing; if the data step's insert is still uncommitted, the
--    sync's insert waits for it and then overwrites it with the live state. Either way the live state wins.
--    Two application transactions on the same pair are serialized by a transaction advisory lock per pair
--    (1024 buckets, taken in order, so statements never wait on each other in a cycle), and the state is read
--    after the lock, so the later one sees the earlier one's commit.
--
-- vdp:before-baseline
--   (vdp_schema_migrations applies this file BEFORE it stores the legacy baseline: CREATE TRIGGER waits for the
--   relationship writers in flight, so every write after the baseline's snapshot is journaled - no gap.)
--
-- Applied by vdp_schema_migrations in ONE transaction with its ledger row (role schema_migration, with the
-- schema file). By hand: psql -v ON_ERROR_STOP=1 -f <file>. Revert: 20250103_assignment_sync_expand.revert.sql.
-- Every statement is re-runnable (IF NOT EXISTS, OR REPLACE, DROP ... IF EXISTS before CREATE TRIGGER).
BEGIN;
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '1min';

CREATE SCHEMA IF NOT EXISTS vdp_runbook;
REVOKE ALL ON SCHEMA vdp_runbook FROM PUBLIC;

-- ------------------------------------------------------------------------------------------ 1. the journal

CREATE TABLE IF NOT EXISTS vdp_runbook.relationship_writes (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  relationship_id uuid NOT NULL,
  sponsor_id uuid NOT NULL,
  practitioner_id uuid NOT NULL,
  op text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
  -- The row's active after the write (NULL for a delete).
  active boolean,
  at timestamptz NOT NULL DEFAULT now(),
  application_name text,
  db_user text NOT NULL DEFAULT session_user,
  by_runbook boolean NOT NULL
);
COMMENT ON TABLE vdp_runbook.relationship_writes IS
'Every write to public.sponsor_practitioner_relationships since 20250103_assignment_sync_expand: who and when, '
'so validation can attribute the application''s relationship writes (that table has no updated_at).';
-- The table is new (created above): a plain CREATE INDEX costs nothing here. Validation looks writes up by person.
CREATE INDEX IF NOT EXISTS relationship_writes_sponsor_id_idx ON vdp_runbook.relationship_writes (sponsor_id);
CREATE INDEX IF NOT EXISTS relationship_writes_practitioner_id_idx ON vdp_runbook.relationship_writes (practitioner_id);

CREATE OR REPLACE FUNCTION vdp_runbook.journal_relationship_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog
AS $fn$
DECLARE
  app text := current_setting('application_name', true);
  runbook boolean := coalesce(current_setting('application_name', true), '') LIKE 'vdp-runbook%';
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND (TG_OP = 'DELETE' OR (OLD.sponsor_id, OLD.practitioner_id)
                                        IS DISTINCT FROM (NEW.sponsor_id, NEW.practitioner_id)) THEN
    INSERT INTO vdp_runbook.relationship_writes
      (relationship_id, sponsor_id, practitioner_id, op, active, application_name, by_runbook)
    VALUES (OLD.id, OLD.sponsor_id, OLD.practitioner_id, TG_OP, CASE WHEN TG_OP = 'UPDATE' THEN NEW.active END, app, runbook);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    INSERT INTO vdp_runbook.relationship_writes
      (relationship_id, sponsor_id, practitioner_id, op, active, application_name, by_runbook)
    VALUES (NEW.id, NEW.sponsor_id, NEW.practitioner_id, TG_OP, NEW.active, app, runbook);
  END IF;
  RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION vdp_runbook.journal_relationship_write() FROM PUBLIC;

DROP TRIGGER IF EXISTS vdp_journal_relationship_writes ON public.sponsor_practitioner_relationships;
CREATE TRIGGER vdp_journal_relationship_writes
AFTER INSERT OR UPDATE OR DELETE ON public.sponsor_practitioner_relationships
FOR EACH ROW EXECUTE FUNCTION vdp_runbook.journal_relationship_write();

-- ------------------------------------------------------------------------------------------ 2. the sync

-- The pairs' assignments set to the data step's rules for the pairs as they are now (see the top).
CREATE OR REPLACE FUNCTION vdp_runbook.sync_assignment_pairs(sponsors uuid [], practitioners uuid []) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog
AS $fn$
DECLARE
  org uuid;
  bucket integer;
BEGIN
  IF to_regclass('public.practitioner_assignments') IS NULL OR to_regclass('public.organizations') IS NULL THEN
    RETURN;  -- before the schema step, or after its revert: nothing to mirror into
  END IF;
  SELECT o.id INTO org FROM public.organizations o WHERE o.slug = 'individual-users';
  IF org IS NULL THEN
    RETURN;  -- before the data step: its pair snapshot, taken after the organization exists, converts these
  END IF;
  FOR bucket IN
    SELECT DISTINCT hashtext(x.s::text || x.p::text) & 1023 FROM unnest(sponsors, practitioners) AS x (s, p) ORDER BY 1
  LOOP
    PERFORM pg_advisory_xact_lock(1447317587, bucket);  -- 1447317587 = 'VDPS': the sync's lock class
  END LOOP;
  WITH pairs AS (
    SELECT DISTINCT x.s AS sponsor_id, x.p AS practitioner_id
    FROM unnest(sponsors, practitioners) AS x (s, p)
    WHERE x.s <> x.p
      AND EXISTS (SELECT 1 FROM public.profiles ps WHERE ps.id = x.s)
      AND EXISTS (SELECT 1 FROM public.profiles pp WHERE pp.id = x.p)
  ), live AS (
    SELECT pr.sponsor_id, pr.practitioner_id,
           min(r.created_at) FILTER (WHERE r.active) AS first_active,
           min(r.created_at) AS first_any
    FROM pairs pr
    LEFT JOIN public.sponsor_practitioner_relationships r
      ON r.sponsor_id = pr.sponsor_id AND r.practitioner_id = pr.practitioner_id
    GROUP BY pr.sponsor_id, pr.practitioner_id
  )
  INSERT INTO public.practitioner_assignments AS a
    (practitioner_id, supervisor_id, supervisor_role, organization_id, assigned_at, active)
  SELECT l.practitioner_id, l.sponsor_id, 'coach', org, coalesce(l.first_active, l.first_any, now()),
         l.first_active IS NOT NULL
  FROM live l
  ORDER BY l.sponsor_id, l.practitioner_id
  ON CONFLICT (practitioner_id, supervisor_id, supervisor_role, organization_id) DO UPDATE
    SET active = excluded.active,
        assigned_at = CASE WHEN excluded.active THEN excluded.assigned_at ELSE a.assigned_at END
    WHERE a.active IS DISTINCT FROM excluded.active
       OR (excluded.active AND a.assigned_at IS DISTINCT FROM excluded.assigned_at);
END
$fn$;
REVOKE ALL ON FUNCTION vdp_runbook.sync_assignment_pairs(uuid [], uuid []) FROM PUBLIC;

-- The statement-level trigger function: the pairs of the statement's transition tables.
CREATE OR REPLACE FUNCTION vdp_runbook.sync_relationship_statement() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog
AS $fn$
DECLARE
  sponsors uuid [];
  practitioners uuid [];
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT array_agg(n.sponsor_id), array_agg(n.practitioner_id) INTO sponsors, practitioners FROM vdp_new_rows n;
  ELSIF TG_OP = 'UPDATE' THEN
    SELECT array_agg(x.sponsor_id), array_agg(x.practitioner_id) INTO sponsors, practitioners
    FROM (SELECT o.sponsor_id, o.practitioner_id FROM vdp_old_rows o
          UNION SELECT n.sponsor_id, n.practitioner_id FROM vdp_new_rows n) x;
  ELSE
    SELECT array_agg(o.sponsor_id), array_agg(o.practitioner_id) INTO sponsors, practitioners FROM vdp_old_rows o;
  END IF;
  IF sponsors IS NOT NULL THEN
    PERFORM vdp_runbook.sync_assignment_pairs(sponsors, practitioners);
  END IF;
  RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION vdp_runbook.sync_relationship_statement() FROM PUBLIC;

-- A trigger with transition tables serves one event: three triggers, one function.
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

COMMIT;
