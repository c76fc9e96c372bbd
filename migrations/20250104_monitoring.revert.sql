-- 20250104_monitoring.revert.sql — undo 20250104_monitoring.sql, keeping the alert history.
--
-- Run by vdp_schema_migrations (state=reverted) in ONE transaction with the ledger update. The
-- alert rows are appended to vdp_runbook.reverted_monitoring_alerts first (a rollback after a
-- failed gate must not erase the alerts that caused it), then the views, the table and the schema
-- are dropped. DROP SCHEMA without CASCADE: anything someone else put there stops the revert.
-- Safe to run twice (IF EXISTS; the copy is skipped when the table is gone).
-- squawk-ignore-file ban-drop-table, ban-drop-view, ban-drop-schema
-- (dropping what the forward migration added IS the revert; its rows are copied first.)
BEGIN;
SET LOCAL lock_timeout = '5s';
SET LOCAL statement_timeout = '1min';

DO $keep$
BEGIN
  IF to_regclass('vdp_monitoring.alerts') IS NOT NULL THEN
    CREATE SCHEMA IF NOT EXISTS vdp_runbook;
    REVOKE ALL ON SCHEMA vdp_runbook FROM PUBLIC;
    CREATE TABLE IF NOT EXISTS vdp_runbook.reverted_monitoring_alerts AS
    SELECT a.*, now() AS reverted_at FROM vdp_monitoring.alerts AS a WITH NO DATA;
    INSERT INTO vdp_runbook.reverted_monitoring_alerts SELECT a.*, now() FROM vdp_monitoring.alerts AS a;
  END IF;
END
$keep$;

DROP VIEW IF EXISTS vdp_monitoring.top_queries;
DROP VIEW IF EXISTS vdp_monitoring.login_events;
DROP VIEW IF EXISTS vdp_monitoring.recent_sign_ins;
DROP VIEW IF EXISTS vdp_monitoring.lock_waits;
DROP VIEW IF EXISTS vdp_monitoring.long_running_queries;
DROP VIEW IF EXISTS vdp_monitoring.connections;
DROP TABLE IF EXISTS vdp_monitoring.alerts;
DROP SCHEMA IF EXISTS vdp_monitoring;

COMMIT;
