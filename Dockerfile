# syntax=docker/dockerfile:1
# One image for the worker (`python -m worker`), the Dask scheduler (`dask scheduler`) and the
# Dask workers (`dask worker ...`): the Helm chart in chart/ picks the command.
#
# Layers run from what changes least to what changes most: the third-party packages (about
# 800 MB) are built from requirements.txt alone, so a change to the code rebuilds and ships only
# the worker package's layer, a few hundred kilobytes.

FROM python:3.11-slim AS dependencies
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# requirements.txt is the runtime part of the lock (`make lock`), every package pinned, without
# the dev and local extras (pytest, ruff, moto). It is the whole closure: --no-deps installs
# exactly that, and `pip check` fails the build if a requirement is missing from it.
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps --requirement /tmp/requirements.txt \
    && pip check

FROM python:3.11-slim AS package
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker/ worker/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# tini's version is the one of the base image's Debian release, which is pinned by the tag;
# a pinned Debian revision would break the build at Debian's next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# A passwd entry for the numeric USER below (getpass and friends look it up). No home
# directory: the root filesystem is read-only under the chart, and HOME points at /tmp.
RUN groupadd --gid 10001 worker \
    && useradd --uid 10001 --gid worker --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin worker
COPY --from=dependencies /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The code, without its dependencies (the layer above has them all; pip check proves it).
RUN --mount=type=bind,from=package,source=/wheels,target=/wheels \
    pip install --no-deps --no-cache-dir /wheels/worker-*.whl \
    && pip check
# The project's Dask and logging configuration, for the worker and the Dask processes alike.
COPY conf/ /app/conf/
# Everything written at run time goes under /tmp, which the chart mounts as an emptyDir (the
# root filesystem is read-only there): HOME, numba's cache of compiled code, matplotlib's
# font cache. The Dask workers' spill directory is their own emptyDir (--local-directory).
ENV WORKER_CONF_DIR=/app/conf \
    DASK_CONFIG=/app/conf \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# CLUSTER_ENV is deliberately not set: the image is the same for every environment, and the chart
# (or `docker run -e CLUSTER_ENV=staging`) says which one. Left unset, the worker runs in
# development, which wants the emulator that this image does not carry.
# A numeric USER lets Kubernetes check runAsNonRoot.
USER 10001:10001
WORKDIR /tmp
# 8080: the worker's /healthz and /metrics; 8786: Dask scheduler; 8787: the scheduler's
# dashboard and /metrics; 8790: a Dask worker's /health and /metrics.
EXPOSE 8080 8786 8787 8790
# tini as PID 1 passes SIGTERM on to Python, so the worker drains its in-flight requests, and
# reaps the child processes that Dask workers start.
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "worker"]
