# One image for every process: fanout-gateway (the default), fanout-collector, fanout-simulator.
#   docker build -t fanout:0.1.0 .
#   docker run fanout:0.1.0                                    # a gateway node (set REDIS_URL, GATEWAY_JWT_SECRET)
#   docker run fanout:0.1.0 fanout-collector binance --symbols BTC/USDT
# deploy/README.md says how compose, Kubernetes and systemd run it.

# Build stage: the package and its dependencies into a virtualenv that the runtime stage copies
# whole, so the runtime image has no compiler, no pip cache and no source tree.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/fanout
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY gateway ./gateway
COPY collectors ./collectors
COPY stack ./stack
RUN /opt/fanout/bin/pip install .

FROM python:3.11-slim-bookworm AS runtime
# A fixed, unprivileged uid: Kubernetes' runAsNonRoot can check it, volumes can be owned by it.
RUN groupadd --system --gid 10001 fanout \
    && useradd --system --uid 10001 --gid fanout --no-create-home --home-dir /nonexistent fanout
COPY --from=build /opt/fanout /opt/fanout
ENV PATH=/opt/fanout/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# 8000: a gateway's Socket.IO, /healthz, /readyz, /metrics; 9300: a collector's admin API and /metrics.
EXPOSE 8000 9300
# An exec-form command runs as PID 1 and gets the stop signal itself, so a gateway drains on SIGTERM.
CMD ["fanout-gateway"]
