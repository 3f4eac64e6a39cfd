# MLflow tracking server image (one per site): Python 3.11 venv with the mlflow pin only (with its
# `auth` extra), and `fedtrack-mlflow` (docker/mlflow-site.py), which runs it behind a login.
# Data (SQLite backend store, account store, served artifacts) lives in the /mlflow volume;
# secrets come at run time as files in /run/secrets, never in the image.
#
# Build context = build/context/mlflow/, staged by docker/build-images.sh (no network needed):
#   wheels/  hard links to build/wheelhouse/mlflow/ (docker/wheelhouse.sh), incl. requirements.txt
#   mlflow-site.py  copy of docker/mlflow-site.py
# then: docker build -f docker/mlflow.Dockerfile --build-arg BASE_IMAGE=$(docker/base-image.sh) \
#                     -t fedtrack/mlflow:3.17.2 build/context/mlflow
# (docker/build-images.sh does exactly this.) Works with the legacy builder (no BuildKit).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
# Marks this stage's images: docker/build-images.sh tags the current one and prunes older ones.
LABEL fedtrack.stage=build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
COPY wheels /wheels
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels -r /wheels/requirements.txt \
 && /opt/venv/bin/pip check \
 && rm -rf /root/.cache

FROM ${BASE_IMAGE}
# Order matters for the legacy builder on fuse-overlayfs: every step after the venv COPY commits
# a container on top of it, so metadata comes first and only the build-hash label comes after.
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
RUN groupadd --system --gid 10002 mlflow \
 && useradd --system --uid 10002 --gid 10002 --home-dir /home/mlflow --create-home --shell /usr/sbin/nologin mlflow \
 && mkdir -p /mlflow/artifacts \
 && chown -R mlflow:mlflow /mlflow
VOLUME ["/mlflow"]
WORKDIR /mlflow
USER 10002:10002
EXPOSE 5000
# Needs SITE_MLFLOW (its service name) and UI_PORT (its published port) and the secrets.
CMD ["fedtrack-mlflow", "serve"]
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s --retries=30 CMD ["fedtrack-mlflow", "health"]
# Declared after the RUN (build args change RUN cache keys), used only by the last LABEL.
ARG BUILD_HASH=none
COPY --from=build /opt/venv /opt/venv
COPY mlflow-site.py /usr/local/bin/fedtrack-mlflow
LABEL fedtrack.build-hash="${BUILD_HASH}"
