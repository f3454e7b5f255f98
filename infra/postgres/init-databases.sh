#!/usr/bin/env bash
# Runs once, when the Postgres data volume is first initialised (docker-entrypoint-initdb.d).
# Creates one role and one database per service, so MLflow, Prefect and the Optuna studies of
# `textrnn tune` (flows/tuning.py) never share a schema.
# Passwords come from the container environment (see infra/.env.example), never from this file.
# No `set -u`: the image sources this file when it is not executable, and -u would leak into its entrypoint.
set -eo pipefail

: "${MLFLOW_DB_USER:?}" "${MLFLOW_DB_PASSWORD:?}" "${MLFLOW_DB_NAME:?}"
: "${PREFECT_DB_USER:?}" "${PREFECT_DB_PASSWORD:?}" "${PREFECT_DB_NAME:?}"
: "${OPTUNA_DB_USER:?}" "${OPTUNA_DB_PASSWORD:?}" "${OPTUNA_DB_NAME:?}"

# psql variables (:"ident" and :'literal') quote identifiers and passwords safely.
psql --set ON_ERROR_STOP=1 \
     --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
     --set mlflow_user="$MLFLOW_DB_USER" --set mlflow_password="$MLFLOW_DB_PASSWORD" \
     --set mlflow_db="$MLFLOW_DB_NAME" \
     --set prefect_user="$PREFECT_DB_USER" --set prefect_password="$PREFECT_DB_PASSWORD" \
     --set prefect_db="$PREFECT_DB_NAME" \
     --set optuna_user="$OPTUNA_DB_USER" --set optuna_password="$OPTUNA_DB_PASSWORD" \
     --set optuna_db="$OPTUNA_DB_NAME" <<'SQL'
CREATE ROLE :"mlflow_user" LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE :"mlflow_db" OWNER :"mlflow_user";
REVOKE ALL ON DATABASE :"mlflow_db" FROM PUBLIC;

CREATE ROLE :"prefect_user" LOGIN PASSWORD :'prefect_password';
CREATE DATABASE :"prefect_db" OWNER :"prefect_user";
REVOKE ALL ON DATABASE :"prefect_db" FROM PUBLIC;

-- Every worker of a sweep connects as this role (TEXTRNN_OPTUNA_STORAGE); Optuna creates its tables.
CREATE ROLE :"optuna_user" LOGIN PASSWORD :'optuna_password';
CREATE DATABASE :"optuna_db" OWNER :"optuna_user";
REVOKE ALL ON DATABASE :"optuna_db" FROM PUBLIC;
SQL
