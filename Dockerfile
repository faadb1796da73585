# The static `app` in an empty image. Written from the Docker documentation (multi-stage builds,
# FROM scratch) like docker-compose.yml: no Docker engine was available where it was written, so
# it has not been built. The binary itself is what `make static` builds and tests/static_binary.rs
# checks.
#
#   docker build -t reclamacoes-app .
#   docker run --rm reclamacoes-app --help
#
# TLS (Kafka --kafka-tls, S3 over https) uses rustls with the Mozilla roots compiled into the
# binary (webpki-roots), so the image needs no CA bundle; --kafka-ca-file adds a private CA.

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
ENV CC_x86_64_unknown_linux_musl=musl-gcc
RUN cargo build --profile dist --locked --target x86_64-unknown-linux-musl \
    && strip target/x86_64-unknown-linux-musl/dist/app

FROM scratch
COPY --from=build /src/target/x86_64-unknown-linux-musl/dist/app /app
# Not root; /output is where a local --output goes (mount a volume there).
USER 65534:65534
WORKDIR /output
ENTRYPOINT ["/app"]
CMD ["--help"]
