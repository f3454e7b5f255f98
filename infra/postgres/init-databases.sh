#!/usr/bin/env bash
# Runs once, when the Postgres data volume is first initialised (docker-entrypoint-initdb.d).
# Creates one role and one database per service, so MLflow and Prefect never share a schema.
# Passwords come from the container environment (see infra/.env.example), never from this file.
# No `set -u`: the image sources this file when it is not executable, and -u would leak into its entrypoint.
set -eo pipefail

: "${MLFLOW_DB_USER:?}" "${MLFLOW_DB_PASSWORD:?}" "${MLFLOW_DB_NAME:?}"
: "${PREFECT_DB_USER:?}" "${PREFECT_DB_PASSWORD:?}" "${PREFECT_DB_NAME:?}"

# psql variables (:"ident" and :'literal') quote identifiers and passwords safely.
psql --set ON_ERROR_STOP=1 \
     --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
     --set mlflow_user="$MLFLOW_DB_USER" --set mlflow_password="$MLFLOW_DB_PASSWORD" \
     --set mlflow_db="$MLFLOW_DB_NAME" \
     --set prefect_user="$PREFECT_DB_USER" --set prefect_password="$PREFECT_DB_PASSWORD" \
     --set prefect_db="$PREFECT_DB_NAME" <<'SQL'
CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user";
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;

CREATE ROLE :"prefect_user" LOGIN PASSWORD :'prefect_password';
CREATE DATABASE :"prefect_db" OWNER :"prefect_user";
REVOKE ALL ON DATABASE :"prefect_db" FROM PUBLIC;
SQL
