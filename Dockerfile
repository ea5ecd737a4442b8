# quartet: the gRPC server. Build: docker build -t quartet .
# Run on SQLite in a volume:  docker run -p 50051:50051 -e QUARTET_SECRET="$(openssl rand -base64 48)" \
#                                 -v quartet:/data quartet
# Run on PostgreSQL:          add -e DATABASE_URL=postgresql://user:password@host:5432/name
# Production-like, with PostgreSQL: docker compose up (compose.yaml). Metrics: port 9464.

# Stage 1 builds the wheel; only the wheel reaches the final image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
COPY storage ./storage
COPY protos ./protos
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# Stage 2: the runtime, with quartet[server,cli] and their dependencies only, as a non-root user.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DATABASE_URL=sqlite:////data/quartet.db \
    QUARTET_ENV=production \
    QUARTET_HOST=0.0.0.0 \
    QUARTET_PORT=50051 \
    QUARTET_HTTP_PORT=8080 \
    QUARTET_METRICS_PORT=9464 \
    QUARTET_LOG_FORMAT=json
RUN groupadd --gid 10001 quartet \
    && useradd --create-home --uid 10001 --gid 10001 quartet \
    && mkdir /data \
    && chown 10001:10001 /data
COPY --from=build /dist /wheels
RUN pip install --no-cache-dir "$(find /wheels -name 'quartet-*.whl')[server,cli]" \
    && rm -r /wheels
USER 10001:10001
VOLUME ["/data"]
EXPOSE 50051 8080 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["sh", "-c", "python -m quartet.client.health 127.0.0.1:${QUARTET_PORT}"]
CMD ["quartet", "server", "serve"]
