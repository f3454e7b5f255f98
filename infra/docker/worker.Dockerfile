# textrnn Prefect worker image: CUDA 13 + cuDNN 9 runtime (what onnxruntime-gpu 1.31 links against),
# Python 3.12 from Ubuntu 24.04, the project installed in a virtual environment, run as a non-root user.
# Build context: the repository root (see infra/docker-compose.yml); infra/docker/worker.Dockerfile.dockerignore
# keeps local data, models and virtual environments out of it.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/textrnn \
    PATH=/opt/textrnn/bin:$PATH \
    MLFLOW_DISABLE_TELEMETRY=true \
    ORT_DISABLE_TELEMETRY=1 \
    DVC_NO_ANALYTICS=1 \
    DO_NOT_TRACK=1 \
    PREFECT_WORK_POOL=cpu

# Ubuntu's archive keeps only the newest build of each package, so exact apt pins stop resolving
# after the next security update; the base image tag above is what is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates git \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin textrnn \
    && install -d -o 10001 -g 10001 /home/textrnn/.cache

WORKDIR /app

# Dependencies first (pyproject pins torch and friends), so that source edits reuse this layer.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . \
    && chown -R 10001:10001 /app

# Flows, params.yaml, dvc.yaml: what a process worker runs from its working directory.
COPY --chown=10001:10001 . .

USER 10001
ENV HOME=/home/textrnn

# --with-healthcheck serves GET /health on PREFECT_WORKER_WEBSERVER_PORT (8080).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]

# The pool comes from the environment: PREFECT_WORK_POOL=cpu or gpu.
CMD ["sh", "-c", "exec prefect worker start --pool \"$PREFECT_WORK_POOL\" --type process --with-healthcheck"]
