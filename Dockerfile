# syntax=docker/dockerfile:1
#
# One image for every Reelhouse service; the SERVICE build argument picks the entry point:
#
#     docker build --build-arg SERVICE=recorder -t reelhouse-recorder .
#     docker run reelhouse-recorder            # runs `python -m reelhouse.recorder`
#
# Two stages: `build` resolves the uv workspace into /app/.venv (non-editable, so no source tree
# is needed afterwards); the runtime stage adds Debian's FFmpeg and copies only the venv. Both
# stages use the same base image, so the venv's interpreter path (/usr/local/bin/python3.11)
# is valid in the runtime stage.

# The ingest data plane (Go: gosrt, gortmplib, mediacommon; docs/INGEST.md), a static binary.
FROM golang:1.24-bookworm AS dataplane
WORKDIR /src
COPY services/ingest/dataplane/ ./
RUN CGO_ENABLED=0 go build -trimpath -o /out/reelhouse-ingest .

FROM python:3.11-slim-bookworm AS build

# Same uv as the development environment (`uv --version`), from PyPI.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /src

# Third-party dependencies first: this layer is rebuilt only when a pyproject.toml or uv.lock
# changes. Every workspace member's pyproject.toml must be here, or `--locked` fails because the
# workspace no longer matches the lock file.
COPY pyproject.toml uv.lock ./
COPY libs/common/pyproject.toml libs/common/
COPY services/api/pyproject.toml services/api/
COPY services/recorder/pyproject.toml services/recorder/
COPY services/restreamer/pyproject.toml services/restreamer/
COPY services/prober/pyproject.toml services/prober/
COPY services/janitor/pyproject.toml services/janitor/
COPY services/ingest/pyproject.toml services/ingest/
# The root is virtual: --all-packages installs every member; --no-dev leaves out the dev group
# (pytest, ruff, testcontainers, ...).
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --all-packages --no-install-workspace

# Then the workspace members themselves, installed as ordinary (non-editable) packages.
COPY libs/ libs/
COPY services/ services/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --all-packages --no-editable


FROM python:3.11-slim-bookworm

# Debian's FFmpeg is built with libsrt, librist and libx264.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid so that files on shared volumes have the same owner in every container.
RUN groupadd --system --gid 10001 reelhouse \
    && useradd --system --uid 10001 --gid reelhouse --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin reelhouse \
    && mkdir -p /app /data/recordings /data/api /data/secrets \
    && chown -R reelhouse:reelhouse /data
# (A named volume mounted on /data/... starts with the ownership of the directory in the image.)

COPY --from=build /app/.venv /app/.venv
COPY --from=dataplane /out/reelhouse-ingest /usr/local/bin/reelhouse-ingest

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REELHOUSE_STORAGE_ROOT=/data/recordings

# Late, so that the five images share every layer above.
ARG SERVICE
ENV SERVICE=${SERVICE}

WORKDIR /app
USER reelhouse
EXPOSE 8080

# Workers and uvicorn stop gracefully on SIGTERM (FFmpeg children get `q`, then SIGKILL).
STOPSIGNAL SIGTERM
# `exec` makes Python the process that receives the signal, not the shell.
CMD ["sh", "-c", "exec python -m \"reelhouse.${SERVICE:?build with --build-arg SERVICE=<api|recorder|restreamer|prober|janitor>}\""]
