#!/usr/bin/env bash
# Least privilege in PostgreSQL: one role per service, each owning only its own data.
#
#   taxi_app  LOGIN, not superuser, no CREATEDB/CREATEROLE. Owns schema `predictions` in
#             POSTGRES_DB (its migrations create the tables there; its search_path points at
#             it). May connect to POSTGRES_DB only.
#   mlflow    LOGIN, not superuser, no CREATEDB/CREATEROLE. Owns database `mlflow` (MLflow's
#             backend store). May connect to `mlflow` only.
#   POSTGRES_USER stays the superuser, for administration; no service uses it.
#
# Passwords come from POSTGRES_APP_PASSWORD and POSTGRES_MLFLOW_PASSWORD (.env).
#
# New volume: the postgres image runs this once, as POSTGRES_USER, on its first start.
# Existing deployment (the image never runs it again): run it yourself; it is idempotent:
#   docker compose exec postgres /docker-entrypoint-initdb.d/10-roles-and-databases.sh
# It creates what is missing, (re)sets both passwords, moves the tables the application made
# in `public` into `predictions`, and hands every table of each database to its role.
set -Eeuo pipefail

: "${POSTGRES_USER:?POSTGRES_USER is not set}"
: "${POSTGRES_DB:?POSTGRES_DB is not set}"
: "${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD in .env}"
: "${POSTGRES_MLFLOW_PASSWORD:?set POSTGRES_MLFLOW_PASSWORD in .env}"

run_sql() { # run_sql DATABASE [psql options...] < script
  local database=$1
  shift
  psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname "$database" "$@"
}

# Roles and databases. Passwords travel as psql variables, never inside the SQL text.
run_sql postgres -v app_password="$POSTGRES_APP_PASSWORD" -v mlflow_password="$POSTGRES_MLFLOW_PASSWORD" \
  -v db="$POSTGRES_DB" <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'taxi_app') THEN CREATE ROLE taxi_app; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') THEN CREATE ROLE mlflow; END IF;
END
$$;
ALTER ROLE taxi_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'app_password';
ALTER ROLE mlflow WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'mlflow_password';

SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow') AS mlflow_db_missing \gset
\if :mlflow_db_missing
CREATE DATABASE mlflow OWNER mlflow;
\endif
ALTER DATABASE mlflow OWNER TO mlflow;

-- Nobody connects to a service's database but its own role (and the superuser).
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE mlflow TO mlflow;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO taxi_app;
ALTER ROLE taxi_app IN DATABASE :"db" SET search_path = predictions;
SQL

# The predictions database: the application's schema, owned by the application role.
run_sql "$POSTGRES_DB" <<'SQL'
CREATE SCHEMA IF NOT EXISTS predictions AUTHORIZATION taxi_app;
ALTER SCHEMA predictions OWNER TO taxi_app;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
DO $$
DECLARE
  item record;
BEGIN
  -- An existing deployment migrated as the superuser into `public`: move those tables (their
  -- indexes and owned sequences go with them) and enum types into `predictions`.
  FOR item IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') LOOP
    EXECUTE format('ALTER TABLE public.%I SET SCHEMA predictions', item.relname);
  END LOOP;
  FOR item IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
              WHERE n.nspname = 'public' AND t.typtype = 'e' LOOP
    EXECUTE format('ALTER TYPE public.%I SET SCHEMA predictions', item.typname);
  END LOOP;
  -- Everything in `predictions` belongs to the application role.
  -- Tables first: their owned sequences follow them; then any sequence still left.
  FOR item IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'predictions' AND c.relkind IN ('r', 'p', 'v', 'm')
                AND c.relowner <> 'taxi_app'::regrole LOOP
    EXECUTE format('ALTER %s predictions.%I OWNER TO taxi_app',
                   CASE item.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                   item.relname);
  END LOOP;
  FOR item IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'predictions' AND c.relkind = 'S' AND c.relowner <> 'taxi_app'::regrole LOOP
    EXECUTE format('ALTER SEQUENCE predictions.%I OWNER TO taxi_app', item.relname);
  END LOOP;
  FOR item IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
              WHERE n.nspname = 'predictions' AND t.typtype = 'e' AND t.typowner <> 'taxi_app'::regrole LOOP
    EXECUTE format('ALTER TYPE predictions.%I OWNER TO taxi_app', item.typname);
  END LOOP;
END
$$;
SQL

# MLflow's database: every table it already has (an existing deployment) goes to the mlflow role.
run_sql mlflow <<'SQL'
DO $$
DECLARE
  item record;
BEGIN
  -- Tables first: their owned sequences follow them; then any sequence still left.
  FOR item IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')
                AND c.relowner <> 'mlflow'::regrole LOOP
    EXECUTE format('ALTER %s public.%I OWNER TO mlflow',
                   CASE item.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                   item.relname);
  END LOOP;
  FOR item IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind = 'S' AND c.relowner <> 'mlflow'::regrole LOOP
    EXECUTE format('ALTER SEQUENCE public.%I OWNER TO mlflow', item.relname);
  END LOOP;
  FOR item IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
              WHERE n.nspname = 'public' AND t.typtype = 'e' AND t.typowner <> 'mlflow'::regrole LOOP
    EXECUTE format('ALTER TYPE public.%I OWNER TO mlflow', item.typname);
  END LOOP;
END
$$;
SQL
echo "roles taxi_app and mlflow are in place (databases ${POSTGRES_DB} and mlflow)"
