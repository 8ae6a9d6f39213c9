# syntax=docker/dockerfile:1
# One image for the worker (`python -m worker`), the Dask scheduler (`dask scheduler`) and the
# Dask workers (`dask worker ...`): the Helm chart in chart/ picks the command.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY worker/ worker/
# constraints.txt pins every dependency. No extras: the AWS emulator (moto) is for local use only.
RUN --mount=type=cache,target=/root/.cache/pip pip install -c constraints.txt .

FROM python:3.11-slim
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# A home directory gives numba and matplotlib somewhere writable for their caches.
RUN groupadd --gid 10001 worker \
    && useradd --uid 10001 --gid worker --create-home --shell /usr/sbin/nologin worker
COPY --from=builder /opt/venv /opt/venv
# The project's Dask and logging configuration, for the worker and the Dask processes alike.
COPY conf/ /app/conf/
ENV PATH=/opt/venv/bin:$PATH \
    WORKER_CONF_DIR=/app/conf \
    DASK_CONFIG=/app/conf \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# CLUSTER_ENV is deliberately not set: the image is the same for every environment, and the chart
# (or `docker run -e CLUSTER_ENV=staging`) says which one. Left unset, the worker runs in
# development, which wants the emulator that this image does not carry.
# A numeric USER lets Kubernetes check runAsNonRoot.
USER 10001:10001
WORKDIR /home/worker
# 8080: health and metrics; 8786: Dask scheduler; 8787: Dask dashboard.
EXPOSE 8080 8786 8787
# tini as PID 1 passes SIGTERM on to Python, so the worker drains its in-flight requests, and
# reaps the child processes that Dask workers start.
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "worker"]
