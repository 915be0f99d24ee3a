# shipper's image. By default a sidecar (deploy/container/config.toml): it tails the log files the API
# container writes to a shared volume at /var/log/app and serves /health/* and /metrics on port 8686
# (METRICS_TOKEN required for /metrics). Any shipper command works: `docker run IMAGE check`, `top`,
# or, in an image that also holds your API, `run -- node dist/main.js` to wrap it (docs/deploy.md).
FROM python:3.11-slim AS build
# A C compiler for the compiled hot path (shipper/_speedups.c); the runtime image stays without one.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY shipper ./shipper
COPY sources ./sources
COPY sinks ./sinks
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
COPY deploy/container/config.toml /etc/shipper/config.toml
RUN useradd --system --uid 10001 --home-dir /var/lib/shipper --create-home shipper \
 && mkdir -p /var/log/app
USER 10001
ENV SHIPPER_CONFIG=/etc/shipper/config.toml SHIPPER_STATE_DIR=/var/lib/shipper PYTHONUNBUFFERED=1
VOLUME ["/var/lib/shipper"]
EXPOSE 8686
# No curl in a slim image: shipper asks its own /health/live (the config's [api] address).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["shipper", "health"]
ENTRYPOINT ["shipper"]
CMD ["run", "--config", "/etc/shipper/config.toml"]
