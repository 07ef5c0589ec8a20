# syntax=docker/dockerfile:1
# Build: docker build -t mesaya-realtime .
# Run:   docker run -p 8080:8080 -e JWT_PUBLIC_KEY="$(cat auth_public.pem)" \
#          -e KAFKA_BROKERS=kafka:9092 -e REST_BASE_URL=http://api:3000 \
#          -e SECTION_SNAPSHOT_PATH=/api/v1/sections/{id} mesaya-realtime

FROM rust:1.95-slim-bookworm AS build
# librdkafka is built from source by rdkafka-sys (never the distro's 2.0.x).
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential perl python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mesaya-realtime \
 && strip target/release/mesaya-realtime

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin mesaya
COPY --from=build /src/target/release/mesaya-realtime /usr/local/bin/mesaya-realtime
USER 10001
ENV HOST=0.0.0.0 PORT=8080 LOG_FORMAT=json
EXPOSE 8080
# Readiness is /readyz, liveness /healthz; SIGTERM drains (1001 to clients). With ADMIN_PORT set
# (and ADMIN_HOST=0.0.0.0 for the kubelet to reach it) they move to that port, and the public one
# answers them 404.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/mesaya-realtime"]
