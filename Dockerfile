# syntax=docker/dockerfile:1
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 repro \
    && useradd --system --uid 10001 --gid 10001 --no-create-home repro
USER 10001:10001
# Listen on every interface of the container whatever arguments `docker run` passes to serve.
ENV PYTHONUNBUFFERED=1 \
    REPRO_HOST=0.0.0.0
EXPOSE 8080
# `health` follows the port the server was started with (--port or REPRO_PORT).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["repro-proxy", "health"]
ENTRYPOINT ["repro-proxy"]
CMD ["serve"]
