# MLflow tracking server for the textrnn team stack (infra/docker-compose.yml).
# Postgres backend (psycopg2), proxied artifacts on S3/MinIO (boto3): clients talk HTTP only. MLflow's basic-auth
# app (the `auth` extra) is on by default: every request but /health needs a user and password.
# Build context: infra/docker/; mlflow.Dockerfile.dockerignore lets in only the entrypoint script.
FROM python:3.12.12-slim-bookworm

# Keep the server on the same MLflow release as the project's clients.
ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.8

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    HOME=/home/mlflow \
    MLFLOW_AUTH_CONFIG_PATH=/home/mlflow/basic_auth.ini

RUN pip install --no-cache-dir \
        "mlflow[auth]==${MLFLOW_VERSION}" \
        "psycopg2-binary==${PSYCOPG2_VERSION}" \
        "boto3==${BOTO3_VERSION}" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin mlflow

# Writes the auth app's settings file from the environment, then execs `mlflow server "$@"`.
COPY --chmod=755 mlflow-server.sh /usr/local/bin/mlflow-server

# Numeric id so the runtime can check it is not root without reading /etc/passwd.
USER 10001
WORKDIR /home/mlflow
EXPOSE 5000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]

# Backend store, artifact destination, allowed hosts and the auth secrets (MLFLOW_AUTH_ADMIN_USERNAME,
# MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY) come from the compose file / environment.
ENTRYPOINT ["mlflow-server"]
CMD ["--host", "0.0.0.0", "--port", "5000", "--app-name", "basic-auth"]
