-- The seed document's data migration (sections 2.2, 2.3, 2.4), copied VERBATIM as the benchmark's
-- baseline. It carries the seed's bugs on purpose (DESIGN.md section 4): it rewrites every
-- updated_at through the legacy trigger, gives sponsors who are practitioners only 'coach', reads
-- profiles.last_sign_in_at (absent on Supabase), inserts self/orphan/duplicate assignments (so the
-- INSERT fails as a whole on one orphan's foreign key), and inserts everything again when re-run.
-- Run it only by benchmarks/bench_data_step.py: psql -v ON_ERROR_STOP=1 -f <this file>.

-- Create default organization for existing users
INSERT INTO organizations (
  id,
  name,
  slug,
  primary_color,
  secondary_color,
  subscription_tier,
  max_users,
  created_at
) VALUES (
  gen_random_uuid(),
  'Individual Users',
  'individual-users',
  '#5F4339',
  '#A8A29E',
  'legacy',
  1000, -- Higher limit for legacy users
  NOW()
);

-- Update all existing users to belong to default organization
UPDATE profiles 
SET 
  organization_id = (SELECT id FROM organizations WHERE slug = 'individual-users'),
  roles = CASE 
    WHEN id IN (SELECT DISTINCT sponsor_id FROM sponsor_practitioner_relationships) 
    THEN ARRAY['coach']
    ELSE ARRAY['practitioner']
  END,
  is_active = true,
  last_activity = COALESCE(last_sign_in_at, created_at)
WHERE organization_id IS NULL;

-- Create practitioner assignments from existing sponsor relationships
INSERT INTO practitioner_assignments (
  practitioner_id,
  supervisor_id,
  supervisor_role,
  organization_id,
  assigned_at,
  active
)
SELECT 
  spr.practitioner_id,
  spr.sponsor_id,
  'coach',
  (SELECT id FROM organizations WHERE slug = 'individual-users'),
  spr.created_at,
  true
FROM sponsor_practitioner_relationships spr
WHERE spr.active = true;
