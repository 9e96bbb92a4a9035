#!/usr/bin/env bash
# Least privilege in PostgreSQL: one role per service, each owning only its own data.
#
#   taxi_app  LOGIN, not superuser, no CREATEDB/CREATEROLE. Owns schema `predictions` in
#             POSTGRES_DB (its migrations create the tables there; its search_path points at
#             it). May connect to POSTGRES_DB only.
#   mlflow    LOGIN, not superuser, no CREATEDB/CREATEROLE. Owns database `mlflow` (MLflow's
#             backend store). May connect to `mlflow` only.
#   taxi_reader  LOGIN, read-only: Grafana's datasource and the exporter. May connect to
#             POSTGRES_DB only (no temporary tables), uses schema `predictions`, owns nothing;
#             `python -m worker migrate` (compose's `init`) grants it SELECT on the tables the
#             dashboards and the exporter read (worker/store/readers.py), and nothing else.
#             Its statements stop after a minute; its transactions are read-only by default.
#   POSTGRES_USER stays the superuser, for administration; no service uses it.
#
# Passwords come from POSTGRES_APP_PASSWORD, POSTGRES_MLFLOW_PASSWORD and POSTGRES_READER_PASSWORD
# (.env). They never reach a command line or a statement's text: psql's \password reads each from
# its standard input and sends the server only its SCRAM verifier (see set_password).
#
# New volume: the postgres image runs this once, as POSTGRES_USER, on its first start.
# Existing deployment (the image never runs it again): run it yourself; it is idempotent:
#   docker compose exec postgres /docker-entrypoint-initdb.d/10-roles-and-databases.sh
# It creates what is missing, (re)sets the three passwords, moves the tables the application made
# in `public` into `predictions`, and hands every table of each database to its role.
set -Eeuo pipefail

: "${POSTGRES_USER:?POSTGRES_USER is not set}"
: "${POSTGRES_DB:?POSTGRES_DB is not set}"
: "${POSTGRES_APP_PASSWORD:?set POSTGRES_APP_PASSWORD in .env}"
: "${POSTGRES_MLFLOW_PASSWORD:?set POSTGRES_MLFLOW_PASSWORD in .env}"
: "${POSTGRES_READER_PASSWORD:?set POSTGRES_READER_PASSWORD in .env}"

run_sql() { # run_sql DATABASE [psql options...] < script
  local database=$1
  shift
  psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname "$database" "$@"
}

# set_password ROLE VARIABLE: the role's password becomes the value of the environment variable
# VARIABLE. psql's \password hashes it (SCRAM-SHA-256) before anything leaves psql, so the server
# receives a verifier, never the password: not in a statement's text, a server log or
# pg_stat_activity. It reads the password from standard input (printf is a shell builtin: no
# argv), twice as it asks; setsid takes away the terminal it would otherwise prompt on
# (`docker compose exec` gives it one). Its prompts are dropped, its errors kept.
set_password() {
  local errors
  if ! errors=$(printf '%s\n%s\n' "${!2}" "${!2}" |
    setsid -w psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname postgres \
      -c "\\password $1" 2>&1 >/dev/null); then
    printf '%s\n' "$errors" | grep -v '^Enter ' >&2
    return 1
  fi
}

# Roles and databases.
run_sql postgres -v db="$POSTGRES_DB" <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'taxi_app') THEN CREATE ROLE taxi_app; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') THEN CREATE ROLE mlflow; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'taxi_reader') THEN CREATE ROLE taxi_reader; END IF;
END
$$;
ALTER ROLE taxi_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE mlflow WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE taxi_reader WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
-- Grafana's editors can type any SQL: no query of theirs holds the database for long.
ALTER ROLE taxi_reader SET statement_timeout = '60s';
ALTER ROLE taxi_reader SET default_transaction_read_only = on;
-- Its reads are short: compiling a plan (JIT) cost more than running it (worker/store/database.py).
ALTER ROLE taxi_reader SET jit = off;

SELECT NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow') AS mlflow_db_missing \gset
\if :mlflow_db_missing
CREATE DATABASE mlflow OWNER mlflow;
\endif
ALTER DATABASE mlflow OWNER TO mlflow;

-- Nobody connects to a service's database but its own roles (and the superuser).
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE mlflow TO mlflow;
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO taxi_app;
REVOKE ALL ON DATABASE :"db" FROM taxi_reader;
GRANT CONNECT ON DATABASE :"db" TO taxi_reader;
ALTER ROLE taxi_app IN DATABASE :"db" SET search_path = predictions;
ALTER ROLE taxi_reader IN DATABASE :"db" SET search_path = predictions;
SQL
set_password taxi_app POSTGRES_APP_PASSWORD
set_password mlflow POSTGRES_MLFLOW_PASSWORD
set_password taxi_reader POSTGRES_READER_PASSWORD

# The predictions database: the application's schema, owned by the application role.
run_sql "$POSTGRES_DB" <<'SQL'
CREATE SCHEMA IF NOT EXISTS predictions AUTHORIZATION taxi_app;
ALTER SCHEMA predictions OWNER TO taxi_app;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
-- The reader may look up names in the schema; which tables it reads, `migrate` grants.
GRANT USAGE ON SCHEMA predictions TO taxi_reader;
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
echo "roles taxi_app, taxi_reader and mlflow are in place (databases ${POSTGRES_DB} and mlflow)"
