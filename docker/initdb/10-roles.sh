#!/bin/sh
# The roles, created once when the postgres image initializes an empty data directory (it runs
# /docker-entrypoint-initdb.d/* as the superuser). Passwords come from compose's secrets.
#
#   syncer_owner   runs `syncer apply` and `syncer grant` (compose's apply service): creates the syncer schema,
#                  the stores beside the sources, and triggers on the sources. Not a superuser.
#   syncer_worker  runs `syncer run`: holds only what `syncer grant worker` gives it (no CREATE, owns nothing).
#   app_reader     the application's search role: only what `syncer grant reader` gives it.
#   app            the application: owns and writes its tables (public.docs here).
set -eu
secrets=${SECRETS_DIR:-/run/secrets}
psql --set ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set db="$POSTGRES_DB" \
    --set owner_password="$(cat "$secrets/syncer_owner_password")" \
    --set worker_password="$(cat "$secrets/syncer_worker_password")" \
    --set reader_password="$(cat "$secrets/app_reader_password")" \
    --set app_password="$(cat "$secrets/app_password")" <<'SQL'
CREATE ROLE syncer_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE syncer_worker LOGIN PASSWORD :'worker_password';
CREATE ROLE app_reader LOGIN PASSWORD :'reader_password';
CREATE ROLE app LOGIN PASSWORD :'app_password';

-- pgvector is installed by the superuser, so that the owner needs no more than CREATE.
CREATE EXTENSION IF NOT EXISTS vector;
-- The owner creates the syncer schema, and the stores in the sources' schema; the application its tables.
GRANT CREATE ON DATABASE :"db" TO syncer_owner;
GRANT CREATE ON SCHEMA public TO syncer_owner, app;
-- On every table the application creates, the owner may add syncer's triggers, and read it and pass that right
-- on (`syncer grant worker` / `syncer grant reader` give SELECT on the sources to the worker and the reader).
ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT TRIGGER ON TABLES TO syncer_owner;
ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO syncer_owner WITH GRANT OPTION;
SQL
