# NVIDIA FLARE runtime image (server, clients, admin): Python 3.11 venv with every pin of
# requirements.txt except the test-only ones, plus the vetted code every site runs: the job's
# modules in /opt/fedtrack/job (training script, tracking receiver, spool and forwarder, model),
# the local policy in /opt/fedtrack/policy, the admin's stack/flare_admin.py and the project reader
# stack/topology.py. Jobs carry configuration only. No startup kits, keys or secrets inside: the kit
# is mounted at /kit.
#
# Build context = build/context/flare/, staged by docker/build-images.sh (no network needed):
#   wheels/  hard links to build/wheelhouse/flare/ (docker/wheelhouse.sh), incl. requirements.txt
#   flare-entrypoint.sh, flare-health.py  copies of docker/flare-entrypoint.sh and docker/flare-health.py
#   job/, policy/, stack/{flare_admin,topology}.py  copies of the repo's files
# then: docker build -f docker/flare.Dockerfile --build-arg BASE_IMAGE=$(docker/base-image.sh) \
#                     -t fedtrack/flare:2.9.0 build/context/flare
# (docker/build-images.sh does exactly this.) Works with the legacy builder (no BuildKit).
# BASE_IMAGE may be python:3.11-slim-bookworm (python3 in /usr/local/bin) or the debootstrapped
# fedtrack/base:bookworm-py3.11 (python3 in /usr/bin): only `python3` from PATH is used.
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
# Order matters for the legacy builder on fuse-overlayfs: every step after the ~6 GB venv COPY
# commits a container on top of it (~10 s each), so metadata comes first; the entrypoint and the
# build-hash label come last so that changing them reuses the cached venv COPY.
ARG NVFLARE_VERSION=unknown
ARG TORCH_VERSION=unknown
ARG MLFLOW_VERSION=unknown
LABEL org.opencontainers.image.title="fedtrack-flare" \
      org.opencontainers.image.description="NVIDIA FLARE ${NVFLARE_VERSION} + PyTorch ${TORCH_VERSION} + MLflow ${MLFLOW_VERSION} client (Python 3.11 venv in /opt/venv)" \
      org.opencontainers.image.version="${NVFLARE_VERSION}" \
      fedtrack.nvflare.version="${NVFLARE_VERSION}" \
      fedtrack.torch.version="${TORCH_VERSION}" \
      fedtrack.mlflow.version="${MLFLOW_VERSION}"
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/opt/fedtrack/job \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    HOME=/home/flare
RUN groupadd --system --gid 10001 flare \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/flare --create-home --shell /bin/bash flare \
 && mkdir -p /workspace \
 && chown flare:flare /workspace
WORKDIR /workspace
USER 10001:10001
CMD ["python3"]
# Declared after the RUN (build args change RUN cache keys), used only by the last LABEL.
ARG BUILD_HASH=none
COPY --from=build /opt/venv /opt/venv
# Starts the server/client a mounted kit was made for (compose: entrypoint fedtrack-entrypoint).
# Not the image's ENTRYPOINT, so `docker run IMAGE python ...` works without a kit.
COPY flare-entrypoint.sh /usr/local/bin/fedtrack-entrypoint
# The server's and clients' healthchecks (compose: `fedtrack-health server|client`); none reads a log.
COPY flare-health.py /usr/local/bin/fedtrack-health
COPY job /opt/fedtrack/job
COPY policy /opt/fedtrack/policy
COPY stack /opt/fedtrack/stack
LABEL fedtrack.build-hash="${BUILD_HASH}"
