#!/bin/sh
# Entrypoint of the MLflow server image (mlflow.Dockerfile): `mlflow server "$@"`, with the settings file of
# MLflow's basic-auth app (`--app-name basic-auth`) written from the environment first, so that no secret is
# baked into the image or written in the compose file.
#
# MLflow reads the auth app's settings from the INI file named by MLFLOW_AUTH_CONFIG_PATH. This writes it
# (mode 0600) from:
#   MLFLOW_AUTH_DATABASE_URI        the user store; default MLFLOW_BACKEND_STORE_URI: the auth tables sit
#                                   next to the tracking tables (their own alembic_version_auth), else
#                                   sqlite in $HOME
#   MLFLOW_AUTH_DEFAULT_PERMISSION  what every signed-in user may do by default: READ (the default), USE,
#                                   EDIT, MANAGE or NO_PERMISSIONS
#   MLFLOW_AUTH_CACHE_TTL_SECONDS   seconds a worker trusts a user/password pair it has checked; default 0
#                                   (MLflow's: every request pays a deliberately slow password hash, about
#                                   0.5 s of CPU; a password change or deleted user takes up to this long to
#                                   reach every server worker)
#   MLFLOW_AUTH_CONFIG_PATH         where the file goes; default $HOME/basic_auth.ini
# MLflow itself reads the rest from the environment: the first admin user from MLFLOW_AUTH_ADMIN_USERNAME
# and MLFLOW_AUTH_ADMIN_PASSWORD (used only while the user store is empty), and the CSRF key that every
# server worker shares from MLFLOW_FLASK_SERVER_SECRET_KEY. Without them `mlflow server --app-name
# basic-auth` refuses to start.
set -eu

MLFLOW_AUTH_CONFIG_PATH="${MLFLOW_AUTH_CONFIG_PATH:-${HOME:-/tmp}/basic_auth.ini}"
database_uri="${MLFLOW_AUTH_DATABASE_URI:-${MLFLOW_BACKEND_STORE_URI:-sqlite:///${HOME:-/tmp}/basic_auth.db}}"
permission="${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}"
cache_ttl="${MLFLOW_AUTH_CACHE_TTL_SECONDS:-0}"

case "$permission" in
  READ | USE | EDIT | MANAGE | NO_PERMISSIONS) ;;
  *)
    echo "mlflow-server: MLFLOW_AUTH_DEFAULT_PERMISSION must be READ, USE, EDIT, MANAGE or NO_PERMISSIONS" >&2
    exit 2
    ;;
esac
case "$cache_ttl" in
  "" | *[!0-9]*)
    echo "mlflow-server: MLFLOW_AUTH_CACHE_TTL_SECONDS must be a whole number of seconds" >&2
    exit 2
    ;;
esac
case "$database_uri" in
  *"
"*)
    echo "mlflow-server: the auth database URI must be one line" >&2
    exit 2
    ;;
esac

# configparser reads '%' as the start of an interpolation: a URL-encoded password needs it doubled.
escaped_uri=$(printf '%s' "$database_uri" | sed 's/%/%%/g')
umask 077
rm -f "$MLFLOW_AUTH_CONFIG_PATH"
printf '[mlflow]\ndefault_permission = %s\ndatabase_uri = %s\nauth_cache_ttl_seconds = %s\n' \
  "$permission" "$escaped_uri" "$cache_ttl" >"$MLFLOW_AUTH_CONFIG_PATH"
export MLFLOW_AUTH_CONFIG_PATH

exec mlflow server "$@"
