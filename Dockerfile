# fanfare daemon image: `fanfare serve`, configured by FANFARE_CONFIG_TOML (the whole
# file's text, e.g. from a secret) or else the file at $FANFARE_CONFIG, then the
# FANFARE__SECTION__KEY environment variables.
# Build from the repository root: docker buildx build --platform linux/arm64 -t fanfare .

# Compiled on the build machine's own platform ($BUILDPLATFORM) for the image's
# platform ($TARGETPLATFORM) with Debian's cross toolchain: an x86_64 CI builds the
# arm64 image natively, without QEMU (docker buildx build --platform linux/arm64).
# Dependencies are compiled in their own layer (cargo-chef), so a source change
# rebuilds only fanfare itself.
FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS chef
ARG BUILDARCH
ARG TARGETARCH
RUN cargo install cargo-chef --locked --version 0.1.78
# The Rust target and, when it is not the build machine's, the cross gcc (linker and
# C compiler for ring); Debian 12's cross glibc matches the distroless runtime's.
# Unpinned apt packages (DL3008): they follow the pinned bookworm base image. $cross
# is a list of package names, split on purpose (SC2086).
# hadolint ignore=DL3008,SC2086
RUN case "$TARGETARCH" in \
      arm64) echo aarch64-unknown-linux-gnu >/rust-target; cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      amd64) echo x86_64-unknown-linux-gnu >/rust-target; cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      *) echo "unsupported target architecture: $TARGETARCH" >&2; exit 1 ;; \
    esac \
 && if [ "$TARGETARCH" != "$BUILDARCH" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends $cross \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && rustup target add "$(cat /rust-target)"
# Debian's gcc names itself by triplet natively too, so these hold either way.
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --target "$(cat /rust-target)" --recipe-path recipe.json --package fanfare
COPY . .
# SQL is checked at run time (sqlx query functions), so the build needs no database.
RUN cargo build --release --locked --target "$(cat /rust-target)" --package fanfare --bin fanfare \
 && cp "target/$(cat /rust-target)/release/fanfare" /app/fanfare

# The Amazon RDS CA bundle (every region's root and intermediate CAs), so the daemon
# verifies its database's certificate and host name: the stack's database URL has
# sslmode=verify-full&sslrootcert=/etc/fanfare/rds-global-bundle.pem. Fetched over
# HTTPS from AWS at build time; pin it by passing the SHA-256 of a copy you checked
# (deploy/README.md, "TLS to the database"):
#   docker build --build-arg RDS_CA_BUNDLE_SHA256=<hex> ...
# A cached layer keeps the bundle it fetched; refresh it with --no-cache-filter rds-ca.
# (On the build platform too: it only downloads a file.)
FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS rds-ca
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
COPY --from=builder /app/fanfare /usr/local/bin/fanfare
# World-readable, owned by root: the non-root user (65532) reads it, cannot change it.
COPY --from=rds-ca --chmod=0444 /rds-ca/global-bundle.pem /etc/fanfare/rds-global-bundle.pem
ENV FANFARE_CONFIG=/etc/fanfare/fanfare.toml
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fanfare", "serve"]
