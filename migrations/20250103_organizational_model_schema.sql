-- 20250103_organizational_model_schema.sql — core schema of the organizational model.
--
-- Applied by the vdp_schema_migrations module in ONE transaction (the BEGIN/COMMIT below mark it;
-- the module runs the statements between them in its own transaction together with the ledger
-- row), recorded in vdp_runbook.schema_migrations. The module's session carries lock_timeout
-- (its lock_timeout option, default 5s, replaces the SET LOCAL lock_timeout below, which is there
-- for runs by hand) and it retries the whole file on a lock timeout, with backoff.
-- By hand: psql -v ON_ERROR_STOP=1 -f <file>.
-- Revert: 20250103_organizational_model_schema.revert.sql.
-- Data is not moved here (the engine's modules do it, batched: version ..._data); indexes on
-- existing tables are built CONCURRENTLY in ..._indexes.sql, which also VALIDATEs the foreign key.
BEGIN;
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '2min';

-- Organizations. Text columns are checked, not typed varchar(n) (squawk: prefer-text-field).
CREATE TABLE IF NOT EXISTS public.organizations (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  slug text NOT NULL CHECK (length(slug) BETWEEN 1 AND 100),
  primary_color text CHECK (primary_color ~ '^#[0-9A-Fa-f]{6}$'),
  secondary_color text CHECK (secondary_color ~ '^#[0-9A-Fa-f]{6}$'),
  subscription_tier text NOT NULL DEFAULT 'free'
    CHECK (subscription_tier IN ('free', 'starter', 'professional', 'enterprise', 'legacy')),
  -- squawk-ignore prefer-bigint-over-int
  max_users integer CHECK (max_users IS NULL OR max_users > 0),
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT organizations_slug_key UNIQUE (slug)
);

-- Coach (and later mentor/admin) assignments. The unique key makes re-runs insert nothing.
-- Foreign keys on a NEW, empty table validate instantly (the SHARE ROW EXCLUSIVE lock they take
-- on profiles lasts for this transaction only, bounded by lock_timeout).
CREATE TABLE IF NOT EXISTS public.practitioner_assignments (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  practitioner_id uuid NOT NULL REFERENCES public.profiles (id) ON DELETE CASCADE,
  supervisor_id uuid NOT NULL REFERENCES public.profiles (id) ON DELETE CASCADE,
  supervisor_role text NOT NULL CHECK (supervisor_role IN ('coach', 'mentor', 'admin')),
  organization_id uuid NOT NULL REFERENCES public.organizations (id),
  assigned_at timestamptz NOT NULL DEFAULT now(),
  active boolean NOT NULL DEFAULT true,
  CONSTRAINT practitioner_assignments_not_self CHECK (practitioner_id <> supervisor_id),
  CONSTRAINT practitioner_assignments_unique UNIQUE (practitioner_id, supervisor_id, supervisor_role, organization_id)
);

-- One index per foreign key, on exactly its column (what ON DELETE CASCADE from profiles needs, and
-- what Supabase's advisor checks), for lookups by practitioner, supervisor and organization. The
-- table is new and empty: a plain CREATE INDEX here costs nothing and needs no CONCURRENTLY.
CREATE INDEX IF NOT EXISTS practitioner_assignments_practitioner_id_idx
ON public.practitioner_assignments (practitioner_id);
CREATE INDEX IF NOT EXISTS practitioner_assignments_supervisor_id_idx
ON public.practitioner_assignments (supervisor_id);
CREATE INDEX IF NOT EXISTS practitioner_assignments_organization_id_idx
ON public.practitioner_assignments (organization_id);

-- New profile columns: nullable, no default, so adding them is a catalog-only change
-- (no table rewrite; ACCESS EXCLUSIVE held for milliseconds, bounded by lock_timeout).
ALTER TABLE public.profiles ADD COLUMN IF NOT EXISTS organization_id uuid;
ALTER TABLE public.profiles ADD COLUMN IF NOT EXISTS roles text [];
ALTER TABLE public.profiles ADD COLUMN IF NOT EXISTS is_active boolean;
ALTER TABLE public.profiles ADD COLUMN IF NOT EXISTS last_activity timestamptz;

-- The foreign key is added NOT VALID (no scan of profiles under lock); ..._indexes.sql runs
-- VALIDATE CONSTRAINT later, which only takes SHARE UPDATE EXCLUSIVE.
ALTER TABLE public.profiles
  ADD CONSTRAINT profiles_organization_id_fkey FOREIGN KEY (organization_id)
  REFERENCES public.organizations (id) NOT VALID;

-- New sign-ups after the migration land in the default organization as practitioners: a
-- BEFORE INSERT trigger fills what the sign-up path (handle_new_user) does not set. It never
-- overrides values given explicitly. Before the data step creates the organization it leaves
-- organization_id NULL, and the data step (WHERE organization_id IS NULL) picks the row up.
CREATE OR REPLACE FUNCTION public.vdp_profiles_membership_defaults() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public
AS $fn$
BEGIN
  IF NEW.organization_id IS NULL THEN
    NEW.organization_id := (SELECT o.id FROM public.organizations o WHERE o.slug = 'individual-users');
  END IF;
  IF NEW.roles IS NULL OR cardinality(NEW.roles) = 0 THEN
    NEW.roles := ARRAY['practitioner']::text [];
  END IF;
  IF NEW.is_active IS NULL THEN
    NEW.is_active := true;
  END IF;
  IF NEW.last_activity IS NULL THEN
    NEW.last_activity := coalesce(NEW.created_at, now());
  END IF;
  RETURN NEW;
END
$fn$;

DROP TRIGGER IF EXISTS profiles_vdp_membership_defaults ON public.profiles;
CREATE TRIGGER profiles_vdp_membership_defaults
BEFORE INSERT ON public.profiles
FOR EACH ROW EXECUTE FUNCTION public.vdp_profiles_membership_defaults();

-- Supabase's default privileges grant anon/authenticated ALL on every new table in public:
-- take that back, then enable RLS so whatever is granted later is still filtered.
REVOKE ALL ON TABLE public.organizations FROM anon;
REVOKE ALL ON TABLE public.practitioner_assignments FROM anon;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLE public.organizations FROM authenticated;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLE public.practitioner_assignments FROM authenticated;
ALTER TABLE public.organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.practitioner_assignments ENABLE ROW LEVEL SECURITY;

-- Read policies for signed-in users (Supabase's auth.uid()): members see their organization,
-- people see the assignments they are part of. auth.uid() is wrapped in a sub-select so PostgreSQL
-- evaluates it once per query, not once per row (Supabase's advisor flags the bare call). Created only
-- where auth.uid() exists (plain PostgreSQL has no auth schema); without a policy RLS denies everything.
DO $policies$
BEGIN
  IF to_regprocedure('auth.uid()') IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    DROP POLICY IF EXISTS organizations_member_read ON public.organizations;
    CREATE POLICY organizations_member_read ON public.organizations FOR SELECT TO authenticated
      USING (id IN (SELECT p.organization_id FROM public.profiles p WHERE p.id = (SELECT auth.uid())));
    DROP POLICY IF EXISTS practitioner_assignments_party_read ON public.practitioner_assignments;
    CREATE POLICY practitioner_assignments_party_read ON public.practitioner_assignments FOR SELECT TO authenticated
      USING (practitioner_id = (SELECT auth.uid()) OR supervisor_id = (SELECT auth.uid()));
  END IF;
END
$policies$;

COMMIT;
