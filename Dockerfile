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

# Distroless: glibc, CA certificates and a non-root user, nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /app/target/release/fanfare /usr/local/bin/fanfare
ENV FANFARE_CONFIG=/etc/fanfare/fanfare.toml
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/fanfare", "serve"]
