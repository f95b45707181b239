# fanfare daemon image: `fanfare serve`, configured by the file at $FANFARE_CONFIG
# and FANFARE__SECTION__KEY environment variables.
# Build from the repository root: docker build -t fanfare .

# Dependencies are compiled in their own layer (cargo-chef), so a source change
# rebuilds only fanfare itself.
FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --package fanfare
COPY . .
# SQL is checked at run time (sqlx query functions), so the build needs no database.
RUN cargo build --release --locked --package fanfare --bin fanfare

# The Amazon RDS CA bundle (every region's root and intermediate CAs), so the daemon
# verifies its database's certificate and host name: the stack's database URL has
# sslmode=verify-full&sslrootcert=/etc/fanfare/rds-global-bundle.pem. Fetched over
# HTTPS from AWS at build time; pin it by passing the SHA-256 of a copy you checked
# (deploy/README.md, "TLS to the database"):
#   docker build --build-arg RDS_CA_BUNDLE_SHA256=<hex> ...
# A cached layer keeps the bundle it fetched; refresh it with --no-cache-filter rds-ca.
FROM rust:1.95-bookworm AS rds-ca
ARG RDS_CA_BUNDLE_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
ARG RDS_CA_BUNDLE_SHA256=""
WORKDIR /rds-ca
RUN curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 \
      --retry 3 --output global-bundle.pem "$RDS_CA_BUNDLE_URL" \
 && grep -q -- '-----BEGIN CERTIFICATE-----' global-bundle.pem \
 && if [ -n "$RDS_CA_BUNDLE_SHA256" ]; then \
      printf '%s  global-bundle.pem\n' "$RDS_CA_BUNDLE_SHA256" > global-bundle.pem.sha256 \
      && sha256sum --check --strict global-bundle.pem.sha256; \
    fi

# Distroless: glibc, CA certificates and a non-root user, nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /app/target/release/fanfare /usr/local/bin/fanfare
# World-readable, owned by root: the non-root user (65532) reads it, cannot change it.
COPY --from=rds-ca --chmod=0444 /rds-ca/global-bundle.pem /etc/fanfare/rds-global-bundle.pem
ENV FANFARE_CONFIG=/etc/fanfare/fanfare.toml
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fanfare", "serve"]
