# syntax=docker/dockerfile:1.7
# The KubeTune operator image: the kopf operator and nothing of the trainer's
# stack (no torch). Build it from the repository root:
#
#   docker build -t ghcr.io/kubetune/operator:0.1.0 .
#
# The operator reads its settings from KUBETUNE_* variables, which the Helm
# chart sets (kubetune_operator/settings.py lists them; e.g.
# KUBETUNE_WATCH_NAMESPACES=team-a,team-b, empty for every namespace).

# Pinned by full version; pin by digest (python:3.12.12-slim-bookworm@sha256:...)
# where the registry mirror allows it.
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The distribution holds the three packages (the API both sides share, the operator,
# the trainer: `kubetune run` imports it lazily); without extras it installs only the
# operator's dependencies (kopf, kubernetes, prometheus-client, pydantic).
COPY pyproject.toml README.md ./
COPY api/kubetune_api/ api/kubetune_api/
COPY operator/kubetune_operator/ operator/kubetune_operator/
COPY trainer-image/kubetune_trainer/ trainer-image/kubetune_trainer/
RUN pip install . && pip check

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="kubetune-operator" \
      org.opencontainers.image.description="KubeTune operator: turns FineTuneJobs into trainer pods (kopf)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
# HOME in /tmp: the root filesystem is read-only in the chart's pod, /tmp an emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# A numeric non-root user, so `runAsNonRoot` can check it without a passwd entry.
USER 65532:65532
# 8080 metrics, 8081 liveness (/healthz): the chart's defaults.
EXPOSE 8080 8081
ENTRYPOINT ["kubetune-operator"]
