-- 20250104_monitoring.sql — the seed's monitoring objects (its monitoring_scripts.sql), made safe
-- to apply to any of the platform's shapes: schema vdp_monitoring with the alerts table the
-- monitor gate (module vdp_monitor) writes, and helper views for an operator at a psql prompt.
--
-- Applied by vdp_schema_migrations (role monitor) in ONE transaction with its ledger row;
-- re-runnable (IF NOT EXISTS / OR REPLACE). Revert: 20250104_monitoring.revert.sql (keeps a copy
-- of the alert rows in vdp_runbook.reverted_monitoring_alerts).
-- By hand: psql -v ON_ERROR_STOP=1 -f <file>.
--
-- The seed's fixes are kept: the alert time is alert_timestamp (never the reserved word
-- "timestamp"), the views adapt to the schema they find, and nothing needs pg_stat_statements
-- (hosted Supabase does not always have it): its view is created only when the extension is there.
-- The views need PostgreSQL 14+ (pg_locks.waitstart).
BEGIN;
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '1min';

CREATE SCHEMA IF NOT EXISTS vdp_monitoring;
COMMENT ON SCHEMA vdp_monitoring IS 'Migration runbook monitoring: gate alerts and helper views (20250104_monitoring).';

-- One row per threshold breach (or unreachable source) the monitor gate saw.
CREATE TABLE IF NOT EXISTS vdp_monitoring.alerts (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  alert_timestamp timestamptz NOT NULL DEFAULT now(),
  run_id text,
  source text,
  metric text,
  value double precision,
  threshold double precision,
  severity text CHECK (severity IN ('info', 'warning', 'critical')),
  message text
);
COMMENT ON TABLE vdp_monitoring.alerts IS 'Threshold breaches seen by the runbook''s monitor gate (vdp_monitor).';
-- The table is new (or already indexed): a plain CREATE INDEX costs nothing here.
CREATE INDEX IF NOT EXISTS alerts_alert_timestamp_idx ON vdp_monitoring.alerts (alert_timestamp);

-- Client connections against max_connections (cluster-wide: max_connections is per server).
CREATE OR REPLACE VIEW vdp_monitoring.connections AS
SELECT
  count(*) FILTER (WHERE a.backend_type = 'client backend') AS client_connections,
  count(*) FILTER (WHERE a.backend_type = 'client backend' AND a.state = 'active') AS active,
  count(*) FILTER (WHERE a.backend_type = 'client backend' AND a.state = 'idle') AS idle,
  count(*) FILTER (WHERE a.backend_type = 'client backend' AND a.state LIKE 'idle in transaction%') AS idle_in_transaction,
  current_setting('max_connections')::integer AS max_connections,
  current_setting('superuser_reserved_connections')::integer AS superuser_reserved_connections,
  round(
    (count(*) FILTER (WHERE a.backend_type = 'client backend'))::numeric
    / current_setting('max_connections')::numeric, 4
  ) AS usage_ratio
FROM pg_stat_activity AS a;

-- Queries running (or transactions left idle) longer than N seconds in this database.
-- N = the session setting vdp_monitoring.long_query_seconds (default 60):
--   SET vdp_monitoring.long_query_seconds = 10; SELECT * FROM vdp_monitoring.long_running_queries;
CREATE OR REPLACE VIEW vdp_monitoring.long_running_queries AS
SELECT
  a.pid,
  a.usename::text AS usename,
  a.application_name,
  a.client_addr::text AS client_addr,
  a.state,
  a.wait_event_type,
  a.wait_event,
  CASE WHEN a.state = 'active' THEN a.query_start ELSE a.xact_start END AS since,
  extract(EPOCH FROM clock_timestamp() - CASE WHEN a.state = 'active' THEN a.query_start ELSE a.xact_start END)::double precision
  AS duration_seconds,
  left(a.query, 1000) AS query
FROM pg_stat_activity AS a
WHERE
  a.backend_type = 'client backend'
  AND a.datname = current_database()
  AND a.pid <> pg_backend_pid()
  AND a.state IS DISTINCT FROM 'idle'
  AND CASE WHEN a.state = 'active' THEN a.query_start ELSE a.xact_start END
  < clock_timestamp() - make_interval(
    secs => coalesce(nullif(current_setting('vdp_monitoring.long_query_seconds', true), '')::double precision, 60)
  );

-- Sessions waiting for a lock in this database, with who blocks them (pg_blocking_pids).
CREATE OR REPLACE VIEW vdp_monitoring.lock_waits AS
SELECT
  a.pid AS waiting_pid,
  a.usename::text AS usename,
  a.application_name,
  pg_blocking_pids(a.pid) AS blocking_pids,
  l.locktype,
  l.mode,
  l.relation::regclass::text AS relation,
  l.waitstart,
  extract(EPOCH FROM clock_timestamp() - coalesce(l.waitstart, a.query_start))::double precision AS waiting_seconds,
  left(a.query, 1000) AS query
FROM pg_stat_activity AS a
INNER JOIN pg_locks AS l ON l.pid = a.pid AND NOT l.granted
WHERE a.datname = current_database();

-- Views that depend on what this platform has: sign-in times (auth.users on Supabase, a copy on
-- profiles in the seed's shape, or nowhere), Supabase's auth audit log, pg_stat_statements.
DO $views$
DECLARE
  sign_in_source text;
  pgss_schema text;
  time_column text;
  view_name text;
BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.columns
             WHERE table_schema = 'auth' AND table_name = 'users' AND column_name = 'last_sign_in_at') THEN
    sign_in_source := 'auth.users';
  ELSIF EXISTS (SELECT 1 FROM information_schema.columns
                WHERE table_schema = 'public' AND table_name = 'profiles' AND column_name = 'last_sign_in_at') THEN
    sign_in_source := 'public.profiles';
  END IF;
  -- last_sign_in_at keeps only each user's LATEST sign-in: this counts users whose last sign-in falls
  -- in the hour (a lower bound of the sign-ins), which is what the seed's "user activity" check needs.
  IF sign_in_source IS NOT NULL THEN
    EXECUTE format(
      'CREATE OR REPLACE VIEW vdp_monitoring.recent_sign_ins AS '
      'SELECT date_trunc(''hour'', s.last_sign_in_at) AS hour, count(*) AS users_signed_in, %L::text AS source '
      'FROM %s AS s WHERE s.last_sign_in_at > now() - interval ''24 hours'' GROUP BY 1 ORDER BY 1',
      sign_in_source || '.last_sign_in_at', sign_in_source);
  END IF;

  -- Supabase's auth audit log records SUCCESSFUL logins only (action 'login'): failed password
  -- attempts are not in it, so the login failure ratio comes from the auth server's metrics
  -- (Prometheus source of the monitor gate), never from this table.
  IF to_regclass('auth.audit_log_entries') IS NOT NULL
     AND (SELECT count(*) FROM information_schema.columns WHERE table_schema = 'auth'
          AND table_name = 'audit_log_entries' AND column_name IN ('payload', 'created_at')) = 2 THEN
    EXECUTE 'CREATE OR REPLACE VIEW vdp_monitoring.login_events AS '
      'SELECT date_trunc(''hour'', e.created_at) AS hour, '
      'count(*) FILTER (WHERE e.payload ->> ''action'' = ''login'') AS successful_logins, count(*) AS audit_entries '
      'FROM auth.audit_log_entries AS e WHERE e.created_at > now() - interval ''24 hours'' GROUP BY 1 ORDER BY 1';
  END IF;

  -- The seed's "top queries", only where pg_stat_statements is installed (the monitor gate says
  -- "pg_stat_statements not installed: top queries not sampled" otherwise).
  SELECT n.nspname INTO pgss_schema
  FROM pg_extension AS x INNER JOIN pg_namespace AS n ON n.oid = x.extnamespace
  WHERE x.extname = 'pg_stat_statements';
  IF pgss_schema IS NOT NULL THEN
    time_column := CASE WHEN EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = pgss_schema
                                     AND table_name = 'pg_stat_statements' AND column_name = 'total_exec_time')
                        THEN 'exec_time' ELSE 'time' END;
    EXECUTE format(
      'CREATE OR REPLACE VIEW vdp_monitoring.top_queries AS '
      'SELECT s.queryid, left(s.query, 1000) AS query, s.calls, s.total_%1$s AS total_ms, s.mean_%1$s AS mean_ms, s.rows '
      'FROM %2$I.pg_stat_statements AS s ORDER BY s.total_%1$s DESC LIMIT 20',
      time_column, pgss_schema);
  END IF;

  -- The views run with the caller's privileges (PostgreSQL 15+): a role without pg_read_all_stats
  -- sees only its own sessions' query text, as in pg_stat_activity itself.
  IF current_setting('server_version_num')::integer >= 150000 THEN
    FOR view_name IN SELECT c.relname FROM pg_class AS c
                     WHERE c.relnamespace = 'vdp_monitoring'::regnamespace AND c.relkind = 'v' LOOP
      EXECUTE format('ALTER VIEW vdp_monitoring.%I SET (security_invoker = true)', view_name);
    END LOOP;
  END IF;

  -- Nobody but the owner (and roles granted explicitly) reads the monitoring schema: not PUBLIC,
  -- and not Supabase's API roles, whatever default privileges the platform has.
  REVOKE ALL ON SCHEMA vdp_monitoring FROM PUBLIC;
  REVOKE ALL ON ALL TABLES IN SCHEMA vdp_monitoring FROM PUBLIC;
  REVOKE ALL ON ALL SEQUENCES IN SCHEMA vdp_monitoring FROM PUBLIC;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
    REVOKE ALL ON SCHEMA vdp_monitoring FROM anon;
    REVOKE ALL ON ALL TABLES IN SCHEMA vdp_monitoring FROM anon;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA vdp_monitoring FROM anon;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
    REVOKE ALL ON SCHEMA vdp_monitoring FROM authenticated;
    REVOKE ALL ON ALL TABLES IN SCHEMA vdp_monitoring FROM authenticated;
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA vdp_monitoring FROM authenticated;
  END IF;
END
$views$;

COMMIT;
