# The claro code location: a Dagster code server (gRPC) for Dagster's Helm chart (deploy/README.md).
#
#   docker build -t REGISTRY/claro-dagster:GIT_SHA .
#   docker build --build-arg SPEC_DIR=path/to/your/project -t ... .   # bake your own claro.yaml in (default: demo)
#
# Small: slim Python base, two stages (no pip cache or build files in the final image). Non-root: uid 10001.
# Pinned: an exact base image tag (add @sha256:<digest> after it for a byte-identical base: deploy/README.md says
# how to read it), and every Python package at the version the tests ran against (deploy/requirements.lock,
# written by deploy/lock.py; Dagster 1.13.27 as in pyproject.toml).

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/requirements.lock /tmp/requirements.lock
RUN pip install --no-deps -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY claro_dagster /src/claro_dagster
# --no-deps: the lock above is the whole dependency set; pip check fails the build if it is not.
RUN pip install --no-deps /src && pip check

FROM python:3.11.14-slim-bookworm
ARG SPEC_DIR=claro_dagster/demo
# DAGSTER_HOME is the chart's global.dagsterHome. The chart mounts its rendered instance (dagster.yaml) there in
# run pods; the code server reads the copy of dagster.prod.yaml below (CLARO_DEPLOYMENT=prod requires one).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    CLARO_DEPLOYMENT=prod \
    CLARO_HOME=/opt/claro/home \
    CLARO_SPEC=/opt/claro/project/claro.yaml
RUN groupadd --gid 10001 claro \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /opt/claro/home --shell /usr/sbin/nologin claro \
    && mkdir -p /opt/claro/home /opt/dagster/dagster_home \
    && chown 10001:10001 /opt/claro/home
COPY --from=build /opt/venv /opt/venv
COPY dagster.prod.yaml /opt/dagster/dagster_home/dagster.yaml
COPY ${SPEC_DIR}/ /opt/claro/project/
WORKDIR /opt/claro/project
USER 10001:10001
EXPOSE 3030
# Docker's own check; Kubernetes ignores HEALTHCHECK and runs the chart's readiness probe, the same command.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "-p", "3030"]
# No ENTRYPOINT: the chart passes the whole command as container args (`dagster code-server start -h 0.0.0.0
# -p <port> <codeServerArgs>`), which replace this CMD; an ENTRYPOINT would be prefixed to them.
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "3030", "-m", "claro_dagster.definitions", \
     "--location-name", "claro"]
