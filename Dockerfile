# Sidecar image: shipper reads a log volume shared with the API container (type = "file"), or stdin.
# To wrap the API process instead (`shipper run -- node dist/main.js`), install shipper into the API's
# own image (pip install) and make it the entrypoint there.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shipper ./shipper
COPY sources ./sources
COPY sinks ./sinks
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
COPY config.toml /etc/shipper/config.toml
RUN useradd --system --uid 10001 --home-dir /var/lib/shipper --create-home shipper
USER 10001
ENV SHIPPER_CONFIG=/etc/shipper/config.toml SHIPPER_STATE_DIR=/var/lib/shipper PYTHONUNBUFFERED=1
VOLUME ["/var/lib/shipper"]
EXPOSE 8686
ENTRYPOINT ["shipper"]
CMD ["run"]
