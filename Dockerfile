# One image with the three services; compose.yaml picks the binary per service.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p write-api -p outbox-relay -p read-api

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/write-api /src/target/release/outbox-relay /src/target/release/read-api /usr/local/bin/
ENV LOG_FORMAT=json
