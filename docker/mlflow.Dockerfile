# MLflow tracking server image (one per site): Python 3.11 venv with the mlflow pin only (with its
# `auth` extra), and `fedtrack-mlflow` (docker/mlflow-site.py), which runs it behind a login.
# Data (SQLite backend store, account store, served artifacts) lives in the /mlflow volume;
# secrets come at run time as files in /run/secrets, never in the image.
#
# Build context = build/context/mlflow/, staged by docker/build-images.sh:
#   locks/            docker/mlflow.lock (every package of the venv, pinned, with its wheel's sha256) and
#                     docker/tools.lock (uv, setuptools): installed with --require-hashes, so a wheel whose bytes are not
#                     the locked ones fails the build (docker/build-images.sh checks them all before, too)
#   rootfs/           copied to / in one step: /usr/local/bin/fedtrack-mlflow
# The wheels come from the wheel server the build shares a network namespace with, as for the
# FLARE image (see docker/flare.Dockerfile): none is a layer, the venv is written once.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# Metadata first: every step after the venv commits a container on top of it.
ARG MLFLOW_VERSION=unknown
LABEL org.opencontainers.image.title="fedtrack-mlflow" \
      org.opencontainers.image.description="MLflow ${MLFLOW_VERSION} tracking server (SQLite + served artifacts in /mlflow)" \
      org.opencontainers.image.version="${MLFLOW_VERSION}" \
      fedtrack.mlflow.version="${MLFLOW_VERSION}"
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/mlflow \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    MLFLOW_ENABLE_AI_GATEWAY=false \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
WORKDIR /mlflow
EXPOSE 5000
# Needs SITE_MLFLOW (its service name) and UI_PORT (its published port) and the secrets.
CMD ["fedtrack-mlflow", "serve"]
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s --retries=30 CMD ["fedtrack-mlflow", "health"]
COPY locks/ /opt/venv-locks/
RUN groupadd --system --gid 10002 mlflow \
 && useradd --system --uid 10002 --gid 10002 --home-dir /home/mlflow --create-home --shell /usr/sbin/nologin mlflow \
 && mkdir -p /mlflow/artifacts \
 && chown -R mlflow:mlflow /mlflow \
 && python3 -m venv /tmp/uv \
 && /tmp/uv/bin/pip install -q --disable-pip-version-check --no-cache-dir --no-index --find-links http://127.0.0.1:8765/tools/ \
      --require-hashes -r /opt/venv-locks/tools.lock \
 && python3 -m venv --without-pip /opt/venv \
 && UV_CACHE_DIR=/tmp/uv-cache /tmp/uv/bin/uv pip install --python /opt/venv/bin/python --no-index --find-links http://127.0.0.1:8765/mlflow/ \
      --require-hashes --compile-bytecode --link-mode hardlink --quiet -r /opt/venv-locks/mlflow.lock \
 && /tmp/uv/bin/uv pip check --python /opt/venv/bin/python \
 && rm -rf /tmp/uv /tmp/uv-cache /root/.cache
# After the RUN: a RUN's changes to a declared volume would be dropped.
VOLUME ["/mlflow"]
USER 10002:10002
# Declared after the RUN (build args change RUN cache keys), used only by the last LABEL.
ARG BUILD_HASH=none
COPY rootfs/ /
LABEL fedtrack.build-hash="${BUILD_HASH}"
