# syntax=docker/dockerfile:1
# The three services, compiled once, each in an image of its own (one build target per binary):
#   docker build --target write-api -t ordering-write-api .     (also: outbox-relay, read-api)
# compose.yaml builds all three. BuildKit is needed (the default builder since Docker 23).
# tests/tests/e2e/container.rs checks that every ENTRYPOINT names a binary the workspace builds.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cargo registry and target/ live in BuildKit cache mounts: a rebuild after a code change
# recompiles our crates only, never the dependencies. The mounts are not part of the image, so
# the binaries are copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p write-api -p outbox-relay -p read-api \
    && mkdir /out \
    && cp target/release/write-api target/release/outbox-relay target/release/read-api /out/

FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to the broker (amqps://) verifies against the system roots. The binaries
# need nothing else (no libpq, no OpenSSL: PostgreSQL and TLS are pure Rust).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid, so "run as non-root" policies can check it without reading /etc/passwd.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ordering
COPY --chmod=755 docker/healthcheck /usr/local/bin/healthcheck
# Listen on every interface (the services' own default, 127.0.0.1, is unreachable from outside
# a container); each binary reads only its own address.
ENV LOG_FORMAT=json \
    WRITE_API_ADDR=0.0.0.0:8080 \
    READ_API_ADDR=0.0.0.0:8081 \
    RELAY_ADDR=0.0.0.0:8082
USER 10001:10001
# Each image below: `docker run IMAGE` serves; `docker run IMAGE migrate` (and the binary's other
# subcommands) run that instead. The binary is PID 1 and stops gracefully on SIGTERM.
# HEALTHCHECK uses the shell form so the port follows the service's *_ADDR setting.

FROM runtime AS outbox-relay
COPY --from=build /out/outbox-relay /usr/local/bin/
EXPOSE 8082
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 CMD healthcheck "$RELAY_ADDR"
ENTRYPOINT ["outbox-relay"]

FROM runtime AS read-api
COPY --from=build /out/read-api /usr/local/bin/
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 CMD healthcheck "$READ_API_ADDR"
ENTRYPOINT ["read-api"]

# Last, so a plain `docker build .` gives the write-api.
FROM runtime AS write-api
COPY --from=build /out/write-api /usr/local/bin/
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 CMD healthcheck "$WRITE_API_ADDR"
ENTRYPOINT ["write-api"]
