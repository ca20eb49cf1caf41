# syntax=docker/dockerfile:1
#
# LLMMux container image.
#   docker build -t llmmux .
#   docker run --rm -p 8080:8080 -e VLLM_SERVERS=vllm-a:8000,vllm-b:8000 -e API_KEYS=sk-... llmmux
#
# Stage 1 builds the dependencies against stub sources (cached until Cargo.toml/Cargo.lock
# change), then the real sources; stage 2 is a slim Debian with only the binary, the SQL
# migrations and CA certificates, running as an unprivileged user.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /build
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# --- dependency layer: manifests only (add new workspace members' Cargo.toml here) -------
COPY Cargo.toml Cargo.lock ./
COPY actors/Cargo.toml actors/Cargo.toml
COPY chaos/Cargo.toml chaos/Cargo.toml

# Stub every target the manifests declare so cargo can parse them, then build only the
# dependencies. [[bin]]/[[bench]]/[[test]]/[[example]] sections get `fn main() {}` at their
# `path`, or at cargo's default location for their `name`.
RUN <<'EOF'
set -eu
stub_targets() {
    dir=$1
    awk -v dir="$dir" '
        function val(line) { sub(/^[^=]*=[ \t]*"/, "", line); sub(/".*$/, "", line); return line }
        function flush() {
            if (kind == "") return
            p = path
            if (p == "" && name != "") {
                if (kind == "bench") p = "benches/" name ".rs"
                else if (kind == "test") p = "tests/" name ".rs"
                else if (kind == "example") p = "examples/" name ".rs"
                else if (kind == "bin") p = "src/bin/" name ".rs"
            }
            if (p != "") print dir "/" p
            kind = ""; name = ""; path = ""
        }
        /^[ \t]*\[\[(bin|bench|test|example)\]\]/ {
            flush(); kind = $0; gsub(/[][ \t]/, "", kind); next
        }
        /^[ \t]*\[/ { flush(); next }
        kind != "" && /^[ \t]*name[ \t]*=/ { name = val($0) }
        kind != "" && /^[ \t]*path[ \t]*=/ { path = val($0) }
        END { flush() }
    ' "$dir/Cargo.toml"
}
mkdir -p src actors/src chaos/src
: > src/lib.rs
: > actors/src/lib.rs
: > chaos/src/lib.rs
echo 'fn main() {}' > src/main.rs
for f in $(stub_targets . ; stub_targets actors ; stub_targets chaos); do
    mkdir -p "$(dirname "$f")"
    [ -f "$f" ] || echo 'fn main() {}' > "$f"
done
cargo build --release --locked --bin llmmux
EOF

# --- application layer ----------------------------------------------------------------
COPY . .
# Directories git does not keep when empty, but the manifest or the image may need.
# Touch the sources so cargo rebuilds the workspace crates over the stub artefacts.
RUN mkdir -p migrations benches tests \
    && find src actors/src chaos/src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin llmmux \
    && strip target/release/llmmux \
    && ./target/release/llmmux --version

# --- runtime ----------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 llmmux \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin llmmux \
    && mkdir -p /var/lib/llmmux/spool \
    && chown -R 10001:10001 /var/lib/llmmux

COPY --from=builder /build/target/release/llmmux /usr/local/bin/llmmux
COPY --from=builder /build/migrations /app/migrations

WORKDIR /app
USER 10001:10001
# The audit log's writable paths (the spool; the journal used without DATABASE_URL) live in
# the one directory the runtime user owns; mount a volume there to keep them.
ENV PORT=8080 HOST=0.0.0.0 \
    AUDIT_SPOOL_DIR=/var/lib/llmmux/spool \
    AUDIT_JOURNAL_PATH=/var/lib/llmmux/audit.jsonl
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["llmmux","healthcheck"]
ENTRYPOINT ["llmmux"]
CMD ["serve"]
