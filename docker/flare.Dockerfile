# NVIDIA FLARE runtime image (server, clients, admin): Python 3.11 venv with every pin of
# requirements.txt except the test-only and build-only ones, plus the vetted code every participant
# runs: the fedtrack package (pyproject.toml: the site's receiver, spool and forwarder, the server's
# components, the policy, the admin's commands, and the FL job in fedtrack.job, whose training script
# each site's own executor runs). Jobs carry configuration only. No
# startup kits, keys or secrets inside: the kit is mounted at /kit.
#
# Build context = build/context/flare/, staged by docker/build-images.sh:
#   locks/            docker/flare.lock (every package of the venv, pinned, with its wheel's sha256) and
#                     docker/tools.lock (uv, setuptools): installed with --require-hashes (setuptools, which
#                     builds fedtrack, as a hashed build constraint), so a wheel whose bytes are not the
#                     locked ones fails the build (docker/build-images.sh checks them all before, too)
#   rootfs/           copied to / in one step: /usr/local/bin/fedtrack-entrypoint and the package's
#                     source in /opt/fedtrack-src (installed, then removed)
# The wheels are not in the context: docker/build-images.sh serves build/wheelhouse/ from a container
# without network (--network none) and builds with `--network container:<it>`, so the RUNs below
# reach exactly that server on 127.0.0.1:8765 and nothing else. So no wheel is ever a layer and the
# ~6 GB venv is written once (no build stage, no copy of it). Legacy builder (no BuildKit needed).
# BASE_IMAGE may be python:3.11-slim-bookworm (python3 in /usr/local/bin) or the debootstrapped
# fedtrack/base:bookworm-py3.11 (python3 in /usr/bin): only `python3` from PATH is used.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# With the legacy builder on fuse-overlayfs every step after the venv commits a container on top of
# it (~10 s each): metadata first; only the user, the code and the build-hash label come after.
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
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    HOME=/home/flare
WORKDIR /workspace
CMD ["python3"]
COPY locks/ /opt/venv-locks/
# uv (from the wheelhouse's tools/) unpacks into its cache and byte-compiles on every core; the venv
# hard-links the cache's files, so removing the cache in the same step leaves one copy of each.
RUN groupadd --system --gid 10001 flare \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/flare --create-home --shell /bin/bash flare \
 && chown flare:flare /workspace \
 && python3 -m venv /tmp/uv \
 && /tmp/uv/bin/pip install -q --disable-pip-version-check --no-cache-dir --no-index --find-links http://127.0.0.1:8765/tools/ \
      --require-hashes -r /opt/venv-locks/tools.lock \
 && python3 -m venv --without-pip /opt/venv \
 && UV_CACHE_DIR=/tmp/uv-cache /tmp/uv/bin/uv pip install --python /opt/venv/bin/python --no-index --find-links http://127.0.0.1:8765/flare/ \
      --require-hashes --compile-bytecode --link-mode hardlink --quiet -r /opt/venv-locks/flare.lock \
 && /tmp/uv/bin/uv pip check --python /opt/venv/bin/python \
 && rm -rf /tmp/uv /tmp/uv-cache /root/.cache
# Declared after the RUN (build args change RUN cache keys), used only by the last LABEL.
ARG BUILD_HASH=none
# The entrypoint that starts the server/client a mounted kit was made for (compose: entrypoint
# fedtrack-entrypoint; not the image's ENTRYPOINT, so `docker run IMAGE python ...` works without a
# kit) and the package's source.
COPY rootfs/ /
# The package and its console scripts (fedtrack-job, -admin, -spool, -health, -policy), built by
# setuptools from the wheelhouse's tools/, its hash checked as a build constraint (no dependency is
# resolved: the venv above holds them all).
RUN python3 -m venv /tmp/uv \
 && /tmp/uv/bin/pip install -q --disable-pip-version-check --no-cache-dir --no-index --find-links http://127.0.0.1:8765/tools/ \
      --require-hashes -r /opt/venv-locks/tools.lock \
 && UV_CACHE_DIR=/tmp/uv-cache /tmp/uv/bin/uv pip install --python /opt/venv/bin/python --no-index \
      --find-links http://127.0.0.1:8765/tools/ --build-constraints /opt/venv-locks/tools.lock --no-deps --compile-bytecode \
      --quiet /opt/fedtrack-src \
 && mkdir -p /opt/fedtrack \
 && rm -rf /tmp/uv /tmp/uv-cache /root/.cache /opt/fedtrack-src
USER 10001:10001
LABEL fedtrack.build-hash="${BUILD_HASH}"
