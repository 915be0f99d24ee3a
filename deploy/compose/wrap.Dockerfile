# Your API's image with shipper installed as its entrypoint: `shipper run -- node dist/main.js` runs
# the API, ships its output, forwards signals and exits with the API's exit code.
# Built from the repository root: docker build -f deploy/compose/wrap.Dockerfile .
FROM node:20-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md /opt/shipper-src/
COPY shipper /opt/shipper-src/shipper
COPY sources /opt/shipper-src/sources
COPY sinks /opt/shipper-src/sinks
# A C compiler only while installing: the compiled hot path (shipper/_speedups.c).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev python3-dev \
 && python3 -m venv /opt/shipper && /opt/shipper/bin/pip install --no-cache-dir /opt/shipper-src \
 && apt-get purge -y --auto-remove gcc libc6-dev python3-dev && rm -rf /var/lib/apt/lists/* \
 && rm -rf /opt/shipper-src && mkdir -p /var/lib/shipper && chown node /var/lib/shipper
COPY deploy/compose/wrap.toml /etc/shipper/config.toml
WORKDIR /app
# COPY --chown=node package.json dist/ ./   # your API
USER node
ENV PATH=/opt/shipper/bin:$PATH SHIPPER_CONFIG=/etc/shipper/config.toml SHIPPER_STATE_DIR=/var/lib/shipper
EXPOSE 3000 8686
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["shipper", "health"]
ENTRYPOINT ["shipper"]
CMD ["run", "--", "node", "dist/main.js"]
